"""TopK transcoders: each token keeps its own ``k`` largest (ReLU'd) pre-activations."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from transcoderbench.transcoders.base import Transcoder


class TopKTranscoder(Transcoder):
    """``f = scatter(topk(relu(pre), k))`` per token."""

    architecture = "topk"

    def __init__(self, *args: Any, k: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0 < int(k) <= self.d_sae:
            raise ValueError(f"k={k} must be between 1 and d_sae={self.d_sae}")
        self.k = int(k)

    def activation(self, pre: Tensor) -> Tensor:
        values, indices = torch.relu(pre).topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values)

    def hyperparameters(self) -> dict[str, Any]:
        return {"k": self.k}
