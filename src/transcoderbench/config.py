"""Settings as nested dataclasses: the one definition behind command-line flags, config files and saved JSON.

Each field carries its help text in ``metadata["help"]`` (see :func:`opt`). The CLI turns every field
of a config, sections included, into a flag with one generator (``cli/flags.py``), so a flag can
never drift from its documentation. Library errors name settings by their dotted path in the config
(``data.batches``, see ``errors.py``); the CLI shows the matching flag instead.

``EvalConfig`` gathers the sections of ``evaluate`` and ``compare``; training's settings are
``train.config.TrainConfig``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from transcoderbench.errors import UserError

__all__ = [
    "AbsorptionConfig",
    "AbsorptionOptions",
    "BootstrapOptions",
    "DataConfig",
    "DownstreamConfig",
    "EvalConfig",
    "LatentsConfig",
    "ModelConfig",
    "SelectConfig",
    "TextConfig",
    "coerce",
    "field_types",
    "model_record",
    "opt",
    "options_record",
]


def opt(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its help text and optional CLI extras.

    Extras: ``choices`` (allowed values), ``flag`` (the flag's name when it differs from the field's),
    ``aliases`` (further, deprecated flag names that still work and print a one-line note).
    """
    return field(default=default, metadata={"help": help, **metadata})


#: Upper bounds far beyond any real run; a larger number is a typo (``1e20``) that would otherwise
#: overflow or try to allocate absurd memory deep inside the pass.
MAX_COUNT = 10**9
MAX_SEED = 2**32 - 1
_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)", re.IGNORECASE)


def check_range(value: int | float | None, field: str, low: int | float, high: int | float, hint: str = "") -> None:
    """``low <= value <= high`` (None passes), else a one-line error naming the field."""
    if value is not None and not low <= value <= high:
        raise UserError(f"`{field}` {value}: must be between {low} and {high:,}{hint}", field=field)


@dataclass
class ModelConfig:
    """Language model"""

    name: str | None = opt(
        None,
        "language model: a hub id, a local directory, a .gguf file, or 'smollm2-135m' (built in). "
        "Default: the model named in the checkpoint's config",
        flag="model",
    )
    device: str = opt("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:0, ...")
    dtype: str = opt(
        "float32",
        "language-model dtype (float32, bfloat16, float16); transcoders and metrics always run in fp32/fp64",
    )
    trust_remote_code: bool = opt(False, "allow code from the model or dataset repository to run (off by default)")

    def check(self) -> ModelConfig:
        if not _DEVICE.fullmatch(str(self.device).strip()):
            raise UserError(
                f"`model.device` {self.device!r}: not a device transcoderbench runs on; use auto, cpu, cuda, cuda:N or mps",
                field="model.device",
            )
        return self


@dataclass
class TextConfig:
    """Which text to read"""

    dataset: str | None = opt(
        None,
        "text to read: a Hugging Face dataset id (streamed), a local .txt/.jsonl file or folder. "
        "Default: the built-in corpus (Python's pydoc topics)",
    )
    text_field: str = opt("text", "field holding the text in .jsonl files and datasets")
    dataset_config: str | None = opt(None, "configuration (subset) of a Hugging Face dataset, e.g. sample-10BT")
    dataset_split: str = opt("train", "split of a Hugging Face dataset")


@dataclass
class DataConfig(TextConfig):
    """Which tokens to read and how to batch them."""

    batches: int = opt(1000, "number of batches to read (stops earlier if the dataset runs out)")
    batch_size: int = opt(8, "sequences per batch")
    seq_len: int = opt(128, "tokens per sequence, BOS included")

    def check(self) -> DataConfig:
        check_range(self.batches, "data.batches", 1, MAX_COUNT)
        check_range(self.batch_size, "data.batch_size", 1, 1_000_000)
        check_range(self.seq_len, "data.seq_len", 2, 10_000_000)
        return self


