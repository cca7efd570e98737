"""The ``transcoderbench`` command: parse flags, call the library, print where outputs went.

One module per command (``evaluate``, ``compare``, ``absorption``, ``train``, ``demo``, ``report``, ``export``), each
with ``register(subparsers)`` and ``run(args)``; ``flags`` turns config dataclasses into flags and
``common`` holds what several commands share. Nothing outside this package imports it.

User mistakes (``UserError`` and bad flags) print one ``error:`` line and exit with code 2; an error
naming a config field (`data.batches`) is shown with the flag that sets it (``--batches``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

import transformers

from transcoderbench.cli import absorption, compare, demo, evaluate, export, report, train
from transcoderbench.cli.common import release_output_dirs
from transcoderbench.cli.flags import OneLineParser
from transcoderbench.errors import UserError, render
from transcoderbench.io import printable

__all__ = ["build_parser", "main"]

COMMANDS = (evaluate, compare, report, absorption, train, demo, export)
#: Longest error line printed (characters); longer ones keep their start and end.
MAX_ERROR = 1000


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="transcoderbench",
        description="Train and evaluate transcoders at their own sites, in one streaming pass.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for command in COMMANDS:
        command.register(sub)
    return parser


def quiet_libraries() -> None:
    """Keep stderr for our own progress bars: no per-load bars or info chatter from transformers."""
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def error_line(exc: UserError, flags: Mapping[str, str]) -> str:
    """``error: ...`` with config fields shown as the flags of the command that ran; always one line
    (newlines and terminal escape codes in paths or flag values are shown escaped)."""
    text = printable(render(str(exc), flags))
    if len(text) > MAX_ERROR:  # a huge value pasted into a config or flag
        text = text[: MAX_ERROR - 20] + " ... " + text[-15:]
    return f"error: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return int(args.func(args))
    except UserError as exc:
        print(error_line(exc, getattr(args, "flag_table", {})), file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        release_output_dirs()


if __name__ == "__main__":
    raise SystemExit(main())
