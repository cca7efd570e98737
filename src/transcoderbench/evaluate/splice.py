"""The splice stage: spliced (downstream) evaluation for one batch: build every variant, finish its forward, feed the accumulators.

Per batch, the clean pass runs once for all transcoders. Variants are: each transcoder's nested
prefixes, plus zero and mean ablation of each distinct output site (shared by the transcoders
that write there). A variant starts from the clean output of its splice layer and replays only
the remaining blocks (several variants stacked as one batch); sites where that shortcut does not
hold use a full forward with a hook. The head then runs in row chunks, so full
``[B, T, vocab]`` logits never exist for more than one chunk at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from transcoderbench.data import TokenBatch
from transcoderbench.errors import UserError
from transcoderbench.evaluate.runs import TranscoderRun
from transcoderbench.lm import LanguageModel, capture, site_widths
from transcoderbench.lm.splice import CleanForward, Head, additive_layer, find_head, resume, spliced_forward
from transcoderbench.metrics.base import Accumulator, TranscoderBatch
from transcoderbench.metrics.downstream import (
    CLEAN,
    MEAN,
    ZERO,
    CleanNextToken,
    Downstream,
    counted_predictions,
    prefix_column,
)

# Rows of logits computed at once: bounds the head's memory (rows * vocab floats, ~256 MB).
HEAD_CHUNK_ELEMENTS = 1 << 26


@dataclass
class SplicePlan:
    """Decided once before the pass: the head, each output site's mean, and each transcoder's path."""

    head: Head
    site_means: dict[str, Tensor]
    mean_source: str
    splice_layer: dict[str, int | None]
    """Run name -> layer whose output is patched (resumed path), or None (full-forward path)."""
    variants_per_pass: int = 1
    downstream: dict[str, Downstream] = field(default_factory=dict)
    """Run name -> the Downstream accumulator this stage feeds (added to the run by the engine)."""
    notes: list[str] = field(default_factory=list)
    buffers: dict[str, Tensor] = field(default_factory=dict, repr=False)
    """Scratch for the head and the CE/KL scoring, reused by every batch (see ``score_buffers``)."""

    @property
    def splice_layers(self) -> set[int]:
        return {layer for layer in self.splice_layer.values() if layer is not None}

    def accumulators(self, run_name: str) -> dict[str, Accumulator]:
        return {"downstream": self.downstream[run_name]}

    def update(
        self,
        lm: LanguageModel,
        runs: list[TranscoderRun],
        tb: TokenBatch,
        clean: CleanForward,
        recon: dict[str, TranscoderBatch],
    ) -> None:
        downstream_batch(lm, self, runs, tb, clean, recon)


def plan_downstream(
    lm: LanguageModel,
    runs: list[TranscoderRun],
    mean_batches: list[TokenBatch],
    *,
    n_sequences: int | None,
    variants_per_pass: int | None = None,
    site_means: dict[str, Tensor] | None = None,
    mean_source: str | None = None,
) -> SplicePlan:
    """Find the head, estimate each output site's mean target, and make one Downstream accumulator per run.

    ``runs`` are not changed: the engine adds the plan's accumulators to them when the pass starts.
    Under torch.distributed, ``mean_batches`` are this rank's share and the sums are all-reduced.
    ``site_means`` (with ``mean_source``) skips the estimate, e.g. when resuming a saved pass.
    """
    head = find_head(lm)
    if head is None:
        raise UserError(
            f"downstream metrics need {lm.name}'s final norm and unembedding, which were not found or did not "
            "reproduce the model's logits: set `downstream.downstream=false`"
        )
    for run in runs:
        if run.output_site.normalize is not None:
            raise UserError(
                f"transcoder '{run.name}' predicts {run.output_site.name}, a normalised view that no module outputs, "
                "so it cannot be spliced in: set `downstream.downstream=false`"
            )
    if site_means is None:
        site_means, mean_source = estimate_site_means(lm, runs, mean_batches)
    means = {name: m.to(lm.device) for name, m in site_means.items()}
    plan = SplicePlan(
        head=head,
        site_means=means,
        mean_source=mean_source or "",
        splice_layer={run.name: additive_layer(lm, run.output_site) for run in runs},
        # Stacking variants pays on a GPU (bigger matmuls); on CPU one at a time is faster (benchmarks/downstream.py).
        variants_per_pass=variants_per_pass or (4 if lm.device.type == "cuda" else 1),
    )
    for run in runs:
        acc = Downstream(run.transcoder.prefix_ends, n_sequences)
        acc.state = {k: v.to(lm.device) for k, v in acc.state.items()}
        if plan.splice_layer[run.name] is None:
            acc.path = "full_forward"
            acc.notes.append(
                f"{run.output_site.name} is not an additive block output, so each variant ran a full "
                "forward with a hook (slower)"
            )
        else:
            acc.path = "resumed"
            acc.notes.append(f"variants resumed from the clean output of layer {plan.splice_layer[run.name]}")
        acc.notes.append(plan.mean_source)
        acc.notes.append(
            "the reconstruction replaces the site at kept positions only (BOS, PAD and EOS keep their clean values)"
        )
        plan.downstream[run.name] = acc
    return plan


def estimate_site_means(
    lm: LanguageModel, runs: list[TranscoderRun], mean_batches: list[TokenBatch]
) -> tuple[dict[str, Tensor], str]:
    """Each output site's mean over the kept tokens of ``mean_batches`` (fp64 sums, summed over ranks)."""
    sites = {run.output_site.name: run.output_site for run in runs}
    sums: dict[str, Tensor] = {}
    counts = torch.zeros(2, dtype=torch.int64, device=lm.device)  # tokens, batches
    for tb in mean_batches:
        got = capture(lm, tb.input_ids.to(lm.device), tb.attention_mask.to(lm.device), list(sites.values()))
        keep = tb.keep.to(lm.device).reshape(-1)
        counts[0] += keep.sum()
        counts[1] += 1
        for name, t in got.items():
            s = t.reshape(-1, t.shape[-1])[keep].double().sum(0)
            sums[name] = s if name not in sums else sums[name] + s
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        missing = [site for name, site in sites.items() if name not in sums]
        widths = site_widths(lm, missing) if missing else {}
        for name in sites:  # a rank without mean batches adds zeros
            if name not in sums:
                sums[name] = torch.zeros(widths[name], dtype=torch.float64, device=lm.device)
            torch.distributed.all_reduce(sums[name])
        torch.distributed.all_reduce(counts)
    count, n_batches = int(counts[0]), int(counts[1])
    if count == 0:
        raise UserError("no tokens to estimate the mean-ablation baseline: use more `data.batches`")
    source = (
        f"mean of the output site over the first {n_batches} batches ({count:,} tokens), "
        "estimated in a short pass before the evaluation (those batches are also evaluated)"
    )
    return {name: (s / count).float() for name, s in sums.items()}, source


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class CountedRows:
    """The predictions one batch counts (``TOKEN_RULE``): flat rows of ``[B, T]``, their labels and sequences."""

    rows: Tensor
    labels: Tensor
    seq_ids: Tensor