@dataclass
class SelectConfig:
    """How to pick one transcoder out of a multi-layer / multi-width source such as Gemma Scope."""

    layer: int | None = opt(
        None, "layer to evaluate (picks the Gemma Scope layer; must match a checkpoint's own layer)"
    )
    width: str | None = opt(
        None, "Gemma Scope width folder, e.g. 16k (default: the only one, else an error listing them)"
    )
    l0: str | None = opt(
        None,
        "Gemma Scope L0 variant: a number for Gemma Scope 1 (average_l0_X), small/medium/big for Gemma Scope 2 "
        "(default: the lowest)",
    )


@dataclass
class DownstreamConfig:
    """Spliced (downstream) evaluation: next-token loss with each reconstruction in the model."""

    downstream: bool = opt(
        True,
        "splice each reconstruction into the model at its output site and measure CE, delta loss, KL and loss "
        "recovered (--no-downstream skips it and stops the forward pass early)",
    )
    mean_ablation_batches: int = opt(2, "batches read first to estimate the mean-ablation baseline")
    variants_per_pass: int | None = opt(
        None, "spliced variants stacked into one pass of the remaining layers (default: 4 on GPU, 1 on CPU)"
    )

    def check(self) -> DownstreamConfig:
        check_range(self.mean_ablation_batches, "downstream.mean_ablation_batches", 0, MAX_COUNT)
        check_range(self.variants_per_pass, "downstream.variants_per_pass", 1, 1024, " (or leave it unset)")
        return self


@dataclass
class BootstrapOptions:
    """Bootstrap intervals over sequences (for every headline metric and every paired difference)."""

    bootstrap_resamples: int = opt(
        1000, "number of bootstrap resamples of the evaluated sequences; 0 turns intervals off"
    )
    bootstrap_seed: int = opt(0, "seed of the bootstrap resampling (same seed, same tokens -> same intervals)")
    confidence: float = opt(0.95, "confidence level of the bootstrap intervals")

    def check(self) -> BootstrapOptions:
        check_range(self.bootstrap_resamples, "bootstrap.bootstrap_resamples", 0, 1_000_000)
        check_range(self.bootstrap_seed, "bootstrap.bootstrap_seed", 0, MAX_SEED)
        if self.bootstrap_resamples < 0:
            raise UserError(f"`bootstrap.bootstrap_resamples` {self.bootstrap_resamples}: must be 0 (off) or positive")
        if not 0.0 < self.confidence < 1.0:
            raise UserError(f"`bootstrap.confidence` {self.confidence}: must be between 0 and 1, e.g. 0.95")
        if self.bootstrap_resamples and self.bootstrap_resamples < 100:
            raise UserError(
                f"`bootstrap.bootstrap_resamples` {self.bootstrap_resamples}: use at least 100 (or 0 for no intervals)"
            )
        return self


# ----------------------------------------------------------------------------- absorption
# Defaults are SAEBench's (``AbsorptionEvalConfig`` and the absorption calculator), except the word
# budgets, the LM batch size and the sharing of in-context examples: those default to ``None`` = "fit
# the device" (SAEBench's full budget on a GPU, a few minutes on a small CPU; see ``resolved``).
# Field names keep their ``absorption_`` prefix: they are the saved JSON's keys and the flags' names.
#: CPU budget. With SAEBench's probe recipe, SmolLM2 at layer 10 needs ~3,000 training words for
#: 21-25 letters to reach test F1 > 0.6 (1,500 give 16-20: too close to the 20 needed); 1,000
#: test words give each scored letter tens of probe-positive words. About 4,000 prompts (timings:
#: docs/absorption.md).
CPU_TRAIN_WORDS = 3000
CPU_TEST_WORDS = 1000
#: Words sharing one draw of in-context examples (their ~80-token prefix runs once): 32 cost ~3.6
#: token positions per word instead of ~82, and give the same probe quality as 16 on SmolLM2.
CPU_WORDS_PER_CONTEXT = 32
CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 64  # SAEBench's batch size for collecting probe activations
#: Text tokens the transcoder-mode input decoder is fitted on (with the training words), by device.
#: On SmolLM2 65,536 tokens are ~28 rows per latent at 2,304 latents; the demo spends 41 s on them.
CPU_FIT_TOKENS = 65_536
GPU_FIT_TOKENS = 1_048_576


