"""``transcoderbench evaluate``: one checkpoint at its own sites -> metrics.json, summary.txt, report.html."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from transcoderbench.cli.common import (
    check_name,
    check_output_dir,
    default_eval_dir,
    output_session,
    remove_state,
    state_dir,
    write_outputs,
)
from transcoderbench.cli.flags import FlagTable, add_config_flags, add_flag, config_from_args
from transcoderbench.config import EvalConfig
from transcoderbench.evaluate import evaluate_transcoders, load_transcoders
from transcoderbench.latents import latents_files
from transcoderbench.report.summary import evaluation_summary

CHECKPOINT_HELP = (
    "checkpoint: native or legacy directory, Gemma Scope params.npz / snapshot / hub id, "
    "Gemma Scope 2 folder, or SAELens folder"
)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="evaluate one transcoder checkpoint",
        description="Evaluate one transcoder at its own input and output sites; writes metrics.json and summary.txt.",
    )
    add_flag(parser, "checkpoint", required=True, metavar="PATH", help=CHECKPOINT_HELP)
    add_flag(parser, "name", default="ours", help="name of the transcoder in the outputs (default: ours)")
    add_flag(
        parser,
        "output_dir",
        default=None,
        metavar="DIR",
        help="where to write metrics.json and summary.txt (default: CHECKPOINT/interpretability_eval)",
    )
    add_eval_flags(parser)
    parser.set_defaults(func=run)


def add_eval_flags(parser: argparse.ArgumentParser) -> None:
    """Every EvalConfig field as a flag; the field -> flag table goes to the namespace for error messages."""
    table = FlagTable()
    add_config_flags(parser, EvalConfig, table, title="evaluation")
    parser.set_defaults(flag_table=table)


def run(args: argparse.Namespace) -> int:
    check_name(args.name)
    out_dir = check_output_dir(Path(args.output_dir) if args.output_dir else default_eval_dir(args.checkpoint))
    config = config_from_args(args, EvalConfig)
    transcoders = load_transcoders({args.name: args.checkpoint}, config.select)  # a bad path fails before the lock
    with output_session(out_dir) as writes:
        result = evaluate_transcoders(transcoders, config, state_dir=state_dir(out_dir))
        if writes:
            pages = latents_files(result.latents, result.latent_matches, result.metrics, {args.name: "latents"})
            m = result.metrics[args.name]
            summary = evaluation_summary(result.meta, m)
            files = {"metrics.json": {"meta": result.meta, **m}, "summary.txt": summary, **pages}
            write_outputs(out_dir, files, result)
            remove_state(out_dir)
    return 0
