"""The demo's settings (``transcoderbench demo``, run by ``cli/demo.py``): the whole loop (train -> evaluate -> compare) offline, on a CPU.

On the built-in SmolLM2-135M at layer 10 (a middle layer), a Matryoshka transcoder and a plain
BatchTopK transcoder of the same width and k are trained side by side on the same activations
(one buffer, so the language model runs once for both), then evaluated on the same held-out
tokens in one pass and compared.

Held-out evaluation: training reads the first ~48k tokens of the standard library's docstrings
(``builtin:stdlib-docstrings``); evaluation reads the pydoc topics (``builtin:pydoc_data.topics``),
the corpus ``transcoderbench evaluate`` reads by default, so re-running ``evaluate`` on a demo
checkpoint reproduces the demo's numbers. The training text fits in the buffer, so the language
model reads it once and the three epochs only reshuffle it.

Timings and the numbers it reaches: ``docs/training.md`` (re-measure with ``time transcoderbench demo``).
"""

from __future__ import annotations

from pathlib import Path

from transcoderbench.train.config import TrainConfig

DEMO_MODEL = "smollm2-135m"
DEMO_LAYER = 10
TRAIN_DATASET = "builtin:stdlib-docstrings"
EVAL_DATASET = "builtin:pydoc_data.topics"
EVAL_BATCHES = 16
#: Settings both demo transcoders share (same width, same k, same data and schedule).
SHARED = dict(
    model=DEMO_MODEL,
    layer=DEMO_LAYER,
    dict_size=2304,  # 4 x d_model
    top_k=32,
    top_k_aux=256,
    aux_penalty=1 / 32,
    dead_window=20_000,  # ~40 steps: the run is short, so dead latents must be noticed early
    lr=3e-3,  # high for a short run; decayed to a tenth by the end
    warmup_steps=20,
    min_lr=3e-4,
    decay="cosine",
    batch_size=512,  # small batches: more updates for the same compute, which a short run needs most
    token_budget=144_384,  # 282 steps: 3 epochs of the ~48k training tokens
    seed=0,
    dataset=TRAIN_DATASET,
    dataset_tokens=49_152,  # the first 48 language-model batches: at this size more steps help, more text hardly
    seq_len=128,
    lm_batch_size=8,
    buffer_tokens=65_536,  # holds all the training tokens, so the language model reads them once
    device="cpu",
    log_every=10,
)
MATRYOSHKA_GROUPS = "128,256,512,1408"


def demo_configs(output_dir: Path, progress: bool = True, **overrides: object) -> dict[str, TrainConfig]:
    """The two runs of the demo, by name."""
    shared = {**SHARED, **overrides, "progress": progress}
    return {
        "matryoshka": TrainConfig.from_flat(
            **shared,
            architecture="matryoshka",
            group_sizes=MATRYOSHKA_GROUPS,
            output_dir=str(output_dir / "matryoshka"),
        ),
        "batchtopk": TrainConfig.from_flat(
            **shared, architecture="batchtopk", output_dir=str(output_dir / "batchtopk")
        ),
    }
