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
import errno
import fcntl
import json
import math
import os
import pickle
import shutil
import tempfile
import unicodedata
import uuid
from collections.abc import Callable, Container, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from transcoderbench.errors import UserError

_LFS_MAGIC = b"version https://git-lfs"


def printable(text: object) -> str:
    """``text`` with newlines and other control characters (terminal escape codes) escaped, so it
    prints as one harmless line: a newline becomes ``\\n``, ESC ``\\x1b``."""
    out = []
    for ch in str(text):
        if ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch != " ":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def one_line(text: object, limit: int = 300) -> str:
    """Squash an exception or message to one short line (UserError messages are one line);
    control characters left inside a line are escaped (see :func:`printable`)."""
    s = printable(" ".join(str(text).split())) or (type(text).__name__ if isinstance(text, BaseException) else "")
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
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a config (JSON depth over ~1000); fix the file") from None
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
#: Environment variable naming a fault point (see :func:`fault_point`); tests set it to kill the
#: process at an exact step instead of relying on timing.
FAULT_ENV = "TRANSCODERBENCH_FAULT"
#: Marks an output set whose files are being renamed in; its presence means "finish the swap".
SWAP_JOURNAL = ".transcoderbench-swap.json"
_STALE_PATTERNS = (".*.tmp-*", ".*.tmp", ".*.stale-*")


_fault_hits: dict[str, int] = {}


def fault_point(name: str, count: int | None = None) -> None:
    """Die here like ``kill -9`` (exit status 137, no cleanup) when ``$TRANSCODERBENCH_FAULT`` names this point.

    ``NAME`` dies the first time the point is reached, ``NAME@N`` the N-th time, and ``NAME:K`` where
    the caller's ``count`` is K (e.g. after batch K). Tests inject crashes here, never by timing.
    """
    wanted = os.environ.get(FAULT_ENV, "")
    if ":" in wanted:
        point, _, value = wanted.partition(":")
        if point == name and count is not None and value.isdigit() and count == int(value):
            os._exit(137)
        return
    point, _, nth = wanted.partition("@")
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(nth or 1):
        os._exit(137)


