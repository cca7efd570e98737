"""Resumable evaluation: the pass's whole state, saved atomically every N batches, refused if the settings changed.

One file per rank, ``STATE_DIR/rankR-of-N.safetensors``: every accumulator sum (per-sequence tables
included), the splice plan's mean-ablation targets, the RNG states as tensors, and in the file's
metadata the data position, the pass counters and the run's fingerprint. It is written to a
temporary name, fsynced and renamed over the previous one, so a ``kill -9`` at any moment leaves
either the old state or the new one, never a torn file. Accumulators are sums, so continuing the
same batches in the same order from a saved state gives the same numbers as never stopping.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from transcoderbench.config import EvalConfig, options_record
from transcoderbench.errors import UserError
from transcoderbench.evaluate.runs import PassStats, TranscoderRun
from transcoderbench.io import fault_point
from transcoderbench.transcoders import Transcoder

STATE_DIR = ".resume"
FORMAT = "transcoderbench-eval-state-1"


def _digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint(config: EvalConfig, transcoders: dict[str, Transcoder], world_size: int) -> dict[str, Any]:
    """What must not change between a run and its resumption: settings, transcoder weights, world size."""
    settings = {k: v for k, v in options_record(config).items() if k != "progress"}
    return {
        "settings": settings,
        "select": dataclasses.asdict(config.select),
        "transcoders": {name: _digest(dict(tc.state_dict())) for name, tc in transcoders.items()},
        "world_size": world_size,
    }


@dataclass
class SavedPass:
    """A pass restored from disk: where to continue and the splice plan's means (if any)."""

    position: int
    """Global batches of the stream already consumed by this rank's shard (the next index to read)."""
    stats: PassStats
    site_means: dict[str, Tensor] | None
    mean_source: str | None


class Checkpointer:
    """Saves and restores one rank's pass state in ``folder`` (e.g. ``OUTPUT_DIR/.resume``)."""

    def __init__(self, folder: Path, every: int, fingerprint: dict[str, Any], rank: int = 0, world_size: int = 1):
        if every < 0:
            raise UserError(f"`checkpoint_every` {every}: must be 0 (never) or a number of batches")
        self.folder = Path(folder)
        self.every = every
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.rank = rank
        self.world_size = world_size
        self.position = 0

    @property
    def path(self) -> Path:
        return self.folder / f"rank{self.rank}-of-{self.world_size}.safetensors"

    def exists(self) -> bool:
        return self.path.is_file()

    # ------------------------------------------------------------------ save
    def due(self, n_batches: int) -> bool:
        return self.every > 0 and n_batches % self.every == 0

    def save(self, runs: list[TranscoderRun], stats: PassStats, plan: Any = None) -> None:
        """Write the state atomically (temporary file, fsync, rename)."""
        from safetensors.torch import save_file

        tensors: dict[str, Tensor] = {}
        for run in runs:
            for acc_name, acc in run.accumulators.items():
                for key, value in acc.state.items():
                    tensors[f"acc/{run.name}/{acc_name}/{key}"] = value.detach().cpu().contiguous()
        if plan is not None:
            for site, mean in plan.site_means.items():
                tensors[f"mean/{site}"] = mean.detach().cpu().contiguous()
        tensors["rng/cpu"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng/cuda"] = torch.cuda.get_rng_state()
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "position": self.position,
            "stats": dataclasses.asdict(stats),
            "mean_source": plan.mean_source if plan is not None else None,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"state": json.dumps(meta, sort_keys=True)})
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            fault_point("eval_during_save", stats.n_batches)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ load
    def read(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """The saved metadata and tensors; a state from other settings is refused in one line."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as fh:
                meta = json.loads((fh.metadata() or {})["state"])
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 - not a dict
        except Exception as exc:
            raise UserError(
                f"{self.path}: the saved evaluation state is unreadable ({type(exc).__name__}); "
                "rerun without --resume to start over"
            ) from None
        if meta.get("format") != FORMAT:
            raise UserError(f"{self.path}: not an evaluation state of this version; rerun without --resume")
        saved = meta["fingerprint"]
        if saved != self.fingerprint:
            differ = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            raise UserError(
                f"{self.folder}: the saved state is from a run with different {', '.join(differ)}; "
                "resume with the same command line, or rerun without --resume to start over"
            )
        return meta, tensors

    def restore(self, runs: list[TranscoderRun], meta: dict[str, Any], tensors: dict[str, Tensor]) -> SavedPass:
        """Put the saved sums back into ``runs``' accumulators (in place) and the RNG states back."""
        for run in runs:
            for acc_name, acc in run.accumulators.items():
                for key, value in acc.state.items():
                    saved = tensors.get(f"acc/{run.name}/{acc_name}/{key}")
                    if saved is None or saved.shape != value.shape or saved.dtype != value.dtype:
                        raise UserError(f"{self.path}: the saved state does not fit {run.name}'s {acc_name} metrics")
                    value.copy_(saved)
        torch.set_rng_state(tensors["rng/cpu"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        means = {k.removeprefix("mean/"): v for k, v in tensors.items() if k.startswith("mean/")}
        self.position = int(meta["position"])
        return SavedPass(
            position=self.position,
            stats=PassStats(**meta["stats"]),
            site_means=means or None,
            mean_source=meta.get("mean_source"),
        )

    def remove(self) -> None:
        """Delete the whole state folder (the run completed and its outputs are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
