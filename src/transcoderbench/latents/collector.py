"""Per-latent evidence gathered in the evaluation pass, in memory that does not grow with the data.

State per latent (``[d, K]`` or ``[d, ...]`` tensors, ``d`` = the latents collected):

- the top ``K`` activations with the (global sequence index, position) where they happened;
- ``S`` further firings drawn uniformly from all of the latent's firings (bottom-``S`` hash sampling:
  each token gets a key from a fixed hash of (sequence, position); a latent keeps the firings with the
  smallest keys), so a reader sees typical activations, not only the maximum;
- firing count, sum of activations and a histogram of activations over fixed log10 bins.

None of this is a sum, so :meth:`LatentCollector.merge` is "top K (smallest keys) of the union"; the
counts and histograms add. Merging is exact: a collector fed in two halves and merged holds what one
fed at once holds, except that of firings tied at the K-th place either may be kept. Token ids of every sequence that a kept example points to are stored
once in :class:`SequenceStore`; sequences nobody points to are evicted, so the store is bounded by
``d * (K + S)`` sequences and in practice by far fewer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from transcoderbench.metrics.base import Accumulator, TranscoderBatch

#: Activation histogram: 32 bins of a quarter decade from 1e-4 to 1e4 (out-of-range values clamp).
HIST_LOG10_MIN, HIST_BINS_PER_DECADE, HIST_BINS = -4.0, 4, 32
NO_SEQ = -1
#: Pending firings are folded into the slots every FLUSH_EVERY batches, or sooner past MAX_PENDING entries.
FLUSH_EVERY, MAX_PENDING = 16, 4_000_000
#: A latent firing on more than this fraction of tokens is listed as dense.
DENSE_THRESHOLD = 0.1


def dense_latents(ids: Tensor, density: Tensor, threshold: float, limit: int = 200) -> list[int]:
    """Latent ids with density above ``threshold``, densest first (at most ``limit``)."""
    order = torch.argsort(density, descending=True)
    order = order[density[order] > threshold][:limit]
    return ids[order].tolist()


def hist_edges() -> list[float]:
    """The bin edges of every latent's histogram (activation values)."""
    return [10 ** (HIST_LOG10_MIN + i / HIST_BINS_PER_DECADE) for i in range(HIST_BINS + 1)]


def token_keys(seq: Tensor, pos: Tensor) -> Tensor:
    """A fixed pseudo-random key in [0, 1) per token from (sequence, position): splitmix64-style mixing."""
    z = seq.to(torch.int64) * 1_000_003 + pos.to(torch.int64) + 0x9E3779B9
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B & 0x7FFFFFFFFFFFFFFF
    z = (z ^ (z >> 27)) * 0x14D049BB133111EB & 0x7FFFFFFFFFFFFFFF
    z = z ^ (z >> 31)
    return (z & 0xFFFFFF).to(torch.float32) / float(1 << 24) + (z >> 24 & 0xFFFFFF).to(torch.float32) / float(1 << 48)


class SequenceStore:
    """Token ids of retained sequences, once each (``-1`` at positions the pass did not keep)."""

    def __init__(self, seq_len: int = 0) -> None:
        self.tokens: dict[int, Tensor] = {}
        self.seq_len = seq_len

    def add(self, seq: Tensor, pos: Tensor, token_ids: Tensor) -> None:
        seq, pos, token_ids = seq.cpu(), pos.cpu(), token_ids.cpu()
        self.seq_len = max(self.seq_len, int(pos.max()) + 1 if pos.numel() else 0)
        for s in torch.unique(seq).tolist():
            if s in self.tokens:
                continue
            sel = seq == s
            row = torch.full((self.seq_len,), -1, dtype=torch.int32)
            row[pos[sel]] = token_ids[sel].to(torch.int32)
            self.tokens[int(s)] = row

    def keep_only(self, referenced: set[int]) -> None:
        for s in [s for s in self.tokens if s not in referenced]:
            del self.tokens[s]

    def merge(self, other: SequenceStore) -> None:
        for s, row in other.tokens.items():
            self.tokens.setdefault(s, row)
        self.seq_len = max(self.seq_len, other.seq_len)


