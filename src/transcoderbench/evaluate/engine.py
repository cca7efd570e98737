"""The single streaming pass: token batches -> one LM forward -> every transcoder -> accumulators.

The engine knows no metric formulas. It resolves each transcoder's own input and output
sites, checks widths before any work is done, captures every needed site in one forward pass
per batch (stopping after the deepest layer needed), drops BOS/PAD/EOS positions, runs each
transcoder in fp32, and hands the result to that transcoder's accumulators. Work that needs the
clean forward to the head (the splice stage) plugs in as a :class:`BatchStage`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from transcoderbench.data import TokenBatch
from transcoderbench.errors import UserError
from transcoderbench.evaluate.runs import (
    AccumulatorFactory,
    BatchStage,
    PassStats,
    TranscoderRun,
    deepest_layer,
    unique_sites,
)
from transcoderbench.lm import LanguageModel, capture, resolve_site, site_widths
from transcoderbench.lm.splice import clean_forward
from transcoderbench.metrics import default_accumulators
from transcoderbench.metrics.base import TranscoderBatch
from transcoderbench.progress import progress_bar
from transcoderbench.transcoders import Transcoder, active_latents

__all__ = ["PassStats", "TranscoderRun", "deepest_layer", "evaluate_batch", "prepare_runs", "reduce_pass", "run_pass"]


def prepare_runs(
    lm: LanguageModel,
    transcoders: dict[str, Transcoder],
    make_accumulators: AccumulatorFactory = default_accumulators,
    n_sequences: int | None = None,
) -> list[TranscoderRun]:
    """Resolve sites, move transcoders to the LM's device in fp32, and check every width.

    Widths are checked with a two-token probe forward, so a transcoder that does not fit its
    site fails with a clear message before the long pass starts.
    """
    runs = []
    for name, tc in transcoders.items():
        tc.to(device=lm.device, dtype=torch.float32).eval().requires_grad_(False)
        runs.append(
            TranscoderRun(
                name=name,
                transcoder=tc,
                input_site=resolve_site(lm, tc.input_site),
                output_site=resolve_site(lm, tc.output_site),
                accumulators=make_accumulators(tc, n_sequences),
            )
        )
    widths = site_widths(lm, unique_sites(runs))
    for run in runs:
        tc = run.transcoder
        for site, want, what in ((run.input_site, tc.d_in, "d_in"), (run.output_site, tc.d_out, "d_out")):
            if widths[site.name] != want:
                raise UserError(
                    f"transcoder '{run.name}' has {what}={want} but site {site.name} of {lm.name} has "
                    f"width {widths[site.name]}: check `model.name` and `select.layer` (or the checkpoint's sites)"
                )
    for run in runs:
        for acc in run.accumulators.values():
            for key, value in acc.state.items():
                acc.state[key] = value.to(lm.device)
    return runs


def evaluate_batch(
    run: TranscoderRun,
    x: Tensor,
    y: Tensor,
    seq_ids: Tensor,
    token_ids: Tensor | None = None,
    positions: Tensor | None = None,
) -> TranscoderBatch:
    """Run one transcoder on kept tokens, feed its accumulators, and return what it computed."""
    tc = run.transcoder
    f = tc.encode(x)
    # One sparse view of the latents serves the decode (gathered decoder rows) and the sparsity sums.
    active = active_latents(f)
    y_hat = tc.decode_prefixes(f, x, active=active)
    batch = TranscoderBatch(
        x=x,
        y=y,
        f=f,
        y_hat_prefixes=y_hat,
        seq_ids=seq_ids,
        active=active,
        token_ids=token_ids,
        positions=positions,
    )
    for acc in run.accumulators.values():
        acc.update(batch)
    return batch


@torch.no_grad()
def run_pass(
    lm: LanguageModel,
    runs: list[TranscoderRun],
    batches: Iterable[TokenBatch],
    *,
    total_batches: int | None = None,
    stop_early: bool = True,
    show_progress: bool = True,
    splice: BatchStage | None = None,
    resume_from: PassStats | None = None,
    after_batch: Callable[[TokenBatch, PassStats], None] | None = None,
    reduce: bool = True,
) -> PassStats:
    """Stream ``batches`` once through the LM and every transcoder; return what was read.

    With a ``splice`` stage (e.g. ``evaluate.splice.plan_downstream``) the clean pass runs to the
    head and the stage gets every batch's clean forward and reconstructions; otherwise the forward pass stops
    after the deepest layer any site needs (unless ``stop_early`` is False).

    Resuming: ``resume_from`` holds the counters of the batches already in the accumulators, and
    ``after_batch(tb, stats)`` runs after each batch (to save the state). Under torch.distributed
    each rank streams its own batches; ``reduce`` (default) then sums every accumulator and the
    counters over ranks (see :func:`reduce_pass`).
    """
    sites = unique_sites(runs)
    stop_early = stop_early and splice is None
    if splice is not None:
        for run in runs:
            run.accumulators.update(splice.accumulators(run.name))
    stats = PassStats(stopped_early_after_layer=deepest_layer(runs) if stop_early else None)
    if resume_from is not None:
        stats.n_batches, stats.n_sequences = resume_from.n_batches, resume_from.n_sequences
        stats.n_positions, stats.n_tokens_evaluated = resume_from.n_positions, resume_from.n_tokens_evaluated
    bar = progress_bar(
        total=total_batches, initial=stats.n_batches, desc="evaluating", unit="batch", disable=not show_progress
    )
    for tb in batches:
        ids = tb.input_ids.to(lm.device)
        attention_mask = tb.attention_mask.to(lm.device)
        if splice is None:
            captured = capture(lm, ids, attention_mask, sites, stop_early=stop_early)
        else:
            clean = clean_forward(lm, ids, attention_mask, sites, splice.splice_layers, splice.head)
            captured = clean.sites
        keep = tb.keep.to(lm.device).reshape(-1)
        seq_ids = tb.seq_index.to(lm.device).repeat_interleave(ids.shape[1])[keep]
        token_ids = ids.reshape(-1)[keep]
        positions = torch.arange(ids.shape[1], device=lm.device).repeat(ids.shape[0])[keep]
        flat = {name: t.reshape(-1, t.shape[-1])[keep] for name, t in captured.items()}
        recon = {
            run.name: evaluate_batch(
                run, flat[run.input_site.name], flat[run.output_site.name], seq_ids, token_ids, positions
            )
            for run in runs
        }
        if splice is not None:
            splice.update(lm, runs, tb, clean, recon)
        stats.n_batches += 1
        stats.n_sequences += ids.shape[0]
        stats.n_positions += ids.numel()
        stats.n_tokens_evaluated += int(keep.sum())
        bar.update(1)
        bar.set_postfix(tokens=stats.n_tokens_evaluated)
        if after_batch is not None:
            after_batch(tb, stats)
    bar.close()
    if reduce:
        reduce_pass(runs, stats)
    return stats


def reduce_pass(runs: list[TranscoderRun], stats: PassStats) -> None:
    """Sum every accumulator and the pass counters over torch.distributed ranks; refuse an empty pass.

    A no-op sum on one process. Every rank must call it (it is a collective).
    """
    for run in runs:
        for acc in run.accumulators.values():
            acc.all_reduce()
    stats.all_reduce()
    if stats.n_tokens_evaluated == 0:
        raise UserError(
            "the dataset gave no tokens to evaluate: use a larger `data.dataset` or fewer skipped positions"
        )