@dataclass
class AbsorptionOptions:
    """First-letter absorption (SAEBench's method, adapted to transcoders)"""

    absorption_seed: int = opt(42, "seed for the word split, the in-context examples and probe training")
    absorption_train_words: int | None = opt(
        None,
        "words to train the probes on, from the training split (4/5 of the letter-only vocabulary) "
        "(default: 3000 on CPU, all on GPU)",
    )
    absorption_test_words: int | None = opt(
        None,
        "words to test the probes and measure absorption on, from the test split (the other 1/5) "
        "(default: 1000 on CPU, all on GPU)",
    )
    absorption_words_per_context: int | None = opt(
        None,
        "words that share one set of in-context examples, whose prefix then runs once for all of them "
        "(default: 32 on CPU; 1 on GPU, as in SAEBench, where each word draws its own examples)",
    )
    absorption_batch_size: int | None = opt(
        None, "prompts per language-model forward pass (default: 32 on CPU, 64 on GPU)"
    )
    absorption_icl_examples: int = opt(10, "in-context examples before each word")
    absorption_prompt_template: str = opt(
        "{word} has the first letter:", "prompt template; activations are read at the word's token"
    )
    absorption_max_k: int = opt(10, "largest k tried by k-sparse probing to find each letter's main latents")
    absorption_f1_jump: float = opt(
        0.03, "k-sparse probing adds a latent only while test F1 improves by more than this"
    )
    absorption_min_probe_f1: float = opt(
        0.6, "a letter is scored only if the ground-truth probe's test F1 exceeds this"
    )
    absorption_min_letters: int = opt(
        20, "fewest scored letters for a headline number; with fewer, the output says why instead"
    )
    absorption_cos_threshold: float = opt(
        0.1, "absorption fraction: a latent can absorb only if its row's cosine with the probe is at least this"
    )
    full_absorption_cos_threshold: float = opt(
        0.025, "full absorption: the top-projecting latent's row must have at least this cosine with the probe"
    )
    absorption_proportion_threshold: float = opt(
        0.4, "absorbing latents must carry at least this fraction of the word's probe projection"
    )
    absorption_max_absorbers: int = opt(3, "most latents that together absorb one word (absorption fraction)")
    absorption_probe_epochs: int = opt(50, "epochs of ground-truth probe training")
    absorption_probe_lr: float = opt(0.01, "ground-truth probe learning rate (Adam, decaying to 1e-5)")
    absorption_probe_batch_size: int = opt(64, "ground-truth probe batch size")
    absorption_probe_weight_decay: float = opt(1e-4, "ground-truth probe weight decay")
    absorption_sparse_l1: float = opt(0.01, "L1 penalty of the latent probe that ranks latents for k-sparse probing")
    absorption_sparse_epochs: int = opt(50, "epochs of the L1 latent probe")
    absorption_sparse_batch_size: int = opt(4096, "batch size of the L1 latent probe")
    absorption_cache: bool = opt(True, "reuse cached probes and activations (--no-absorption-cache recomputes them)")
    absorption_cache_dir: str | None = opt(
        None, "cache folder (default: $TRANSCODERBENCH_CACHE/absorption or ~/.cache/transcoderbench/absorption)"
    )
    absorption_input_decoder_ridge: float = opt(1e-4, "transcoders: ridge of the fitted input decoder, per latent")
    absorption_fit_tokens: int | None = opt(
        None,
        "transcoders: text tokens (from --dataset) the input decoder is fitted on, besides the training words; "
        "default 65,536 on CPU, 1,048,576 on GPU; 0: training words only",
    )
    absorption_bootstrap_resamples: int = opt(1000, "bootstrap resamples of the words for intervals; 0: none")
    absorption_bootstrap_seed: int = opt(0, "seed of the bootstrap over words")

    def resolved(self, device_type: str) -> AbsorptionOptions:
        """A copy with every ``None`` budget filled for ``device_type`` ("cpu", "cuda", ...), checked."""
        gpu = device_type != "cpu"
        filled = dataclasses.replace(
            self,
            absorption_train_words=self.absorption_train_words
            if self.absorption_train_words is not None
            else (0 if gpu else CPU_TRAIN_WORDS),
            absorption_test_words=self.absorption_test_words
            if self.absorption_test_words is not None
            else (0 if gpu else CPU_TEST_WORDS),
            absorption_words_per_context=self.absorption_words_per_context
            if self.absorption_words_per_context is not None
            else (1 if gpu else CPU_WORDS_PER_CONTEXT),
            absorption_batch_size=self.absorption_batch_size
            if self.absorption_batch_size is not None
            else (GPU_BATCH_SIZE if gpu else CPU_BATCH_SIZE),
            absorption_fit_tokens=self.absorption_fit_tokens
            if self.absorption_fit_tokens is not None
            else (GPU_FIT_TOKENS if gpu else CPU_FIT_TOKENS),
        )
        filled.check()
        return filled

    def check(self) -> None:
        """Refuse settings that cannot work, naming the flag."""
        positive = {
            "absorption_words_per_context": self.absorption_words_per_context,
            "absorption_batch_size": self.absorption_batch_size,
            "absorption_icl_examples": self.absorption_icl_examples,
            "absorption_max_k": self.absorption_max_k,
            "absorption_min_letters": self.absorption_min_letters,
            "absorption_max_absorbers": self.absorption_max_absorbers,
            "absorption_probe_epochs": self.absorption_probe_epochs,
            "absorption_probe_batch_size": self.absorption_probe_batch_size,
            "absorption_sparse_epochs": self.absorption_sparse_epochs,
            "absorption_sparse_batch_size": self.absorption_sparse_batch_size,
        }
        for name, value in positive.items():
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} {value}: must be at least 1")
        for name in ("absorption_train_words", "absorption_test_words"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"--{name.replace('_', '-')} {value}: must be 0 (all words) or more")
        if self.absorption_fit_tokens is not None:
            check_range(self.absorption_fit_tokens, "absorption.absorption_fit_tokens", 0, MAX_COUNT)
        for name in ("absorption_seed", "absorption_bootstrap_seed"):
            check_range(getattr(self, name), f"absorption.{name}", 0, MAX_SEED)
        for name, value in {
            **positive,
            "absorption_train_words": self.absorption_train_words,
            "absorption_test_words": self.absorption_test_words,
            "absorption_bootstrap_resamples": self.absorption_bootstrap_resamples,
        }.items():
            check_range(value, f"absorption.{name}", 0, MAX_COUNT)
        check_template(self.absorption_prompt_template)
        if self.absorption_cache and self.absorption_cache_dir:
            from transcoderbench.io import check_output_folder  # io imports torch; config stays light

            check_output_folder(self.absorption_cache_dir, "--absorption-cache-dir")
        if self.absorption_prompt_template.count("{word}") != 1:
            raise UserError(
                f"--absorption-prompt-template {self.absorption_prompt_template!r}: must contain {{word}} exactly once"
            )
        if "\n" in self.absorption_prompt_template:
            raise UserError("--absorption-prompt-template: must be one line (examples are separated by newlines)")
        if self.absorption_probe_lr <= 0:
            raise UserError(f"--absorption-probe-lr {self.absorption_probe_lr}: must be positive")


