"""``ftlight-export``: a run's model as GGUF, an Ollama import, a merged model or an adapter."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ftlight.errors import FtlightError


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    from ftlight.serve import exporter, llama_cpp

    parser = argparse.ArgumentParser(
        prog="ftlight-export",
        description="Write <run>/export/<format>/ from a run folder, in one piece. GGUF files "
        "(gguf, ollama) come from llama.cpp's own converter and are scored through "
        "llama-server on the run's evaluation prompts unless --no-check.",
    )
    parser.add_argument("run", type=Path, help="run folder written by ftlight-train")
    parser.add_argument("--to", dest="fmt", required=True, choices=exporter.FORMATS)
    parser.add_argument(
        "--type",
        dest="types",
        nargs="+",
        default=None,
        choices=llama_cpp.TYPES,
        help="GGUF types (default: f16 q8_0 q4_k_m for gguf, q8_0 for ollama; q4_k_m only "
        "when llama-quantize is built)",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="do not score the GGUF through llama-server"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    try:
        plan = exporter.plan_export(args.run, args.fmt, args.types, check=not args.no_check)
        exporter.export(plan)
    except FtlightError as err:
        parser.exit(2, f"ftlight-export: {err}\n")
    print(exporter.summary(plan))


if __name__ == "__main__":
    main()
