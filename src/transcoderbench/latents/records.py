"""The machine-readable latents record (latents.json) built from a collector's evidence after the pass."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from transcoderbench.latents.collector import HIST_BINS, NO_SEQ, hist_edges
from transcoderbench.latents.effects import LABEL, direct_effects
from transcoderbench.lm import LanguageModel
from transcoderbench.transcoders import Transcoder

FORMAT = "transcoderbench-latents-1"
INPUT_TOKENS = 5


def _r(x: float) -> float:
    """Four significant digits: enough to read, and it keeps the page small."""
    return float(f"{x:.4g}")


def _examples(act: list[float], seq: list[int], pos: list[int]) -> list[list[Any]]:
    return [[_r(a), s, p] for a, s, p in zip(act, seq, pos) if s != NO_SEQ]


def _group_of(ids: Tensor, prefix_ends: tuple[int, ...]) -> list[int]:
    return torch.searchsorted(torch.tensor(prefix_ends), ids, right=True).tolist()


def _trimmed_hist(row: Tensor) -> list[int]:
    """``[first_bin, counts...]`` from the first to the last non-empty bin (``[]`` when empty)."""
    nz = torch.nonzero(row)[:, 0]
    if not len(nz):
        return []
    lo, hi = int(nz[0]), int(nz[-1])
    return [lo, *row[lo : hi + 1].tolist()]


def _input_tokens(examples: list[list[Any]], seqs: dict[int, list[int]]) -> list[list[Any]]:
    """Tokens at the marked positions of the kept examples: ``[token, max activation, count]``, strongest first."""
    best: dict[int, list[Any]] = defaultdict(lambda: [0.0, 0])
    for act, s, p in examples:
        tok = seqs[s][p] if s in seqs else -1
        best[tok][0] = max(best[tok][0], act)
        best[tok][1] += 1
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))
    return [[t, v[0], v[1]] for t, v in ranked[:INPUT_TOKENS] if t >= 0]


def latents_record(
    name: str, tc: Transcoder, evidence: dict[str, Any], lm: LanguageModel | None, top_tokens: int = 10
) -> dict[str, Any]:
    """Every latent's evidence as compact JSON-ready lists, with the token strings it needs."""
    ids: Tensor = evidence["subset"]
    n_tokens = int(evidence["n_tokens"])
    seqs = {s: row.tolist() for s, row in evidence["sequences"].items()}
    effects = direct_effects(lm, tc.W_dec.detach(), ids, top=top_tokens) if lm is not None else None
    eff = {k: v.tolist() for k, v in effects.items()} if effects is not None else None
    groups = _group_of(ids, tc.prefix_ends)
    ev = {k: evidence[k].tolist() for k in ("top_act", "top_seq", "top_pos", "smp_act", "smp_seq", "smp_pos")}
    counts, sums = evidence["count"].tolist(), evidence["act_sum"].tolist()
    hist = evidence["hist"].reshape(len(ids), HIST_BINS)
    latents = []
    for row, lid in enumerate(ids.tolist()):
        count = counts[row]
        top = _examples(ev["top_act"][row], ev["top_seq"][row], ev["top_pos"][row])
        samples = _examples(ev["smp_act"][row], ev["smp_seq"][row], ev["smp_pos"][row])
        samples.sort(key=lambda e: -e[0])
        entry: dict[str, Any] = {
            "id": lid,
            "group": groups[row],
            "count": count,
            "density": _r(count / max(n_tokens, 1)),
            "mean": _r(sums[row] / count) if count else 0.0,
            "max": top[0][0] if top else 0.0,
            "hist": _trimmed_hist(hist[row]) if count else [],
            "top": top,
            "samples": samples,
            "inputs": _input_tokens(top + samples, seqs),
        }
        if eff is not None:
            entry["up"] = [[t, _r(v)] for t, v in zip(eff["up_ids"][row], eff["up_val"][row])]
            entry["down"] = [[t, _r(v)] for t, v in zip(eff["down_ids"][row], eff["down_val"][row])]
        latents.append(entry)
    used = sorted({t for s in seqs.values() for t in s if t >= 0} | _effect_tokens(latents))
    return {
        "format": FORMAT,
        "name": name,
        "transcoder": tc.describe(),
        "d_sae": tc.d_sae,
        "prefix_ends": list(tc.prefix_ends),
        "n_tokens": n_tokens,
        "top_k": int(evidence["top_act"].shape[1]),
        "samples": int(evidence["smp_act"].shape[1]),
        "hist_edges": [_r(e) for e in hist_edges()],
        "logit_lens": LABEL if effects is not None else None,
        "logit_lens_note": "decoder row through the model's final norm and unembedding, centred over the "
        "vocabulary; later layers are ignored"
        if effects is not None
        else "not computed: the model's final norm and unembedding could not be rebuilt",
        "latents": latents,
        "sequences": {str(s): row for s, row in sorted(seqs.items())},
        "vocab": dict(zip(map(str, used), _decode(lm, used))),
    }


def _effect_tokens(latents: list[dict[str, Any]]) -> set[int]:
    return {int(t) for e in latents for key in ("up", "down") for t, _ in e.get(key, [])}


def _decode(lm: LanguageModel | None, ids: list[int]) -> list[str]:
    if lm is None:
        return [str(i) for i in ids]
    return list(lm.tokenizer.batch_decode([[i] for i in ids]))