def check_template(template: str) -> None:
    """The prompt template must format with ``word`` alone: stray braces or other placeholders would
    otherwise fail only after the whole token pass."""
    try:
        template.format(word="cat")
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise UserError(
            f"--absorption-prompt-template {template!r}: not a valid template ({type(exc).__name__}: {exc}); "
            "use {word} once and write literal braces as {{ and }}"
        ) from None


@dataclass
class EvalConfig:
    """Everything ``evaluate`` and ``compare`` need besides the transcoders themselves."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    bootstrap: BootstrapOptions = field(default_factory=BootstrapOptions)
    absorption: AbsorptionOptions = field(default_factory=AbsorptionOptions)
    latents: LatentsConfig = field(default_factory=lambda: LatentsConfig())
    run_absorption: bool = opt(
        True,
        "after the token pass, measure first-letter feature absorption (a probe on the input site; minutes on CPU the "
        "first time, then cached); --no-absorption skips it",
        flag="absorption",
    )
    progress: bool = opt(True, "show progress bars")
    checkpoint_every: int = opt(
        0,
        "save the pass's state every N batches (of this process) into OUTPUT_DIR/.resume, so that --resume can "
        "continue after a crash; 0: never",
    )
    resume: bool = opt(
        False,
        "continue from the state saved in OUTPUT_DIR/.resume by an interrupted run of the same command "
        "(refused if the settings or transcoders differ)",
    )

    def check(self) -> EvalConfig:
        """Every setting that can be checked without the model, before anything is loaded."""
        self.model.check()
        self.data.check()
        self.downstream.check()
        self.bootstrap.check()
        if self.run_absorption:
            self.absorption.check()
        return self


@dataclass
class AbsorptionConfig:
    """Everything the ``absorption`` command needs besides the transcoders.

    The prompts are built in; ``data`` is the text a transcoder's input decoder is fitted on.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: TextConfig = field(default_factory=TextConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    absorption: AbsorptionOptions = field(default_factory=AbsorptionOptions)
    progress: bool = opt(True, "show progress bars")

    def check(self) -> AbsorptionConfig:
        self.model.check()
        self.absorption.check()
        return self


