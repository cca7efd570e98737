"""``transcoderbench compare``: several transcoders on exactly the same tokens, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from transcoderbench.cli.common import (
    check_output_dir,
    comparison_files,
    named_specs,
    output_session,
    remove_state,
    state_dir,
    write_outputs,
)
from transcoderbench.cli.evaluate import add_eval_flags
from transcoderbench.cli.flags import add_flag, config_from_args
from transcoderbench.config import EvalConfig
from transcoderbench.errors import UserError
from transcoderbench.evaluate import evaluate_transcoders, load_transcoders
from transcoderbench.latents import latents_files


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "compare",
        help="compare transcoders on the same tokens",
        description="Evaluate several transcoders on exactly the same tokens in one pass and compare "
        "them side by side.",
    )
    add_flag(parser, "ours_checkpoint", default=None, metavar="PATH", help="your checkpoint (named 'ours')")
    add_flag(
        parser,
        "google_dir",
        default=None,
        metavar="PATH_OR_HUB_ID",
        help="Gemma Scope transcoders: a params.npz, a local snapshot directory, or a hub id (named 'google')",
    )
    add_flag(
        parser,
        "transcoder",
        action="append",
        metavar="NAME=SPEC",
        help="any further transcoder, repeatable (writes NAME_metrics.json)",
    )
    add_flag(
        parser,
        "output_dir",
        default="analysis_results/interpretability_comparison",
        metavar="DIR",
        help="output directory (default: analysis_results/interpretability_comparison)",
    )
    add_eval_flags(parser)
    parser.set_defaults(func=run)


def specs_of(args: argparse.Namespace) -> dict[str, str]:
    pairs = []
    if args.ours_checkpoint:
        pairs.append(("ours", args.ours_checkpoint, "--ours_checkpoint"))
    if args.google_dir:
        pairs.append(("google", args.google_dir, "--google_dir"))
    specs = named_specs(pairs, args.transcoder)
    if len(specs) < 2:
        raise UserError(
            "compare needs at least two transcoders: --ours_checkpoint and --google_dir, or --transcoder NAME=SPEC ..."
        )
    return specs


def run(args: argparse.Namespace) -> int:
    out_dir = check_output_dir(Path(args.output_dir))
    specs = specs_of(args)
    config = config_from_args(args, EvalConfig)
    transcoders = load_transcoders(specs, config.select)  # a bad path fails before the lock
    with output_session(out_dir) as writes:
        result = evaluate_transcoders(transcoders, config, state_dir=state_dir(out_dir))
        if writes:
            names = {n: f"{n}_latents" for n in specs}
            pages = latents_files(result.latents, result.latent_matches, result.metrics, names)
            files = {**comparison_files(result), **pages}
            write_outputs(out_dir, files, result, comparison=files["comparison.json"])
            remove_state(out_dir)
    return 0
