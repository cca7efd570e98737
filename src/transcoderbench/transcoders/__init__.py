"""Transcoder architectures: the inference math only (no file I/O)."""

from __future__ import annotations

from transcoderbench.transcoders.base import (
    ActiveLatents,
    Transcoder,
    active_latents,
    check_prefix_ends,
    group_sizes_to_ends,
)
from transcoderbench.transcoders.batchtopk import BatchTopKTranscoder, MatryoshkaTranscoder
from transcoderbench.transcoders.jumprelu import JumpReLUTranscoder
from transcoderbench.transcoders.topk import TopKTranscoder

ARCHITECTURES: dict[str, type[Transcoder]] = {
    cls.architecture: cls for cls in (MatryoshkaTranscoder, BatchTopKTranscoder, JumpReLUTranscoder, TopKTranscoder)
}

__all__ = [
    "ARCHITECTURES",
    "ActiveLatents",
    "BatchTopKTranscoder",
    "JumpReLUTranscoder",
    "MatryoshkaTranscoder",
    "TopKTranscoder",
    "active_latents",
    "Transcoder",
    "check_prefix_ends",
    "group_sizes_to_ends",
]
