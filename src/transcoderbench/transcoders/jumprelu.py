"""JumpReLU transcoders (Gemma Scope): a per-latent threshold, optionally an affine skip."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from transcoderbench.transcoders.base import Transcoder


class JumpReLUTranscoder(Transcoder):
    """``f = relu(pre) * (pre > threshold)`` per latent; ``y = f @ W_dec + b_dec (+ x @ W_skip)``.

    The ReLU is Google's reference (and SAELens's): it changes nothing for thresholds >= 0, and
    keeps a negative threshold from letting negative pre-activations through.
    """

    architecture = "jumprelu"

    def __init__(self, *args: Any, threshold: Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if tuple(threshold.shape) != (self.d_sae,):
            raise ValueError(f"threshold has shape {tuple(threshold.shape)}, expected [{self.d_sae}]")
        self.threshold: Tensor
        self.register_buffer("threshold", threshold.detach().clone().to(self.W_enc.dtype))

    def activation(self, pre: Tensor) -> Tensor:
        return torch.relu(pre) * (pre > self.threshold)

    def extra_tensors(self) -> dict[str, Tensor]:
        return {"threshold": self.threshold}
