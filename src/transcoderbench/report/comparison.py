"""Side-by-side comparison of transcoders evaluated on the same tokens, with a verdict per category.

A category names a winner only when the evidence says so:

- per-sequence metrics (FVU, cosine, L0, delta loss, KL) are tested with the paired bootstrap
  over sequences (``uncertainty.differences`` in each transcoder's metrics): a transcoder wins
  when the interval of its difference to *every* other excludes 0 in its favour; otherwise the
  verdict is "no significant difference";
- decoder redundancy depends on the weights alone: there is no sampling noise, so the exact
  values decide (equal values: no difference);
- absorption (mean fraction and full-absorption rate) is tested with the paired bootstrap over
  words (``absorption.uncertainty.paired_difference``), only between results measured on the
  same probe site, mode, letters and words; otherwise the verdict says why they are not comparable;
- dead latents are a count over the whole evaluation with no per-sequence form: no interval
  exists, so they are not tested and name no winner (the point values are shown).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

from transcoderbench.absorption.summary import VERSUS_REDUNDANCY
from transcoderbench.absorption.uncertainty import paired_difference
from transcoderbench.report.catalog import (
    BY_KEY,
    METRICS,
    fmt,
    fmt_interval,
    interval_of,
    value_at,
    value_of,
)
from transcoderbench.report.suggestions import suggestions_as_dicts
from transcoderbench.report.summary import (
    absorption_caution,
    as_meta,
    header_lines,
    headline_fields,
    suggestion_lines,
    transcoder_lines,
    uncertainty_line,
)
from transcoderbench.results import (
    CategoryVerdict,
    Interval,
    PairDifferences,
    PairVerdict,
    RunMeta,
    TranscoderResult,
    finite,
)

Results = Mapping[str, TranscoderResult]

NO_DIFFERENCE = "no significant difference"


@dataclass(frozen=True)
class Category:
    """One comparison category: which metric decides it, in which direction, and how it is tested."""

    name: str
    path: tuple[str, ...]
    lower_is_better: bool
    why: str
    test: str
    """``bootstrap`` (paired, over sequences), ``words`` (paired, over absorption words), ``exact`` (no sampling
    noise) or ``none``."""


CATEGORIES: list[Category] = [
    Category("reconstruction", ("reconstruction", "fvu"), True, "FVU: less unexplained variance", "bootstrap"),
    Category(
        "direction", ("reconstruction", "cosine_similarity"), False, "cosine similarity to the target", "bootstrap"
    ),
    Category("sparsity", ("sparsity", "l0_mean"), True, "mean L0: fewer active latents per token", "bootstrap"),
    Category(
        "downstream loss",
        ("downstream", "delta_loss"),
        True,
        "delta loss: smaller rise in the model's loss",
        "bootstrap",
    ),
    Category("downstream KL", ("downstream", "kl_div"), True, "KL: next-token distribution moves less", "bootstrap"),
    Category("utilization", ("sparsity", "dead_percentage"), True, "fewer dead latents", "none"),
    Category("absorption", ("absorption", "mean_absorption_fraction"), True, "less first-letter absorption", "words"),
    Category(
        "full absorption",
        ("absorption", "full_absorption_rate"),
        True,
        "fewer words whose letter signal is fully absorbed",
        "words",
    ),
    Category(
        "redundancy",
        ("decoder_redundancy", "redundant_pair_fraction"),
        True,
        "fewer near-duplicate decoder rows",
        "exact",
    ),
]

HOW = {
    "bootstrap": "paired bootstrap over sequences: a winner only when the interval of the difference excludes 0",
    "words": "paired bootstrap over the absorption words (same probe, letters and words): a winner only when the "
    "interval of the difference excludes 0",
    "exact": "computed from the weights alone (no sampling noise): the exact values decide",
    "none": "not tested: no interval exists (a count over the whole evaluation or over a word list), so no winner "
    "is named; point values shown",
}


def as_results(metrics: Mapping[str, TranscoderResult | Mapping[str, Any]]) -> dict[str, TranscoderResult]:
    """Records from records or from the evaluation's metrics dicts (by name)."""
    return {name: TranscoderResult.coerce(m, name) for name, m in metrics.items()}


