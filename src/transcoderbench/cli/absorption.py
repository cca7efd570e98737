"""``transcoderbench absorption``: the first-letter absorption phase alone, for one or more checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transcoderbench.absorption.run import run_absorption
from transcoderbench.absorption.summary import VERSUS_REDUNDANCY, summary_lines
from transcoderbench.cli.common import check_output_dir, default_eval_dir, named_specs, output_session, write_outputs
from transcoderbench.cli.evaluate import CHECKPOINT_HELP
from transcoderbench.cli.flags import FlagTable, add_config_flags, add_flag, config_from_args
from transcoderbench.config import AbsorptionConfig, model_record
from transcoderbench.data import text_source_of
from transcoderbench.distributed import barrier, init_from_env, rank_device
from transcoderbench.errors import UserError
from transcoderbench.evaluate import choose_model, load_transcoders, package_versions
from transcoderbench.lm import load_language_model


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "absorption",
        help="first-letter feature absorption of one or more transcoders",
        description="Measure first-letter feature absorption (SAEBench's method, adapted to transcoders: the probe "
        "reads the input site; a transcoder latent's share is read through an input-space decoder fitted by least squares, "
        "on text (--dataset) and the training words, so shares add up; SAEs use their decoder rows, exactly as "
        "SAEBench). "
        "Writes absorption.json and absorption.txt.",
    )
    add_flag(parser, "checkpoint", default=None, metavar="PATH", help=CHECKPOINT_HELP)
    add_flag(parser, "name", default="ours", help="name of --checkpoint in the outputs (default: ours)")
    add_flag(
        parser,
        "transcoder",
        action="append",
        metavar="NAME=SPEC",
        help="further transcoders, repeatable; those reading the same site share one probe",
    )
    add_flag(
        parser,
        "output_dir",
        default=None,
        metavar="DIR",
        help="where to write absorption.json and absorption.txt (default: CHECKPOINT/interpretability_eval, "
        "or analysis_results/absorption)",
    )
    table = FlagTable()
    add_config_flags(parser, AbsorptionConfig, table, title="absorption")
    parser.set_defaults(func=run, flag_table=table)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args, AbsorptionConfig)
    options = config.absorption
    config.check()
    specs = named_specs([(args.name, args.checkpoint, "--checkpoint")] if args.checkpoint else [], args.transcoder)
    if not specs:
        raise UserError("absorption needs a transcoder: --checkpoint PATH or --transcoder NAME=SPEC")
    if args.output_dir:
        out_dir = Path(args.output_dir)
    elif args.checkpoint and len(specs) == 1:
        out_dir = default_eval_dir(args.checkpoint)
    else:
        out_dir = Path("analysis_results") / "absorption"
    out_dir = check_output_dir(out_dir)

    transcoders = load_transcoders(specs, config.select)  # a bad path fails before the lock
    source = text_source_of(config.data, trust_remote_code=config.model.trust_remote_code)  # so does a bad --dataset
    with output_session(out_dir) as writes:
        # Under torchrun rank 0 measures and writes while the others wait (see run_absorption_rank0).
        if not writes:
            barrier()
            return 0
        _, world_size, _ = init_from_env()
        model_name = choose_model(transcoders, config.model.name)
        print(f"loading language model {model_name} ...", file=sys.stderr)
        lm = load_language_model(
            model_name,
            device=rank_device(config.model.device),
            dtype=config.model.dtype,
            trust_remote_code=config.model.trust_remote_code,
        )
        for tc in transcoders.values():
            tc.to(device=lm.device).float()
        results = run_absorption(
            lm,
            transcoders,
            options,
            text=source,
            show_progress=config.progress,
        )

        meta: dict[str, Any] = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": lm.describe(),
            "options": {
                **model_record(config.model, config.progress),
                **dataclasses.asdict(config.data),
                **dataclasses.asdict(options),
            },
            "versions": package_versions(),
            "world_size": world_size,
        }
        text = [line for name, result in results.items() for line in summary_lines(name, result)]
        text += ["", VERSUS_REDUNDANCY]
        files = {"absorption.json": {"meta": meta, "results": results}, "absorption.txt": "\n".join(text) + "\n"}
        write_outputs(out_dir, files)
        barrier()
    return 0
