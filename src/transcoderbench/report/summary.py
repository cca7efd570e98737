"""Plain-language summaries: what was measured, on what, what each number means, what to change."""

from __future__ import annotations

import textwrap
from typing import Any

from transcoderbench.report.suggestions import suggest

# (section, key path, label, format, explanation). Explanations are one short sentence each.
METRIC_LINES: list[tuple[str, tuple[str, ...], str, str, str]] = [
    ("Reconstruction", ("reconstruction", "fvu"), "FVU", ".4f",
     "fraction of the target's variance left unexplained, pooled over tokens and dimensions (0 is perfect, 1 is "
     "no better than always predicting the mean)"),
    ("Reconstruction", ("reconstruction", "explained_variance"), "explained variance", ".4f", "1 - FVU"),
    ("Reconstruction", ("reconstruction", "explained_variance_legacy"), "explained variance, legacy per-token form", ".4f",
     "mean over tokens of 1 - error/variance with each batch's own mean, as older tools compute it; depends on batch "
     "size, shown only to compare with those tools"),
    ("Reconstruction", ("reconstruction", "mse"), "MSE per element", ".4g", "mean squared error per output dimension"),
    ("Reconstruction", ("reconstruction", "mae"), "MAE per element", ".4g", "mean absolute error per output dimension"),
    ("Reconstruction", ("reconstruction", "cosine_similarity"), "cosine similarity", ".4f",
     "mean over tokens of the cosine between target and reconstruction (1 = same direction)"),
    ("Reconstruction", ("reconstruction", "l2_ratio"), "L2 ratio", ".4f",
     "mean over tokens of |reconstruction| / |target| (1 = same size)"),
    ("Reconstruction", ("reconstruction", "relative_reconstruction_bias"), "relative reconstruction bias", ".4f",
     "E|y_hat|^2 / E<y, y_hat>; below 1 means reconstructions shrink, above 1 that they overshoot"),
    ("Sparsity", ("sparsity", "l0_mean"), "mean L0", ".2f", "average number of latents active per token"),
    ("Sparsity", ("sparsity", "l0_median"), "median L0", ".1f", "median number of active latents per token"),
    ("Sparsity", ("sparsity", "l0_std"), "L0 std", ".2f", "spread of the number of active latents across tokens"),
    ("Sparsity", ("sparsity", "dead_percentage"), "dead latents (%)", ".2f",
     "latents that fired on none of the evaluated tokens"),
    ("Sparsity", ("sparsity", "dense_fraction"), "dense latents (fraction)", ".4f",
     "latents that fire on more than 10% of tokens"),
]


def dig(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def header_lines(meta: dict[str, Any], title: str) -> list[str]:
    """The lines every summary starts with: which model, dataset and tokens were used."""
    model = meta.get("model", {})
    data = meta.get("dataset", {})
    tok = meta.get("tokens", {})
    versions = meta.get("versions", {})
    stop = tok.get("forward_pass_stopped_after_layer")
    return [
        title,
        "=" * len(title),
        f"model:    {model.get('name')} ({model.get('family')}, {model.get('n_layers')} layers, d_model "
        f"{model.get('d_model')}, {model.get('dtype')} on {model.get('device')})",
        f"dataset:  {data.get('name')}",
        f"tokens:   {tok.get('n_tokens_evaluated', 0):,} evaluated of {tok.get('n_positions', 0):,} positions read "
        f"({tok.get('n_batches')} batches x {tok.get('batch_size')} sequences x {tok.get('seq_len')} tokens); "
        "BOS, PAD and EOS positions excluded",
        "forward:  " + (f"stopped after layer {stop} (later layers not needed)" if stop is not None else "full forward pass"),
        f"versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
    ]


def transcoder_lines(m: dict[str, Any]) -> list[str]:
    tc = m.get("transcoder", {})
    src = m.get("source", {})
    sites = m.get("sites", {})
    lines = [
        f"transcoder {m.get('name')}: {tc.get('architecture')}, d_in {tc.get('d_in')} -> d_sae {tc.get('d_sae')} -> "
        f"d_out {tc.get('d_out')}" + (f", nested prefixes {tc.get('prefix_ends')}" if len(tc.get("prefix_ends", [])) > 1 else ""),
        f"  loaded from {src.get('source')} ({src.get('format')} format)",
    ]
    for side in ("input", "output"):
        s = sites.get(side, {})
        extra = f", normalised without gain ({s['normalize']})" if s.get("normalize") else ""
        lines.append(f"  {side + ':':7} {s.get('name')} = {s.get('direction')} of {s.get('module')}{extra}")
    for note in src.get("notes") or []:
        lines.append(f"  note: {note}")
    return lines


def metric_lines(m: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    section = None
    for sec, path, label, spec, why in METRIC_LINES:
        if sec != section:
            lines += ["", sec]
            section = sec
        lines.append(f"  {label:<44} {fmt(dig(m, path), spec):>10}   {why}")
    sp = m.get("sparsity", {})
    if sp:
        lines.append(f"  (dead and dense are measured over {sp.get('n_tokens', 0):,} tokens; a latent may be alive on other text)")
    prefixes = (m.get("prefixes") or {}).get("per_prefix") or []
    if prefixes:
        lines += ["", "Matryoshka prefixes (reconstruction using only the first N latents)"]
        lines.append(f"  {'first N latents':>16} {'FVU':>9} {'cosine':>9} {'MSE':>11}")
        for p in prefixes:
            lines.append(f"  {p['prefix_end']:>16} {fmt(p.get('fvu'), '.4f'):>9} {fmt(p.get('cosine_similarity'), '.4f'):>9} "
                         f"{fmt(p.get('mse'), '.4g'):>11}")
    red = m.get("decoder_redundancy") or {}
    if red:
        lines += ["", "Decoder redundancy (formerly mislabelled 'absorption score')"]
        lines.append(f"  {'pairs of latents with |cos| > 0.9':<44} {fmt(red.get('redundant_pair_fraction'), '.3g'):>10}   "
                     "fraction of decoder-row pairs pointing (anti)parallel: duplicated latents")
        lines.append(f"  {'median max |cos| to another latent':<44} {fmt(dig(red, ('max_abs_cos', 'median')), '.4f'):>10}   "
                     "how close each latent's output direction is to its nearest neighbour")
    lines += ["", "Absorption"]
    if m.get("absorption") is None:
        lines.append("  " + str(m.get("absorption_note", "not computed")))
    return lines


def suggestion_lines(m: dict[str, Any]) -> list[str]:
    lines = ["", "Suggestions"]
    if (m.get("source") or {}).get("format") in ("gemma_scope_1", "gemma_scope_2", "saelens"):
        lines.append("  (pretrained transcoder: training suggestions apply only if you train one like it)")
    found = suggest(m)
    if not found:
        lines.append("  none: no metric crossed a threshold in transcoderbench/report/suggestions.py")
    for s in found:
        lines.append(f"  - {s.finding}")
        lines += textwrap.wrap(f"change: {s.change}", width=100, initial_indent="      ", subsequent_indent="        ")
        lines += textwrap.wrap(f"why: {s.why}", width=100, initial_indent="      ", subsequent_indent="        ")
    return lines


def evaluation_summary(meta: dict[str, Any], m: dict[str, Any]) -> str:
    """summary.txt for ``evaluate``: header, each metric in plain words, suggestions."""
    lines = header_lines(meta, "transcoderbench evaluation")
    lines += transcoder_lines(m) + metric_lines(m) + suggestion_lines(m)
    return "\n".join(lines) + "\n"
