"""Process-group setup for ``torchrun`` (data-parallel commands): one small place both training and
evaluation use. Without ``WORLD_SIZE`` > 1 in the environment everything is a no-op (one process)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env(device: str = "auto") -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``; joins the process group torchrun describes (once).

    The backend is NCCL when the run uses CUDA (``device`` auto with a GPU, or cuda...), else gloo;
    with NCCL each rank uses ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        cuda = uses_cuda(device)
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def uses_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def rank_device(device: str) -> str:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` for a CUDA run under torchrun."""
    if world_size() > 1 and uses_cuda(device):
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_rank0() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