def model_record(model: ModelConfig, progress: bool) -> dict[str, Any]:
    """The language-model part of ``meta.options`` (the field names its readers use)."""
    return {
        "model": model.name,
        "device": model.device,
        "dtype": model.dtype,
        "trust_remote_code": model.trust_remote_code,
        "progress": progress,
    }


def options_record(config: EvalConfig) -> dict[str, Any]:
    """The ``meta.options`` of every evaluation JSON (the field names its readers use)."""
    m, d = config.model, config.data
    return {
        "model": m.name,
        **dataclasses.asdict(d),
        "device": m.device,
        "dtype": m.dtype,
        "trust_remote_code": m.trust_remote_code,
        "progress": config.progress,
        **dataclasses.asdict(config.downstream),
        **dataclasses.asdict(config.bootstrap),
    }


# ----------------------------------------------------------------------------- types
@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of the dataclass ``cls`` (``typing.get_type_hints``, not strings)."""
    return typing.get_type_hints(cls)


def unwrap_optional(kind: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(kind))
    return kind, False


def coerce(kind: Any, value: Any, what: str) -> Any:
    """``value`` (a flag's string, or a config file's string/number/list) as type ``kind``.

    ``what`` names the setting in the error, e.g. ``--top_k: top_k``.
    """
    base, optional = unwrap_optional(kind)
    if value is None:
        if optional:
            return None
        raise UserError(f"{what} may not be empty")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.strip().lower() in ("true", "yes", "1")
            raise ValueError
        if base is int:
            if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, (str, float)) else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(Fraction(value)) if isinstance(value, str) else float(value)
        if isinstance(value, (dict, list, tuple)):
            raise ValueError
        return str(value)
    except (ValueError, TypeError, ZeroDivisionError):
        raise UserError(f"{what}={value!r} is not a valid {getattr(base, '__name__', base)}") from None


# ----------------------------------------------------------------------------- latents
@dataclass
class LatentsConfig:
    """Per-latent evidence (latents.html, latents.json), collected in the same pass"""

    latents: bool = opt(
        False,
        "collect per-latent evidence in the pass (top and sampled contexts, density, histogram, logit lens) and "
        "write latents.html and latents.json; compare also matches latents (latents_compare.html)",
    )
    latents_top_k: int = opt(10, "top-activating contexts kept per latent")
    latents_samples: int = opt(5, "further firings kept per latent, drawn uniformly from all its firings")
    latents_subset: str | None = opt(
        None, "collect only these latents: a range START:END (e.g. 0:4096) or a file of latent ids (default: all)"
    )
    latents_candidates: int = opt(
        8, "compare: decoder-cosine candidates per latent whose activation correlation is measured in the pass"
    )

    def check(self) -> LatentsConfig:
        for name in ("latents_top_k", "latents_samples", "latents_candidates"):
            if getattr(self, name) < 1:
                raise UserError(f"`latents.{name}` {getattr(self, name)}: must be at least 1")
        return self
