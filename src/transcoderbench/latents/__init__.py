"""Per-latent evidence collected in the evaluation pass, and the pages that show it.

``plan_latents`` makes one :class:`LatentCollector` per transcoder (plus the streamed pair
correlations for transcoders at the same sites); the API adds the collectors to each run's
accumulators, so the evidence comes from the same single pass as every metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from transcoderbench.config import LatentsConfig
from transcoderbench.errors import UserError
from transcoderbench.latents.collector import LatentCollector
from transcoderbench.latents.matching import PairCorrelation, cosine_candidates
from transcoderbench.latents.page import render_compare_page, render_latents_page
from transcoderbench.latents.records import latents_record
from transcoderbench.lm import LanguageModel
from transcoderbench.transcoders import Transcoder

__all__ = [
    "LatentCollector",
    "LatentsPlan",
    "PairCorrelation",
    "finish_latents",
    "latents_files",
    "latents_record",
    "parse_subset",
    "plan_latents",
    "render_compare_page",
    "render_latents_page",
]

#: Best and worst matches linked from report.html.
N_LINKED = 10


def parse_subset(spec: str | None, d_sae: int) -> torch.Tensor | None:
    """``START:END`` or a file of latent ids (whitespace or comma separated) -> sorted unique ids."""
    if not spec:
        return None
    start, sep, end = spec.partition(":")
    if sep and not Path(spec).is_file():
        try:
            lo, hi = int(start or 0), int(end) if end else d_sae
        except ValueError:
            raise UserError(f"--latents_subset {spec!r}: expected START:END (e.g. 0:4096) or a file of ids") from None
        ids = list(range(max(lo, 0), min(hi, d_sae)))
    else:
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"--latents_subset {spec!r}: not a range START:END and no such file")
        try:
            ids = [int(t) for t in path.read_text(encoding="utf-8").replace(",", " ").split()]
        except ValueError:
            raise UserError(f"--latents_subset {spec}: the file must hold integer latent ids") from None
    bad = [i for i in ids if not 0 <= i < d_sae]
    if bad or not ids:
        raise UserError(f"--latents_subset {spec!r}: ids must be between 0 and {d_sae - 1} (got {bad[:3] or 'none'})")
    return torch.tensor(sorted(set(ids)), dtype=torch.int64)


@dataclass
class LatentsPlan:
    """The collectors of one pass and the pair correlations between transcoders at the same sites."""

    collectors: dict[str, LatentCollector]
    pairs: list[PairCorrelation] = field(default_factory=list)

    def accumulators_for(self, tc: Transcoder, by_id: dict[int, str]) -> dict[str, LatentCollector]:
        return {"latents": self.collectors[by_id[id(tc)]]}


def plan_latents(transcoders: dict[str, Transcoder], config: LatentsConfig) -> LatentsPlan:
    """One collector per transcoder; a pair correlation for each pair at the same input and output sites."""
    config.check()
    collectors = {}
    for name, tc in transcoders.items():
        c = LatentCollector(
            tc.d_sae, config.latents_top_k, config.latents_samples, parse_subset(config.latents_subset, tc.d_sae)
        )
        c.run_name = name
        collectors[name] = c
    pairs = []
    names = list(transcoders)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ta, tb = transcoders[a], transcoders[b]
            if (ta.input_site, ta.output_site, ta.d_out) != (tb.input_site, tb.output_site, tb.d_out):
                continue
            cand, cos = cosine_candidates(ta.W_dec.detach(), tb.W_dec.detach(), config.latents_candidates)
            pair = PairCorrelation(a, b, cand, cos, tb.d_sae)
            collectors[a].taps.append(pair)
            collectors[b].taps.append(pair)
            pairs.append(pair)
    return LatentsPlan(collectors, pairs)


def finish_latents(
    plan: LatentsPlan, transcoders: dict[str, Transcoder], lm: LanguageModel
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """After the pass: each transcoder's latents record and each pair's matches."""
    records = {name: latents_record(name, transcoders[name], c.evidence(), lm) for name, c in plan.collectors.items()}
    return records, [p.matches() for p in plan.pairs]


def _linked(matches: dict[str, Any], ids: list[int]) -> dict[str, list[int]]:
    score = [max(c, r) for c, r in zip(matches["best_cos"], matches["best_corr"])]
    order = sorted(ids, key=lambda i: -score[i])
    return {"best": order[:N_LINKED], "worst": order[::-1][:N_LINKED]}


def latents_files(
    records: dict[str, dict[str, Any]],
    matches: list[dict[str, Any]],
    metrics: dict[str, dict[str, Any]],
    stem: dict[str, str],
) -> dict[str, str]:
    """``STEM.html`` and ``STEM.json`` per transcoder and ``latents_compare.html`` (first matched pair);
    records each page's name under ``metrics[name]["latents"]`` so report.html can link to it."""
    files: dict[str, str] = {}
    for name, record in records.items():
        files[f"{stem[name]}.html"] = render_latents_page(record)
        files[f"{stem[name]}.json"] = json_text(record)
        metrics[name].setdefault("latents", {})["page"] = f"{stem[name]}.html"
    for k, m in enumerate(matches):
        a, b = records[m["a"]], records[m["b"]]
        ids = [e["id"] for e in a["latents"]]
        page = "latents_compare.html" if k == 0 else f"latents_compare_{m['a']}_{m['b']}.html"
        sliced = {
            **m,
            **{key: [m[key][i] for i in ids] for key in ("best_cos_id", "best_cos", "best_corr_id", "best_corr")},
        }
        files[page] = render_compare_page(a, b, sliced)
        files[page.replace(".html", ".json")] = json_text(m)
        link = {"other": m["b"], "page": page, **_linked(m, ids), "n_unmatched_a": len(m["unmatched_a"])}
        metrics[m["a"]].setdefault("latents", {}).setdefault("matches", []).append(link)
    return files


def json_text(data: Any) -> str:
    import json

    from transcoderbench.io import json_ready

    return json.dumps(json_ready(data), separators=(",", ":"), allow_nan=False) + "\n"
