"""``opt``: a dataclass field with its help text, shared by every settings dataclass (imports nothing of ours)."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def opt(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its help text and optional CLI extras.

    Extras: ``choices`` (allowed values), ``flag`` (the flag's name when it differs from the field's),
    ``aliases`` (further, deprecated flag names that still work and print a one-line note).
    """
    return field(default=default, metadata={"help": help, **metadata})