def _pair_differences(m: TranscoderResult, other: str) -> PairDifferences | None:
    unc = m.uncertainty
    return unc.differences[other] if unc is not None and other in unc.differences else None


def _difference(metrics: Results, a: str, b: str, key: str) -> Interval | None:
    """The paired difference a - b of interval metric ``key`` (from a's record, else negated from b's)."""
    mine, theirs = _pair_differences(metrics[a], b), _pair_differences(metrics[b], a)
    iv = mine.interval(key) if mine else None
    if iv is not None:
        return iv
    iv = theirs.interval(key) if theirs else None
    if iv is None or iv.value is None or iv.low is None or iv.high is None:
        return None
    return Interval(value=-iv.value, low=-iv.high, high=-iv.low, se=iv.se, significant=iv.significant)


def _better(diff_value: float, lower_is_better: bool) -> bool:
    return diff_value < 0 if lower_is_better else diff_value > 0


def _pair(a: str, b: str, iv: Interval, lower_is_better: bool) -> PairVerdict:
    assert iv.low is not None and iv.high is not None and iv.value is not None
    significant = iv.low > 0 or iv.high < 0
    better = (a if _better(iv.value, lower_is_better) else b) if significant else None
    return PairVerdict(a=a, b=b, difference=iv.value, low=iv.low, high=iv.high, significant=significant, better=better)


def _verdict(record: CategoryVerdict, verdict: str, winner: str | None = None) -> CategoryVerdict:
    return CategoryVerdict(**{**_fields_of(record), "winner": winner, "verdict": verdict})


def _fields_of(record: CategoryVerdict) -> dict[str, Any]:
    return {name: getattr(record, name) for name in CategoryVerdict._fields()}


def _exact(record: CategoryVerdict, cat: Category, values: dict[str, float]) -> CategoryVerdict:
    best = min(values.values()) if cat.lower_is_better else max(values.values())
    leaders = [n for n, v in values.items() if v == best]
    if len(leaders) == 1 and len(set(values.values())) > 1:
        return _verdict(record, leaders[0], leaders[0])
    if len(set(values.values())) == 1:
        return _verdict(record, "no difference (identical values)")
    return _verdict(record, "tie at the best value")


def _absorption_difference(metrics: Results, a: str, b: str, metric: str) -> Interval | str | None:
    """The paired bootstrap over words of a - b, or why the two absorption results are not comparable."""
    ra, rb = metrics[a].absorption, metrics[b].absorption
    if ra is None or rb is None:
        return None
    ja, jb = ra.to_json(), rb.to_json()
    settings = ja.get("bootstrap") or {}
    resamples = int(settings.get("resamples") or 0)
    if resamples < 2:
        return None
    found = paired_difference(ja, jb, (a, b), resamples=resamples, seed=int(settings.get("seed") or 0))
    if not found["comparable"]:
        return "; ".join(found["problems"])
    iv = found["metrics"][metric]
    return Interval(value=iv["value"], low=iv["low"], high=iv["high"], se=iv.get("se"))


def _words(record: CategoryVerdict, cat: Category, metrics: Results, values: dict[str, float]) -> CategoryVerdict:
    names = list(metrics)
    found = {(a, b): _absorption_difference(metrics, a, b, cat.path[-1]) for a, b in combinations(names, 2)}
    problems = sorted({f"{a} vs {b}: {p}" for (a, b), p in found.items() if isinstance(p, str)})
    if problems:
        return _verdict(record, "not comparable (" + "; ".join(problems) + ")")
    intervals = {n: _absorption_interval(metrics[n], cat.path[-1]) for n in names}
    return _paired(record, cat, names, values, intervals, lambda a, b: found[(a, b)])  # type: ignore[arg-type,return-value]


def _absorption_interval(m: TranscoderResult, metric: str) -> Interval | None:
    ivs = m.absorption.extra.get("intervals") if m.absorption else None
    iv = ivs.get(metric) if isinstance(ivs, Mapping) else None
    return Interval.from_json(iv) if isinstance(iv, Mapping) else None


