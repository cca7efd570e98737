"""The one list of reported metrics: where each lives in metrics.json, how to print it, what it means.

The text summary, the comparison, and the HTML report all read this list, so a metric's label,
its seed field name, its interval and its explanation cannot disagree between outputs.
Longer explanations, with sources for the ranges, are in docs/INTERPRETABILITY_EVALUATION.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from transcoderbench.results import Interval, TranscoderResult


@dataclass(frozen=True)
class MetricInfo:
    """One reported number."""

    section: str
    path: tuple[str, ...]
    """Where the value lives in metrics.json, and the attribute path in a ``TranscoderResult``."""
    label: str
    spec: str
    """Format spec for the value."""
    interval: str | None
    """Key in ``uncertainty.intervals`` (bootstrap over sequences), or None when none exists."""
    lower_is_better: bool | None
    """Direction for comparisons; None when neither direction is better in itself."""
    formula: str
    meaning: str
    seed_field: str | None = None
    """Top-level metrics.json field the seed's users read (``fvu``, ``mean_l0``, ...)."""

    @property
    def key(self) -> str:
        return ".".join(self.path)


SECTIONS = (
    "Reconstruction",
    "Sparsity",
    "Downstream (spliced into the model)",
    "Absorption (first letter)",
    "Decoder redundancy",
)
R, S, D, A, X = SECTIONS

