"""``ftlight-compare``: runs side by side as a table, a CSV, a picture and a recommendation.

``ftlight-compare PATH...`` takes run folders or a multirun sweep folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ftlight.errors import FtlightError
from ftlight.evaluation.predictions import diff_runs
from ftlight.sweeps.compare import compare
from ftlight.sweeps.report import format_console, write_comparison


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    parser = argparse.ArgumentParser(
        prog="ftlight-compare",
        description="Compare fine-tuning runs: one row per run (strategy, the overrides that "
        "differ, trainable parameters, the main metric before and after, training time, "
        "tokens/s, peak memory, saved size, forgetting), a recommendation, compare.md, "
        "compare.csv and compare.png.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders or a sweep folder")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="recommend the run with the fewest trainable parameters within this much of the "
        "best score (default 0.01: one point of accuracy)",
    )
    parser.add_argument("--metric", default=None, help="compare on this metric instead")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for compare.md/.csv/.png (default: the one folder given, else the "
        "current folder)",
    )
    parser.add_argument(
        "--diff",
        nargs="?",
        const="after",
        default=None,
        metavar="PHASE",
        help="list the evaluation rows where two runs answered differently, from their "
        "predictions/PHASE.jsonl (before, few_shot or after; default after)",
    )
    args = parser.parse_args(argv)
    if args.diff is not None:
        if len(args.paths) != 2:
            parser.error(f"--diff compares two runs; got {len(args.paths)} paths")
        try:
            print(diff_runs(args.paths[0], args.paths[1], args.diff))
        except FtlightError as err:
            parser.exit(2, f"ftlight-compare: {err}\n")
        return
    try:
        c = compare(args.paths, metric=args.metric, tolerance=args.tolerance)
        out = args.out or (args.paths[0] if len(args.paths) == 1 else Path("."))
        print(format_console(c))
        written = write_comparison(c, out)
    except FtlightError as err:
        parser.exit(2, f"ftlight-compare: {err}\n")
    print("\nwrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
