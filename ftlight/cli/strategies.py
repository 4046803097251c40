"""``ftlight-strategies``: list the installed strategy plugins, or write a new plugin folder."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ftlight.errors import FtlightError
from ftlight.strategies.catalog import format_listing, installed_strategies, scaffold


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="ftlight-strategies", description="List installed strategy plugins, or start one."
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("list", help="installed strategies (the default)")
    new = sub.add_parser("new", help="write a new plugin folder in the built-in shape")
    new.add_argument("name", help="the strategy name (strategy=<name> selects it)")
    new.add_argument("--dir", default=".", help="where to create the folder (default: here)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        if args.command == "new":
            root = scaffold(args.name, Path(args.dir))
            print(f"wrote {root}; next: pip install -e {root} && pytest {root / 'tests'}")
        else:
            print(format_listing(installed_strategies()))
    except FtlightError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
