"""Reading and writing files safely: nothing half-written, nothing that runs code.

Writes: :func:`atomic_directory` (a checkpoint directory appears whole or not at all),
:func:`sibling_tempdir` + :func:`swap_in` (the same for caches written by several processes),
:func:`write_files` (a set of report files, each renamed into place). Reads: JSON,
safetensors, ``.npz`` (``allow_pickle=False``) and ``torch.load(weights_only=True)``; every
problem with a user's file is a one-line :class:`UserError` naming the file. :func:`json_ready`
is the one JSON sanitiser and :func:`one_line` the one message squasher.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from transcoderbench.errors import UserError

_LFS_MAGIC = b"version https://git-lfs"


def one_line(text: object, limit: int = 300) -> str:
    """Squash an exception or message to one short line (UserError messages are one line)."""
    s = " ".join(str(text).split()) or (type(text).__name__ if isinstance(text, BaseException) else "")
    return s if len(s) <= limit else s[: limit - 3] + "..."


def json_ready(value: Any) -> Any:
    """Strict JSON: NaN/Inf become null, tuples lists, tensors and numpy values numbers or lists,
    mappings dicts with string keys, and any other object its ``str``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int)) or value is None:  # bool is an int
        return value
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic, Tensor)):
        return json_ready(value.tolist())
    return str(value)


# ----------------------------------------------------------------------------- reading
def check_readable(path: Path, what: str = "file") -> None:
    """A clear error for a missing, non-regular or unreadable file, and for Git LFS pointers."""
    if not path.exists():
        raise UserError(f"{path}: no such {what}; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a {what}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_LFS_MAGIC))
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({one_line(exc.strerror or exc)}); check its permissions") from exc
    if head == _LFS_MAGIC:
        raise UserError(
            f"{path}: is a Git LFS pointer, not the weights; fetch the real file (git lfs pull), "
            "or pass the Hugging Face hub id so transcoderbench downloads it"
        )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a parse error names the file, line and column."""
    check_readable(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: is not UTF-8 text; it must be a JSON file") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({one_line(exc.strerror or exc)})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix the file or re-save it"
        ) from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold a JSON object (a {{...}} mapping), found {type(data).__name__}")
    return data


def load_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file on CPU (the format cannot carry code)."""
    from safetensors.torch import load_file

    check_readable(path)
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError subclasses
        raise UserError(
            f"{path}: not a readable safetensors file ({one_line(exc)}); re-download or re-export it"
        ) from exc


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` archive, refusing pickled object arrays."""
    check_readable(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"{path}: not a readable .npz archive ({one_line(exc)}); re-download it") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: holds a single array, expected a .npz archive of named arrays (W_enc, W_dec, ...)")
    out: dict[str, np.ndarray] = {}
    with archive:
        for key in archive.files:
            try:
                out[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise UserError(
                        f"{path}: refused: array {key!r} holds pickled Python objects, which could run code; "
                        "use a .npz of plain numeric arrays"
                    ) from exc
                raise UserError(f"{path}: cannot read array {key!r} ({one_line(exc)})") from exc
            except Exception as exc:
                raise UserError(f"{path}: cannot read array {key!r} ({one_line(exc)}); re-download it") from exc
    return out


def load_torch_file(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    check_readable(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise UserError(
                f"{path}: refused: it holds pickled Python objects besides tensors, which could run code "
                "when loaded; re-save it with torch.save(model.state_dict(), path)"
            ) from exc
        raise UserError(f"{path}: not a PyTorch checkpoint ({one_line(exc)})") from exc
    except Exception as exc:
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint ({one_line(exc)}); re-save or re-download it"
        ) from exc


# ----------------------------------------------------------------------------- writing
def lock_path(target: Path) -> Path:
    """The lock file guarding ``target``: beside it, so it survives ``target`` being swapped out."""
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def directory_lock(target: str | Path, *, what: str = "output folder") -> Iterator[None]:
    """Hold an exclusive advisory lock on ``target`` (a folder that may not exist yet).

    A second transcoderbench process writing to the same folder gets a one-line error instead
    of interleaving its files with ours. The lock is released when the process exits, even on
    ``kill -9``; the small hidden lock file stays behind and is reused.
    """
    target = Path(target).expanduser().absolute()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path(target), "a+")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        raise UserError(f"{target}: cannot use this {what} ({one_line(exc.strerror or exc)}); choose another") from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{target}: another transcoderbench run is writing this {what}; wait for it to finish or choose another"
            ) from None
        yield
    finally:
        handle.close()


@contextlib.contextmanager
def sibling_tempdir(target: Path) -> Iterator[Path]:
    """An empty directory beside ``target`` (same filesystem, so a rename is atomic); removed on exit
    unless it was swapped in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def swap_in(tmp: Path, target: Path, *, finished_elsewhere: Callable[[], bool] = lambda: False) -> None:
    """Replace ``target`` (if any) by the finished directory ``tmp``.

    If the final rename fails because another process put a complete ``target`` there first
    (``finished_elsewhere()`` says so), theirs is kept; otherwise the error propagates.
    """
    if target.exists():
        stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:8]}")
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not finished_elsewhere():
            raise


@contextlib.contextmanager
def atomic_directory(target: Path, *, replaceable: Callable[[Path], bool], kind: str) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``target`` in one rename.

    A failure leaves ``target`` as it was. An existing non-empty ``target`` is replaced only
    when ``replaceable(target)`` says it holds an earlier checkpoint of the same ``kind``, so a
    typo can never wipe an unrelated directory.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: exists and is a file; give a directory path for the {kind} checkpoint")
    if target.is_dir() and any(target.iterdir()) and not replaceable(target):
        raise UserError(f"{target}: exists and does not hold a {kind} checkpoint; choose a new or empty directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{target}: cannot create the directory ({one_line(exc.strerror or exc)})") from exc
    if not os.access(target.parent, os.W_OK):
        raise UserError(f"{target}: {target.parent} is not writable; choose another output directory")
    with sibling_tempdir(target) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it normal permissions
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        swap_in(tmp, target)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Strict JSON (see :func:`json_ready`), indented, with a final newline."""
    path.write_text(json.dumps(json_ready(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def save_safetensors(path: Path, tensors: Mapping[str, Tensor]) -> None:
    """Contiguous CPU copies, so views and GPU tensors save alike."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def write_files(directory: str | Path, files: Mapping[str, str | Mapping[str, Any]]) -> list[Path]:
    """Write ``name -> text or JSON dict`` into ``directory``, each file atomically.

    Everything is serialised before the first file is written, so a failure while rendering
    leaves no partial set behind; each file is written to a temporary name and renamed.
    """
    rendered = {
        name: content if isinstance(content, str) else json.dumps(json_ready(content), indent=2, allow_nan=False) + "\n"
        for name, content in files.items()
    }
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered.items():
        target = out_dir / name
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
