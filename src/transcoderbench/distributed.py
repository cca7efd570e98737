"""The torch.distributed process group under ``torchrun``: start it from the environment, ask, wait, stop.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them this is one process and
every call here is a no-op. On a machine with CUDA the group gets both backends (gloo for CPU
tensors, NCCL for CUDA tensors), so ``--device cpu`` works there too. Training and evaluation
both use this one module.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["barrier", "destroy", "init_from_env", "is_rank0", "rank", "rank_device", "world_size"]

#: Ranks may wait this long for rank 0 (e.g. while it alone measures absorption).
TIMEOUT = timedelta(hours=6)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; joins the process group when ``WORLD_SIZE`` > 1 (once)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not _initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    if _initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank
    return int(os.environ.get("RANK", "0")), world, local_rank


def rank_device(device: str) -> str:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` for a CUDA run (``auto``/``cuda``) under torchrun."""
    if world_size() > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return device


def world_size() -> int:
    return dist.get_world_size() if _initialized() else 1


def rank() -> int:
    return dist.get_rank() if _initialized() else 0


def is_rank0() -> bool:
    """True on the one process that writes outputs (and when not distributed)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if _initialized():
        dist.barrier()


def destroy() -> None:
    """Leave the process group (no-op when not distributed)."""
    if _initialized():
        dist.destroy_process_group()
