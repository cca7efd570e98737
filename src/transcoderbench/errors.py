"""The one error type users see: a mistake in their input, reported as one line with exit code 2.

Library code speaks the language of the config, not of the command line. A message names a
setting by its config field in backticks, optionally with the value to set:

    raise UserError("no tokens to evaluate: raise `data.batches`")
    raise UserError("the head was not found: set `downstream.enabled=false`")

Python users read the message as it is (``str(exc)``). The CLI shows the same message with
every backticked field replaced by its flag (``--batches``, ``--no-downstream``), using
:func:`render` and the field -> flag table built with the parser (``cli/``). A field the table
does not know keeps its dotted name. ``UserError(msg, field="data.batches")`` additionally records
the one setting at fault, for callers that want it programmatically.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

#: `section.field` or `section.field=value` inside a message.
FIELD_REFERENCE = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:=([^`]*))?`")


class UserError(Exception):
    """A problem with the user's input (a path, a setting, a file's contents).

    The CLI prints ``error: <message>`` on one line and exits with code 2, without a traceback.
    The message must name the file or setting at fault (settings as `section.field`) and say what to do.
    """

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        """The config field at fault (dotted, e.g. ``data.batches``), when there is exactly one."""


def flag_for(flag: str, value: str | None) -> str:
    """``--downstream`` with ``false`` -> ``--no-downstream``; with ``3`` -> ``--downstream 3``."""
    if value is None:
        return flag
    if value.lower() == "false":
        return "--no-" + flag.removeprefix("--")
    if value.lower() == "true":
        return flag
    return f"{flag} {value}"


def render(message: str, flags: Mapping[str, str] | Callable[[str], str | None]) -> str:
    """``message`` with each `section.field[=value]` replaced by its flag (or by the bare field name)."""
    lookup = flags if callable(flags) else flags.get

    def one(m: re.Match[str]) -> str:
        name, value = m.group(1), m.group(2)
        flag = lookup(name)
        if flag is None:
            return name if value is None else f"{name}={value}"
        return flag_for(flag, value)

    return FIELD_REFERENCE.sub(one, message)
