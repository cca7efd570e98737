"""Typed records of evaluation results, parsed from (and written back to) the metrics JSON.

The evaluation writes JSON-ready dicts (metrics.json, NAME_metrics.json, comparison.json); the
report reads them through these frozen records, so a metric is an attribute with a type, not a
string path. ``Record.from_json(d).to_json() == d`` for every file the evaluation writes (field
names are the JSON keys, including the seed's ``fvu``, ``explained_variance``, ``mean_l0`` and
``dead_percentage``). Parsing is tolerant where results are legitimately partial: a phase that was
skipped (downstream, absorption, bootstrap) is ``None``, and keys this module does not know are
kept in ``extra`` and written back unchanged. A value of the wrong shape (a number written as a
string, a list where a section belongs) is a one-line ``UserError`` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

from transcoderbench.errors import UserError

R = TypeVar("R", bound="Record")


def plain(value: Any) -> Any:
    """Python scalars, lists and dicts from evaluation output (tuples, numpy/torch values); NaN is kept."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return plain(value.tolist())
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _child(where: str, key: str) -> str:
    """``file: a.b`` -> ``file: a.b.key`` (the first key follows the file name after a colon)."""
    return f"{where}.{key}" if ": " in where else f"{where}: {key}"


def _bad(where: str, expected: str, value: Any) -> UserError:
    shown = repr(value) if not isinstance(value, (dict, list)) else _kind(value)
    return UserError(
        f"{where}: expected {expected}, found {shown}: the file was edited or is not a transcoderbench output; "
        "rerun the evaluation"
    )


