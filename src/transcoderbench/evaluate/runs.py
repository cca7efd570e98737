"""The typed records of a pass: one run per transcoder, what the pass read, and the stage interface.

Kept apart from the engine so the engine, the splice stage and the API can all name these types
without importing one another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from transcoderbench.data import TokenBatch
from transcoderbench.lm import LanguageModel, Site
from transcoderbench.lm.splice import CleanForward, Head
from transcoderbench.metrics.base import Accumulator, TranscoderBatch
from transcoderbench.transcoders import Transcoder

# (transcoder, n_sequences) -> accumulators; n_sequences bounds the global sequence index, or None.
AccumulatorFactory = Callable[[Transcoder, "int | None"], dict[str, Accumulator]]


@dataclass
class TranscoderRun:
    """One transcoder in a pass: its resolved sites and the accumulators fed by the pass."""

    name: str
    transcoder: Transcoder
    input_site: Site
    output_site: Site
    accumulators: dict[str, Accumulator]

    def results(self) -> dict[str, Any]:
        return {key: acc.result() for key, acc in self.accumulators.items()}


@dataclass
class PassStats:
    """What the pass actually read (recorded in every output)."""

    n_batches: int = 0
    n_sequences: int = 0
    n_positions: int = 0
    """All token positions read, BOS/PAD/EOS included."""
    n_tokens_evaluated: int = 0
    """Positions kept for metrics (BOS, PAD and EOS excluded)."""
    stopped_early_after_layer: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_batches": self.n_batches,
            "n_sequences": self.n_sequences,
            "n_positions": self.n_positions,
            "n_tokens_evaluated": self.n_tokens_evaluated,
            "n_positions_excluded": self.n_positions - self.n_tokens_evaluated,
            "excluded_positions": "BOS, PAD and EOS positions are excluded from every metric",
            "forward_pass_stopped_after_layer": self.stopped_early_after_layer,
        }

    def all_reduce(self) -> None:
        """Sum the counters over all torch.distributed ranks (no-op when not distributed)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        counts = torch.tensor(
            [self.n_batches, self.n_sequences, self.n_positions, self.n_tokens_evaluated], dtype=torch.int64
        )
        torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.SUM)
        self.n_batches, self.n_sequences, self.n_positions, self.n_tokens_evaluated = (int(c) for c in counts)


class BatchStage(Protocol):
    """Extra work per batch that needs the clean forward run to the head (e.g. the splice stage).

    The engine runs the clean forward keeping ``splice_layers``' block outputs, feeds every run's own
    accumulators, then calls :meth:`update` with the clean forward and each run's reconstruction.
    """

    head: Head

    @property
    def splice_layers(self) -> set[int]: ...

    def accumulators(self, run_name: str) -> dict[str, Accumulator]:
        """Accumulators the stage feeds for one run; the engine adds them to the run's before the pass."""
        ...

    def update(
        self,
        lm: LanguageModel,
        runs: list[TranscoderRun],
        tb: TokenBatch,
        clean: CleanForward,
        recon: dict[str, TranscoderBatch],
    ) -> None: ...


def unique_sites(runs: list[TranscoderRun]) -> list[Site]:
    """Every site any run reads or predicts, once each, in first-seen order."""
    by_name: dict[str, Site] = {}
    for run in runs:
        by_name.setdefault(run.input_site.name, run.input_site)
        by_name.setdefault(run.output_site.name, run.output_site)
    return list(by_name.values())


def deepest_layer(runs: list[TranscoderRun]) -> int | None:
    layers = [s.layer for s in unique_sites(runs) if s.layer is not None]
    return max(layers) if layers else None
