"""Bound the caches of CPU kernels that oneDNN and ideep keep (``speed.kernel_cache``).

On a CPU with native bf16, PyTorch runs bf16 matrix products through oneDNN, by way of ideep,
its C++ wrapper. Each library keeps the kernel it built for every shape it has seen, up to
1,024 of them by default, and the kernels of one shape hold about 0.7 MB between them. An
evaluation that decodes sees a few hundred shapes (rows still generating, growing key/value
lengths) that training never uses again, and training keeps them on top of its own: the
default run's training phase carried 0.1 GB of the evaluation's kernels
(benchmarks/README.md). With a bound, the least recently used kernels go first.

Both libraries read their capacity from the environment once, when the process builds its
first kernel, so the bound has to be in place before the first bf16 matrix product: ``train``
sets it first thing, before the measurement that picks the precision. A process that has
already run one keeps the capacity it started with. A capacity the user set
in the environment is left as it is.
"""

from __future__ import annotations

import os

VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
"""oneDNN's own primitive cache, and ideep's (read by PyTorch's build of it)."""


def bound_kernel_caches(capacity: object) -> dict[str, str]:
    """Set each cache's capacity to ``capacity`` kernels where the environment sets none
    (None: the libraries' default; a value that is no positive integer is left to the config's
    check to report); the settings in force, for the log."""
    if isinstance(capacity, int) and not isinstance(capacity, bool) and capacity >= 1:
        for name in VARIABLES:
            os.environ.setdefault(name, str(int(capacity)))
    return {name: os.environ[name] for name in VARIABLES if name in os.environ}
