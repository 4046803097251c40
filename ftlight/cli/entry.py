"""Console entry points: pick the host allocator first, then import the heavy modules."""

from __future__ import annotations

from ftlight.speed.allocator import use_fast_allocator


def train() -> None:
    """``ftlight-train``."""
    use_fast_allocator()
    from ftlight.cli.train import main

    main()


def evaluate() -> None:
    """``ftlight-eval``."""
    use_fast_allocator()
    from ftlight.cli.eval import main

    main()


def generate() -> None:
    """``ftlight-generate``."""
    use_fast_allocator()
    from ftlight.cli.generate import main

    main()
