"""Plain-language summaries: what was measured, on what, what each number means, what to change."""

from __future__ import annotations

import textwrap
from typing import Any

from transcoderbench.absorption.summary import summary_lines as absorption_summary_lines
from transcoderbench.report.catalog import (
    METRICS,
    MetricInfo,
    dig,
    fmt,
    fmt_interval,
    interval_of,
    prefix_rows,
)
from transcoderbench.report.suggestions import suggest

__all__ = [
    "dig",
    "evaluation_summary",
    "fmt",
    "header_lines",
    "headline_fields",
    "metric_lines",
    "suggestion_lines",
    "transcoder_lines",
    "uncertainty_line",
]


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
        "forward:  "
        + (f"stopped after layer {stop} (later layers not needed)" if stop is not None else "full forward pass"),
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
    ]


def source_text(src: dict[str, Any]) -> str:
    """Where a transcoder was loaded from (or that it was built in memory)."""
    if not src.get("source"):
        return "built in memory (not loaded from a checkpoint)"
    return f"loaded from {src.get('source')} ({src.get('format')} format)"


def transcoder_lines(m: dict[str, Any]) -> list[str]:
    tc = m.get("transcoder", {})
    src = m.get("source", {})
    sites = m.get("sites", {})
    lines = [
        f"transcoder {m.get('name')}: {tc.get('architecture')}, d_in {tc.get('d_in')} -> d_sae {tc.get('d_sae')} -> "
        f"d_out {tc.get('d_out')}"
        + (f", nested prefixes {tc.get('prefix_ends')}" if len(tc.get("prefix_ends", [])) > 1 else ""),
        f"  {source_text(src)}",
    ]
    for side in ("input", "output"):
        s = sites.get(side, {})
        extra = f", normalised without gain ({s['normalize']})" if s.get("normalize") else ""
        lines.append(f"  {side + ':':7} {s.get('name')} = {s.get('direction')} of {s.get('module')}{extra}")
    for note in src.get("notes") or []:
        lines.append(f"  note: {note}")
    return lines


def absorption_value(m: dict[str, Any]) -> tuple[Any, str]:
    """(value, note) for the seed's ``absorption`` field: first-letter absorption or why it is missing."""
    ab = m.get("absorption")
    if isinstance(ab, dict):
        return ab.get("mean_absorption_fraction"), "absorption.mean_absorption_fraction (first-letter method)"
    return None, str(m.get("absorption_note") or "not computed")


def downstream_note(m: dict[str, Any]) -> str:
    """Why a transcoder has no downstream metrics."""
    return str(m.get("downstream_note") or "not computed in this run (evaluated with --no-downstream)")


def headline_fields(m: dict[str, Any]) -> list[tuple[str, Any, str, str]]:
    """The seed's field names with their values: (field, value, format, interval text)."""
    out = []
    for info in METRICS:
        if info.seed_field:
            out.append(
                (
                    info.seed_field,
                    m.get(info.seed_field, dig(m, info.path)),
                    info.spec,
                    fmt_interval(interval_of(m, info), info.spec),
                )
            )
    value, note = absorption_value(m)
    out.append(("absorption", value, ".4f", "" if value is not None else note))
    return out


def uncertainty_line(m: dict[str, Any]) -> str:
    unc = m.get("uncertainty")
    if not isinstance(unc, dict):
        return "intervals: none in these results (no bootstrap was run)"
    if not unc.get("intervals"):
        return "intervals: " + str(unc.get("note") or "none")
    return (
        f"intervals: {100 * unc['confidence']:.0f}% bootstrap over {unc.get('n_sequences')} sequences "
        f"({unc['n_resamples']} resamples, seed {unc['seed']}); tokens within a sequence are correlated, so "
        "sequences are resampled, not tokens"
    )


def _value_line(m: dict[str, Any], info: MetricInfo) -> str:
    value = fmt(dig(m, info.path), info.spec)
    iv = fmt_interval(interval_of(m, info), info.spec)
    return f"  {info.label:<40} {value:>10} {iv:<22} {info.meaning}"


def metric_lines(m: dict[str, Any]) -> list[str]:
    lines: list[str] = ["", "Headline (metrics.json field names)"]
    for field, value, spec, extra in headline_fields(m):
        lines.append(f"  {field:<20} {fmt(value, spec):>10}  {extra}")
    lines.append("  " + uncertainty_line(m))
    section = None
    for info in METRICS:
        top = info.path[0]
        if top in ("downstream", "absorption") and not isinstance(m.get(top), dict):
            continue
        if info.section != section:
            lines += ["", info.section]
            section = info.section
        lines.append(_value_line(m, info))
        if info.key == "sparsity.dense_fraction" and m.get("sparsity"):
            lines.append(
                f"  (dead and dense are measured over {m['sparsity'].get('n_tokens', 0):,} tokens; a latent may be "
                "alive on other text)"
            )
    if not isinstance(m.get("downstream"), dict):
        lines += ["", "Downstream (spliced into the model)", "  " + downstream_note(m)]
    lines += ["", "Absorption (first letter)"]
    if isinstance(m.get("absorption"), dict):
        lines += ["  " + line for line in absorption_summary_lines(str(m.get("name")), m["absorption"])]
    lines += textwrap.wrap(
        str(m.get("absorption_note") or absorption_value(m)[1]), width=100, initial_indent="  ", subsequent_indent="  "
    )
    rows = prefix_rows(m)
    if rows:
        lines += ["", "Matryoshka prefixes (reconstruction using only the first N latents)"]
        cols = [c for c in ("l0_mean", "fvu", "cosine_similarity", "delta_loss", "kl_div") if any(c in r for r in rows)]
        lines.append(f"  {'first N latents':>16}" + "".join(f"{c:>20}" for c in cols))
        for r in rows:
            cells = []
            for c in cols:
                iv = r.get(f"{c}_interval")
                spec = ".2f" if c == "l0_mean" else ".4f"
                cells.append(f"{fmt(r.get(c), spec)}" + (f" ±{(iv['high'] - iv['low']) / 2:.2g}" if iv else ""))
            lines.append(f"  {r['prefix_end']:>16}" + "".join(f"{c:>20}" for c in cells))
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
    lines += ["", "Report with plots: report.html in this directory (rebuild with `transcoderbench report DIR`)."]
    return "\n".join(lines) + "\n"
