"""The one generator from config dataclasses to argparse flags, and back.

Every field of a config (sections included, recursively) becomes one flag, spelled ``--field_name``
and ``--field-name``; a field's ``metadata`` may rename it (``flag``), add ``choices`` or deprecated
``aliases``. A section may set ``FLAG_PREFIX`` so its fields get that prefix. Types come from
``typing.get_type_hints``. The generator also records which flag sets which config field, so errors
that name fields (``data.batches``) can be shown with flags (``--batches``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, TypeVar

from transcoderbench.config import coerce, field_types, unwrap_optional
from transcoderbench.io import printable

T = TypeVar("T")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a flag error is one line naming the flag, and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {printable(message)} (see `{self.prog} --help`)\n")


def flag_names(name: str) -> list[str]:
    """``batch_size`` -> ``--batch_size`` and ``--batch-size`` (both spellings work)."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return names


def add_flag(parser: argparse.ArgumentParser | Any, name: str, **kwargs: Any) -> None:
    """A flag that is not a config field (``--checkpoint``, ``--output_dir``)."""
    parser.add_argument(*flag_names(name), dest=name, **kwargs)


class DeprecatedAlias(argparse.Action):
    """Stores like the flag it stands for, and prints a one-line note naming the new spelling."""

    def __init__(self, *args: Any, new_flag: str, **kwargs: Any) -> None:
        self.new_flag = new_flag
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        print(f"note: {option_string} is deprecated; use {self.new_flag}", file=sys.stderr)
        setattr(namespace, self.dest, values)


class FlagTable(dict[str, str]):
    """Config field path (``data.batches``) -> its flag (``--batches``), filled by :func:`add_config_flags`."""


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    table: FlagTable,
    *,
    path: str = "",
    prefix: str = "",
    raw: bool = False,
    title: str | None = None,
) -> None:
    """Add a flag for every field of dataclass ``cls``, recursing into sections (dataclass-typed fields).

    ``dest`` is the field's dotted path, so :func:`config_from_args` can rebuild the nested config.
    ``raw``: values stay strings and unset flags stay out of the namespace (``SUPPRESS``), for callers
    that merge flags over a config file and coerce with one-line errors themselves.
    """
    hints = field_types(cls)
    group = parser.add_argument_group(title or _first_line(cls))
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            sub_prefix = prefix + getattr(kind, "FLAG_PREFIX", "")
            add_config_flags(parser, kind, table, path=f"{path}{f.name}.", prefix=sub_prefix, raw=raw)  # type: ignore[arg-type]
            continue
        name = prefix + f.metadata.get("flag", f.name)
        dest = path + f.name
        table[dest] = f"--{name}"
        base, _ = unwrap_optional(kind)
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS if raw else default}
        help_text = f.metadata.get("help", "")
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = str if raw else _converter(base)
            kwargs["metavar"] = name.upper()
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
            if default is not None:
                shown = f"{default:g}" if raw and isinstance(default, float) else default
                help_text += f" (default: {shown})"
        group.add_argument(*flag_names(name), help=help_text, **kwargs)
        for alias in f.metadata.get("aliases", ()):
            alias_kwargs = {k: v for k, v in kwargs.items() if k != "action"}
            group.add_argument(
                *flag_names(alias),
                action=DeprecatedAlias,
                new_flag=f"--{name}",
                help=f"deprecated spelling of --{name}",
                **alias_kwargs,
            )


def _first_line(cls: type) -> str:
    return cls.__doc__.strip().splitlines()[0] if cls.__doc__ else cls.__name__


def _converter(base: Any) -> Any:
    """argparse ``type`` for ``base``: int, float or str (argparse names the flag when it fails)."""
    return base if base in (int, float) else str


def config_from_args(args: argparse.Namespace, cls: type[T], *, path: str = "") -> T:
    """The config ``cls`` with every field taken from ``args`` (dests are dotted paths)."""
    hints = field_types(cls)  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = config_from_args(args, kind, path=f"{path}{f.name}.")  # type: ignore[arg-type]
        elif hasattr(args, path + f.name):
            values[f.name] = getattr(args, path + f.name)
    return cls(**values)


def given_values(args: argparse.Namespace, cls: type, table: FlagTable) -> dict[str, Any]:
    """The fields of a flat ``cls`` given as (raw) flags, coerced to their types with one-line errors."""
    hints = field_types(cls)
    return {
        f.name: coerce(hints[f.name], getattr(args, f.name), f"{table[f.name]}: {f.name}")
        for f in dataclasses.fields(cls)
        if hasattr(args, f.name)
    }
