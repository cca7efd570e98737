"""The ``train`` and ``demo`` commands (registered into ``transcoderbench`` by cli.COMMAND_MODULES)."""

from __future__ import annotations

import argparse
from typing import Any

from transcoderbench.errors import UserError


def register(sub: Any) -> None:
    from transcoderbench.cli import add_flag
    from transcoderbench.train.config import add_config_flags

    tr = sub.add_parser(
        "train",
        help="train a Matryoshka BatchTopK, BatchTopK or TopK transcoder",
        description="Train a transcoder on a language model's activations. Settings come from the flags below, or "
        "from --config FILE (YAML or JSON) whose keys are the same names; flags override the file. "
        "The run directory receives the transcoder (native format, loadable by `evaluate`), "
        "metrics.jsonl and train_config.json.",
    )
    add_flag(tr, "config", default=None, metavar="FILE", help="YAML or JSON file of settings (keys = the flag names)")
    add_flag(
        tr,
        "resume",
        action="store_true",
        help="continue the run in --output_dir from its last checkpoint (weights, optimizer, schedule, "
        "buffer position and random state)",
    )
    add_flag(tr, "overwrite", action="store_true", help="replace an earlier run in --output_dir instead of refusing")
    add_config_flags(tr)
    tr.set_defaults(func=cmd_train)

    demo = sub.add_parser(
        "demo",
        help="train, evaluate and compare two transcoders on the built-in model and text (offline)",
        description="On the built-in SmolLM2-135M and corpus: train a Matryoshka and a plain BatchTopK transcoder of "
        "the same width and k at layer 10, evaluate both on held-out text, compare them, and print "
        "where everything went. About 4 minutes on 2 CPU cores (238 s measured; --no-downstream "
        "--no-absorption takes about a minute), plus ~20 s the first time to convert the built-in model.",
    )
    add_flag(demo, "output_dir", default="demo_output", metavar="DIR", help="where to write (default: demo_output)")
    add_flag(demo, "progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    add_flag(
        demo,
        "downstream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the spliced loss in the comparison (--no-downstream: faster, reconstruction only)",
    )
    add_flag(
        demo,
        "absorption",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure first-letter absorption in the comparison (--no-absorption skips it)",
    )
    demo.set_defaults(func=cmd_demo)


def cmd_train(args: argparse.Namespace) -> int:
    from transcoderbench.train.config import (
        config_from_args,
        given_settings,
        make_config,
        read_config_file,
    )
    from transcoderbench.train.state import load_state
    from transcoderbench.train.trainer import train

    if args.resume:
        if args.overwrite:
            raise UserError("--resume and --overwrite contradict each other: choose one")
        given = given_settings(args)
        if "output_dir" not in given and args.config:
            given = {**read_config_file(args.config), **given}
        if "output_dir" not in given:
            raise UserError("--resume needs --output_dir: the run directory to continue")
        meta, _ = load_state(given["output_dir"])
        config = make_config({**meta["config"], **given}, f"{given['output_dir']}/resume/state.json")
    else:
        config = config_from_args(args)
    result = train(config, resume=args.resume, overwrite=args.overwrite)[0]
    m = result.final_metrics
    print(
        f"trained {config.architecture} transcoder: last-batch FVU {m.get('fvu', float('nan')):.4f}, "
        f"L0 {m.get('l0', float('nan')):.1f}, dead {100 * m.get('dead_fraction', 0.0):.1f}%"
    )
    print("wrote:")
    print(
        f"  {result.output_dir}  (transcoder: evaluate with `transcoderbench evaluate --checkpoint "
        f"{result.output_dir}`)"
    )
    print(f"  {result.output_dir / 'metrics.jsonl'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from transcoderbench.train.demo import run_demo

    run_demo(args.output_dir, progress=args.progress, downstream=args.downstream, absorption=args.absorption)
    return 0
