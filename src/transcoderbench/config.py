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
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from transcoderbench.absorption.options import AbsorptionOptions
from transcoderbench.errors import UserError
from transcoderbench.metrics.bootstrap import BootstrapOptions
from transcoderbench.options_base import opt

__all__ = [
    "AbsorptionConfig",
    "AbsorptionOptions",
    "BootstrapOptions",
    "DataConfig",
    "DownstreamConfig",
    "EvalConfig",
    "ModelConfig",
    "SelectConfig",
    "coerce",
    "field_types",
    "model_record",
    "opt",
    "options_record",
]


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


@dataclass
class DataConfig:
    """Which tokens to read and how to batch them."""

    dataset: str | None = opt(
        None,
        "text to evaluate on: a Hugging Face dataset id (streamed), a local .txt/.jsonl file or folder. "
        "Default: the built-in corpus (Python's pydoc topics)",
    )
    text_field: str = opt("text", "field holding the text in .jsonl files and datasets")
    dataset_config: str | None = opt(None, "configuration (subset) of a Hugging Face dataset, e.g. sample-10BT")
    dataset_split: str = opt("train", "split of a Hugging Face dataset")
    batches: int = opt(1000, "number of batches to read (stops earlier if the dataset runs out)")
    batch_size: int = opt(8, "sequences per batch")
    seq_len: int = opt(128, "tokens per sequence, BOS included")


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


@dataclass
class EvalConfig:
    """Everything ``evaluate`` and ``compare`` need besides the transcoders themselves."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    bootstrap: BootstrapOptions = field(default_factory=BootstrapOptions)
    absorption: AbsorptionOptions = field(default_factory=AbsorptionOptions)
    run_absorption: bool = opt(
        True,
        "after the token pass, measure first-letter feature absorption (a probe on the input site; minutes on CPU the "
        "first time, then cached); --no-absorption skips it",
        flag="absorption",
    )
    progress: bool = opt(True, "show progress bars")


@dataclass
class AbsorptionConfig:
    """Everything the ``absorption`` command needs besides the transcoders (no text corpus: the prompts are built in)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    absorption: AbsorptionOptions = field(default_factory=AbsorptionOptions)
    progress: bool = opt(True, "show progress bars")


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
