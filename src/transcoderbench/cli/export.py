"""``transcoderbench export`` / ``convert``: write checkpoints in another tool's format.

Any readable checkpoint (native, seed, Gemma Scope, SAELens, sparsify, circuit-tracer) can be
written as native, SAELens, sparsify or circuit-tracer. What the target cannot express is
refused before anything is written (see ``formats.export``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from transcoderbench.cli.common import print_outputs
from transcoderbench.cli.flags import FlagTable, add_config_flags, add_flag, config_from_args
from transcoderbench.config import SelectConfig
from transcoderbench.errors import UserError
from transcoderbench.formats import load_transcoder
from transcoderbench.formats.export import export, writable_formats
from transcoderbench.io import directory_lock

FORMAT_CHOICES = ("native", "saelens", "sparsify", "circuit-tracer")


def register(sub: Any) -> None:
    for name in ("export", "convert"):
        parser = sub.add_parser(
            name,
            help="write checkpoints in another tool's format (native, SAELens, sparsify, circuit-tracer)",
            description="Read one or more checkpoints in any supported format and write them in --format. "
            "SAELens and native hold one transcoder; sparsify and circuit-tracer hold several (circuit-tracer: one "
            "per layer, e.g. one checkpoint per layer given in order). What the target format cannot express "
            "(an architecture, a site, a negative threshold...) is refused, never approximated.",
        )
        parser.add_argument("specs", nargs="+", metavar="SPEC", help="checkpoint files, folders or hub ids")
        add_flag(parser, "format", required=True, choices=FORMAT_CHOICES, help="the format to write")
        add_flag(parser, "output_dir", required=True, metavar="DIR", help="the folder to write (created whole)")
        add_flag(
            parser,
            "model_name",
            default=None,
            metavar="NAME",
            help="model id to record where the target needs one and the checkpoints name none (circuit-tracer)",
        )
        table = FlagTable()
        add_config_flags(parser, SelectConfig, table, title="select")
        parser.set_defaults(func=run, flag_table=table)


def run(args: argparse.Namespace) -> int:
    select = config_from_args(args, SelectConfig)
    fmt = args.format.replace("-", "_")
    if fmt not in writable_formats():
        raise UserError(f"--format {args.format}: choose one of {', '.join(FORMAT_CHOICES)}")
    out = Path(args.output_dir)
    transcoders = [load_transcoder(spec, layer=select.layer, width=select.width, l0=select.l0) for spec in args.specs]
    with directory_lock(out):
        written = export(transcoders, fmt, out, model_name=args.model_name)
    print_outputs(sorted(p for p in Path(written).rglob("*") if p.is_file()))
    return 0
