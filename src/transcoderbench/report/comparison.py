"""Side-by-side comparison of transcoders evaluated on the same tokens, with a verdict per category.

A category names a winner only when the evidence says so:

- per-sequence metrics (FVU, cosine, L0, delta loss, KL) are tested with the paired bootstrap
  over sequences (``uncertainty.differences`` in each transcoder's metrics): a transcoder wins
  when the interval of its difference to *every* other excludes 0 in its favour; otherwise the
  verdict is "no significant difference";
- decoder redundancy depends on the weights alone: there is no sampling noise, so the exact
  values decide (equal values: no difference);
- dead latents and absorption are counts over the whole evaluation or over a word list, with
  no per-sequence form: no interval exists, so they are not tested and name no winner (the
  point values are shown).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Any

from transcoderbench.absorption.summary import VERSUS_REDUNDANCY
from transcoderbench.report.catalog import (
    BY_KEY,
    METRICS,
    dig,
    fmt,
    fmt_interval,
    interval_of,
)
from transcoderbench.report.suggestions import suggestions_as_dicts
from transcoderbench.report.summary import (
    header_lines,
    headline_fields,
    suggestion_lines,
    transcoder_lines,
    uncertainty_line,
)

NO_DIFFERENCE = "no significant difference"


@dataclass(frozen=True)
class Category:
    """One comparison category: which metric decides it, in which direction, and how it is tested."""

    name: str
    path: tuple[str, ...]
    lower_is_better: bool
    why: str
    test: str
    """``bootstrap`` (paired, over sequences), ``exact`` (no sampling noise) or ``none``."""


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
    Category("absorption", ("absorption", "mean_absorption_fraction"), True, "less first-letter absorption", "none"),
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
    "exact": "computed from the weights alone (no sampling noise): the exact values decide",
    "none": "not tested: no interval exists (a count over the whole evaluation or over a word list), so no winner "
    "is named; point values shown",
}


def _difference(metrics: dict[str, dict[str, Any]], a: str, b: str, key: str) -> dict[str, Any] | None:
    """The paired difference a - b of interval metric ``key`` (from a's record, else negated from b's)."""
    iv = dig(metrics[a], ("uncertainty", "differences", b, key))
    if isinstance(iv, dict) and iv.get("low") is not None:
        return iv
    iv = dig(metrics[b], ("uncertainty", "differences", a, key))
    if isinstance(iv, dict) and iv.get("low") is not None:
        return {
            "value": -iv["value"],
            "low": -iv["high"],
            "high": -iv["low"],
            "se": iv.get("se"),
            "significant": iv.get("significant"),
        }
    return None


def _finite_or_none(value: Any) -> Any:
    """NaN (a metric undefined on these tokens) counts as missing, as it is once written to JSON."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _better(diff_value: float, lower_is_better: bool) -> bool:
    return diff_value < 0 if lower_is_better else diff_value > 0