def counted_rows(lm: LanguageModel, tb: TokenBatch) -> CountedRows:
    ids = tb.input_ids.to(lm.device)
    b_idx, t_idx = counted_predictions(tb.keep.to(lm.device), tb.attention_mask.to(lm.device)).nonzero(as_tuple=True)
    return CountedRows(b_idx * ids.shape[1] + t_idx, ids[b_idx, t_idx + 1], tb.seq_index.to(lm.device)[b_idx])


Variants = dict[tuple, tuple[Tensor, Tensor, TranscoderRun]]
"""Variant key -> (splice target y at kept rows, its replacement, the run giving the site)."""
Consumers = dict[tuple, list[tuple[Downstream, str]]]
"""Variant key -> the (accumulator, column) pairs that its CE/KL feed."""


def plan_variants(
    plan: SplicePlan, runs: list[TranscoderRun], recon: dict[str, TranscoderBatch]
) -> tuple[Variants, Consumers]:
    """Every variant of one batch: each run's prefixes, and zero/mean ablation of each distinct output site."""
    targets: Variants = {}
    consumers: Consumers = defaultdict(list)
    for run in runs:
        acc = plan.downstream[run.name]
        y = recon[run.name].y
        site = run.output_site.name
        for kind, column in (("zero", ZERO), ("mean", MEAN)):
            key: tuple[str, ...] | tuple[str, str, int] = (kind, site)
            if key not in targets:
                value = torch.zeros_like(y) if kind == "zero" else plan.site_means[site].expand_as(y)
                targets[key] = (y, value, run)
            consumers[key].append((acc, column))
        for p, end in enumerate(run.transcoder.prefix_ends):
            key = ("prefix", run.name, p)
            targets[key] = (y, recon[run.name].y_hat_prefixes[p], run)
            consumers[key].append((acc, prefix_column(end)))
    return targets, consumers


def finish_variants(
    lm: LanguageModel, plan: SplicePlan, tb: TokenBatch, clean: CleanForward, targets: Variants, rows: Tensor
) -> dict[tuple, Tensor]:
    """Each variant's final hidden state (input of the final norm) at the counted ``rows`` only."""
    ids = tb.input_ids.to(lm.device)
    B, T = ids.shape
    keep_flat = tb.keep.to(lm.device).reshape(-1)
    d = clean.final_hidden.shape[-1]
    final_rows: dict[tuple, Tensor] = {}
    by_layer: dict[int, list[tuple[tuple, Tensor]]] = defaultdict(list)
    for key, (y, value, run) in targets.items():
        layer = plan.splice_layer[run.name]
        if layer is not None:
            base = clean.block_outputs[layer]
            h = base.reshape(-1, d).float().clone()
            h[keep_flat] += value - y
            by_layer[layer].append((key, h.to(base.dtype).reshape(B, T, d)))
        else:
            replacement = clean.sites[run.output_site.name].reshape(-1, y.shape[-1]).clone()
            replacement[keep_flat] = value
            final = spliced_forward(
                lm, ids, tb.attention_mask.to(lm.device), run.output_site, replacement.reshape(B, T, -1), plan.head
            )
            final_rows[key] = final.reshape(-1, d)[rows]
    for layer, items in by_layer.items():
        for group in _chunks(items, plan.variants_per_pass):
            finals = resume(lm, clean, layer, torch.cat([h for _, h in group]))
            for (key, _), final in zip(group, finals.split(B)):
                final_rows[key] = final.reshape(-1, d)[rows]
    return final_rows


