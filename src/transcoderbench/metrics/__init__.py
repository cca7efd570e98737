"""Evaluation metrics: streaming accumulators over token batches, and weight-only metrics."""

from __future__ import annotations

from typing import Any

from transcoderbench.metrics.base import Accumulator, TranscoderBatch
from transcoderbench.metrics.bootstrap import BootstrapOptions
from transcoderbench.metrics.decoder import decoder_redundancy
from transcoderbench.metrics.per_sequence import SequenceStats
from transcoderbench.metrics.reconstruction import PrefixReconstruction, Reconstruction
from transcoderbench.metrics.sparsity import Sparsity
from transcoderbench.transcoders import Transcoder


def default_accumulators(
    transcoder: Transcoder, n_sequences: int | None = None, bootstrap: BootstrapOptions | None = None
) -> dict[str, Accumulator]:
    """The streaming metrics every evaluation runs; ``prefixes`` only for Matryoshka transcoders.

    ``n_sequences`` is the most sequences the pass can read (global sequence indices are below
    it), for accumulators that keep per-sequence sums: with it, ``sequences`` keeps the sums
    behind the bootstrap intervals, built for ``bootstrap`` (default ``BootstrapOptions()``;
    pass the same options to ``bootstrap.attach_uncertainty``).
    """
    accumulators: dict[str, Accumulator] = {
        "reconstruction": Reconstruction(transcoder.d_out),
        "sparsity": Sparsity(transcoder.d_sae),
    }
    if transcoder.is_matryoshka:
        accumulators["prefixes"] = PrefixReconstruction(transcoder.d_out, transcoder.prefix_ends)
    if n_sequences:
        accumulators["sequences"] = SequenceStats(
            transcoder.d_out, transcoder.d_sae, n_sequences, transcoder.prefix_ends, bootstrap
        )
    return accumulators


def weight_metrics(transcoder: Transcoder) -> dict[str, Any]:
    """Metrics of the weights alone (no tokens needed)."""
    return {"decoder_redundancy": decoder_redundancy(transcoder.W_dec)}


__all__ = [
    "Accumulator",
    "BootstrapOptions",
    "PrefixReconstruction",
    "Reconstruction",
    "SequenceStats",
    "Sparsity",
    "TranscoderBatch",
    "decoder_redundancy",
    "default_accumulators",
    "weight_metrics",
]