def decide_category(cat: Category, metrics: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The verdict of one category, or None when no transcoder has its metric."""
    names = list(metrics)
    values = {n: _finite_or_none(dig(metrics[n], cat.path)) for n in names}
    if all(v is None for v in values.values()):
        return None
    info = BY_KEY.get(".".join(cat.path))
    record: dict[str, Any] = {
        **asdict(cat),
        "path": ".".join(cat.path),
        "values": values,
        "how": HOW[cat.test],
        "intervals": {},
        "pairs": [],
        "winner": None,
    }
    if any(v is None for v in values.values()):
        missing = [n for n, v in values.items() if v is None]
        return {**record, "verdict": f"not comparable ({', '.join(missing)}: not measured)"}
    if cat.test == "exact":
        best = min(values.values()) if cat.lower_is_better else max(values.values())
        leaders = [n for n, v in values.items() if v == best]
        if len(leaders) == 1 and len(set(values.values())) > 1:
            return {**record, "winner": leaders[0], "verdict": leaders[0]}
        return {
            **record,
            "verdict": "no difference (identical values)"
            if len(set(values.values())) == 1
            else "tie at the best value",
        }
    if cat.test == "none":
        return {**record, "verdict": "not tested (no interval exists)"}
    key = info.interval if info else None
    record["intervals"] = {n: interval_of(metrics[n], info) for n in names} if info else {}
    beats: dict[str, set[str]] = {n: set() for n in names}
    untested = False
    for a, b in combinations(names, 2):
        iv = _difference(metrics, a, b, key) if key else None
        if iv is None:
            untested = True
            record["pairs"].append(
                {
                    "a": a,
                    "b": b,
                    "difference": values[a] - values[b],
                    "low": None,
                    "high": None,
                    "significant": False,
                    "better": None,
                }
            )
            continue
        significant = iv["low"] > 0 or iv["high"] < 0
        better = (a if _better(iv["value"], cat.lower_is_better) else b) if significant else None
        if better:
            beats[better].add(b if better == a else a)
        record["pairs"].append(
            {
                "a": a,
                "b": b,
                "difference": iv["value"],
                "low": iv["low"],
                "high": iv["high"],
                "significant": significant,
                "better": better,
            }
        )
    if untested:
        return {**record, "verdict": "not tested (no bootstrap intervals in these results)"}
    winners = [n for n in names if len(beats[n]) == len(names) - 1]
    if winners:
        return {**record, "winner": winners[0], "verdict": winners[0]}
    if not any(p["significant"] for p in record["pairs"]):
        return {**record, "verdict": NO_DIFFERENCE}
    found = "; ".join(
        f"{p['better']} better than {p['b'] if p['better'] == p['a'] else p['a']}"
        for p in record["pairs"]
        if p["significant"]
    )
    return {**record, "verdict": f"no single winner ({found})"}


def decide(metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every category's verdict (categories no transcoder has are left out)."""
    return [d for d in (decide_category(c, metrics) for c in CATEGORIES) if d is not None]


def differences(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``"a - b" -> {metric: interval of the paired difference}`` for every pair, in name order."""
    out: dict[str, Any] = {}
    for a, b in combinations(list(metrics), 2):
        d = dig(metrics[a], ("uncertainty", "differences", b))
        if isinstance(d, dict):
            out[f"{a} - {b}"] = d
    return out


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "fvu": m.get("fvu"),
        "explained_variance": m.get("explained_variance"),
        "mean_l0": m.get("mean_l0"),
        "dead_percentage": m.get("dead_percentage"),
        "absorption": m.get("absorption"),
    }
    for info in METRICS:
        out[info.label] = dig(m, info.path)
    out["d_sae"] = dig(m, ("transcoder", "d_sae"))
    out["intervals"] = dig(m, ("uncertainty", "intervals")) or {}
    return out


def comparison_record(meta: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """comparison.json: shared metadata, verdicts, paired differences, each transcoder's headline numbers."""
    first = next(iter(metrics.values()), {})
    unc = first.get("uncertainty") or {}
    return {
        "meta": meta,
        "transcoders": {
            name: {
                "transcoder": m.get("transcoder"),
                "sites": m.get("sites"),
                "source": m.get("source"),
                **_headline(m),
            }
            for name, m in metrics.items()
        },
        "bootstrap": {k: unc.get(k) for k in ("method", "confidence", "n_resamples", "seed", "n_sequences", "note")},
        "categories": decide(metrics),
        "differences": differences(metrics),
        "suggestions": {name: suggestions_as_dicts(m) for name, m in metrics.items()},
        "note": "all transcoders were evaluated on exactly the same tokens in one pass; a category names a winner only "
        "when the paired bootstrap interval of the difference excludes 0 (or, for weight-only metrics, when the "
        "exact values differ); compare FVU only together with L0, since more active latents buy reconstruction",
    }


def comparison_summary(meta: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> str:
    """summary.txt for ``compare``: header, each transcoder's sites, a side-by-side table, verdicts."""
    names = list(metrics)
    lines = header_lines(meta, "transcoderbench comparison")
    for m in metrics.values():
        lines += transcoder_lines(m) + [""]
    lines.append(uncertainty_line(next(iter(metrics.values()))))
    lines.append("")
    width = max(24, *(len(n) + 2 for n in names))
    lines.append(f"{'metric':<40}" + "".join(f"{n:>{width}}" for n in names))
    seed_rows = {n: headline_fields(metrics[n]) for n in names}
    for i, (field, _, spec, _) in enumerate(seed_rows[names[0]]):
        lines.append(
            f"{field + ' (seed field)':<40}" + "".join(f"{fmt(seed_rows[n][i][1], spec):>{width}}" for n in names)
        )
    for info in METRICS:
        if all(dig(metrics[n], info.path) is None for n in names):
            continue
        cells = []
        for n in names:
            iv = interval_of(metrics[n], info)
            half = f" ±{(iv['high'] - iv['low']) / 2:.2g}" if iv else ""
            cells.append(fmt(dig(metrics[n], info.path), info.spec) + half)
        lines.append(f"{info.label:<40}" + "".join(f"{c:>{width}}" for c in cells))
    lines += ["", "(± is half the width of the bootstrap interval)", "", "Verdict per category"]
    decided = decide(metrics)
    for d in decided:
        lines.append(f"  {d['name']:<16} {d['verdict']:<32} {d['why']}")
        for p in d["pairs"]:
            if p["low"] is not None:
                lines.append(
                    f"      {p['a']} - {p['b']}: {fmt(p['difference'], '.4g')} "
                    f"{fmt_interval(p, '.4g')}{'  significant' if p['significant'] else ''}"
                )
    lines += ["", "How verdicts are reached"]
    for test in dict.fromkeys(d["test"] for d in decided):
        names = ", ".join(d["name"] for d in decided if d["test"] == test)
        lines += textwrap.wrap(f"{names}: {HOW[test]}", width=100, initial_indent="  ", subsequent_indent="    ")
    lines += ["", "Note: more active latents buy reconstruction; compare FVU together with L0."]
    lines += textwrap.wrap("Note: " + VERSUS_REDUNDANCY, width=100, subsequent_indent="  ")
    for name, m in metrics.items():
        lines += ["", f"[{name}]"] + suggestion_lines(m)[1:]
    lines += ["", "Report with plots: report.html in this directory (rebuild with `transcoderbench report DIR`)."]
    return "\n".join(lines) + "\n"
