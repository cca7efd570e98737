"""Matryoshka BatchTopK and plain BatchTopK transcoders at inference time.

Training selects the top ``k * batch`` activations across the whole batch; at inference a
single global threshold (estimated during training) replaces that batch-level choice, so each
token's latents are ``relu(pre)`` kept where they exceed the threshold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from transcoderbench.transcoders.base import Transcoder


class BatchTopKTranscoder(Transcoder):
    """BatchTopK transcoder; with more than one nested group it is a Matryoshka transcoder."""

    architecture = "batchtopk"

    def __init__(self, *args: Any, threshold: float = 0.0, k: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threshold: Tensor
        self.register_buffer("threshold", torch.tensor(float(threshold), dtype=self.W_enc.dtype))
        self.k = None if k is None else int(k)

    def activation(self, pre: Tensor) -> Tensor:
        acts = torch.relu(pre)
        return acts * (acts > self.threshold)

    def hyperparameters(self) -> dict[str, Any]:
        return {"k": self.k, "threshold": float(self.threshold)}

    def extra_tensors(self) -> dict[str, Tensor]:
        return {"threshold": self.threshold}


class MatryoshkaTranscoder(BatchTopKTranscoder):
    """Nested-prefix BatchTopK transcoder: the first ``prefix_ends[i]`` latents reconstruct alone."""

    architecture = "matryoshka_batchtopk"
