"""Evaluation metrics: streaming accumulators over token batches, and weight-only metrics."""

from __future__ import annotations

from typing import Any

from transcoderbench.metrics.base import Accumulator, TranscoderBatch
from transcoderbench.metrics.decoder import decoder_redundancy
from transcoderbench.metrics.reconstruction import PrefixReconstruction, Reconstruction
from transcoderbench.metrics.sparsity import Sparsity
from transcoderbench.transcoders import Transcoder


def default_accumulators(transcoder: Transcoder, n_sequences: int | None = None) -> dict[str, Accumulator]:
    """The streaming metrics every evaluation runs; ``prefixes`` only for Matryoshka transcoders.

    ``n_sequences`` is the most sequences the pass can read (global sequence indices are below
    it), for accumulators that keep per-sequence sums.
    """
    accumulators: dict[str, Accumulator] = {
        "reconstruction": Reconstruction(transcoder.d_out),
        "sparsity": Sparsity(transcoder.d_sae),
    }
    if transcoder.is_matryoshka:
        accumulators["prefixes"] = PrefixReconstruction(transcoder.d_out, transcoder.prefix_ends)
    return accumulators


def weight_metrics(transcoder: Transcoder) -> dict[str, Any]:
    """Metrics of the weights alone (no tokens needed)."""
    return {"decoder_redundancy": decoder_redundancy(transcoder.W_dec)}


__all__ = [
    "Accumulator",
    "PrefixReconstruction",
    "Reconstruction",
    "Sparsity",
    "TranscoderBatch",
    "decoder_redundancy",
    "default_accumulators",
    "weight_metrics",
]