METRICS: list[MetricInfo] = [
    MetricInfo(
        R,
        ("reconstruction", "fvu"),
        "FVU",
        ".4f",
        "fvu",
        True,
        "sum_t ||y_t - y_hat_t||^2 / sum_t ||y_t - mean(y)||^2 (pooled over tokens and dimensions)",
        "fraction of the target's variance left unexplained: 0 is perfect, 1 is no better than always "
        "predicting the mean",
        "fvu",
    ),
    MetricInfo(
        R,
        ("reconstruction", "explained_variance"),
        "explained variance",
        ".4f",
        "explained_variance",
        False,
        "1 - FVU (= sklearn r2_score(..., multioutput='variance_weighted'))",
        "share of the target's variance the reconstruction explains",
        "explained_variance",
    ),
    MetricInfo(
        R,
        ("reconstruction", "explained_variance_legacy"),
        "explained variance (legacy per-token)",
        ".4f",
        None,
        False,
        "mean_t (1 - ||y_t - y_hat_t||^2 / ||y_t - mean_batch(y)||^2)",
        "the per-token form older tools print; depends on the batch size, shown only to compare with them",
    ),
    MetricInfo(
        R,
        ("reconstruction", "mse"),
        "MSE per element",
        ".4g",
        "mse",
        True,
        "sum_t ||y_t - y_hat_t||^2 / (N d)",
        "mean squared error per output dimension, in the units of the target (compare only at the same site)",
    ),
    MetricInfo(
        R,
        ("reconstruction", "mae"),
        "MAE per element",
        ".4g",
        None,
        True,
        "sum_t |y_t - y_hat_t|_1 / (N d)",
        "mean absolute error per output dimension",
    ),
    MetricInfo(
        R,
        ("reconstruction", "cosine_similarity"),
        "cosine similarity",
        ".4f",
        "cosine_similarity",
        False,
        "mean_t <y_t, y_hat_t> / (||y_t|| ||y_hat_t||)",
        "whether the reconstruction points the right way (1 = same direction), whatever its length",
    ),
    MetricInfo(
        R,
        ("reconstruction", "l2_ratio"),
        "L2 ratio",
        ".4f",
        None,
        None,
        "mean_t ||y_hat_t|| / ||y_t||",
        "1 means the reconstruction has the target's size; below 1, it shrinks",
    ),
    MetricInfo(
        R,
        ("reconstruction", "relative_reconstruction_bias"),
        "relative reconstruction bias",
        ".4f",
        None,
        None,
        "sum_t ||y_hat_t||^2 / sum_t <y_t, y_hat_t>",
        "1 means no systematic shrinkage; below 1 the reconstructions are too small, above 1 too large",
    ),
    MetricInfo(
        S,
        ("sparsity", "l0_mean"),
        "mean L0",
        ".2f",
        "l0_mean",
        True,
        "mean_t #{i : f_i(x_t) != 0}",
        "active latents per token: the price paid for the reconstruction (compare FVU only at similar L0)",
        "mean_l0",
    ),
    MetricInfo(
        S,
        ("sparsity", "l0_median"),
        "median L0",
        ".1f",
        None,
        None,
        "median_t of L0",
        "the typical token's number of active latents",
    ),
    MetricInfo(
        S,
        ("sparsity", "l0_std"),
        "L0 std",
        ".2f",
        None,
        None,
        "population std of L0 over tokens",
        "how much the number of active latents varies between tokens",
    ),
    MetricInfo(
        S,
        ("sparsity", "dead_percentage"),
        "dead latents (%)",
        ".2f",
        None,
        True,
        "100 * #{latents that fired on no evaluated token} / d_sae",
        "capacity that never fired on this text (a latent may be alive on other text)",
        "dead_percentage",
    ),
    MetricInfo(
        S,
        ("sparsity", "dense_fraction"),
        "dense latents (fraction)",
        ".4f",
        None,
        True,
        "#{latents firing on > 10% of tokens} / d_sae",
        "latents that fire so often they rarely carry a specific meaning",
    ),
    MetricInfo(
        D,
        ("downstream", "ce_clean"),
        "CE loss, clean",
        ".4f",
        "ce_clean",
        None,
        "mean next-token cross-entropy of the unmodified model",
        "the model's own loss on this text",
    ),
    MetricInfo(
        D,
        ("downstream", "ce_spliced"),
        "CE loss, spliced",
        ".4f",
        "ce_spliced",
        True,
        "the same loss with the output site replaced by the reconstruction",
        "the loss when the model has to run on the transcoder's output",
    ),
    MetricInfo(
        D,
        ("downstream", "delta_loss"),
        "delta loss",
        ".4g",
        "delta_loss",
        True,
        "CE_spliced - CE_clean",
        "how much the model's loss rises when it runs on the reconstruction: 0 is perfect",
    ),
    MetricInfo(
        D,
        ("downstream", "kl_div"),
        "KL(clean || spliced)",
        ".4g",
        "kl_div",
        True,
        "mean_t KL(p_clean(. | t) || p_spliced(. | t))",
        "how far the next-token distribution moves; 0 is perfect",
    ),
    MetricInfo(
        D,
        ("downstream", "loss_recovered_zero"),
        "loss recovered (vs zero ablation)",
        ".4f",
        "loss_recovered_zero",
        False,
        "(CE_zero - CE_spliced) / (CE_zero - CE_clean)",
        "1 means the splice costs nothing, 0 means it is as bad as deleting the site's output",
    ),
    MetricInfo(
        D,
        ("downstream", "loss_recovered_mean"),
        "loss recovered (vs mean ablation)",
        ".4f",
        "loss_recovered_mean",
        False,
        "(CE_mean - CE_spliced) / (CE_mean - CE_clean)",
        "as above against replacing the output by its mean: a harder baseline",
    ),
    MetricInfo(
        A,
        ("absorption", "mean_absorption_fraction"),
        "mean absorption fraction",
        ".4f",
        None,
        True,
        "mean over scored words of the share of the letter direction carried by latents other than the "
        "letter's main latents (SAEBench first-letter method)",
        "0 means the main latents carry first-letter information whenever it is present",
    ),
    MetricInfo(
        A,
        ("absorption", "full_absorption_rate"),
        "full absorption rate",
        ".4f",
        None,
        True,
        "share of words where the main latents do not fire and another latent carries the letter",
        "how often a feature is completely absorbed by a more specific one",
    ),
    MetricInfo(
        A,
        ("absorption", "mean_num_split_latents"),
        "mean split latents",
        ".2f",
        None,
        None,
        "mean number of main latents chosen per letter by k-sparse probing",
        "more than 1 means the letter feature is split across several latents",
    ),
    MetricInfo(
        A,
        ("absorption", "n_letters_scored"),
        "letters scored",
        "d",
        None,
        None,
        "letters whose probe test F1 > 0.6",
        "the letters the absorption numbers average over",
    ),
    MetricInfo(
        X,
        ("decoder_redundancy", "redundant_pair_fraction"),
        "decoder pairs |cos| > 0.9",
        ".3g",
        None,
        True,
        "#{i < j : |cos(W_dec[i], W_dec[j])| > 0.9} / (d_sae (d_sae - 1) / 2)",
        "near-duplicate output directions (the seed code's mislabelled 'absorption score')",
    ),
    MetricInfo(
        X,
        ("decoder_redundancy", "max_abs_cos", "median"),
        "median max |cos| to another latent",
        ".4f",
        None,
        None,
        "median_i max_{j != i} |cos(W_dec[i], W_dec[j])|",
        "how close a typical latent's output direction is to its nearest neighbour",
    ),
]

