"""The ``transcoderbench`` command: parse flags, call the library, print where outputs went.

User mistakes (``UserError`` and bad flags) print one ``error:`` line and exit with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transcoderbench.absorption.options import AbsorptionOptions
from transcoderbench.errors import UserError
from transcoderbench.metrics.bootstrap import BootstrapOptions
from transcoderbench.options import AbsorptionSwitch, DataOptions, DownstreamOptions, SelectOptions


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a flag error is one line naming the flag, and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def flag_names(name: str) -> list[str]:
    """``batch_size`` -> ``--batch_size`` and ``--batch-size`` (both spellings work)."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return names


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, **overrides: Any) -> None:
    """Add one flag per field of the options dataclass ``cls`` (help text from the field)."""
    group = parser.add_argument_group(cls.__doc__.strip().splitlines()[0] if cls.__doc__ else cls.__name__)
    for f in dataclasses.fields(cls):
        default = overrides.get(f.name, f.default)
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": f.metadata.get("help", "")}
        type_name = str(f.type)
        if type_name == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = int if re.match(r"int\b", type_name) else float if re.match(r"float\b", type_name) else str
            kwargs["metavar"] = f.name.upper()
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        if default is not None and type_name != "bool":
            kwargs["help"] += f" (default: {default})"
        group.add_argument(*flag_names(f.name), **kwargs)


def options_from(args: argparse.Namespace, cls: type) -> Any:
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    parser.add_argument(*flag_names(name), dest=name, **kwargs)


# ----------------------------------------------------------------- commands
def default_eval_dir(checkpoint: str) -> Path:
    """``PATH/interpretability_eval`` for a local checkpoint (the seed's default), else under the cwd."""
    path = Path(checkpoint)
    if path.is_dir():
        return path / "interpretability_eval"
    if path.is_file():
        return path.parent / "interpretability_eval"
    return Path("interpretability_eval") / re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint)


def check_output_dir(path: Path, flag: str = "--output_dir") -> Path:
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a directory: choose another {flag}")
    return path


def cmd_evaluate(args: argparse.Namespace) -> int:
    from transcoderbench.evaluation import evaluate_transcoders, load_transcoders
    from transcoderbench.io import write_files
    from transcoderbench.report.html import add_report
    from transcoderbench.report.summary import evaluation_summary

    out_dir = check_output_dir(Path(args.output_dir) if args.output_dir else default_eval_dir(args.checkpoint))
    transcoders = load_transcoders({args.name: args.checkpoint}, options_from(args, SelectOptions))
    result = evaluate_transcoders(
        transcoders,
        options_from(args, DataOptions),
        options_from(args, DownstreamOptions),
        options_from(args, BootstrapOptions),
        options_from(args, AbsorptionOptions),
        run_absorption_phase=args.absorption,
    )
    m = result.metrics[args.name]
    files = {"metrics.json": {"meta": result.meta, **m}, "summary.txt": evaluation_summary(result.meta, m)}
    print_outputs(write_files(out_dir, add_report(files, result.meta, {args.name: m})))
    return 0


def parse_named_specs(args: argparse.Namespace) -> dict[str, str]:
    specs: dict[str, str] = {}
    pairs = []
    if args.ours_checkpoint:
        pairs.append(("ours", args.ours_checkpoint, "--ours_checkpoint"))
    if args.google_dir:
        pairs.append(("google", args.google_dir, "--google_dir"))
    for item in args.transcoder or []:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise UserError(f"--transcoder {item!r}: expected NAME=SPEC with NAME made of letters, digits, . _ -")
        pairs.append((name, spec, "--transcoder"))
    for name, spec, flag in pairs:
        if name in specs:
            raise UserError(f"{flag}: the name {name!r} is used twice; give each transcoder its own name")
        specs[name] = spec
    if len(specs) < 2:
        raise UserError(
            "compare needs at least two transcoders: --ours_checkpoint and --google_dir, or --transcoder NAME=SPEC ..."
        )
    return specs


