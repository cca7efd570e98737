"""The resume state of a run: everything needed to continue exactly where a checkpoint was taken.

``OUTPUT_DIR/resume/`` holds ``state.json`` (step, settings, buffer position, timings) and
``state.safetensors`` (transcoder weights, Adam moments, per-latent firing counters, the
shuffling generator's state, and the buffer's unserved activations or its permutation).
Nothing is pickled.

Saving never leaves a moment without a complete state: the new state is written whole into
``.resume.tmp-*`` (``state.json`` last, both fsynced), the old ``resume/`` is renamed to
``.resume.old``, the new one renamed in, and only then is the old one deleted. Whatever a kill
leaves behind, :func:`recover` (run before any read) puts the newest complete state back at
``resume/`` and removes the rest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from transcoderbench.errors import UserError
from transcoderbench.io import fault_point, load_safetensors, read_json, save_safetensors, sibling_tempdir, write_json

RESUME_DIR = "resume"
OLD_DIR = ".resume.old"
TMP_PREFIX = ".resume.tmp-"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
STATE_FORMAT = "transcoderbench-train-resume"
STATE_VERSION = 1


def resume_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / RESUME_DIR


def _fsync_dir(d: Path) -> None:
    for f in d.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def save_state(output_dir: str | Path, meta: dict[str, Any], tensors: dict[str, Tensor]) -> Path:
    target = resume_dir(output_dir)
    old = Path(output_dir) / OLD_DIR
    with sibling_tempdir(target) as tmp:  # .resume.tmp-*; removed if anything below raises
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        save_safetensors(tmp / STATE_TENSORS, tensors)
        _fsync_dir(tmp)
        write_json(tmp / STATE_JSON, {"format": STATE_FORMAT, "version": STATE_VERSION, **meta})  # last: complete
        _fsync_dir(tmp)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        fault_point("after_resume_delete")
        os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _complete_step(d: Path) -> int | None:
    """The step of a complete state in ``d`` (both files, readable state.json), else None."""
    if not (d / STATE_JSON).is_file() or not (d / STATE_TENSORS).is_file():
        return None
    try:
        return int(read_json(d / STATE_JSON).get("step", -1))
    except (UserError, TypeError, ValueError):
        return None


def _candidates(out: Path) -> list[Path]:
    return [d for d in (out / RESUME_DIR, out / OLD_DIR, *sorted(out.glob(TMP_PREFIX + "*"))) if d.is_dir()]


def newest_state(output_dir: str | Path) -> Path | None:
    """The folder holding the newest complete state (``resume/`` unless a save was interrupted); reads only."""
    out = Path(output_dir)
    if not out.is_dir():
        return None
    steps = {d: _complete_step(d) for d in _candidates(out)}
    complete = {d: s for d, s in steps.items() if s is not None}
    return max(complete, key=lambda d: complete[d]) if complete else None


def recover(output_dir: str | Path) -> None:
    """After a crash mid-save: keep the newest complete state as ``resume/`` and remove the others.
    Call it only while holding the run folder's lock (another writer's half-written state looks stale)."""
    out = Path(output_dir)
    best = newest_state(out)
    if best is not None and best != out / RESUME_DIR:
        shutil.rmtree(out / RESUME_DIR, ignore_errors=True)
        os.replace(best, out / RESUME_DIR)
    for d in _candidates(out) if out.is_dir() else []:
        if d != out / RESUME_DIR:
            shutil.rmtree(d, ignore_errors=True)


def has_state(output_dir: str | Path) -> bool:
    return newest_state(output_dir) is not None


def load_state(output_dir: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    d = newest_state(output_dir)
    if d is None:
        raise UserError(
            f"--resume: {output_dir} holds no resume state ({resume_dir(output_dir)}/{STATE_JSON}); runs save one "
            "every --checkpoint_every steps"
        )
    meta = read_json(d / STATE_JSON)
    if meta.get("format") != STATE_FORMAT or int(meta.get("version", 0)) > STATE_VERSION:
        raise UserError(f"{d / STATE_JSON}: not a resume state this version of transcoderbench reads")
    return meta, load_safetensors(d / STATE_TENSORS)


def remove_state(output_dir: str | Path) -> None:
    """Drop the resume state (a finished run needs none), interrupted saves included."""
    out = Path(output_dir)
    for d in [out / RESUME_DIR, *(_candidates(out) if out.is_dir() else [])]:
        shutil.rmtree(d, ignore_errors=True)