def head_step(lm: LanguageModel) -> int:
    """Rows of logits computed at once (``HEAD_CHUNK_ELEMENTS`` / vocab)."""
    return max(1, HEAD_CHUNK_ELEMENTS // lm.model.get_output_embeddings().weight.shape[0])


@torch.no_grad()
def head_into(head: Head, hidden: Tensor, out: Tensor) -> Tensor:
    """``head(hidden)`` for 2-D ``hidden``, written into ``out`` (fp32 ``[rows, vocab]``) by the same operations.

    The logits of every variant land in one reused buffer instead of a fresh ``[rows, vocab]``
    tensor per variant (on CPU, faulting in new pages costs more than a tenth of the matmul).
    An unembedding that is not a plain fp32 ``Linear`` (e.g. a bf16 model's) returns ``head(hidden)``
    itself, a fresh tensor, and leaves ``out`` alone.
    """
    unembed = head.unembed
    if type(unembed) is not torch.nn.Linear or unembed.weight.dtype != torch.float32 or out.dtype != torch.float32:
        return head(hidden)
    normed = head.norm(hidden)
    if unembed.bias is None:  # what nn.Linear runs: mm for a 2-D input, addmm with a bias
        torch.mm(normed, unembed.weight.t(), out=out)
    else:
        torch.addmm(unembed.bias, normed, unembed.weight.t(), out=out)
    if head.softcap:
        out.div_(head.softcap).tanh_().mul_(head.softcap)
    return out


def score_buffers(plan: SplicePlan, rows: int, vocab: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Two ``[rows, vocab]`` fp32 buffers (logits, clean probabilities), kept on the plan for every batch."""
    logits, probs = plan.buffers.get("logits"), plan.buffers.get("probs")
    if logits is None or probs is None or logits.shape[0] < rows or logits.device != device:
        logits = torch.empty(rows, vocab, device=device)
        probs = torch.empty(rows, vocab, device=device)
        plan.buffers.update(logits=logits, probs=probs)
    return logits[:rows], probs[:rows]


def score_variants(
    lm: LanguageModel,
    plan: SplicePlan,
    runs: list[TranscoderRun],
    clean: CleanForward,
    counted: CountedRows,
    final_rows: dict[tuple, Tensor],
    consumers: Consumers,
) -> None:
    """The head on the counted rows of the clean pass and of every variant, and their CE/KL sums."""
    d = clean.final_hidden.shape[-1]
    clean_rows = clean.final_hidden.reshape(-1, d)[counted.rows]
    step = head_step(lm)
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    accs = [plan.downstream[run.name] for run in runs]
    n = counted.rows.numel()
    logits_buf, probs_buf = score_buffers(plan, min(step, n), vocab, clean_rows.device)
    for start in range(0, n, step):
        sl = slice(start, start + step)
        rows = min(step, n - start)
        logits, probs = logits_buf[:rows], probs_buf[:rows]
        seq_ids = counted.seq_ids[sl]
        clean_next = CleanNextToken(head_into(plan.head, clean_rows[sl], logits), counted.labels[sl], probs=probs)
        for acc in accs:
            acc.update_column(CLEAN, clean_next.ce, clean_next.kl, seq_ids)
        for key, frows in final_rows.items():
            ce, kl = clean_next.versus(head_into(plan.head, frows[sl], logits), overwrite=True)
            for acc, column in consumers[key]:
                acc.update_column(column, ce, kl, seq_ids)


@torch.no_grad()
def downstream_batch(
    lm: LanguageModel,
    plan: SplicePlan,
    runs: list[TranscoderRun],
    tb: TokenBatch,
    clean: CleanForward,
    recon: dict[str, TranscoderBatch],
) -> None:
    """All spliced variants of one batch, and their CE/KL sums into each run's Downstream.

    The head runs only on the counted predictions' rows (``TOKEN_RULE``): logits elsewhere would
    be discarded.
    """
    counted = counted_rows(lm, tb)
    targets, consumers = plan_variants(plan, runs, recon)
    final_rows = finish_variants(lm, plan, tb, clean, targets, counted.rows)
    score_variants(lm, plan, runs, clean, counted, final_rows, consumers)