BY_KEY: dict[str, MetricInfo] = {m.key: m for m in METRICS}

#: Matryoshka per-prefix columns: (key in a per_prefix entry, label, format).
PREFIX_COLUMNS: list[tuple[str, str, str]] = [
    ("l0_mean", "L0 within prefix", ".2f"),
    ("fvu", "FVU", ".4f"),
    ("cosine_similarity", "cosine", ".4f"),
    ("delta_loss", "delta loss", ".4g"),
    ("kl_div", "KL", ".4g"),
]


def value_at(m: TranscoderResult, path: tuple[str, ...]) -> Any:
    """The attribute at ``path`` (metrics.json keys) of a record, or None where a section is missing."""
    node: Any = m
    for name in path:
        node = getattr(node, name, None)
        if node is None:
            return None
    return node


def value_of(m: TranscoderResult, info: MetricInfo) -> Any:
    """The value of ``info`` in one transcoder's record, or None where its section is missing."""
    return value_at(m, info.path)


def fmt(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if spec == "d" and isinstance(value, float):
            return format(value, ".0f")
        return format(value, spec)
    return str(value)


def interval_of(m: TranscoderResult, info: MetricInfo | None) -> Interval | None:
    """The bootstrap interval of ``info`` in one transcoder's record, if one was computed."""
    return m.interval(info.interval) if info is not None and info.interval is not None else None


class HasBounds(Protocol):
    """An interval or a paired verdict: anything with both ends."""

    @property
    def low(self) -> float | None: ...
    @property
    def high(self) -> float | None: ...


def fmt_interval(iv: HasBounds | None, spec: str) -> str:
    """``[low, high]`` or an empty string."""
    if iv is None:
        return ""
    return f"[{fmt(iv.low, spec)}, {fmt(iv.high, spec)}]"


def present(metrics: Mapping[str, TranscoderResult], info: MetricInfo) -> bool:
    """True when at least one transcoder has this metric."""
    return any(value_of(m, info) is not None for m in metrics.values())


@dataclass(frozen=True)
class PrefixRow:
    """One Matryoshka prefix's values, merged from every section that has them (keys of PREFIX_COLUMNS)."""

    prefix_end: int
    """Number of latents in the nested prefix."""
    values: Mapping[str, float]
    """Column key -> value, only where measured."""
    intervals: Mapping[str, Interval]
    """Column key -> bootstrap interval, only where the bootstrap formed one."""

    def value(self, key: str) -> float | None:
        return self.values[key] if key in self.values else None

    def interval(self, key: str) -> Interval | None:
        return self.intervals[key] if key in self.intervals else None


def prefix_rows(m: TranscoderResult) -> list[PrefixRow]:
    """Per-prefix values of a Matryoshka transcoder; empty for a transcoder with one prefix."""
    sources: list[Sequence[Any]] = [
        m.prefixes.per_prefix if m.prefixes else (),
        m.sequences.per_prefix if m.sequences else (),
        m.downstream.per_prefix if m.downstream else (),
    ]
    values: dict[int, dict[str, float]] = {}
    for source in sources:
        for p in source:
            row = values.setdefault(p.prefix_end, {})
            for key, _, _ in PREFIX_COLUMNS:
                if getattr(p, key, None) is not None:
                    row[key] = getattr(p, key)
    intervals: dict[int, dict[str, Interval]] = {end: {} for end in values}
    for piv in m.uncertainty.per_prefix if m.uncertainty else ():
        if piv.prefix_end in intervals:
            for key, _, _ in PREFIX_COLUMNS:
                iv = piv.interval(key)
                if iv is not None:
                    intervals[piv.prefix_end][key] = iv
    rows = [PrefixRow(end, values[end], intervals[end]) for end in sorted(values)]
    return rows if len(rows) > 1 else []
