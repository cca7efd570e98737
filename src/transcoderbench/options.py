"""Option dataclasses: the one definition behind command-line flags, config files and saved JSON.

Each field carries its help text in ``metadata["help"]``; ``cli.py`` turns fields into flags
(both ``--flag_name`` and ``--flag-name``), and results record ``asdict(options)``, so a
flag can never drift from its documentation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def opt(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its help text (and optional argparse extras such as ``choices``)."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class DataOptions:
    """Which tokens to read and how to batch them."""

    model: str | None = opt(
        None,
        "language model: a hub id, a local directory, a .gguf file, or 'smollm2-135m' (built in). "
        "Default: the model named in the checkpoint's config",
    )
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
    device: str = opt("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:0, ...")
    dtype: str = opt(
        "float32",
        "language-model dtype (float32, bfloat16, float16); transcoders and metrics always run in fp32/fp64",
    )
    trust_remote_code: bool = opt(False, "allow code from the model or dataset repository to run (off by default)")
    progress: bool = opt(True, "show progress bars")


@dataclass
class SelectOptions:
    """How to pick one transcoder out of a multi-layer / multi-width source such as Gemma Scope."""

    layer: int | None = opt(
        None, "layer to evaluate (picks the Gemma Scope layer; must match a checkpoint's own layer)"
    )
    width: str | None = opt(
        None, "Gemma Scope width folder, e.g. 16k (default: the only one, else an error listing them)"
    )
    l0: str | None = opt(
        None,
        "Gemma Scope L0 variant: a number for Gemma Scope 1 (average_l0_X), small/medium/big for Gemma Scope 2 (default: the lowest)",
    )


@dataclass
class DownstreamOptions:
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
class AbsorptionSwitch:
    """Whether evaluate/compare run the first-letter absorption phase (its settings: AbsorptionOptions)."""

    absorption: bool = opt(
        True,
        "after the token pass, measure first-letter feature absorption (a probe on the input site; minutes on CPU the "
        "first time, then cached); --no-absorption skips it",
    )