def _bootstrap(record: CategoryVerdict, cat: Category, metrics: Results, values: dict[str, float]) -> CategoryVerdict:
    names = list(metrics)
    info = BY_KEY[".".join(cat.path)]  # every category's metric is in the catalog
    key = info.interval
    intervals = {n: interval_of(metrics[n], info) for n in names}
    return _paired(record, cat, names, values, intervals, lambda a, b: _difference(metrics, a, b, key) if key else None)


def _paired(
    record: CategoryVerdict,
    cat: Category,
    names: list[str],
    values: dict[str, float],
    intervals: Mapping[str, Interval | None],
    difference: Callable[[str, str], Interval | None],
) -> CategoryVerdict:
    """A winner when its paired-difference interval to every other excludes 0 in its favour."""
    beats: dict[str, set[str]] = {n: set() for n in names}
    pairs: list[PairVerdict] = []
    for a, b in combinations(names, 2):
        iv = difference(a, b)
        if iv is None:
            pairs.append(PairVerdict(a=a, b=b, difference=values[a] - values[b], significant=False))
            continue
        pair = _pair(a, b, iv, cat.lower_is_better)
        if pair.better:
            beats[pair.better].add(b if pair.better == a else a)
        pairs.append(pair)
    record = CategoryVerdict(**{**_fields_of(record), "intervals": intervals, "pairs": tuple(pairs)})
    if any(p.low is None for p in pairs):
        return _verdict(record, "not tested (no bootstrap intervals in these results)")
    winners = [n for n in names if len(beats[n]) == len(names) - 1]
    if winners:
        return _verdict(record, winners[0], winners[0])
    if not any(p.significant for p in pairs):
        return _verdict(record, NO_DIFFERENCE)
    found = "; ".join(f"{p.better} better than {p.b if p.better == p.a else p.a}" for p in pairs if p.significant)
    return _verdict(record, f"no single winner ({found})")


def decide_category(cat: Category, metrics: Results) -> CategoryVerdict | None:
    """The verdict of one category, or None when no transcoder has its metric."""
    values = {n: finite(value_at(m, cat.path)) for n, m in metrics.items()}
    if all(v is None for v in values.values()):
        return None
    record = CategoryVerdict(**{**asdict(cat), "path": ".".join(cat.path), "values": values, "how": HOW[cat.test]})
    if any(v is None for v in values.values()):
        missing = [n for n, v in values.items() if v is None]
        return _verdict(record, f"not comparable ({', '.join(missing)}: not measured)")
    known = {n: v for n, v in values.items() if v is not None}
    if cat.test == "exact":
        return _exact(record, cat, known)
    if cat.test == "none":
        return _verdict(record, "not tested (no interval exists)")
    if cat.test == "words":
        return _words(record, cat, metrics, known)
    return _bootstrap(record, cat, metrics, known)


def decide(metrics: Results) -> list[CategoryVerdict]:
    """Every category's verdict (categories no transcoder has are left out)."""
    return [d for d in (decide_category(c, metrics) for c in CATEGORIES) if d is not None]


def differences(metrics: Results) -> dict[str, PairDifferences]:
    """``"a - b" -> paired differences`` for every pair, in name order."""
    out: dict[str, PairDifferences] = {}
    for a, b in combinations(list(metrics), 2):
        d = _pair_differences(metrics[a], b)
        if d is not None:
            out[f"{a} - {b}"] = d
    return out


def _headline(m: TranscoderResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "fvu": m.fvu,
        "explained_variance": m.explained_variance,
        "mean_l0": m.mean_l0,
        "dead_percentage": m.dead_percentage,
        "absorption": m.absorption.to_json() if m.absorption else None,
    }
    for info in METRICS:
        out[info.label] = value_of(m, info)
    out["d_sae"] = m.transcoder.d_sae if m.transcoder else None
    unc = m.uncertainty
    out["intervals"] = {k: v.to_json() for k, v in unc.intervals.items()} if unc and unc.intervals else {}
    return out


def _json(record: Any) -> Any:
    return record.to_json() if record is not None else None


