"""Where documents come from: the built-in corpus, local .txt/.jsonl files, or a hub dataset.

A :class:`TextSource` is resolved (and checked) once, before any model is loaded, so a wrong
``--dataset`` fails in a second with one line, not after minutes of model loading. Its
:meth:`TextSource.texts` then yields documents lazily, in the same order every time, which is
what makes runs (and ranks of a data-parallel run) see identical token streams.

File formats:

- ``.txt``: documents are blocks of lines separated by one or more blank (whitespace-only)
  lines; lines inside a block keep their newlines. Paragraph blocks rather than "the whole file
  is one document" so that a file of many short documents works, and so a large file is read
  line by line with bounded memory. A file that is one long text is still fine: an EOS between
  its paragraphs costs a few tokens, which are excluded from every metric anyway.
- ``.jsonl``: one JSON object per line; the document is the string under ``text_field``.
  Blank lines are skipped. A line that is not a JSON object, lacks the field, or holds a
  non-string there is a :class:`UserError` naming ``file:line``.
- a folder: every ``.txt`` and ``.jsonl`` file below it (recursively), in sorted path order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transcoderbench.data.builtin_corpus import builtin_texts, canonical_builtin_name, describe_builtin
from transcoderbench.errors import UserError

if TYPE_CHECKING:
    from transcoderbench.config import TextConfig

#: File suffixes read as documents (inside folders too).
TEXT_SUFFIXES = (".txt", ".jsonl")

#: ``owner/name`` as the hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

_ALTERNATIVES = "omit `data.dataset` to use the built-in corpus, or set `data.dataset` to a local .txt/.jsonl file or a folder of them"


@dataclass
class TextSource:
    """A resolved source of documents. Build one with :func:`resolve_text_source`."""

    name: str
    """What the user asked for, as reports print it: ``builtin:pydoc_data.topics``, a path, a hub id."""
    kind: str = "builtin"
    """``builtin``, ``files`` or ``hf_dataset``."""
    files: tuple[Path, ...] = ()
    """For ``files``: the files read, in reading order."""
    text_field: str = "text"
    """The JSON key (``.jsonl``) or dataset column holding each document."""
    split: str | None = None
    """For ``hf_dataset``: the split streamed."""
    dataset_config: str | None = None
    """For ``hf_dataset``: the configuration (subset) name, if any."""
    builtin: str | None = None
    """For ``builtin``: the canonical corpus name."""
    _dataset: Any = field(default=None, repr=False, compare=False)
    """For ``hf_dataset``: the loaded streaming dataset; iterating it restarts from its start."""

    def texts(self) -> Iterator[str]:
        """Documents, in a deterministic order; a new call starts again from the first."""
        if self.kind == "builtin":
            yield from builtin_texts(self.builtin or "")
        elif self.kind == "files":
            for path in self.files:
                if path.suffix.lower() == ".jsonl":
                    yield from _jsonl_texts(path, self.text_field)
                else:
                    yield from _txt_texts(path)
        elif self.kind == "hf_dataset":
            yield from _dataset_texts(self._dataset, self.name, self.text_field)
        else:  # pragma: no cover - constructed only by resolve_text_source
            raise ValueError(f"unknown TextSource kind {self.kind!r}")

    def describe(self) -> dict:
        """A JSON-ready record of exactly which text was read, for metrics.json."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "builtin":
            out.update(describe_builtin(self.builtin or ""))
        elif self.kind == "files":
            out["files"] = [str(p) for p in self.files]
            if any(p.suffix.lower() == ".jsonl" for p in self.files):
                out["text_field"] = self.text_field
        else:
            out.update(
                dataset=self.name,
                dataset_config=self.dataset_config,
                split=self.split,
                text_field=self.text_field,
                streaming=True,
            )
        return out


def text_source_of(text: TextConfig, *, trust_remote_code: bool = False) -> TextSource:
    """:func:`resolve_text_source` for the text settings of a config (``data.*``)."""
    return resolve_text_source(
        text.dataset,
        text_field=text.text_field,
        split=text.dataset_split,
        dataset_config=text.dataset_config,
        trust_remote_code=trust_remote_code,
    )


def resolve_text_source(
    spec: str | None,
    *,
    text_field: str = "text",
    split: str = "train",
    dataset_config: str | None = None,
    trust_remote_code: bool = False,
) -> TextSource:
    """Turn a ``--dataset`` value into a checked :class:`TextSource`.

    ``None`` or ``""`` is the built-in corpus; ``builtin:<name>`` picks a built-in corpus
    explicitly; an existing path is a file or folder; an ``owner/name`` that is not a path is a
    hub dataset, streamed. Anything else is a :class:`UserError`.
    """
    if spec is None or not spec.strip():
        name = canonical_builtin_name("")
        return TextSource(name=f"builtin:{name}", kind="builtin", builtin=name)
    spec = spec.strip()
    if spec.lower() == "builtin" or spec.lower().startswith("builtin:"):
        name = canonical_builtin_name(spec.partition(":")[2])
        return TextSource(name=f"builtin:{name}", kind="builtin", builtin=name)

    path = Path(spec).expanduser()
    if path.exists():
        return _file_source(spec, path, text_field)
    if _looks_like_path(spec) or not _HUB_ID.match(spec):
        raise UserError(
            f"`data.dataset` {spec}: no such file or dataset (expected an existing .txt/.jsonl file or "
            "folder, or a hub dataset id like HuggingFaceFW/fineweb-edu); omit `data.dataset` to use "
            "the built-in corpus"
        )
    return _hub_source(spec, text_field, split, dataset_config, trust_remote_code)