def _parse(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against the annotation ``tp`` (records parsed, lists made tuples)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(inner, value, where)
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_json(value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(where, "a number", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(where, "a whole number", value)
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise _bad(where, "a string" if tp is str else "true or false", value)
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise _bad(where, "a list", value)
        item = typing.get_args(tp)[0]
        return tuple(_parse(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict):
        if not isinstance(value, dict):
            raise _bad(where, "an object", value)
        item = typing.get_args(tp)[1]
        return {k: _parse(item, v, _child(where, k)) for k, v in value.items()}
    raise TypeError(f"results.py cannot parse the annotation {tp!r}")  # a bug here, not a user mistake


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, tuple):
        return [_dump(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _dump(v) for k, v in value.items()}
    return value


_FIELDS: dict[type, dict[str, Any]] = {}


@dataclass(frozen=True, kw_only=True)
class Record:
    """Base of every result record: JSON keys are field names; unknown keys live in ``extra``."""

    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """Keys of the JSON object this record does not name, written back unchanged."""
    keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    """The JSON object's keys in file order (None for a record built in code: every field, in order)."""

    _RESERVED: ClassVar[frozenset[str]] = frozenset({"extra", "keys"})

    @classmethod
    def _fields(cls) -> dict[str, Any]:
        """Field name -> resolved annotation (JSON keys this record names), computed once per class."""
        if cls not in _FIELDS:
            hints = typing.get_type_hints(cls)
            _FIELDS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name not in cls._RESERVED}
        return _FIELDS[cls]

    @classmethod
    def from_json(cls: type[R], data: Any, where: str = "") -> R:
        """Parse one JSON object; ``where`` names the file and key in error messages."""
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise _bad(where, "an object", data)
        return cls._build(data, where)

    @classmethod
    def _build(cls: type[R], data: dict[str, Any], where: str) -> R:
        known = cls._fields()
        values = {name: _parse(tp, data[name], _child(where, name)) for name, tp in known.items() if name in data}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra, keys=tuple(data))

    def _default_keys(self) -> tuple[str, ...]:
        return (*self._fields(), *self.extra)

    def _json_value(self, key: str) -> Any:
        return self.extra[key] if key in self.extra else _dump(getattr(self, key))

    def to_json(self) -> dict[str, Any]:
        """The JSON object this record was parsed from, keys in the same order (a phase left out stays out)."""
        return {k: self._json_value(k) for k in (self.keys if self.keys is not None else self._default_keys())}


# ------------------------------------------------------------------ shared pieces
@dataclass(frozen=True, kw_only=True)
class Interval(Record):
    """A bootstrap interval (or a paired difference's interval) of one metric."""

    value: float | None = None
    """The full-sample value (None where the metric is undefined on these tokens)."""
    low: float | None = None
    """Lower end of the percentile interval (None when no interval could be formed)."""
    high: float | None = None
    """Upper end of the percentile interval."""
    se: float | None = None
    """Bootstrap standard error."""
    significant: bool | None = None
    """For a paired difference only: whether the interval excludes 0."""

    @property
    def half_width(self) -> float:
        """Half the interval's width (only for an interval with both ends)."""
        assert self.low is not None and self.high is not None
        return (self.high - self.low) / 2


def interval_or_none(iv: Interval | None) -> Interval | None:
    """``iv`` when it has a lower end, else None (an interval the bootstrap could not form)."""
    return iv if iv is not None and iv.low is not None else None


@dataclass(frozen=True, kw_only=True)
class Histogram(Record):
    """A histogram as the metrics JSON stores it."""

    bin_edges: tuple[float, ...] = ()
    """Bin edges (one more than counts)."""
    counts: tuple[float, ...] = ()
    """Count per bin."""
    dead_latents: int | None = None
    """For the feature-density histogram: latents that never fired (not drawn)."""


# ------------------------------------------------------------------ metric families
@dataclass(frozen=True, kw_only=True)
class Reconstruction(Record):
    """Reconstruction of the output site, pooled over the evaluated tokens."""

    n_tokens: int | None = None
    """Tokens the metrics are pooled over."""
    fvu: float | None = None
    """Fraction of variance unexplained (pooled)."""
    explained_variance: float | None = None
    """1 - FVU."""
    explained_variance_legacy: float | None = None
    """The per-token explained variance older tools print."""
    explained_variance_legacy_excluded_tokens: int | None = None
    """Tokens left out of the legacy form (zero denominator)."""
    explained_variance_legacy_note: str | None = None
    """How the legacy form is computed."""
    mse: float | None = None
    """Mean squared error per element."""
    mae: float | None = None
    """Mean absolute error per element."""
    cosine_similarity: float | None = None
    """Mean cosine between target and reconstruction."""
    cosine_zero_norm_tokens: int | None = None
    """Tokens left out of the cosine (a zero vector)."""
    l2_ratio: float | None = None
    """Mean ||y_hat|| / ||y||."""
    zero_target_norm_tokens: int | None = None
    """Tokens left out of the L2 ratio (zero target)."""
    relative_reconstruction_bias: float | None = None
    """sum ||y_hat||^2 / sum <y, y_hat>: below 1 means shrinkage."""
    total_variance_per_token: float | None = None
    """The FVU denominator per token."""


@dataclass(frozen=True, kw_only=True)
class PrefixReconstruction(Reconstruction):
    """Reconstruction using only the first ``prefix_end`` latents of a Matryoshka transcoder."""

    prefix_end: int = 0
    """Number of latents in the nested prefix."""


@dataclass(frozen=True, kw_only=True)
class Sparsity(Record):
    """How many latents fire, and which never or too often do."""

    n_tokens: int | None = None
    """Tokens the counts are over."""
    l0_mean: float | None = None
    """Mean active latents per token."""
    l0_median: float | None = None
    """Median active latents per token."""
    l0_std: float | None = None
    """Population std of L0 over tokens."""
    l0_histogram: Histogram | None = None
    """Distribution of L0 over tokens."""
    dead_latents: int | None = None
    """Latents that fired on no evaluated token."""
    dead_fraction: float | None = None
    """dead_latents / d_sae."""
    dead_percentage: float | None = None
    """100 * dead_fraction."""
    dense_latents: int | None = None
    """Latents firing on more than dense_threshold of tokens."""
    dense_fraction: float | None = None
    """dense_latents / d_sae."""
    dense_threshold: float | None = None
    """Firing frequency above which a latent counts as dense."""
    feature_density_log10_histogram: Histogram | None = None
    """log10 firing frequency of the latents that fired."""


@dataclass(frozen=True, kw_only=True)
class Prefixes(Record):
    """Per-prefix reconstruction of a Matryoshka transcoder."""

    prefix_ends: tuple[int, ...] = ()
    """The nested prefix ends."""
    per_prefix: tuple[PrefixReconstruction, ...] = ()
    """Reconstruction using each prefix alone."""


@dataclass(frozen=True, kw_only=True)
class PrefixL0(Record):
    """Mean L0 within one prefix (from the per-sequence statistics)."""

    prefix_end: int = 0
    """Number of latents in the nested prefix."""
    l0_mean: float | None = None
    """Mean active latents among the first prefix_end."""


@dataclass(frozen=True, kw_only=True)
class Sequences(Record):
    """Per-sequence statistics kept for the bootstrap."""

    n_sequences: int | None = None
    """Sequences evaluated."""
    n_tokens: int | None = None
    """Tokens evaluated."""
    note: str | None = None
    """What these statistics are for."""
    per_prefix: tuple[PrefixL0, ...] = ()
    """L0 within each prefix."""


@dataclass(frozen=True, kw_only=True)
class PrefixDownstream(Record):
    """Spliced-loss metrics using only the first ``prefix_end`` latents."""

    prefix_end: int = 0
    """Number of latents in the nested prefix."""
    ce_spliced: float | None = None
    """Cross-entropy with the prefix's reconstruction spliced in."""
    delta_loss: float | None = None
    """ce_spliced - ce_clean."""
    kl_div: float | None = None
    """KL(clean || spliced)."""
    loss_recovered_zero: float | None = None
    """Loss recovered against zero ablation."""
    loss_recovered_mean: float | None = None
    """Loss recovered against mean ablation."""


@dataclass(frozen=True, kw_only=True)
class Downstream(Record):
    """The model's loss with the reconstruction spliced in (the downstream phase)."""

    n_tokens: int | None = None
    """Predictions scored (see token_rule)."""
    token_rule: str | None = None
    """Which next-token predictions count (made at a spliced position, target a real token)."""
    ce_clean: float | None = None
    """Cross-entropy of the unmodified model."""
    ce_spliced: float | None = None
    """Cross-entropy with the reconstruction spliced in."""
    delta_loss: float | None = None
    """ce_spliced - ce_clean."""
    kl_div: float | None = None
    """KL(clean || spliced)."""
    ce_zero_ablation: float | None = None
    """Cross-entropy with the output site zeroed."""
    ce_mean_ablation: float | None = None
    """Cross-entropy with the output site replaced by its mean."""
    kl_div_zero_ablation: float | None = None
    """KL(clean || zero-ablated)."""
    kl_div_mean_ablation: float | None = None
    """KL(clean || mean-ablated)."""
    loss_recovered_zero: float | None = None
    """(CE_zero - CE_spliced) / (CE_zero - CE_clean)."""
    loss_recovered_mean: float | None = None
    """(CE_mean - CE_spliced) / (CE_mean - CE_clean)."""
    per_prefix: tuple[PrefixDownstream, ...] = ()
    """The same per Matryoshka prefix."""
    path: str | None = None
    """How the variants were run (resumed from a layer, or full)."""
    notes: tuple[str, ...] = ()
    """How the baselines were formed."""


@dataclass(frozen=True, kw_only=True)
class MaxAbsCos(Record):
    """Each latent's largest |cos| to another decoder row, summarised."""

    mean: float | None = None
    """Mean over latents."""
    median: float | None = None
    """Median over latents."""
    quantiles: Mapping[str, float | None] = field(default_factory=dict)
    """Quantile (as a string key) -> value."""
    histogram: Histogram | None = None
    """Distribution over latents."""


@dataclass(frozen=True, kw_only=True)
class DecoderRedundancy(Record):
    """Near-duplicate decoder rows (weights only: no sampling noise)."""

    threshold: float | None = None
    """|cos| above which two rows count as redundant."""
    n_latents: int | None = None
    """Decoder rows."""
    n_zero_rows: int | None = None
    """Rows of zero norm (left out)."""
    n_latents_compared: int | None = None
    """Rows compared."""
    n_pairs: int | None = None
    """Pairs compared."""
    redundant_pairs: int | None = None
    """Pairs above the threshold."""
    redundant_pair_fraction: float | None = None
    """redundant_pairs / n_pairs."""
    redundant_latents: int | None = None
    """Latents with at least one redundant partner."""
    redundant_latent_fraction: float | None = None
    """redundant_latents / n_latents_compared."""
    max_abs_cos: MaxAbsCos | None = None
    """Nearest-neighbour |cos| per latent."""


@dataclass(frozen=True, kw_only=True)
class Absorption(Record):
    """First-letter absorption (SAEBench method); further keys the phase writes stay in ``extra``."""

    mean_absorption_fraction: float | None = None
    """Mean share of the letter direction carried by non-main latents (None when not reported)."""
    full_absorption_rate: float | None = None
    """Share of words fully absorbed."""
    mean_num_split_latents: float | None = None
    """Mean main latents per letter."""
    n_letters_scored: float | None = None
    """Letters whose probe was good enough to score."""
    letters_scored: tuple[str, ...] = ()
    """Those letters."""
    mode: str | None = None
    """Which activations were probed (e.g. the transcoder's encoder)."""
    note: str | None = None
    """Why absorption is or is not reported."""


@dataclass(frozen=True, kw_only=True)
class FlatIntervals(Record):
    """An object whose keys are metric names with an interval each (plus optional named parts)."""

    intervals: Mapping[str, Interval] = field(default_factory=dict)
    """Metric name -> interval, in file order."""

    _RESERVED: ClassVar[frozenset[str]] = frozenset({"extra", "keys", "intervals"})

    @classmethod
    def _build(cls: type[R], data: dict[str, Any], where: str) -> R:
        ivs = {k: v for k, v in data.items() if k not in cls._fields() and isinstance(v, dict)}
        parsed = super()._build({k: v for k, v in data.items() if k not in ivs}, where)
        intervals = {k: Interval.from_json(v, _child(where, k)) for k, v in ivs.items()}
        changes: dict[str, Any] = {"intervals": intervals, "keys": tuple(data)}
        return dataclasses.replace(parsed, **changes)

    def interval(self, key: str) -> Interval | None:
        """The interval of metric ``key`` when the bootstrap formed one."""
        return interval_or_none(self.intervals[key] if key in self.intervals else None)

    def _default_keys(self) -> tuple[str, ...]:
        return (*self.intervals, *super()._default_keys())

    def _json_value(self, key: str) -> Any:
        return self.intervals[key].to_json() if key in self.intervals else super()._json_value(key)


@dataclass(frozen=True, kw_only=True)
class PrefixIntervals(FlatIntervals):
    """Intervals of one Matryoshka prefix's metrics."""

    prefix_end: int = 0
    """Number of latents in the nested prefix."""

    def _default_keys(self) -> tuple[str, ...]:
        return ("prefix_end", *(k for k in super()._default_keys() if k != "prefix_end"))


@dataclass(frozen=True, kw_only=True)
class PairDifferences(FlatIntervals):
    """Paired differences (this transcoder minus another) with their intervals."""

    per_prefix: tuple[PrefixIntervals, ...] = ()
    """The same per Matryoshka prefix."""


@dataclass(frozen=True, kw_only=True)
class Uncertainty(Record):
    """Bootstrap intervals over sequences, and paired differences to every other transcoder."""

    method: str | None = None
    """How the resamples were drawn."""
    confidence: float | None = None
    """Interval coverage (0.95)."""
    n_resamples: int | None = None
    """Bootstrap resamples (0: intervals off)."""
    seed: int | None = None
    """Bootstrap seed."""
    n_sequences: int | None = None
    """Sequences resampled."""
    intervals: Mapping[str, Interval] | None = None
    """Metric name -> interval (None or empty when no bootstrap was run)."""
    per_prefix: tuple[PrefixIntervals, ...] = ()
    """Intervals per Matryoshka prefix."""
    differences: Mapping[str, PairDifferences] = field(default_factory=dict)
    """Other transcoder's name -> paired differences (this minus other)."""
    note: str | None = None
    """Why intervals are missing, or how differences are signed."""

    def interval(self, key: str) -> Interval | None:
        """The interval of metric ``key`` when the bootstrap formed one."""
        intervals = self.intervals or {}
        return interval_or_none(intervals[key] if key in intervals else None)


# ------------------------------------------------------------------ description and provenance
@dataclass(frozen=True, kw_only=True)
class TranscoderInfo(Record):
    """What was evaluated: architecture and widths."""

    architecture: str | None = None
    """Architecture name (e.g. matryoshka_batchtopk, jumprelu)."""
    input_site: str | None = None
    """Site the encoder reads."""
    output_site: str | None = None
    """Site the decoder predicts."""
    d_in: int | None = None
    """Input width."""
    d_sae: int | None = None
    """Number of latents."""
    d_out: int | None = None
    """Output width."""
    prefix_ends: tuple[int, ...] = ()
    """Nested prefix ends (one entry when not Matryoshka)."""
    k: float | None = None
    """Trained top-k, when the architecture has one."""


@dataclass(frozen=True, kw_only=True)
class Source(Record):
    """Where the transcoder came from (its info, less training)."""

    source: str | None = None
    """Path or hub id loaded from; None when built in memory."""
    format: str | None = None
    """Checkpoint format (native, saelens, gemma_scope_1, ...)."""
    notes: tuple[str, ...] = ()
    """Notes from the loader."""


@dataclass(frozen=True, kw_only=True)
class Training(Record):
    """Training settings stored with the checkpoint, kept raw in ``extra``: their shape is the format's.

    Legacy configs store ``top_k`` as written by their tool (it may be a string), so it is read
    as a number only when it is one, and any other shape is kept and ignored rather than refused.
    """

    @property
    def top_k(self) -> float | None:
        """The k the transcoder was trained with, when the settings hold it as a number."""
        k = self.extra["top_k"] if "top_k" in self.extra else None
        return k if isinstance(k, (int, float)) and not isinstance(k, bool) else None


@dataclass(frozen=True, kw_only=True)
class Site(Record):
    """One hooked site of the model."""

    name: str | None = None
    """Site name in this project's grammar."""
    module: str | None = None
    """The model's module path."""
    direction: str | None = None
    """input or output of that module."""
    normalize: str | None = None
    """Normalisation applied without gain, if any."""


@dataclass(frozen=True, kw_only=True)
class Sites(Record):
    """The transcoder's input and output sites."""

    input: Site | None = None
    """Where it reads."""
    output: Site | None = None
    """What it predicts."""


@dataclass(frozen=True, kw_only=True)
class ModelInfo(Record):
    """The language model."""

    name: str | None = None
    """Model name or path."""
    family: str | None = None
    """Model family."""
    n_layers: int | None = None
    """Layers."""
    d_model: int | None = None
    """Residual width."""
    dtype: str | None = None
    """Weights dtype."""
    device: str | None = None
    """Device it ran on."""


@dataclass(frozen=True, kw_only=True)
class DatasetInfo(Record):
    """The evaluation text."""

    name: str | None = None
    """Dataset name."""


@dataclass(frozen=True, kw_only=True)
class Tokens(Record):
    """How many tokens were read and evaluated."""

    seq_len: int | None = None
    """Tokens per sequence."""
    batch_size: int | None = None
    """Sequences per batch."""
    n_batches: int | None = None
    """Batches read."""
    n_positions: int | None = None
    """Positions read."""
    n_tokens_evaluated: int | None = None
    """Positions kept (BOS, PAD, EOS excluded)."""
    forward_pass_stopped_after_layer: int | None = None
    """Last layer run, when the forward pass stopped early."""


@dataclass(frozen=True, kw_only=True)
class RunMeta(Record):
    """Run metadata shared by every transcoder of one pass."""

    created: str | None = None
    """ISO time the run finished."""
    model: ModelInfo | None = None
    """The language model."""
    dataset: DatasetInfo | None = None
    """The evaluation text."""
    tokens: Tokens | None = None
    """Token counts."""
    versions: Mapping[str, Any] = field(default_factory=dict)
    """Package versions."""


# ------------------------------------------------------------------ one transcoder
@dataclass(frozen=True, kw_only=True)
class TranscoderResult(Record):
    """One transcoder's metrics.json (``meta`` only in the file, not in the evaluation's dict)."""

    meta: RunMeta | None = None
    """Run metadata (present in the written files)."""
    name: str | None = None
    """The transcoder's name in this run."""
    transcoder: TranscoderInfo | None = None
    """Architecture and widths."""
    source: Source | None = None
    """Provenance."""
    training: Training | None = None
    """Training settings, when the checkpoint has them."""
    sites: Sites | None = None
    """Hooked sites."""
    fvu: float | None = None
    """Seed field: reconstruction.fvu."""
    explained_variance: float | None = None
    """Seed field: reconstruction.explained_variance."""
    mean_l0: float | None = None
    """Seed field: sparsity.l0_mean."""
    dead_percentage: float | None = None
    """Seed field: sparsity.dead_percentage."""
    reconstruction: Reconstruction | None = None
    """Reconstruction metrics."""
    sparsity: Sparsity | None = None
    """Sparsity metrics."""
    prefixes: Prefixes | None = None
    """Per-prefix reconstruction (Matryoshka)."""
    sequences: Sequences | None = None
    """Per-sequence statistics."""
    downstream: Downstream | None = None
    """Spliced-loss metrics (None when that phase was skipped)."""
    downstream_note: str | None = None
    """Why downstream metrics are missing."""
    decoder_redundancy: DecoderRedundancy | None = None
    """Near-duplicate decoder rows."""
    absorption: Absorption | None = None
    """First-letter absorption (None when that phase was skipped)."""
    absorption_note: str | None = None
    """Why absorption is missing or not reported."""
    uncertainty: Uncertainty | None = None
    """Bootstrap intervals (None when no bootstrap was run)."""

    @classmethod
    def coerce(cls, value: TranscoderResult | Mapping[str, Any], where: str = "") -> TranscoderResult:
        """A record from a record or from an evaluation's (not yet JSON-cleaned) dict."""
        return value if isinstance(value, TranscoderResult) else cls.from_json(plain(value), where)

    def interval(self, key: str) -> Interval | None:
        """The bootstrap interval of metric ``key``, if one was formed."""
        return self.uncertainty.interval(key) if self.uncertainty else None


def finite(value: float | None) -> float | None:
    """NaN (a metric undefined on these tokens) counts as missing, as it does once written to JSON."""
    return None if value is None or not math.isfinite(value) else value


# ------------------------------------------------------------------ comparison
@dataclass(frozen=True, kw_only=True)
class PairVerdict(Record):
    """The paired test of one category between two transcoders."""

    a: str = ""
    """First transcoder."""
    b: str = ""
    """Second transcoder."""
    difference: float | None = None
    """a - b."""
    low: float | None = None
    """Lower end of the difference's interval (None: untested)."""
    high: float | None = None
    """Upper end."""
    significant: bool = False
    """The interval excludes 0."""
    better: str | None = None
    """The significantly better one, if any."""


@dataclass(frozen=True, kw_only=True)
class CategoryVerdict(Record):
    """One comparison category's verdict, as comparison.json stores it."""

    name: str = ""
    """Category name."""
    path: str = ""
    """Key of the deciding metric (e.g. reconstruction.fvu)."""
    lower_is_better: bool = True
    """Direction."""
    why: str = ""
    """What the metric says."""
    test: str = ""
    """bootstrap, exact or none."""
    values: Mapping[str, float | None] = field(default_factory=dict)
    """Each transcoder's value."""
    how: str = ""
    """How the verdict is reached."""
    intervals: Mapping[str, Interval | None] = field(default_factory=dict)
    """Each transcoder's interval (bootstrap categories)."""
    pairs: tuple[PairVerdict, ...] = ()
    """Every pair's test."""
    winner: str | None = None
    """The winner, when the evidence names one."""
    verdict: str = ""
    """The verdict in words."""


@dataclass(frozen=True, kw_only=True)
class SuggestionRecord(Record):
    """One suggestion as comparison.json stores it."""

    rule: str = ""
    """Rule name."""
    finding: str = ""
    """What was measured."""
    change: str = ""
    """What to change."""
    why: str = ""
    """Why."""


@dataclass(frozen=True, kw_only=True)
class Comparison(Record):
    """comparison.json."""

    meta: RunMeta | None = None
    """Run metadata."""
    transcoders: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Each transcoder's headline numbers (raw: labels as keys)."""
    bootstrap: Mapping[str, Any] = field(default_factory=dict)
    """Bootstrap settings."""
    categories: tuple[CategoryVerdict, ...] = ()
    """Verdicts per category."""
    differences: Mapping[str, PairDifferences] = field(default_factory=dict)
    """'a - b' -> paired differences."""
    suggestions: Mapping[str, tuple[SuggestionRecord, ...]] = field(default_factory=dict)
    """Suggestions per transcoder."""
    note: str | None = None
    """How to read the verdicts."""
