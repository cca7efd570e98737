"""``transcoderbench train``: settings from flags over an optional ``--config FILE``, then one training run."""

from __future__ import annotations

import argparse
from typing import Any

from transcoderbench import distributed
from transcoderbench.cli.flags import FlagTable, add_config_flags, add_flag
from transcoderbench.errors import UserError
from transcoderbench.train.config import FLAT_KEYS, TrainConfig, coerce, make_config, path_of, read_config_file
from transcoderbench.train.state import load_state
from transcoderbench.train.trainer import train

#: Errors from the language-model and data layers name evaluation fields; in `train` these flags set them.
LIBRARY_FIELDS = {
    "model.name": "--model",
    "model.device": "--device",
    "model.dtype": "--dtype",
    "model.trust_remote_code": "--trust_remote_code",
    "data.dataset": "--dataset",
    "data.text_field": "--text_field",
    "data.dataset_config": "--dataset_config",
    "data.dataset_split": "--dataset_split",
    "data.seq_len": "--seq_len",
    "data.batch_size": "--lm_batch_size",
}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "train",
        help="train a Matryoshka BatchTopK, BatchTopK or TopK transcoder",
        description="Train a transcoder on a language model's activations. Settings come from the flags below, or "
        "from --config FILE (YAML or JSON) whose keys are the same names; flags override the file. "
        "The run directory receives the transcoder (native format, loadable by `evaluate`), "
        "metrics.jsonl and train_config.json.",
    )
    add_flag(
        parser, "config", default=None, metavar="FILE", help="YAML or JSON file of settings (keys = the flag names)"
    )
    add_flag(
        parser,
        "resume",
        action="store_true",
        help="continue the run in --output_dir from its last checkpoint (weights, optimizer, schedule, "
        "buffer position and random state)",
    )
    add_flag(
        parser,
        "overwrite",
        action="store_true",
        help="replace an earlier run in --output_dir instead of refusing (only a folder this tool marked as a run, only its own files, and only once every flag, the model and the data have been checked)",
    )
    # Flags stay strings and unset ones stay out of the namespace, so a --config file can fill them.
    table = FlagTable(LIBRARY_FIELDS)
    add_config_flags(parser, TrainConfig, table, raw=True, title="training settings (also the keys of --config)")
    parser.set_defaults(func=run, flag_table=table)


def given_values(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as (raw) flags, by flat key, coerced with one-line errors naming the flag."""
    table = args.flag_table
    return {
        key: coerce(key, getattr(args, path_of(key)), table[path_of(key)])
        for key in FLAT_KEYS
        if hasattr(args, path_of(key))
    }


def config_of(args: argparse.Namespace) -> TrainConfig:
    """defaults < ``--config`` file < flags; with ``--resume``, the run's saved settings replace the defaults."""
    if not args.resume:
        file_values = read_config_file(args.config) if args.config else {}
        return make_config({**file_values, **given_values(args)}, "train")
    if args.overwrite:
        raise UserError("--resume and --overwrite contradict each other: choose one")
    given = given_values(args)
    if "output_dir" not in given and args.config:
        given = {**read_config_file(args.config), **given}
    if "output_dir" not in given:
        raise UserError("--resume needs --output_dir: the run directory to continue")
    meta, _ = load_state(given["output_dir"])
    # Anything that runs code needs its flag on this command line: never trust_remote_code from a saved file.
    values = {**meta["config"], **given, "trust_remote_code": given.get("trust_remote_code", False)}
    return make_config(values, f"{given['output_dir']}/resume/state.json")


def run(args: argparse.Namespace) -> int:
    config = config_of(args)
    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite)[0]
        rank0 = distributed.is_rank0()
    finally:
        distributed.destroy()  # torchrun: leave the process group (a no-op in one process)
    if not rank0:
        return 0
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
