"""``transcoderbench report DIR``: rebuild report.html from the JSON files of an evaluate/compare run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from transcoderbench.cli.common import claim_output_dir, print_outputs
from transcoderbench.report.html import write_report


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "report",
        help="rebuild report.html from an output directory's JSON files",
        description="Rebuild report.html (one self-contained page: tables, plots, explanations, suggestions) from "
        "the metrics.json, or comparison.json and NAME_metrics.json, files in DIR. Nothing is re-evaluated.",
    )
    parser.add_argument("directory", metavar="DIR", help="the --output_dir of an evaluate or compare run")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if Path(args.directory).is_dir():
        claim_output_dir(Path(args.directory))  # one writer at a time; finish a swap a killed run left
    print_outputs([write_report(args.directory)])
    return 0
