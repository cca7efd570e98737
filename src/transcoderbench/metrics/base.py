"""The accumulator protocol: ``update(batch)``, ``merge(other)``, ``result()``.

Every accumulator keeps only sums (fp64 or int64 tensors of a fixed size), so memory does not
grow with the number of batches, merging two accumulators is addition, and merging across
data-parallel ranks is an all-reduce of the same tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transcoderbench.transcoders import ActiveLatents


@dataclass
class TranscoderBatch:
    """One batch of kept tokens (BOS/PAD/EOS already removed) as seen by one transcoder.

    All float tensors are float32 or float64 regardless of the language model's dtype.
    """

    x: Tensor
    """Source activations at the transcoder's input site, ``[N, d_in]``."""
    y: Tensor
    """Targets at the transcoder's output site, ``[N, d_out]``."""
    f: Tensor
    """Latent activations, ``[N, d_sae]`` (zero where a latent is inactive)."""
    y_hat_prefixes: Tensor
    """Reconstruction from each nested prefix, ``[P, N, d_out]``; the last is the full one."""
    seq_ids: Tensor
    """Global index of the sequence each token comes from, ``[N]`` (int64)."""
    active: ActiveLatents | None = None
    """The nonzero entries of ``f`` (token, latent, value), if the producer already has them."""
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """Per-batch quantities several accumulators share (see ``metrics.shared``); do not mutate inputs after use."""
    token_ids: Tensor | None = None
    """Token id of each kept token, ``[N]`` (int64); set by the engine, read by the latents collector."""
    positions: Tensor | None = None
    """Position of each kept token in its sequence, ``[N]`` (int64); set by the engine."""

    @property
    def y_hat(self) -> Tensor:
        """The full reconstruction ``[N, d_out]``."""
        return self.y_hat_prefixes[-1]

    @property
    def n_tokens(self) -> int:
        return self.y.shape[0]


class Accumulator:
    """Base class for streaming metrics whose whole state is a dict of same-shaped sums.

    Subclasses create their tensors in ``__init__`` (via ``self.state[...] = ...``), add to
    them in ``update`` and turn them into numbers in ``result``. ``merge`` and ``all_reduce``
    come for free because every state entry is a sum.
    """

    name: str = ""

    def __init__(self) -> None:
        self.state: dict[str, Tensor] = {}

    def update(self, batch: TranscoderBatch) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError

    def merge(self, other: Accumulator) -> None:
        """Add ``other``'s sums into this one (same type and shapes)."""
        if type(other) is not type(self) or other.state.keys() != self.state.keys():
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for key, value in self.state.items():
            if value.shape != other.state[key].shape:
                raise TypeError(
                    f"cannot merge {type(self).__name__}: state {key!r} has shape "
                    f"{tuple(other.state[key].shape)}, expected {tuple(value.shape)}"
                )
            value += other.state[key].to(value.device)

    def all_reduce(self) -> None:
        """Sum the state over all torch.distributed ranks (no-op when not distributed)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for value in self.state.values():
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
