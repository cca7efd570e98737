"""Bootstrap intervals over sequences, for one transcoder and for paired differences.

Why sequences: tokens of one sequence are correlated (same text, same context), so treating
tokens as independent would give intervals that are far too narrow. The resampling unit is
the sequence.

Why the *Poisson* bootstrap: each resample gives sequence ``s`` the weight ``w[r, s] ~
Poisson(1)`` (the number of times it is drawn), a function of ``(seed, r, s)`` only
(``poisson_weights``). It is the streaming form of drawing sequences with replacement
(Hanley & MacGibbon 2006; Chamandy et al. 2012) and gives the same intervals asymptotically
as the multinomial bootstrap, but a sequence's weight does not depend on how many sequences
there are or on which process read it. That buys three things:

- FVU's denominator (the variance around the *resample's* mean) needs the d-dimensional sum
  of targets per resample; with weights known at the time a sequence is read, the
  accumulator keeps that sum per resample (``[R, d]``, fixed size) instead of a d-dimensional
  sum per sequence. Every resample's FVU is then exact, not linearised.
- Data-parallel ranks give identical intervals (weights depend on the global sequence index).
- Paired comparisons are free: transcoders evaluated in the same pass saw the same sequences,
  so they share the same weights, and ``stat_a[r] - stat_b[r]`` is the paired difference.

Intervals are percentile intervals of the resampled statistic; the point value is the
full-sample statistic (every weight 1), which equals the pooled metric of ``Reconstruction``
/ ``Sparsity`` to rounding.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from transcoderbench.config import BootstrapOptions
from transcoderbench.metrics.ratios import ratio_statistics

METHOD = (
    "Poisson bootstrap over sequences: each resample weights every evaluated sequence by an "
    "independent Poisson(1) count (drawing sequences with replacement), seeded by the global "
    "sequence index; percentile intervals; paired differences use the same weights for every "
    "transcoder (they saw the same sequences)"
)

#: Sequences weighted per chunk when summing resamples (bounds memory at R x CHUNK floats).
CHUNK = 4096


# ------------------------------------------------------------------ weights
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
#: P(X <= k) for X ~ Poisson(1), k = 0..19; beyond 19 is below double resolution.
POISSON1_CDF = np.cumsum([math.exp(-1.0) / math.factorial(k) for k in range(20)])


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea & Flood 2014): a bijective 64-bit mixer."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def poisson_weights(seed: int, seq_ids: np.ndarray | Tensor, n_resamples: int) -> np.ndarray:
    """Bootstrap weights ``[n_resamples, len(seq_ids)]`` (float64 counts ~ Poisson(1)).

    ``w[r, j]`` depends only on ``(seed, r, seq_ids[j])``: the same sequence gets the same
    weights in any batch, on any rank, in any run.
    """
    ids = np.asarray(seq_ids.cpu() if isinstance(seq_ids, Tensor) else seq_ids, dtype=np.int64).astype(np.uint64)
    key = _splitmix64(_splitmix64(np.array([seed], dtype=np.int64).astype(np.uint64)) ^ ids)  # [n]
    r = np.arange(n_resamples, dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        z = _splitmix64(key[None, :] + r * _M2)
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53  # uniform in [0, 1)
    return np.searchsorted(POISSON1_CDF, u, side="right").astype(np.float64)


def resample_sums(table: Tensor, seq_ids: Tensor, options: BootstrapOptions) -> Tensor:
    """Weighted column sums ``[R, K]`` of a per-sequence table ``[n, K]`` for every resample."""
    table = table.detach().cpu().to(torch.float64)
    out = torch.zeros(options.bootstrap_resamples, table.shape[1], dtype=torch.float64)
    for start in range(0, table.shape[0], CHUNK):
        w = torch.from_numpy(
            poisson_weights(options.bootstrap_seed, seq_ids[start : start + CHUNK], options.bootstrap_resamples)
        )
        out += w @ table[start : start + CHUNK]
    return out


# ------------------------------------------------------- gathering the sums
def per_sequence_accumulators(accumulators: dict[str, Any]) -> dict[str, Any]:
    """The accumulators that keep per-sequence sums (they name their columns in ``per_sequence_fields``)."""
    return {
        k: a
        for k, a in accumulators.items()
        if getattr(a, "per_sequence_fields", None) is not None and "per_sequence" in getattr(a, "state", {})
    }


def seen_sequences(accumulators: dict[str, Any]) -> Tensor:
    """Global indices of the sequences with any nonzero per-sequence sum (unseen rows are dropped).

    Poisson weights are independent per sequence, so dropping all-zero rows changes nothing;
    it only saves work.
    """
    seen: Tensor | None = None
    for acc in per_sequence_accumulators(accumulators).values():
        rows = (acc.state["per_sequence"].detach().cpu() != 0).any(dim=1)
        seen = rows if seen is None else seen | rows
    if seen is None:
        return torch.zeros(0, dtype=torch.int64)
    return torch.nonzero(seen).flatten()


def statistics(acc: Any, sums: Tensor, resampled: bool) -> dict[str, Tensor]:
    """Headline metrics of one accumulator from its column sums ``[R, K]`` (``[1, K]`` for the full sample)."""
    if hasattr(acc, "sequence_statistics"):
        return acc.sequence_statistics(sums, resampled)
    return ratio_statistics(acc.per_sequence_fields, getattr(acc, "ratio_metrics", {}), sums)


def bootstrap_statistics(
    accumulators: dict[str, Any], options: BootstrapOptions, seq_ids: Tensor | None = None
) -> tuple[dict[str, float], dict[str, np.ndarray], int]:
    """``(full-sample value, resampled values [R], n_sequences)`` for every per-sequence metric."""
    if seq_ids is None:
        seq_ids = seen_sequences(accumulators)
    full: dict[str, float] = {}
    resampled: dict[str, np.ndarray] = {}
    for acc in per_sequence_accumulators(accumulators).values():
        table = acc.state["per_sequence"].detach().cpu().to(torch.float64)[seq_ids]
        whole = statistics(acc, table.sum(dim=0, keepdim=True), resampled=False)
        boot = statistics(acc, resample_sums(table, seq_ids, options), resampled=True)
        for name, value in whole.items():
            if name in full:
                raise ValueError(f"two per-sequence accumulators both define the metric {name!r}")
            full[name] = float(value.reshape(-1)[0])
            resampled[name] = boot[name].detach().cpu().double().numpy().reshape(-1)
    return full, resampled, int(seq_ids.numel())


def interval(value: float, samples: np.ndarray, confidence: float) -> dict[str, Any]:
    """Percentile interval of ``samples`` around the full-sample ``value`` (None where undefined)."""
    finite = samples[np.isfinite(samples)]
    if not math.isfinite(value) or finite.size < 2:
        return {"value": value if math.isfinite(value) else None, "low": None, "high": None, "se": None}
    low, high = np.quantile(finite, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"value": value, "low": float(low), "high": float(high), "se": float(finite.std(ddof=1))}


def excludes_zero(iv: dict[str, Any]) -> bool:
    """True when the interval lies entirely on one side of 0 (a significant difference)."""
    return iv.get("low") is not None and (iv["low"] > 0 or iv["high"] < 0)


def _group_prefixes(values: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Split ``NAME@END`` entries (per nested prefix) from the plain ones."""
    plain: dict[str, Any] = {}
    by_end: dict[int, dict[str, Any]] = {}
    for name, v in values.items():
        base, sep, end = name.partition("@")
        if sep:
            by_end.setdefault(int(end), {"prefix_end": int(end)})[base] = v
        else:
            plain[name] = v
    return plain, [by_end[e] for e in sorted(by_end)]


