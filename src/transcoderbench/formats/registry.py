"""The registry of checkpoint formats: each format is one entry, so adding a format is adding one entry.

An entry says whether a local path is its format (``detect``), reads it (``load``), optionally
writes it (``save``), and says which files of a Hugging Face repo it needs (``hub_files``).
Detection and hub resolution try the entries in registration order; the first match wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from transcoderbench.errors import UserError
from transcoderbench.transcoders import Transcoder


@dataclass(frozen=True)
class Select:
    """What chooses one transcoder inside a multi-transcoder source (config field ``select``)."""

    layer: int | None = None
    width: str | None = None
    l0: int | str | None = None


@dataclass
class HubChoice:
    """The repo files a format needs (the last one is the one ``load`` is given) and what the choice noted."""

    files: list[str]
    where: str
    """The path inside the repo recorded as the source (``repo:where``)."""
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Format(Protocol):
    """One checkpoint format."""

    name: str
    expected: str
    """What a checkpoint of this format holds, for "not a checkpoint" messages."""

    def detect(self, path: Path) -> bool: ...

    def load(
        self, path: Path, *, select: Select, device: str = "cpu", repo: str | None = None, notes: Sequence[str] = ()
    ) -> Transcoder: ...

    def hub_files(self, files: list[str], sub: str, *, repo: str, select: Select) -> HubChoice | None: ...


@dataclass(frozen=True)
class Entry:
    """A :class:`Format` built from plain functions (every built-in format is one)."""

    name: str
    expected: str
    detect_fn: Callable[[Path], bool]
    load_fn: Callable[..., Transcoder]
    hub_fn: Callable[..., HubChoice | None] | None = None
    save_fn: Callable[..., Path] | None = None
    selects: bool = False
    """True when ``select.width``/``select.l0`` mean something for this format."""

    def detect(self, path: Path) -> bool:
        return self.detect_fn(path)

    def load(
        self, path: Path, *, select: Select, device: str = "cpu", repo: str | None = None, notes: Sequence[str] = ()
    ) -> Transcoder:
        return self.load_fn(path, select=select, device=device, repo=repo, notes=list(notes))

    def hub_files(self, files: list[str], sub: str, *, repo: str, select: Select) -> HubChoice | None:
        return None if self.hub_fn is None else self.hub_fn(files, sub, repo=repo, select=select)

    def save(self, transcoders: list[Transcoder], directory: Path, **options: Any) -> Path:
        """Write ``transcoders`` (one, or one per layer/hookpoint where the format holds several)."""
        if self.save_fn is None:
            raise UserError(f"transcoderbench reads the {self.name} format but does not write it")
        return self.save_fn(transcoders, directory, **options)

    @property
    def writable(self) -> bool:
        return self.save_fn is not None


REGISTRY: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    """Add a format; the order of registration is the order of detection."""
    if entry.name in REGISTRY:
        raise ValueError(f"format {entry.name!r} is registered twice")
    REGISTRY[entry.name] = entry
    return entry


def expected_layouts() -> str:
    return "expected " + ", ".join(e.expected for e in REGISTRY.values())


def in_prefix(files: list[str], sub: str, names: Sequence[str]) -> list[str] | None:
    """``sub/name`` for every name when all are in ``files``, else None (a helper for ``hub_files``)."""
    prefix = f"{sub}/" if sub else ""
    wanted = [prefix + n for n in names]
    return wanted if all(w in files for w in wanted) else None


def one_transcoder(transcoders: list[Transcoder], fmt: str, **options: Any) -> Transcoder:
    """The single transcoder a one-per-directory format writes (its own info names the model)."""
    if len(transcoders) != 1:
        raise UserError(f"the {fmt} format holds one transcoder per directory; export each to its own directory")
    return transcoders[0]
