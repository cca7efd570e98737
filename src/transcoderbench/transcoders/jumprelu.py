"""JumpReLU transcoders (Gemma Scope): a per-latent threshold, optionally an affine skip."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from transcoderbench.transcoders.base import Transcoder


class JumpReLUTranscoder(Transcoder):
    """``f = pre * (pre > threshold)`` per latent; ``y = f @ W_dec + b_dec (+ x @ W_skip)``.

    With a negative threshold, negative pre-activations pass (as in circuit-tracer). Readers of
    formats whose reference applies a ReLU first (Gemma Scope, SAELens) raise thresholds to 0,
    which gives exactly ``relu(pre) * (pre > threshold)``.
    """

    architecture = "jumprelu"

    def __init__(self, *args: Any, threshold: Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if tuple(threshold.shape) != (self.d_sae,):
            raise ValueError(f"threshold has shape {tuple(threshold.shape)}, expected [{self.d_sae}]")
        self.threshold: Tensor
        self.register_buffer("threshold", threshold.detach().clone().to(self.W_enc.dtype))

    def activation(self, pre: Tensor) -> Tensor:
        return pre * (pre > self.threshold)

    def extra_tensors(self) -> dict[str, Tensor]:
        return {"threshold": self.threshold}
