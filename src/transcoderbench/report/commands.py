"""``transcoderbench report DIR``: rebuild report.html from the JSON files of an evaluate/compare run."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_report(args: argparse.Namespace) -> int:
    from transcoderbench.report.html import write_report

    path = write_report(args.directory)
    print("wrote:")
    print(f"  {path}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``report`` command (called by cli.build_parser through COMMAND_MODULES)."""
    rp = subparsers.add_parser(
        "report",
        help="rebuild report.html from an output directory's JSON files",
        description="Rebuild report.html (one self-contained page: tables, plots, explanations, suggestions) from "
        "the metrics.json, or comparison.json and NAME_metrics.json, files in DIR. Nothing is re-evaluated.",
    )
    rp.add_argument("directory", metavar="DIR", help="the --output_dir of an evaluate or compare run")
    rp.set_defaults(func=cmd_report)
