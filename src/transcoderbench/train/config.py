"""The one definition of a training run's settings: command-line flags, config-file keys and
the ``training`` record saved in every checkpoint all come from :class:`TrainConfig`.

``TrainConfig`` is nested, as in EleutherAI's sparsify: ``TrainConfig(model, data, coders, optim,
output)``. Every setting keeps its flat name (``--top_k``, key ``top_k``), which is unique across the
sections; config files may use flat keys or nested sections (``coders: {top_k: 32}``), and the saved
``train_config.json`` (flat, as before) is itself a valid ``--config`` file. Flat names also read
(``config.top_k`` is ``config.coders.top_k``).

Precedence: the dataclass default < a key in ``--config FILE`` (YAML or JSON) < a flag given on
the command line. A config file key that is not a setting is an error naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from transcoderbench.config import MAX_COUNT, MAX_SEED, field_types, opt
from transcoderbench.config import coerce as coerce_value
from transcoderbench.errors import UserError

ARCHITECTURE_CHOICES = ("matryoshka", "batchtopk", "topk")
DECAY_CHOICES = ("cosine", "linear")
ENCODER_BIAS_INIT_CHOICES = ("centred", "zero")
#: Bussmann et al.'s Matryoshka default: halves, quarters, ... of the dictionary, smallest first.
DEFAULT_GROUP_FRACTIONS = "1/16,1/16,1/8,1/4,1/2"


@dataclass
class TrainModelConfig:
    """Language model and sites"""

    name: str = opt(
        "smollm2-135m",
        "language model: a hub id, a local directory, a .gguf file, or smollm2-135m (built in, offline)",
        flag="model",
        key="model",
    )
    layer: int | None = opt(
        None,
        "layer whose MLP the transcoder stands in for (required unless --input_site and "
        "--output_site both name a layer)",
    )
    input_site: str | None = opt(
        None,
        "site the transcoder reads. Default blocks.L.ln2.hook_normalized: the MLP's input normalised *without* the "
        "norm's gain, as Gemma Scope 1 transcoders read it; every token then has the same scale, which keeps "
        "training well conditioned at any layer and model. blocks.L.hook_mlp_in reads the raw residual (the seed "
        "project's choice), blocks.L.mlp.hook_in the gained norm output (Gemma Scope 2's)",
    )
    output_site: str | None = opt(
        None, "site the transcoder predicts (default: blocks.L.hook_mlp_out, the MLP's output)"
    )
    dtype: str = opt("float32", "language-model dtype (float32, bfloat16, float16); the transcoder trains in float32")
    device: str = opt("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:0, ...")
    trust_remote_code: bool = opt(
        False,
        "allow code from the model or dataset repository to run (never taken from a saved run: "
        "--resume needs it on its own command line)",
    )


@dataclass
class TrainDataConfig:
    """Training text and activation buffer"""

    dataset: str | None = opt(
        None,
        "training text: a Hugging Face dataset id (streamed), a local .txt/.jsonl file "
        "or folder, or builtin:NAME. Default: the built-in corpus",
    )
    dataset_tokens: int = opt(
        0,
        "read only the first this many tokens of the dataset (rounded up to whole "
        "language-model batches) and repeat them in epochs; 0: the whole dataset",
    )
    text_field: str = opt("text", "field holding the text in .jsonl files and datasets")
    dataset_config: str | None = opt(None, "configuration (subset) of a Hugging Face dataset, e.g. sample-10BT")
    dataset_split: str = opt("train", "split of a Hugging Face dataset")
    seq_len: int = opt(128, "tokens per sequence, BOS included (BOS, EOS and PAD positions are never trained on)")
    lm_batch_size: int = opt(8, "sequences per language-model forward pass")
    buffer_tokens: int = opt(
        131_072,
        "activations held in the shuffled buffer (memory: buffer_tokens x (d_in + "
        "d_out) x 4 bytes); a dataset that fits is read by the model only once",
    )


@dataclass
class CodersConfig:
    """Transcoder architecture"""

    architecture: str = opt(
        "matryoshka",
        "matryoshka (nested BatchTopK groups), batchtopk (one group) or topk (each token keeps its own top_k)",
        choices=ARCHITECTURE_CHOICES,
    )
    dict_size: int = opt(4096, "number of latents (d_sae)")
    group_sizes: str | None = opt(
        None,
        "Matryoshka nested groups, smallest prefix first, comma-separated: latent counts summing to dict_size "
        "(e.g. 128,256,512,1408) or fractions summing to 1 (e.g. 1/16,1/8,1/4,9/16). "
        f"Default for matryoshka: {DEFAULT_GROUP_FRACTIONS}",
    )
    top_k: int = opt(32, "active latents per token (BatchTopK: on average over the batch)")
    top_k_aux: int = opt(512, "dead latents per token that the auxiliary loss uses to predict the residual")
    aux_penalty: float = opt(1 / 32, "weight of the auxiliary dead-latent loss (0 turns it off)")
    dead_window: int = opt(1_000_000, "a latent that has not fired in this many training tokens counts as dead")
    encoder_bias_init: str = opt(
        "centred",
        "centred: b_enc = -mean(x) W_enc on the first buffer, so every pre-activation starts centred on the "
        "data, as sparsify initialises (fewer dead latents); zero: b_enc = 0",
        choices=ENCODER_BIAS_INIT_CHOICES,
    )


@dataclass
class OptimConfig:
    """Optimisation"""

    lr: float = opt(4e-4, "peak Adam learning rate")
    optimizer: str = opt(
        "adam",
        "adam (warmup + decay schedule) or signum (schedule-free SignSGD, sparsify's default: constant "
        "signum_lr, weights averaged; ignores lr, warmup_steps, min_lr and decay)",
        choices=("adam", "signum"),
    )
    signum_lr: float | None = opt(
        None, "SignSGD learning rate (default: sparsify's 5e-3 / sqrt(dict_size / 2**14), 1.33e-2 at 2304 latents)"
    )
    signum_momentum: float = opt(0.95, "schedule-free interpolation: y = momentum * x + (1 - momentum) * z")
    warmup_steps: int = opt(1000, "steps of linear warmup from 0 to lr")
    min_lr: float = opt(0.0, "learning rate reached at the last step")
    decay: str = opt("cosine", "decay from lr to min_lr after the warmup", choices=DECAY_CHOICES)
    batch_size: int = opt(
        4096,
        "activation tokens per training step, over all processes (not sequences: see lm_batch_size)",
        flag="batch_tokens",
        aliases=("batch_size",),
    )
    token_budget: int = opt(
        50_000_000,
        "training tokens in all (steps = token_budget / batch_tokens); when the dataset runs out it is read again",
    )
    seed: int = opt(0, "seed of the initialisation and of the activation shuffling")


@dataclass
class OutputConfig:
    """Outputs"""

    output_dir: str = opt(
        "runs/transcoder",
        "run directory: the latest transcoder (config.json + model.safetensors, "
        "loadable by evaluate), metrics.jsonl, checkpoints/, resume/",
    )
    checkpoint_every: int = opt(
        0, "also save a checkpoint (and the resume state) every this many steps (0: only at the end)"
    )
    log_every: int = opt(10, "write a metrics.jsonl line every this many steps")
    wandb: bool = opt(False, "log metrics to Weights & Biases (needs `pip install wandb`)")
    wandb_project: str = opt("transcoderbench", "Weights & Biases project")
    progress: bool = opt(True, "show progress bars")


SECTIONS = ("model", "data", "coders", "optim", "output")


@dataclass
class TrainConfig:
    """Training settings (one transcoder)"""

    model: TrainModelConfig = field(default_factory=TrainModelConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    coders: CodersConfig = field(default_factory=CodersConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __getattr__(self, key: str) -> Any:
        """Flat names read too: ``config.top_k`` is ``config.coders.top_k`` (``model`` is the section)."""
        where = _PATHS.get(key)
        if where is None or key in SECTIONS:
            raise AttributeError(key)
        return getattr(self.__dict__[where[0]], where[1])

    @classmethod
    def from_flat(cls, **values: Any) -> TrainConfig:
        """A config from flat settings (``top_k=4, model="..."``), unchecked; missing ones take defaults."""
        sections: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
        for key, value in values.items():
            if key not in _PATHS:
                raise TypeError(f"TrainConfig has no setting {key!r}")
            section, leaf = _PATHS[key]
            sections[section][leaf] = value
        return cls(**{s: _SECTION_TYPES[s](**v) for s, v in sections.items()})

    def replace(self, **values: Any) -> TrainConfig:
        """A copy with some flat settings changed."""
        return TrainConfig.from_flat(**{**config_dict(self), **values})


_SECTION_TYPES: dict[str, Any] = {s: field_types(TrainConfig)[s] for s in SECTIONS}
#: Flat key (``top_k``, ``model``) -> (section, field name).
_PATHS: dict[str, tuple[str, str]] = {
    f.metadata.get("key", f.name): (s, f.name) for s in SECTIONS for f in dataclasses.fields(_SECTION_TYPES[s])
}
#: Flat key -> dataclass field (for help, flags and types).
_FIELDS = {k: {f.name: f for f in dataclasses.fields(_SECTION_TYPES[s])}[leaf] for k, (s, leaf) in _PATHS.items()}
FLAT_KEYS = tuple(_PATHS)


def path_of(key: str) -> str:
    """The dotted path of flat key ``key`` (``coders.top_k``), as the flag generator names dests."""
    section, leaf = _PATHS[key]
    return f"{section}.{leaf}"


#: Settings that may differ when a run is resumed: they change where and how it reports, not what it computes.
#: (``trust_remote_code`` is never taken from the saved state: only the resuming command line grants it.)
RESUME_MUTABLE = frozenset(
    {"output_dir", "checkpoint_every", "log_every", "wandb", "wandb_project", "progress", "device", "trust_remote_code"}
)
#: Settings that decide which activations a step sees; runs trained side by side must agree on them.
DATA_FIELDS = (
    "model",
    "layer",
    "input_site",
    "output_site",
    "dataset",
    "dataset_tokens",
    "text_field",
    "dataset_config",
    "dataset_split",
    "seq_len",
    "lm_batch_size",
    "buffer_tokens",
    "batch_size",
    "token_budget",
    "seed",
    "dtype",
    "device",
    "trust_remote_code",
)


# ----------------------------------------------------------------------------- values
#: Config-file keys and flags that differ from the field name (the field keeps its name in saved records).
KEY_ALIASES = {"batch_tokens": "batch_size"}


def flag_of(name: str) -> str:
    """The flag of setting ``name``: ``--batch_tokens`` for ``batch_size``, else ``--name``."""
    return "--" + _FIELDS[name].metadata.get("flag", name)


def coerce(name: str, value: Any, where: str) -> Any:
    """``value`` as the type of setting ``name`` (config files may hold strings or lists)."""
    if name == "group_sizes" and isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    section, leaf = _PATHS[name]
    return coerce_value(field_types(_SECTION_TYPES[section])[leaf], value, f"{where}: {name}")


def flatten_keys(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Flat ``key -> value`` from a config mapping with flat keys, nested sections, or both.

    ``model`` is a section when its value is a mapping and the model's name otherwise.
    """
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if key in SECTIONS and isinstance(value, dict):
            names = {f.name: f.metadata.get("key", f.name) for f in dataclasses.fields(_SECTION_TYPES[key])}
            for leaf, v in value.items():
                leaf = KEY_ALIASES.get(str(leaf), str(leaf))
                if leaf not in names:
                    raise UserError(f"{where}: unknown key {key}.{leaf}; valid keys are the `train` flags")
                flat[names[leaf]] = v
        else:
            flat[KEY_ALIASES.get(key, key)] = value
    unknown = [k for k in flat if k not in _PATHS]
    if unknown:
        keys = ", ".join(flag_of(k)[2:] for k in FLAT_KEYS)
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys are the `train` flags ({keys})")
    return flat


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Flat keys and values of a YAML (.yaml/.yml) or JSON config file, checked against the settings."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--config {path}: not UTF-8 text; save it as UTF-8 YAML or JSON") from None
    except OSError as exc:
        raise UserError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"--config {path}: reading YAML needs `pip install pyyaml` (or use a .json file)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"--config {path}: not valid YAML ({' '.join(str(exc).split())[:200]})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--config {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        except RecursionError:
            raise UserError(f"--config {path}: nested too deeply to be a config") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: must hold a mapping of setting names to values")
    data = flatten_keys(data, f"--config {path}")
    return {k: coerce(k, v, f"--config {path}") for k, v in data.items()}


def make_config(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """A checked :class:`TrainConfig` from flat ``key -> value`` (missing settings take defaults)."""
    values = {KEY_ALIASES.get(k, k): v for k, v in values.items()}
    unknown = [k for k in values if k not in _PATHS]
    if unknown:
        raise UserError(f"{where}: unknown setting {unknown[0]!r}")
    config = TrainConfig.from_flat(**{k: coerce(k, v, where) for k, v in values.items()})
    validate(config)
    return config


#: Settings counted in tokens may exceed :data:`MAX_COUNT` (hundreds of millions of training tokens).
TOKEN_COUNTS = frozenset({"token_budget", "dataset_tokens", "buffer_tokens", "dead_window"})
#: 10^13 tokens: far beyond any real run, small enough that step counts stay exact integers.
MAX_TOKENS = 10**13


def validate(c: TrainConfig) -> None:
    """One-line errors for settings that cannot work, before any model is loaded."""
    positive = (
        "dict_size",
        "top_k",
        "top_k_aux",
        "dead_window",
        "batch_size",
        "token_budget",
        "seq_len",
        "lm_batch_size",
        "buffer_tokens",
    )
    for name in positive:
        if getattr(c, name) <= 0:
            raise UserError(f"{flag_of(name)} {getattr(c, name)}: must be positive")
    for name in ("warmup_steps", "checkpoint_every", "log_every", "dataset_tokens"):
        if getattr(c, name) < 0:
            raise UserError(f"--{name} {getattr(c, name)}: must be 0 or more")
    for name in (*positive, "warmup_steps", "checkpoint_every", "log_every", "dataset_tokens"):
        limit = MAX_TOKENS if name in TOKEN_COUNTS else MAX_COUNT
        if getattr(c, name) > limit:
            raise UserError(f"{flag_of(name)} {getattr(c, name)}: must be at most {limit:.0e}")
    if not 0 <= c.seed <= MAX_SEED:
        raise UserError(f"--seed {c.seed}: must be between 0 and {MAX_SEED}")
    if c.architecture not in ARCHITECTURE_CHOICES:
        raise UserError(f"--architecture {c.architecture}: choose one of {', '.join(ARCHITECTURE_CHOICES)}")
    if c.decay not in DECAY_CHOICES:
        raise UserError(f"--decay {c.decay}: choose one of {', '.join(DECAY_CHOICES)}")
    if c.encoder_bias_init not in ENCODER_BIAS_INIT_CHOICES:
        raise UserError(
            f"--encoder_bias_init {c.encoder_bias_init}: choose one of {', '.join(ENCODER_BIAS_INIT_CHOICES)}"
        )
    if c.top_k > c.dict_size:
        raise UserError(f"--top_k {c.top_k}: must not exceed --dict_size {c.dict_size}")
    if not c.lr > 0 or c.min_lr < 0 or c.min_lr > c.lr:
        raise UserError(f"--lr {c.lr} / --min_lr {c.min_lr}: need lr > 0 and 0 <= min_lr <= lr")
    if c.aux_penalty < 0:
        raise UserError(f"--aux_penalty {c.aux_penalty}: must be 0 or more")
    if c.seq_len < 2:
        raise UserError(f"--seq_len {c.seq_len}: must be at least 2 (BOS plus one token)")
    need = c.batch_size + c.lm_batch_size * c.seq_len
    if c.buffer_tokens < need:
        raise UserError(
            f"--buffer_tokens {c.buffer_tokens}: must hold a training batch plus a language-model batch "
            f"(--batch_tokens + --lm_batch_size x --seq_len = {need})"
        )
    if c.group_sizes is not None and c.architecture != "matryoshka":
        raise UserError(f"--group_sizes applies only to --architecture matryoshka (got {c.architecture})")
    group_sizes(c)  # raises on bad sizes
    if c.layer is None and (site_layer(c.input_site) is None or site_layer(c.output_site) is None):
        raise UserError("--layer is required (or give --input_site and --output_site with their layer)")


def site_layer(site: str | None) -> int | None:
    m = re.search(r"(?:^|\.)(?:blocks|layers|h)\.(\d+)(?:\.|$)", site or "")
    return int(m.group(1)) if m else None


def group_sizes(c: TrainConfig) -> list[int]:
    """The Matryoshka groups as latent counts (``[dict_size]`` for the other architectures)."""
    if c.architecture != "matryoshka":
        return [c.dict_size]
    return parse_group_sizes(c.group_sizes or DEFAULT_GROUP_FRACTIONS, c.dict_size)


def parse_group_sizes(text: str, dict_size: int) -> list[int]:
    """``"128,256"`` (counts summing to dict_size) or ``"1/4,3/4"`` / ``"0.25,0.75"`` (fractions summing to 1).

    Fractions are rounded down and the last group takes what rounding left over.
    """
    flag = f"--group_sizes {text}"
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError(f"{flag}: give at least one group size")
    try:
        values = [Fraction(p) for p in parts]
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{flag}: each size must be a whole number or a fraction like 1/16 or 0.25") from None
    if any(v <= 0 for v in values):
        raise UserError(f"{flag}: every group must be larger than 0")
    if all(v.denominator == 1 for v in values) and sum(values) > 1:
        sizes = [int(v) for v in values]
        if sum(sizes) != dict_size:
            raise UserError(f"{flag}: the sizes add up to {sum(sizes)}, not --dict_size {dict_size}")
        return sizes
    if sum(values) != 1:
        raise UserError(
            f"{flag}: fractions must add up to 1 (they add up to {float(sum(values)):g}), or give latent "
            f"counts that add up to --dict_size {dict_size}"
        )
    sizes = [int(v * dict_size) for v in values]
    sizes[-1] += dict_size - sum(sizes)
    if any(s <= 0 for s in sizes):
        raise UserError(f"{flag}: a group gets no latents with --dict_size {dict_size}; use fewer or larger groups")
    return sizes


def default_sites(c: TrainConfig) -> tuple[str, str]:
    """The input and output sites, filling in the defaults for ``layer``."""
    return (c.input_site or f"blocks.{c.layer}.ln2.hook_normalized", c.output_site or f"blocks.{c.layer}.hook_mlp_out")


def layer_of(c: TrainConfig) -> int:
    layer = c.layer if c.layer is not None else site_layer(c.input_site)
    assert layer is not None  # validate() guarantees it
    return layer


def config_dict(c: TrainConfig) -> dict[str, Any]:
    """The flat record (``key -> value``) saved as ``train_config.json`` and in every checkpoint."""
    return {k: getattr(getattr(c, s), leaf) for k, (s, leaf) in _PATHS.items()}