def cmd_compare(args: argparse.Namespace) -> int:
    from transcoderbench.evaluation import evaluate_transcoders, load_transcoders
    from transcoderbench.io import write_files
    from transcoderbench.report.comparison import comparison_record, comparison_summary
    from transcoderbench.report.html import add_report

    out_dir = check_output_dir(Path(args.output_dir))
    specs = parse_named_specs(args)
    transcoders = load_transcoders(specs, options_from(args, SelectOptions))
    result = evaluate_transcoders(
        transcoders,
        options_from(args, DataOptions),
        options_from(args, DownstreamOptions),
        options_from(args, BootstrapOptions),
        options_from(args, AbsorptionOptions),
        run_absorption_phase=args.absorption,
    )
    files: dict[str, Any] = {f"{name}_metrics.json": {"meta": result.meta, **m} for name, m in result.metrics.items()}
    files["comparison.json"] = comparison_record(result.meta, result.metrics)
    files["summary.txt"] = comparison_summary(result.meta, result.metrics)
    print_outputs(write_files(out_dir, add_report(files, result.meta, result.metrics, files["comparison.json"])))
    return 0


def print_outputs(paths: Sequence[Path]) -> None:
    print("wrote:")
    for p in paths:
        print(f"  {p}")


# ------------------------------------------------------------------ parser
# Modules that add further commands: each defines ``register(subparsers)`` and sets ``func``.
COMMAND_MODULES: list[str] = [
    "transcoderbench.report.commands",
    "transcoderbench.absorption.commands",
    "transcoderbench.train.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="transcoderbench",
        description="Train and evaluate transcoders at their own sites, in one streaming pass.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    ev = sub.add_parser(
        "evaluate",
        help="evaluate one transcoder checkpoint",
        description="Evaluate one transcoder at its own input and output sites; writes metrics.json and summary.txt.",
    )
    add_flag(
        ev,
        "checkpoint",
        required=True,
        metavar="PATH",
        help="checkpoint: native or legacy directory, Gemma Scope params.npz / snapshot / hub id, "
        "Gemma Scope 2 folder, or SAELens folder",
    )
    add_flag(ev, "name", default="ours", help="name of the transcoder in the outputs (default: ours)")
    add_flag(
        ev,
        "output_dir",
        default=None,
        metavar="DIR",
        help="where to write metrics.json and summary.txt (default: CHECKPOINT/interpretability_eval)",
    )
    add_dataclass_flags(ev, SelectOptions)
    add_dataclass_flags(ev, DataOptions)
    add_dataclass_flags(ev, DownstreamOptions)
    add_dataclass_flags(ev, BootstrapOptions)
    add_dataclass_flags(ev, AbsorptionSwitch)
    add_dataclass_flags(ev, AbsorptionOptions)
    ev.set_defaults(func=cmd_evaluate)

    cp = sub.add_parser(
        "compare",
        help="compare transcoders on the same tokens",
        description="Evaluate several transcoders on exactly the same tokens in one pass and compare "
        "them side by side.",
    )
    add_flag(cp, "ours_checkpoint", default=None, metavar="PATH", help="your checkpoint (named 'ours')")
    add_flag(
        cp,
        "google_dir",
        default=None,
        metavar="PATH_OR_HUB_ID",
        help="Gemma Scope transcoders: a params.npz, a local snapshot directory, or a hub id (named 'google')",
    )
    add_flag(
        cp,
        "transcoder",
        action="append",
        metavar="NAME=SPEC",
        help="any further transcoder, repeatable (writes NAME_metrics.json)",
    )
    add_flag(
        cp,
        "output_dir",
        default="analysis_results/interpretability_comparison",
        metavar="DIR",
        help="output directory (default: analysis_results/interpretability_comparison)",
    )
    add_dataclass_flags(cp, SelectOptions)
    add_dataclass_flags(cp, DataOptions)
    add_dataclass_flags(cp, DownstreamOptions)
    add_dataclass_flags(cp, BootstrapOptions)
    add_dataclass_flags(cp, AbsorptionSwitch)
    add_dataclass_flags(cp, AbsorptionOptions)
    cp.set_defaults(func=cmd_compare)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def quiet_libraries() -> None:
    """Keep stderr for our own progress bars: no per-load bars or info chatter from transformers."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
