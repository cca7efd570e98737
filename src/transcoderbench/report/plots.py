"""The report's figures, drawn from the metrics JSON alone and returned as PNG bytes.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch, no
display needed). Each transcoder keeps one colour across every figure.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from transcoderbench.report.catalog import prefix_rows, value_at
from transcoderbench.results import Histogram, Interval, TranscoderResult, finite

Results = Mapping[str, TranscoderResult]

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


@dataclass
class Plot:
    """One figure for the report."""

    title: str
    png: bytes
    caption: str


def _figure(n_panels: int = 1) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(5.2 * n_panels, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _style(i: int) -> dict[str, Any]:
    return {"color": COLORS[i % len(COLORS)], "marker": MARKERS[i % len(MARKERS)]}


def _err(iv: Interval | None, value: float) -> list[list[float]] | None:
    if iv is None or iv.low is None or iv.high is None:
        return None
    return [[max(value - iv.low, 0.0)], [max(iv.high - value, 0.0)]]


def l0_histogram(metrics: Results) -> Plot | None:
    """Distribution of active latents per token, one outline per transcoder."""
    fig, (ax,) = _figure()
    drawn = 0
    for i, (name, m) in enumerate(metrics.items()):
        h = (m.sparsity.l0_histogram if m.sparsity else None) or Histogram()
        counts = np.asarray(h.counts, dtype=float)
        if counts.sum() <= 0:
            continue
        ax.stairs(
            counts / counts.sum(),
            np.asarray(h.bin_edges, dtype=float),
            label=f"{name} (mean {value_at(m, ('sparsity', 'l0_mean')):.1f})",
            color=_style(i)["color"],
            linewidth=1.8,
        )
        drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("active latents per token (L0)")
    ax.set_ylabel("fraction of tokens")
    ax.legend(fontsize=8)
    return Plot(
        "L0 per token",
        _png(fig),
        "How many latents fire on each evaluated token (BOS/PAD/EOS excluded). "
        "A narrow peak is what TopK-style training produces; a long right tail means a few tokens use many "
        "latents.",
    )


def density_histogram(metrics: Results) -> Plot | None:
    """Feature density (fraction of tokens each latent fires on), log10, one outline per transcoder."""
    fig, (ax,) = _figure()
    drawn = 0
    for i, (name, m) in enumerate(metrics.items()):
        h = (m.sparsity.feature_density_log10_histogram if m.sparsity else None) or Histogram()
        counts = np.asarray(h.counts, dtype=float)
        if counts.size == 0:
            continue
        dead = h.dead_latents if h.keys is None or "dead_latents" in h.keys else 0
        ax.stairs(
            counts,
            np.asarray(h.bin_edges, dtype=float),
            color=_style(i)["color"],
            linewidth=1.8,
            label=f"{name} ({dead} dead, not shown)",
        )
        drawn += 1
    if not drawn:
        return None
    ax.axvline(-1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("log10(fraction of tokens the latent fires on)")
    ax.set_ylabel("latents")
    ax.legend(fontsize=8)
    return Plot(
        "Feature density",
        _png(fig),
        "Each latent's firing frequency on the evaluated tokens, in log10. "
        "Latents right of the dotted line (10%) are dense; dead latents never fired and are counted in the "
        "legend, not drawn. The left edge is one firing in the whole evaluation.",
    )


def prefix_curves(metrics: Results) -> Plot | None:
    """FVU (and delta loss, when measured) against the number of latents in each nested prefix."""
    rows = {name: prefix_rows(m) for name, m in metrics.items()}
    rows = {n: r for n, r in rows.items() if r}
    if not rows:
        return None
    with_loss = any(any(p.value("delta_loss") is not None for p in r) for r in rows.values())
    absorption = {n: absorption_prefixes(metrics[n]) for n in rows}
    absorption = {n: pts for n, pts in absorption.items() if pts}
    fig, axes = _figure(1 + int(with_loss) + int(bool(absorption)))
    names = list(metrics)
    panels = [("fvu", "FVU", axes[0])] + ([("delta_loss", "delta loss (nats)", axes[1])] if with_loss else [])
    if absorption:
        _absorption_panel(axes[-1], absorption, names)
    for key, label, ax in panels:
        series = {
            name: [(p.prefix_end, p.values[key], p.interval(key)) for p in r if p.value(key) is not None]
            for name, r in rows.items()
        }
        _prefix_panel(ax, {n: pts for n, pts in series.items() if pts}, names, label)
    return Plot(
        "Matryoshka prefix curves",
        _png(fig),
        "Reconstruction (and spliced loss, when measured) using only the "
        "first N latents of each nested prefix; error bars are bootstrap intervals over sequences. A curve that "
        "flattens early means the last groups add little. Where absorption was measured, its panel shows the mean "
        "absorption fraction of each prefix alone (main latents chosen inside it; error bars: bootstrap over "
        "words): the question Matryoshka training asks is whether the early, general latents stop absorbing.",
    )


def absorption_prefixes(m: TranscoderResult) -> list[tuple[int, float, Interval | None]]:
    """(prefix end, mean absorption fraction, interval over words) of each nested prefix that was scored."""
    found = m.absorption.extra.get("prefixes") if m.absorption else None
    out = []
    for p in found if isinstance(found, list) else []:
        value = finite(p.get("mean_absorption_fraction")) if isinstance(p, dict) else None
        if value is None or not isinstance(p.get("prefix_end"), int):
            continue
        iv = (p.get("intervals") or {}).get("mean_absorption_fraction")
        out.append((p["prefix_end"], value, Interval.from_json(iv) if isinstance(iv, dict) else None))
    return out


def _absorption_panel(ax: Any, found: dict[str, list[tuple[int, float, Interval | None]]], names: list[str]) -> None:
    _prefix_panel(ax, found, names, "mean absorption fraction")


def _prefix_panel(
    ax: Any, series: dict[str, list[tuple[int, float, Interval | None]]], names: list[str], label: str
) -> None:
    """One metric against the prefix size, a line per transcoder with its intervals as error bars."""
    for name, pts in series.items():
        style = _style(names.index(name))
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], label=name, **style)
        for x, y, iv in pts:
            err = _err(iv, y)
            if err:
                ax.errorbar([x], [y], yerr=err, color=style["color"], capsize=3, linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latents in the prefix (first N)")
    ax.set_ylabel(label)
    ax.legend(fontsize=8)


def frontier(metrics: Results) -> Plot | None:
    """Where each transcoder sits on the sparsity/fidelity frontier (L0 vs FVU, and vs delta loss)."""
    with_loss = any(value_at(m, ("downstream", "delta_loss")) is not None for m in metrics.values())
    fig, axes = _figure(2 if with_loss else 1)
    panels = [("fvu", ("reconstruction", "fvu"), "FVU", axes[0])]
    if with_loss:
        panels.append(("delta_loss", ("downstream", "delta_loss"), "delta loss (nats)", axes[1]))
    drawn = 0
    missing_prefix_l0 = []
    for key, path, label, ax in panels:
        for i, (name, m) in enumerate(metrics.items()):
            style = _style(i)
            x, y = value_at(m, ("sparsity", "l0_mean")), value_at(m, path)
            if x is None or y is None:
                continue
            rows = prefix_rows(m)
            if rows:
                pts = [(p.values["l0_mean"], p.values[key]) for p in rows if {"l0_mean", key} <= set(p.values)]
                if pts:
                    ax.plot(
                        [px for px, _ in pts],
                        [py for _, py in pts],
                        color=style["color"],
                        linewidth=1.2,
                        marker=".",
                        alpha=0.8,
                    )
                elif name not in missing_prefix_l0:
                    missing_prefix_l0.append(name)
            ax.errorbar(
                [x],
                [y],
                xerr=_err(m.interval("l0_mean"), x),
                yerr=_err(m.interval(key), y),
                label=name,
                markersize=9,
                capsize=3,
                linestyle="none",
                **style,
            )
            drawn += 1
        ax.set_xlabel("mean L0 (active latents per token)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    if not drawn:
        return None
    caption = (
        "One large marker per transcoder at its mean L0 and FVU (and delta loss), with bootstrap intervals. "
        "For Matryoshka transcoders the thin line is the whole prefix curve: each point uses only the first N "
        "latents, at the mean number of active latents among those N. Lower and further left is better; compare "
        "transcoders at similar L0."
    )
    if missing_prefix_l0:
        caption += (
            f" No per-prefix L0 was recorded for {', '.join(missing_prefix_l0)} (no per-sequence statistics), "
            "so only the full transcoder is drawn."
        )
    return Plot("Sparsity / fidelity frontier", _png(fig), caption)


def all_plots(metrics: Results) -> list[Plot]:
    """Every figure that has data, in report order."""
    return [
        p
        for p in (frontier(metrics), prefix_curves(metrics), l0_histogram(metrics), density_histogram(metrics))
        if p is not None
    ]
