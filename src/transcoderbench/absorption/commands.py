"""The ``transcoderbench absorption`` command: the absorption phase alone, for one or more checkpoints."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transcoderbench.absorption.options import AbsorptionOptions
from transcoderbench.errors import UserError
from transcoderbench.options import DataOptions, SelectOptions

#: The evaluation's data flags that matter here (the text corpus does not: the prompts are built in).
MODEL_FLAGS = ("model", "device", "dtype", "trust_remote_code", "progress")
ModelOptions = dataclasses.make_dataclass(
    "ModelOptions",
    [
        (f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
        for f in dataclasses.fields(DataOptions)
        if f.name in MODEL_FLAGS
    ],
)
ModelOptions.__doc__ = "Language model"


def register(subparsers: argparse._SubParsersAction) -> None:
    from transcoderbench.cli import add_dataclass_flags, add_flag

    parser = subparsers.add_parser(
        "absorption",
        help="first-letter feature absorption of one or more transcoders",
        description="Measure first-letter feature absorption (SAEBench's method, adapted to transcoders: the probe "
        "reads the input site, latents are compared through their encoder rows; SAEs use decoder rows). "
        "Writes absorption.json and absorption.txt.",
    )
    add_flag(
        parser,
        "checkpoint",
        default=None,
        metavar="PATH",
        help="checkpoint: native or legacy directory, Gemma Scope params.npz / snapshot / hub id, Gemma Scope 2 "
        "folder, or SAELens folder",
    )
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
    add_dataclass_flags(parser, SelectOptions)
    add_dataclass_flags(parser, ModelOptions)
    add_dataclass_flags(parser, AbsorptionOptions)
    parser.set_defaults(func=cmd_absorption)


def named_specs(args: argparse.Namespace) -> dict[str, str]:
    specs: dict[str, str] = {}
    if args.checkpoint:
        specs[args.name] = args.checkpoint
    for item in args.transcoder or []:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise UserError(f"--transcoder {item!r}: expected NAME=SPEC with NAME made of letters, digits, . _ -")
        if name in specs:
            raise UserError(f"--transcoder: the name {name!r} is used twice; give each transcoder its own name")
        specs[name] = spec
    if not specs:
        raise UserError("absorption needs a transcoder: --checkpoint PATH or --transcoder NAME=SPEC")
    return specs


def cmd_absorption(args: argparse.Namespace) -> int:
    from transcoderbench.absorption.run import run_absorption
    from transcoderbench.absorption.summary import VERSUS_REDUNDANCY, summary_lines
    from transcoderbench.cli import (
        check_output_dir,
        default_eval_dir,
        options_from,
        print_outputs,
    )
    from transcoderbench.evaluation import (
        choose_model,
        load_transcoders,
        package_versions,
    )
    from transcoderbench.io import write_files
    from transcoderbench.lm import load_language_model

    options: AbsorptionOptions = options_from(args, AbsorptionOptions)
    options.check()
    model_options = options_from(args, ModelOptions)
    specs = named_specs(args)
    if args.output_dir:
        out_dir = Path(args.output_dir)
    elif args.checkpoint and len(specs) == 1:
        out_dir = default_eval_dir(args.checkpoint)
    else:
        out_dir = Path("analysis_results") / "absorption"
    out_dir = check_output_dir(out_dir)

    transcoders = load_transcoders(specs, options_from(args, SelectOptions))
    model_name = choose_model(transcoders, model_options.model)
    print(f"loading language model {model_name} ...", file=sys.stderr)
    lm = load_language_model(
        model_name,
        device=model_options.device,
        dtype=model_options.dtype,
        trust_remote_code=model_options.trust_remote_code,
    )
    for tc in transcoders.values():
        tc.to(device=lm.device).float()
    results = run_absorption(lm, transcoders, options, show_progress=model_options.progress)

    meta: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": lm.describe(),
        "options": {**dataclasses.asdict(model_options), **dataclasses.asdict(options)},
        "versions": package_versions(),
    }
    text = [line for name, result in results.items() for line in summary_lines(name, result)]
    text += ["", VERSUS_REDUNDANCY]
    print_outputs(
        write_files(
            out_dir, {"absorption.json": {"meta": meta, "results": results}, "absorption.txt": "\n".join(text) + "\n"}
        )
    )
    return 0