def comparison_record(
    meta: RunMeta | Mapping[str, Any], metrics: Mapping[str, TranscoderResult | Mapping[str, Any]]
) -> dict[str, Any]:
    """comparison.json: shared metadata, verdicts, paired differences, each transcoder's headline numbers."""
    results = as_results(metrics)
    first = next(iter(results.values()), TranscoderResult())
    unc = first.uncertainty
    bootstrap_keys = ("method", "confidence", "n_resamples", "seed", "n_sequences", "note")
    return {
        "meta": as_meta(meta).to_json(),
        "transcoders": {
            name: {
                "transcoder": _json(m.transcoder),
                "sites": _json(m.sites),
                "source": _json(m.source),
                **_headline(m),
            }
            for name, m in results.items()
        },
        "bootstrap": {k: getattr(unc, k) if unc else None for k in bootstrap_keys},
        "categories": [c.to_json() for c in decide(results)],
        "differences": {k: v.to_json() for k, v in differences(results).items()},
        "suggestions": {name: suggestions_as_dicts(m) for name, m in results.items()},
        "note": "all transcoders were evaluated on exactly the same tokens in one pass; a category names a winner only "
        "when the paired bootstrap interval of the difference excludes 0 (or, for weight-only metrics, when the "
        "exact values differ); compare FVU only together with L0, since more active latents buy reconstruction",
    }


def _table_lines(metrics: Results) -> list[str]:
    names = list(metrics)
    width = max(24, *(len(n) + 2 for n in names))
    lines = [f"{'metric':<40}" + "".join(f"{n:>{width}}" for n in names)]
    seed_rows = {n: headline_fields(metrics[n]) for n in names}
    for i, (field, _, spec, _) in enumerate(seed_rows[names[0]]):
        lines.append(
            f"{field + ' (seed field)':<40}" + "".join(f"{fmt(seed_rows[n][i][1], spec):>{width}}" for n in names)
        )
    for info in METRICS:
        if all(value_of(metrics[n], info) is None for n in names):
            continue
        cells = []
        for n in names:
            iv = interval_of(metrics[n], info)
            half = f" ±{iv.half_width:.2g}" if iv else ""
            cells.append(fmt(value_of(metrics[n], info), info.spec) + half)
        lines.append(f"{info.label:<40}" + "".join(f"{c:>{width}}" for c in cells))
    return lines


def _verdict_lines(decided: list[CategoryVerdict]) -> list[str]:
    lines = ["Verdict per category"]
    for d in decided:
        lines.append(f"  {d.name:<16} {d.verdict:<32} {d.why}")
        for p in d.pairs:
            if p.low is not None:
                lines.append(
                    f"      {p.a} - {p.b}: {fmt(p.difference, '.4g')} "
                    f"{fmt_interval(p, '.4g')}{'  significant' if p.significant else ''}"
                )
    lines += ["", "How verdicts are reached"]
    for test in dict.fromkeys(d.test for d in decided):
        names = ", ".join(d.name for d in decided if d.test == test)
        lines += textwrap.wrap(f"{names}: {HOW[test]}", width=100, initial_indent="  ", subsequent_indent="    ")
    return lines


def comparison_summary(
    meta: RunMeta | Mapping[str, Any], metrics: Mapping[str, TranscoderResult | Mapping[str, Any]]
) -> str:
    """summary.txt for ``compare``: header, each transcoder's sites, a side-by-side table, verdicts."""
    results = as_results(metrics)
    lines = header_lines(meta, "transcoderbench comparison")
    for m in results.values():
        lines += transcoder_lines(m) + [""]
    lines.append(uncertainty_line(next(iter(results.values()))))
    lines.append("")
    lines += _table_lines(results)
    lines += ["", "(± is half the width of the bootstrap interval)", ""]
    lines += _verdict_lines(decide(results))
    lines += ["", "Note: more active latents buy reconstruction; compare FVU together with L0."]
    lines += textwrap.wrap("Note: " + VERSUS_REDUNDANCY, width=100, subsequent_indent="  ")
    for name, m in results.items():
        caution = absorption_caution(m)
        if caution:
            lines += textwrap.wrap(f"Note: {name}: absorption: caution: {caution}", width=100, subsequent_indent="  ")
    for name, m in results.items():
        lines += ["", f"[{name}]"] + suggestion_lines(m)[1:]
    lines += ["", "Report with plots: report.html in this directory (rebuild with `transcoderbench report DIR`)."]
    return "\n".join(lines) + "\n"
