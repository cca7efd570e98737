"""The resume state of a run: everything needed to continue exactly where a checkpoint was taken.

``OUTPUT_DIR/resume/`` holds ``state.json`` (step, settings, buffer position, timings) and
``state.safetensors`` (transcoder weights, Adam moments, per-latent firing counters, the
shuffling generator's state, and the buffer's unserved activations or its permutation).
Nothing is pickled; the directory is replaced atomically, so a crash while saving leaves the
previous state intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from transcoderbench.errors import UserError
from transcoderbench.io import atomic_directory, load_safetensors, read_json, save_safetensors, write_json

RESUME_DIR = "resume"
STATE_JSON = "state.json"
STATE_TENSORS = "state.safetensors"
STATE_FORMAT = "transcoderbench-train-resume"
STATE_VERSION = 1


def resume_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / RESUME_DIR


def save_state(output_dir: str | Path, meta: dict[str, Any], tensors: dict[str, Tensor]) -> Path:
    target = resume_dir(output_dir)
    with atomic_directory(target, replaceable=lambda p: (p / STATE_JSON).is_file(), kind="resume state") as tmp:
        save_safetensors(tmp / STATE_TENSORS, tensors)
        write_json(tmp / STATE_JSON, {"format": STATE_FORMAT, "version": STATE_VERSION, **meta})
    return target


def has_state(output_dir: str | Path) -> bool:
    d = resume_dir(output_dir)
    return (d / STATE_JSON).is_file() and (d / STATE_TENSORS).is_file()


def load_state(output_dir: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    d = resume_dir(output_dir)
    if not has_state(output_dir):
        raise UserError(
            f"--resume: {output_dir} holds no resume state ({d}/{STATE_JSON}); runs save one every "
            "--checkpoint_every steps"
        )
    meta = read_json(d / STATE_JSON)
    if meta.get("format") != STATE_FORMAT or int(meta.get("version", 0)) > STATE_VERSION:
        raise UserError(f"{d / STATE_JSON}: not a resume state this version of transcoderbench reads")
    return meta, load_safetensors(d / STATE_TENSORS)