class LatentCollector(Accumulator):
    """Top-K and sampled firings, density, mean and histogram for every latent in ``subset``.

    ``result()`` returns only a small summary (it goes into metrics.json); the evidence itself is
    :meth:`evidence` (latents.json, latents.html). Needs ``batch.token_ids`` and ``batch.positions``.
    """

    name = "latents"

    def __init__(self, d_sae: int, top_k: int = 10, samples: int = 5, subset: Tensor | None = None) -> None:
        super().__init__()
        self.d_sae = d_sae
        self.subset = torch.arange(d_sae) if subset is None else subset.to(torch.int64)
        d = len(self.subset)
        self._slot_of = torch.full((d_sae,), -1, dtype=torch.int64)
        self._slot_of[self.subset] = torch.arange(d)
        self.top_k, self.samples = top_k, samples
        self.state["top_act"] = torch.zeros(d, top_k)
        self.state["top_seq"] = torch.full((d, top_k), NO_SEQ, dtype=torch.int64)
        self.state["top_pos"] = torch.zeros(d, top_k, dtype=torch.int64)
        self.state["smp_key"] = torch.full((d, samples), float("inf"))
        self.state["smp_act"] = torch.zeros(d, samples)
        self.state["smp_seq"] = torch.full((d, samples), NO_SEQ, dtype=torch.int64)
        self.state["smp_pos"] = torch.zeros(d, samples, dtype=torch.int64)
        self.state["count"] = torch.zeros(d, dtype=torch.int64)
        self.state["act_sum"] = torch.zeros(d, dtype=torch.float64)
        self.state["hist"] = torch.zeros(d * HIST_BINS, dtype=torch.int64)
        self.state["n_tokens"] = torch.zeros((), dtype=torch.int64)
        self.sequences = SequenceStore()
        self._since_evict = 0
        self._pending: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self._n_pending = 0
        self.run_name = ""
        self.taps: list[Any] = []
        """Objects with ``feed(run_name, f)`` that see every batch's full activations (pair correlations)."""

    # ----------------------------------------------------------------- update
    def update(self, batch: TranscoderBatch) -> None:
        if batch.token_ids is None or batch.positions is None:
            raise ValueError("LatentCollector needs TranscoderBatch.token_ids and .positions (set by the engine)")
        for tap in self.taps:
            tap.feed(self.run_name, batch.f)
        st = self.state
        f = batch.f
        rows, cols = (f > 0).nonzero(as_tuple=True)  # the only pass over the dense [N, d_sae] activations
        vals = f[rows, cols]
        if len(self.subset) != self.d_sae:
            slot = self._slot_of.to(f.device)[cols]
            rows, cols, vals = rows[slot >= 0], slot[slot >= 0], vals[slot >= 0]
        seq, pos = batch.seq_ids[rows], batch.positions[rows]
        n, d = f.shape[0], len(self.subset)
        self._pending.append((cols, vals, seq, pos))
        self._n_pending += len(cols)
        st["count"] += torch.bincount(cols, minlength=d)
        st["act_sum"].index_add_(0, cols, vals.double())
        b = ((torch.log10(vals) - HIST_LOG10_MIN) * HIST_BINS_PER_DECADE).floor().clamp(0, HIST_BINS - 1).long()
        st["hist"].index_add_(0, cols * HIST_BINS + b, torch.ones_like(b))
        st["n_tokens"] += n
        self.sequences.add(batch.seq_ids, batch.positions, batch.token_ids)
        self._since_evict += 1
        if self._since_evict >= FLUSH_EVERY or self._n_pending > MAX_PENDING:
            self.evict()

    def flush(self) -> None:
        """Fold the pending firings into the top-K and sample slots (one sort for many batches)."""
        if not self._pending:
            return
        cols, vals, seq, pos = (torch.cat(parts) for parts in zip(*self._pending))
        self._pending, self._n_pending = [], 0
        d = len(self.subset)
        _, t_act, t_seq, t_pos = self._column_best(cols, vals, vals, seq, pos, self.top_k, 0.0, d)
        self._keep_top(t_act, t_seq, t_pos)
        keys = token_keys(seq, pos)
        key, act, s_seq, s_pos = self._column_best(cols, -keys, vals, seq, pos, self.samples, float("-inf"), d)
        self._keep_samples(-key, act, s_seq, s_pos)

    @staticmethod
    def _column_best(
        cols: Tensor, score: Tensor, act: Tensor, seq: Tensor, pos: Tensor, n: int, empty: float, d: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per latent, the ``n`` firings with the highest ``score`` as ``[d, n]`` (score, act, seq, pos) slots.

        Works on the non-zero entries only (sorted by score, then stably by latent), so it costs
        ``O(nnz log nnz)`` instead of a top-k over the dense ``[N, d_sae]`` matrix; ties keep token order.
        """
        dev = cols.device
        order = torch.argsort(score, descending=True, stable=True)
        order = order[torch.argsort(cols[order], stable=True)]
        c = cols[order]
        counts = torch.bincount(c, minlength=d)
        rank = torch.arange(len(c), device=dev) - (torch.cumsum(counts, 0) - counts)[c]
        keep = rank < n
        c, r, o = c[keep], rank[keep], order[keep]
        out_score = torch.full((d, n), empty, device=dev, dtype=score.dtype)
        out_act = torch.zeros((d, n), device=dev, dtype=act.dtype)
        out_seq = torch.full((d, n), NO_SEQ, device=dev, dtype=torch.int64)
        out_pos = torch.zeros((d, n), device=dev, dtype=torch.int64)
        out_score[c, r], out_act[c, r], out_seq[c, r], out_pos[c, r] = score[o], act[o], seq[o], pos[o]
        return out_score, out_act, out_seq, out_pos

    def _keep_top(self, act: Tensor, seq: Tensor, pos: Tensor) -> None:
        st = self.state
        all_act = torch.cat([st["top_act"], act.to(st["top_act"].dtype)], 1)
        all_seq = torch.cat([st["top_seq"], seq], 1)
        all_pos = torch.cat([st["top_pos"], pos], 1)
        all_act = torch.where(all_seq == NO_SEQ, torch.zeros_like(all_act), all_act)
        v, i = torch.topk(all_act, self.top_k, dim=1)
        filled = v > 0
        st["top_act"] = v
        st["top_seq"] = torch.where(filled, all_seq.gather(1, i), torch.full_like(i, NO_SEQ))
        st["top_pos"] = torch.where(filled, all_pos.gather(1, i), torch.zeros_like(i))

    def _keep_samples(self, key: Tensor, act: Tensor, seq: Tensor, pos: Tensor) -> None:
        st = self.state
        all_key = torch.cat([st["smp_key"], key], 1)
        v, i = torch.topk(all_key, self.samples, dim=1, largest=False)
        filled = torch.isfinite(v)
        all_act = torch.cat([st["smp_act"], act.to(st["smp_act"].dtype)], 1).gather(1, i)
        st["smp_act"] = torch.where(filled, all_act, torch.zeros_like(all_act))
        st["smp_seq"] = torch.where(filled, torch.cat([st["smp_seq"], seq], 1).gather(1, i), torch.full_like(i, NO_SEQ))
        st["smp_pos"] = torch.where(filled, torch.cat([st["smp_pos"], pos], 1).gather(1, i), torch.zeros_like(i))
        st["smp_key"] = v

    def referenced(self) -> set[int]:
        ids = torch.cat([self.state["top_seq"].reshape(-1), self.state["smp_seq"].reshape(-1)])
        return {int(s) for s in torch.unique(ids).tolist() if s != NO_SEQ}

    def evict(self) -> None:
        """Flush, then drop stored sequences that no kept example points to."""
        self.flush()
        self.sequences.keep_only(self.referenced())
        self._since_evict = 0

    # ------------------------------------------------------------------ merge
    def merge(self, other: Accumulator) -> None:
        """Top K of the union, smallest sample keys of the union, summed counts; sequences united."""
        if not isinstance(other, LatentCollector) or not torch.equal(other.subset, self.subset):
            raise TypeError("can only merge a LatentCollector over the same latents")
        if (other.top_k, other.samples) != (self.top_k, self.samples):
            raise TypeError("cannot merge LatentCollectors with different top_k / samples")
        self.flush()
        other.flush()
        o = {k: v.to(self.state[k].device) for k, v in other.state.items()}
        self._keep_top(o["top_act"], o["top_seq"], o["top_pos"])
        self._keep_samples(o["smp_key"], o["smp_act"], o["smp_seq"], o["smp_pos"])
        for key in ("count", "act_sum", "hist", "n_tokens"):
            self.state[key] += o[key]
        self.sequences.merge(other.sequences)
        self.evict()

    def all_reduce(self) -> None:
        """Flush (the pass calls this at its end). Not a sum: a distributed run must gather every rank's
        collector and :meth:`merge` them."""
        self.evict()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                raise NotImplementedError("gather the LatentCollectors of all ranks and merge them (top-K of union)")

    # ----------------------------------------------------------------- output
    def result(self) -> dict[str, Any]:
        """A small summary for metrics.json; the evidence is :meth:`evidence`."""
        self.flush()
        n = int(self.state["n_tokens"])
        count = self.state["count"].cpu()
        density = count.double() / max(n, 1)
        ids = self.subset
        return {
            "collected_latents": len(ids),
            "top_k": self.top_k,
            "samples": self.samples,
            "n_tokens": n,
            "dead": ids[count == 0][:200].tolist(),
            "n_dead": int((count == 0).sum()),
            "dense": dense_latents(ids, density, DENSE_THRESHOLD),
            "dense_threshold": DENSE_THRESHOLD,
        }

    def evidence(self) -> dict[str, Any]:
        """Every kept number, on CPU, as plain tensors and the sequence store (for ``latents.pages``)."""
        self.evict()
        return {
            "subset": self.subset.cpu(),
            **{k: v.detach().cpu() for k, v in self.state.items()},
            "sequences": dict(self.sequences.tokens),
        }
