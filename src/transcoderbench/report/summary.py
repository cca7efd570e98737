"""Plain-language summaries: what was measured, on what, what each number means, what to change."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from transcoderbench.absorption.summary import summary_lines as absorption_summary_lines
from transcoderbench.report.catalog import (
    METRICS,
    MetricInfo,
    fmt,
    fmt_interval,
    interval_of,
    prefix_rows,
    value_of,
)
from transcoderbench.report.suggestions import suggest
from transcoderbench.results import (
    ModelInfo,
    RunMeta,
    Site,
    Sites,
    Source,
    Tokens,
    TranscoderInfo,
    TranscoderResult,
    plain,
)

__all__ = [
    "evaluation_summary",
    "fmt",
    "header_lines",
    "headline_fields",
    "metric_lines",
    "suggestion_lines",
    "transcoder_lines",
    "uncertainty_line",
]

#: Formats whose transcoders were trained elsewhere: training suggestions apply only by analogy.
PRETRAINED_FORMATS = ("gemma_scope_1", "gemma_scope_2", "saelens")


def as_meta(meta: RunMeta | Mapping[str, Any] | None) -> RunMeta:
    """A ``RunMeta`` from a record or from the evaluation's meta dict."""
    if isinstance(meta, RunMeta):
        return meta
    return RunMeta.from_json(plain(dict(meta or {})), "meta")


def header_lines(meta: RunMeta | Mapping[str, Any], title: str) -> list[str]:
    """The lines every summary starts with: which model, dataset and tokens were used."""
    meta = as_meta(meta)
    model = meta.model or ModelInfo()
    tok = meta.tokens or Tokens()
    stop = tok.forward_pass_stopped_after_layer
    return [
        title,
        "=" * len(title),
        f"model:    {model.name} ({model.family}, {model.n_layers} layers, d_model "
        f"{model.d_model}, {model.dtype} on {model.device})",
        f"dataset:  {meta.dataset.name if meta.dataset else None}",
        f"tokens:   {tok.n_tokens_evaluated or 0:,} evaluated of {tok.n_positions or 0:,} positions read "
        f"({tok.n_batches} batches x {tok.batch_size} sequences x {tok.seq_len} tokens); "
        "BOS, PAD and EOS positions excluded",
        "forward:  "
        + (f"stopped after layer {stop} (later layers not needed)" if stop is not None else "full forward pass"),
        "versions: " + ", ".join(f"{k} {v}" for k, v in meta.versions.items()),
        "",
    ]


def source_text(src: Source | None) -> str:
    """Where a transcoder was loaded from (or that it was built in memory)."""
    if src is None or not src.source:
        return "built in memory (not loaded from a checkpoint)"
    return f"loaded from {src.source} ({src.format} format)"


NORMALIZE_TEXT = {
    "rms": "RMS-normalised without the gain (rms)",
    "layernorm": "layer-normed without gain and bias (layernorm)",
    "layernorm_weight": "layer-normed times the gain, without the bias (layernorm_weight)",
}


def site_text(s: Site) -> tuple[str, str]:
    """(``name = direction of module``, normalisation note) of one site."""
    extra = f", {NORMALIZE_TEXT.get(s.normalize, s.normalize)}" if s.normalize else ""
    return f"{s.name} = {s.direction} of {s.module}", extra


def sides(m: TranscoderResult) -> list[tuple[str, Site]]:
    sites = m.sites or Sites()
    return [("input", sites.input or Site()), ("output", sites.output or Site())]


def transcoder_lines(m: TranscoderResult | Mapping[str, Any]) -> list[str]:
    m = TranscoderResult.coerce(m)
    tc = m.transcoder or TranscoderInfo()
    lines = [
        f"transcoder {m.name}: {tc.architecture}, d_in {tc.d_in} -> d_sae {tc.d_sae} -> d_out {tc.d_out}"
        + (f", nested prefixes {list(tc.prefix_ends)}" if len(tc.prefix_ends) > 1 else ""),
        f"  {source_text(m.source)}",
    ]
    for side, s in sides(m):
        text, extra = site_text(s)
        lines.append(f"  {side + ':':7} {text}{extra}")
    for note in m.source.notes if m.source else ():
        lines.append(f"  note: {note}")
    return lines


def absorption_value(m: TranscoderResult) -> tuple[float | None, str]:
    """(value, note) for the seed's ``absorption`` field: first-letter absorption or why it is missing."""
    if m.absorption is not None:
        return m.absorption.mean_absorption_fraction, "absorption.mean_absorption_fraction (first-letter method)"
    return None, str(m.absorption_note or "not computed")


def absorption_caution(m: TranscoderResult) -> str | None:
    """The input-decoder fit's warning (transcoder-mode absorption whose shares are uncertain), if any."""
    fit = m.absorption.extra.get("input_decoder") if m.absorption is not None else None
    return (fit or {}).get("warning") or None


def downstream_note(m: TranscoderResult) -> str:
    """Why a transcoder has no downstream metrics."""
    return str(m.downstream_note or "not computed in this run (evaluated with --no-downstream)")


def seed_value(m: TranscoderResult, info: MetricInfo) -> Any:
    """The seed's top-level field (as written), else the value at the metric's path."""
    assert info.seed_field is not None
    written = m.keys is None or info.seed_field in m.keys
    return getattr(m, info.seed_field) if written else value_of(m, info)


