"""The torch.distributed process group under ``torchrun``: start it from the environment, ask, wait, stop.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them this is one process and
every call here is a no-op. On a machine with CUDA the group gets both backends (gloo for CPU
tensors, NCCL for CUDA tensors), so ``--device cpu`` works there too.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["barrier", "destroy", "init_from_env", "is_rank0"]

#: Ranks may wait this long for rank 0 (e.g. while it alone measures absorption).
TIMEOUT = timedelta(hours=6)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; joins the process group when ``WORLD_SIZE`` > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size > 1 and not _initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    if _initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank
    return rank, world_size, local_rank


def is_rank0() -> bool:
    """True on the one process that writes outputs (and when not distributed)."""
    return not _initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if _initialized():
        dist.barrier()


def destroy() -> None:
    """Leave the process group (no-op when not distributed)."""
    if _initialized():
        dist.destroy_process_group()
