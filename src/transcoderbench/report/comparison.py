"""Side-by-side comparison of transcoders evaluated on the same tokens, with a winner per category."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transcoderbench.report.summary import dig, fmt, header_lines, suggestion_lines, transcoder_lines


@dataclass(frozen=True)
class Category:
    """One comparison category: which metric decides it and in which direction."""

    name: str
    path: tuple[str, ...]
    lower_is_better: bool
    why: str


CATEGORIES: list[Category] = [
    Category("reconstruction", ("reconstruction", "fvu"), True, "FVU: less unexplained variance"),
    Category("direction", ("reconstruction", "cosine_similarity"), False, "cosine similarity to the target"),
    Category("sparsity", ("sparsity", "l0_mean"), True, "mean L0: fewer active latents per token"),
    Category("utilization", ("sparsity", "dead_percentage"), True, "fewer dead latents"),
    Category("redundancy", ("decoder_redundancy", "redundant_pair_fraction"), True, "fewer near-duplicate decoder rows"),
]

TABLE_ROWS: list[tuple[str, tuple[str, ...], str]] = [
    ("FVU", ("reconstruction", "fvu"), ".4f"),
    ("explained variance", ("reconstruction", "explained_variance"), ".4f"),
    ("explained variance (legacy per-token)", ("reconstruction", "explained_variance_legacy"), ".4f"),
    ("MSE per element", ("reconstruction", "mse"), ".4g"),
    ("cosine similarity", ("reconstruction", "cosine_similarity"), ".4f"),
    ("L2 ratio", ("reconstruction", "l2_ratio"), ".4f"),
    ("relative reconstruction bias", ("reconstruction", "relative_reconstruction_bias"), ".4f"),
    ("mean L0", ("sparsity", "l0_mean"), ".2f"),
    ("median L0", ("sparsity", "l0_median"), ".1f"),
    ("dead latents (%)", ("sparsity", "dead_percentage"), ".2f"),
    ("dense latents (fraction)", ("sparsity", "dense_fraction"), ".4f"),
    ("decoder pairs |cos| > 0.9", ("decoder_redundancy", "redundant_pair_fraction"), ".3g"),
    ("d_sae", ("transcoder", "d_sae"), "d"),
]


def decide(metrics: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """For each category: every transcoder's value and the winner (None on a tie or missing values)."""
    out = []
    for cat in CATEGORIES:
        values = {name: dig(m, cat.path) for name, m in metrics.items()}
        known = {n: v for n, v in values.items() if v is not None}
        winner = None
        if len(known) == len(values) and len(known) >= 2:
            best = min(known.values()) if cat.lower_is_better else max(known.values())
            leaders = [n for n, v in known.items() if v == best]
            winner = leaders[0] if len(leaders) == 1 else None
        out.append({**asdict(cat), "path": ".".join(cat.path), "values": values, "winner": winner,
                    "verdict": winner if winner else "tie or not comparable"})
    return out


def comparison_record(meta: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """comparison.json: shared metadata, per-category verdicts, and each transcoder's headline numbers."""
    return {
        "meta": meta,
        "transcoders": {name: {"transcoder": m.get("transcoder"), "sites": m.get("sites"), "source": m.get("source"),
                               **{label: dig(m, path) for label, path, _ in TABLE_ROWS}}
                        for name, m in metrics.items()},
        "categories": decide(metrics),
        "note": "all transcoders were evaluated on exactly the same tokens in one pass; compare FVU only together with "
                "L0, since more active latents buy reconstruction",
    }


def comparison_summary(meta: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> str:
    """summary.txt for ``compare``: header, each transcoder's sites, a side-by-side table, verdicts."""
    names = list(metrics)
    lines = header_lines(meta, "transcoderbench comparison")
    for m in metrics.values():
        lines += transcoder_lines(m) + [""]
    width = max(12, *(len(n) for n in names))
    lines.append(f"{'metric':<40}" + "".join(f"{n:>{width + 2}}" for n in names))
    for label, path, spec in TABLE_ROWS:
        lines.append(f"{label:<40}" + "".join(f"{fmt(dig(metrics[n], path), spec):>{width + 2}}" for n in names))
    lines += ["", "Winner per category"]
    for d in decide(metrics):
        lines.append(f"  {d['name']:<16} {d['verdict']:<24} ({d['why']})")
    lines += ["", "Note: more active latents buy reconstruction; compare FVU together with L0.",
              "Absorption: not computed by this version (decoder redundancy is a different quantity)."]
    for name, m in metrics.items():
        lines += ["", f"[{name}]"] + suggestion_lines(m)[1:]
    return "\n".join(lines) + "\n"