def headline_fields(m: TranscoderResult | Mapping[str, Any]) -> list[tuple[str, Any, str, str]]:
    """The seed's field names with their values: (field, value, format, interval text)."""
    m = TranscoderResult.coerce(m)
    out = [
        (info.seed_field, seed_value(m, info), info.spec, fmt_interval(interval_of(m, info), info.spec))
        for info in METRICS
        if info.seed_field
    ]
    value, note = absorption_value(m)
    out.append(("absorption", value, ".4f", "" if value is not None else note))
    return out


def uncertainty_line(m: TranscoderResult | Mapping[str, Any]) -> str:
    unc = TranscoderResult.coerce(m).uncertainty
    if unc is None:
        return "intervals: none in these results (no bootstrap was run)"
    if not unc.intervals:
        return "intervals: " + str(unc.note or "none")
    assert unc.confidence is not None
    return (
        f"intervals: {100 * unc.confidence:.0f}% bootstrap over {unc.n_sequences} sequences "
        f"({unc.n_resamples} resamples, seed {unc.seed}); tokens within a sequence are correlated, so "
        "sequences are resampled, not tokens"
    )


def _value_line(m: TranscoderResult, info: MetricInfo) -> str:
    value = fmt(value_of(m, info), info.spec)
    iv = fmt_interval(interval_of(m, info), info.spec)
    return f"  {info.label:<40} {value:>10} {iv:<22} {info.meaning}"


def _prefix_lines(m: TranscoderResult) -> list[str]:
    rows = prefix_rows(m)
    if not rows:
        return []
    lines = ["", "Matryoshka prefixes (reconstruction using only the first N latents)"]
    keys = ("l0_mean", "fvu", "cosine_similarity", "delta_loss", "kl_div")
    cols = [c for c in keys if any(r.value(c) is not None for r in rows)]
    lines.append(f"  {'first N latents':>16}" + "".join(f"{c:>20}" for c in cols))
    for r in rows:
        cells = []
        for c in cols:
            iv = r.interval(c)
            spec = ".2f" if c == "l0_mean" else ".4f"
            cells.append(f"{fmt(r.value(c), spec)}" + (f" ±{iv.half_width:.2g}" if iv else ""))
        lines.append(f"  {r.prefix_end:>16}" + "".join(f"{c:>20}" for c in cells))
    return lines


def metric_lines(m: TranscoderResult | Mapping[str, Any]) -> list[str]:
    m = TranscoderResult.coerce(m)
    lines: list[str] = ["", "Headline (metrics.json field names)"]
    for field, value, spec, extra in headline_fields(m):
        lines.append(f"  {field:<20} {fmt(value, spec):>10}  {extra}")
    lines.append("  " + uncertainty_line(m))
    section = None
    for info in METRICS:
        if info.path[0] in ("downstream", "absorption") and getattr(m, info.path[0]) is None:
            continue
        if info.section != section:
            lines += ["", info.section]
            section = info.section
        lines.append(_value_line(m, info))
        if info.key == "sparsity.dense_fraction" and m.sparsity is not None:
            lines.append(
                f"  (dead and dense are measured over {m.sparsity.n_tokens or 0:,} tokens; a latent may be "
                "alive on other text)"
            )
    if m.downstream is None:
        lines += ["", "Downstream (spliced into the model)", "  " + downstream_note(m)]
    lines += ["", "Absorption (first letter)"]
    if m.absorption is not None:
        lines += ["  " + line for line in absorption_summary_lines(str(m.name), m.absorption.to_json())]
    lines += textwrap.wrap(
        str(m.absorption_note or absorption_value(m)[1]), width=100, initial_indent="  ", subsequent_indent="  "
    )
    return lines + _prefix_lines(m)


def is_pretrained(m: TranscoderResult) -> bool:
    """Loaded from a format trained elsewhere (Gemma Scope, SAELens)."""
    return m.source is not None and m.source.format in PRETRAINED_FORMATS


def suggestion_lines(m: TranscoderResult | Mapping[str, Any]) -> list[str]:
    m = TranscoderResult.coerce(m)
    lines = ["", "Suggestions"]
    if is_pretrained(m):
        lines.append("  (pretrained transcoder: training suggestions apply only if you train one like it)")
    found = suggest(m)
    if not found:
        lines.append("  none: no metric crossed a threshold in transcoderbench/report/suggestions.py")
    for s in found:
        lines.append(f"  - {s.finding}")
        lines += textwrap.wrap(f"change: {s.change}", width=100, initial_indent="      ", subsequent_indent="        ")
        lines += textwrap.wrap(f"why: {s.why}", width=100, initial_indent="      ", subsequent_indent="        ")
    return lines


def evaluation_summary(meta: RunMeta | Mapping[str, Any], m: TranscoderResult | Mapping[str, Any]) -> str:
    """summary.txt for ``evaluate``: header, each metric in plain words, suggestions."""
    m = TranscoderResult.coerce(m)
    lines = header_lines(meta, "transcoderbench evaluation")
    lines += transcoder_lines(m) + metric_lines(m) + suggestion_lines(m)
    lines += ["", "Report with plots: report.html in this directory (rebuild with `transcoderbench report DIR`)."]
    return "\n".join(lines) + "\n"