def file_mode() -> int:
    """The mode a new file gets from the umask (0644 with the usual 022); ``mkstemp`` would give 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_output_folder(path: str | Path, flag: str = "--output_dir") -> Path:
    """Refuse an output folder that cannot be written, before any long pass: a file where the folder
    should be, a symlink loop, a read-only or unwritable parent. Creates nothing."""
    path = Path(path).expanduser()
    shown = printable(path)
    try:
        resolved = path.absolute().resolve()
    except (RuntimeError, OSError) as exc:
        raise UserError(f"{flag} {shown}: cannot be resolved ({one_line(exc)}); choose another folder") from None
    if resolved.exists() and not resolved.is_dir():
        raise UserError(f"{flag} {shown}: exists and is not a folder; choose another {flag}")
    probe = resolved
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag} {shown}: {printable(probe)} is a file, not a folder; choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {shown}: {printable(probe)} is not writable (read-only?); choose another {flag}")
    return path


def clean_stale(folder: Path, keep: Container[str] = ()) -> list[Path]:
    """Remove temporaries an interrupted earlier run left in ``folder`` (``.NAME.tmp-*``, ``.*.tmp``,
    ``.NAME.stale-*``). Call it only while holding the folder's lock, so no live writer's files go."""
    removed = []
    for pattern in _STALE_PATTERNS:
        for entry in sorted(folder.glob(pattern)):
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def lock_path(target: Path) -> Path:
    """The lock file guarding ``target``: beside it, so it survives ``target`` being swapped out."""
    return target.parent / f".{target.name}.lock"


def _missing_ancestors(folder: Path) -> list[Path]:
    """Folders on the way to ``folder`` that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def directory_lock(target: str | Path, *, what: str = "output folder", wait: bool = False) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``target`` (a folder that may not exist yet).

    A second transcoderbench process writing to the same folder gets a one-line error (or, with
    ``wait``, waits its turn) instead of interleaving its files with ours. The lock is released
    when the process exits, even on ``kill -9``. On release the hidden lock file is removed, and so
    are parent folders the lock created that stayed empty, so a refused run leaves nothing behind.
    """
    target = Path(target).expanduser().absolute()
    created = _missing_ancestors(target.parent)
    path = lock_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, wait)
    except OSError as exc:
        _remove_empty(created)
        raise UserError(
            f"{printable(target)}: cannot use this {what} ({one_line(exc.strerror or exc)}); choose another"
        ) from None
    if fd is None:
        _remove_empty(created)
        raise UserError(
            f"{printable(target)}: another transcoderbench run is writing this {what}; "
            "wait for it to finish or choose another"
        )
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still holding the lock: a waiter re-checks the inode and retries
        os.close(fd)
        _remove_empty(created)


def _acquire(path: Path, wait: bool) -> int | None:
    """A locked descriptor of ``path``, or None when another process holds it (and not ``wait``)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file as it released it; lock the new one


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


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
    """Write ``name -> text or JSON dict`` into ``directory`` as one set: all new files or all old ones.

    The set is rendered, then written complete into a hidden staging folder inside ``directory``
    (same filesystem) and synced; only then is a journal (:data:`SWAP_JOURNAL`) committed, and each
    file renamed over its old version. A failure before the journal (a full disk, a kill) leaves
    the old set untouched; a kill during the renames leaves the journal, and the next writer (or
    :func:`recover_outputs`) finishes the swap. Other files in ``directory`` are never touched.
    Call it while holding :func:`directory_lock` on ``directory``.
    """
    rendered = {
        name: content if isinstance(content, str) else json.dumps(json_ready(content), indent=2, allow_nan=False) + "\n"
        for name, content in files.items()
    }
    out_dir = Path(directory)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        recover_outputs(out_dir)
        stage = Path(tempfile.mkdtemp(prefix=".outputs.tmp-", dir=out_dir))
    except OSError as exc:
        raise UserError(f"{printable(out_dir)}: cannot write outputs here ({one_line(exc.strerror or exc)})") from None
    try:
        _stage(stage, rendered)
        _commit_journal(out_dir, {"staging": stage.name, "files": list(rendered)})
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError):
            raise UserError(
                f"{printable(out_dir)}: cannot write outputs ({one_line(exc.strerror or exc)}); "
                "the previous outputs there are unchanged"
            ) from None
        raise
    _finish_swap(out_dir, stage.name, list(rendered))
    return [out_dir / name for name in rendered]


def _stage(stage: Path, rendered: Mapping[str, str]) -> None:
    mode = file_mode()
    for i, (name, text) in enumerate(rendered.items()):
        if i == len(rendered) - 1 and os.environ.get(FAULT_ENV) == "disk_full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with open(stage / name, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(stage / name, mode)
    fault_point("before_commit")


def _commit_journal(out_dir: Path, journal: dict[str, Any]) -> None:
    tmp = out_dir / f".{SWAP_JOURNAL}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(journal, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out_dir / SWAP_JOURNAL)
    _fsync_dir(out_dir)


def _finish_swap(out_dir: Path, staging: str, names: list[str]) -> None:
    stage = out_dir / staging
    for i, name in enumerate(names):
        if (stage / name).exists():
            os.replace(stage / name, out_dir / name)
        if i == 0:
            fault_point("between_renames")
    _fsync_dir(out_dir)
    (out_dir / SWAP_JOURNAL).unlink(missing_ok=True)
    shutil.rmtree(stage, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def recover_outputs(out_dir: Path) -> None:
    """Finish a swap a killed run committed, then remove stale temporaries (hold the folder's lock)."""
    journal_path = out_dir / SWAP_JOURNAL
    if journal_path.is_file():
        try:
            journal = json.loads(journal_path.read_text(encoding="utf-8"))
            staging, names = str(journal["staging"]), [str(n) for n in journal["files"]]
        except (OSError, ValueError, KeyError, TypeError):
            journal_path.unlink(missing_ok=True)
        else:
            if "/" not in staging and all("/" not in n for n in names) and (out_dir / staging).is_dir():
                _finish_swap(out_dir, staging, names)
            else:
                journal_path.unlink(missing_ok=True)
    clean_stale(out_dir)