def _options_of(acc_by_name: dict[str, dict[str, Any]], options: BootstrapOptions | None) -> BootstrapOptions:
    """The options the accumulators were built with (FVU's resampled sums depend on them)."""
    found = {
        repr(acc.bootstrap_options): acc.bootstrap_options
        for accs in acc_by_name.values()
        for acc in accs.values()
        if getattr(acc, "bootstrap_options", None)
    }
    if len(found) > 1:
        raise ValueError("the per-sequence accumulators were built with different bootstrap options")
    built = next(iter(found.values()), None)
    if (
        built is not None
        and options is not None
        and (built.bootstrap_resamples, built.bootstrap_seed) != (options.bootstrap_resamples, options.bootstrap_seed)
    ):
        raise ValueError(
            f"bootstrap options {options} differ from those the accumulators were built with ({built}); "
            "pass the same options to default_accumulators"
        )
    return options or built or BootstrapOptions()


def attach_uncertainty(
    acc_by_name: dict[str, dict[str, Any]],
    metrics: dict[str, dict[str, Any]],
    options: BootstrapOptions | None = None,
) -> None:
    """Add ``metrics[name]["uncertainty"]``: intervals for every per-sequence metric and, when
    several transcoders were evaluated in the same pass, paired differences to each other one.

    ``acc_by_name`` maps each transcoder's name to its accumulators (``run.accumulators``) after
    the pass (and after ``all_reduce``). Call on one process; the result is JSON-ready.
    """
    opts = _options_of(acc_by_name, options)
    base = {
        "method": METHOD,
        "confidence": opts.confidence,
        "n_resamples": opts.bootstrap_resamples,
        "seed": opts.bootstrap_seed,
    }
    if opts.bootstrap_resamples == 0 or not any(per_sequence_accumulators(a) for a in acc_by_name.values()):
        why = (
            "turned off (--bootstrap_resamples 0)"
            if opts.bootstrap_resamples == 0
            else "not computed: no per-sequence statistics were kept"
        )
        for name in acc_by_name:
            metrics[name]["uncertainty"] = {**base, "intervals": {}, "per_prefix": [], "differences": {}, "note": why}
        return
    ids = {name: seen_sequences(accs) for name, accs in acc_by_name.items()}
    stats = {name: bootstrap_statistics(accs, opts, ids[name]) for name, accs in acc_by_name.items()}
    for name, (full, boot, n_seq) in stats.items():
        plain, per_prefix = _group_prefixes({k: interval(full[k], boot[k], opts.confidence) for k in full})
        differences: dict[str, Any] = {}
        for other, (full_o, boot_o, _) in stats.items():
            if other == name:
                continue
            if not torch.equal(ids[name], ids[other]):
                differences[other] = {"note": "not paired: the two transcoders did not see the same sequences"}
                continue
            diffs = {}
            for k in full.keys() & full_o.keys():
                iv = interval(full[k] - full_o[k], boot[k] - boot_o[k], opts.confidence)
                iv["significant"] = excludes_zero(iv)
                diffs[k] = iv
            d_plain, d_prefix = _group_prefixes(dict(sorted(diffs.items())))
            differences[other] = {**d_plain, "per_prefix": d_prefix}
        metrics[name]["uncertainty"] = {
            **base,
            "n_sequences": n_seq,
            "intervals": plain,
            "per_prefix": per_prefix,
            "differences": differences,
            "note": f"differences are {name} minus the other transcoder, resampled in pairs",
        }