# ---------------------------------------------------------------------------------------------
# local files


def _looks_like_path(spec: str) -> bool:
    """True when ``spec`` names a file (so a typo reads "no such file", not a failed hub lookup)."""
    return spec.lower().endswith((".txt", ".jsonl", ".json", ".gz", ".parquet", ".csv"))


def _file_source(spec: str, path: Path, text_field: str) -> TextSource:
    if path.is_dir():
        files = tuple(
            sorted(
                (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES),
                key=lambda p: p.relative_to(path).as_posix(),
            )
        )
        if not files:
            raise UserError(
                f"`data.dataset` {spec}: the folder holds no .txt or .jsonl files; add some, or omit "
                "`data.dataset` to use the built-in corpus"
            )
    else:
        if not path.is_file():  # a FIFO, socket or device would block or never end
            raise UserError(
                f"`data.dataset` {spec}: not a regular file (a pipe, socket or device); save the text to a file first"
            )
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise UserError(
                f"`data.dataset` {spec}: unsupported file type {path.suffix or '(none)'}; pass a .txt "
                "file (blank-line-separated documents), a .jsonl file (one JSON object per line) "
                "or a folder of them"
            )
        files = (path,)
    for f in files:  # read up to each file's first document: a bad file fails before any model loads
        docs = _jsonl_texts(f, text_field) if f.suffix.lower() == ".jsonl" else _txt_texts(f)
        try:
            if next(docs, None) is None:
                raise UserError(
                    f"`data.dataset` {spec}: {f} is empty (no text); remove it or pass a file with documents"
                )
        finally:
            docs.close()
    return TextSource(name=spec, kind="files", files=files, text_field=text_field)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` pairs, with ``\r\n`` read as ``\n``.

    Each line is decoded on its own (not the file in buffered chunks), so an invalid byte is
    reported at its true line.
    """
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise UserError(f"`data.dataset`: cannot read {path}: {e.strerror or e}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}:{lineno}: not valid UTF-8; re-save the file as UTF-8") from None
            if "\x00" in line:
                raise UserError(f"{path}:{lineno}: holds NUL bytes, so it is not text; pass a text file") from None
            yield lineno, (line[:-2] + "\n" if line.endswith("\r\n") else line)


def _txt_texts(path: Path) -> Generator[str, None, None]:
    """Blocks of lines separated by blank lines, one document each."""
    block: list[str] = []
    for _, line in _lines(path):
        if line.strip():
            block.append(line)
        elif block:
            yield "".join(block).rstrip("\r\n")
            block = []
    if block:
        yield "".join(block).rstrip("\r\n")


def _jsonl_texts(path: Path, text_field: str) -> Generator[str, None, None]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove that line") from None
        except RecursionError:
            raise UserError(f"{path}:{lineno}: JSON nested too deeply; fix or remove that line") from None
        if not isinstance(record, dict):
            raise UserError(
                f"{path}:{lineno}: expected a JSON object with a {text_field!r} key, got "
                f"{type(record).__name__}; fix that line"
            )
        if text_field not in record:
            keys = ", ".join(sorted(map(str, record))) or "none"
            raise UserError(
                f"{path}:{lineno}: no {text_field!r} key (keys: {keys}); set `data.text_field` to "
                "the key that holds the text"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise UserError(
                f"{path}:{lineno}: {text_field!r} holds {type(text).__name__}, not a string; fix "
                "that line or set `data.text_field`"
            )
        if text.strip():
            yield text


# ---------------------------------------------------------------------------------------------
# hub datasets


def _hub_source(
    spec: str, text_field: str, split: str, dataset_config: str | None, trust_remote_code: bool
) -> TextSource:
    import datasets

    kwargs: dict[str, Any] = {}
    if trust_remote_code:  # removed in datasets>=4; pass it only when the user asked for it
        kwargs["trust_remote_code"] = True
    try:
        dataset = datasets.load_dataset(spec, name=dataset_config, split=split, streaming=True, **kwargs)
    except Exception as e:  # offline, no such repo, bad config/split, connection errors, ...
        reason = (str(e).strip().splitlines() or [""])[0][:300]
        where = spec + (f" (config {dataset_config})" if dataset_config else "") + f", split {split}"
        raise UserError(
            f"`data.dataset` {where}: the dataset could not be loaded ({type(e).__name__}: {reason}); {_ALTERNATIVES}"
        ) from None
    features = getattr(dataset, "features", None)
    if features is not None and text_field not in features:
        columns = ", ".join(features) or "none"
        raise UserError(
            f"`data.dataset` {spec}: no column {text_field!r} (columns: {columns}); set `data.text_field` "
            "with the column that holds the text"
        )
    return TextSource(
        name=spec,
        kind="hf_dataset",
        text_field=text_field,
        split=split,
        dataset_config=dataset_config,
        _dataset=dataset,
    )


def _dataset_texts(dataset: Any, name: str, text_field: str) -> Iterator[str]:
    for i, record in enumerate(dataset):
        if text_field not in record:
            columns = ", ".join(map(str, record)) or "none"
            raise UserError(
                f"`data.dataset` {name}: row {i} has no {text_field!r} column (columns: {columns}); "
                "set `data.text_field` to the column that holds the text"
            )
        text = record[text_field]
        if not isinstance(text, str):
            raise UserError(
                f"`data.dataset` {name}: column {text_field!r} holds {type(text).__name__}, not text; "
                "set `data.text_field` to a text column"
            )
        if text.strip():
            yield text
