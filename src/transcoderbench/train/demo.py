"""``transcoderbench demo``: the whole loop (train -> evaluate -> compare) offline, in minutes on a CPU.

On the built-in SmolLM2-135M at layer 10 (a middle layer), a Matryoshka transcoder and a plain
BatchTopK transcoder of the same width and k are trained side by side on the same activations
(one buffer, so the language model runs once for both), then evaluated on the same held-out
tokens in one pass and compared.

Held-out evaluation: training reads the first ~48k tokens of the standard library's docstrings
(``builtin:stdlib-docstrings``); evaluation reads the pydoc topics (``builtin:pydoc_data.topics``),
the corpus ``transcoderbench evaluate`` reads by default, so re-running ``evaluate`` on a demo
checkpoint reproduces the demo's numbers. The training text fits in the buffer, so the language
model reads it once and the three epochs only reshuffle it.

Measured on a 2-core CPU with an empty cache (`time transcoderbench demo`): 4 min 10 s in all
(16 s converting the built-in model, 41 s training of which 23 s in the language model, 174 s
for 16 evaluation batches with the spliced loss, 14 s absorption); held-out FVU 0.268
(Matryoshka) and 0.256 (BatchTopK), inference L0 32.8 and 32.2 for k = 32. With
``--no-downstream --no-absorption`` the evaluation takes seconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from transcoderbench.errors import UserError
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
        "matryoshka": TrainConfig(
            **shared,
            architecture="matryoshka",
            group_sizes=MATRYOSHKA_GROUPS,
            output_dir=str(output_dir / "matryoshka"),
        ),
        "batchtopk": TrainConfig(**shared, architecture="batchtopk", output_dir=str(output_dir / "batchtopk")),
    }


def run_demo(
    output_dir: str | Path = "demo_output",
    *,
    progress: bool = True,
    eval_batches: int = EVAL_BATCHES,
    downstream: bool = True,
    absorption: bool = True,
    **overrides: object,
) -> dict[str, Path]:
    """Train both transcoders, evaluate and compare them (every phase of ``compare``); returns the paths.

    ``eval_batches`` and ``overrides`` (training settings, e.g. ``token_budget``) exist for tests.
    """
    from transcoderbench.evaluation import evaluate_transcoders
    from transcoderbench.formats import load_transcoder
    from transcoderbench.io import write_files
    from transcoderbench.lm import load_language_model
    from transcoderbench.options import DataOptions, DownstreamOptions
    from transcoderbench.report.comparison import comparison_record, comparison_summary
    from transcoderbench.report.html import add_report
    from transcoderbench.train.trainer import train

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out}: exists and is a file; choose a directory")
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[demo {time.perf_counter() - start:5.0f}s] {msg}", file=sys.stderr, flush=True)

    say(f"loading the built-in language model {DEMO_MODEL} (the first time converts it, ~20 s)")
    lm = load_language_model(DEMO_MODEL, device="cpu")
    configs = demo_configs(out, progress, **overrides)
    say(
        f"step 1/3: training a Matryoshka transcoder (groups {MATRYOSHKA_GROUPS}) and a BatchTopK transcoder, both "
        f"{SHARED['dict_size']} latents with k={SHARED['top_k']}, at layer {DEMO_LAYER} on {TRAIN_DATASET}"
    )
    results = train(list(configs.values()), names=list(configs), overwrite=True, lm=lm, log=say)
    timing = results[0].timing
    say(
        f"trained in {timing['total_seconds']:.0f} s ({timing['lm_seconds']:.0f} s in the language model, "
        f"{timing['transcoder_seconds']:.0f} s in transcoder steps)"
    )

    phases = ["reconstruction"] + (["spliced loss"] if downstream else []) + (["absorption"] if absorption else [])
    say(
        f"step 2/3: evaluating both checkpoints on held-out text ({EVAL_DATASET}, {eval_batches} batches): "
        + ", ".join(phases)
    )
    transcoders = {name: load_transcoder(str(r.output_dir)) for name, r in zip(configs, results)}
    data = DataOptions(
        model=DEMO_MODEL,
        dataset=EVAL_DATASET,
        batches=eval_batches,
        batch_size=8,
        seq_len=128,
        device="cpu",
        progress=progress,
    )
    result = evaluate_transcoders(
        transcoders, data, DownstreamOptions(downstream=downstream), run_absorption_phase=absorption, lm=lm, log=say
    )

    say("step 3/3: comparing")
    files: dict[str, object] = {
        f"{name}_metrics.json": {"meta": result.meta, **m} for name, m in result.metrics.items()
    }
    files["comparison.json"] = comparison_record(result.meta, result.metrics)
    files["summary.txt"] = comparison_summary(result.meta, result.metrics)
    files = add_report(files, result.meta, result.metrics, files["comparison.json"])  # type: ignore[arg-type]
    written = write_files(out / "comparison", files)  # type: ignore[arg-type]

    print()
    for name, m in result.metrics.items():
        line = (
            f"{name:>10}: held-out FVU {m['fvu']:.3f}, mean L0 {m['mean_l0']:.1f} (trained k "
            f"{SHARED['top_k']}), dead {m['dead_percentage']:.1f}%"
        )
        if isinstance(m.get("downstream"), dict):
            line += f", delta loss {m['downstream']['delta_loss']:.3f} nats"
        if isinstance(m.get("absorption"), dict) and m["absorption"].get("mean_absorption_fraction") is not None:
            line += f", absorption {m['absorption']['mean_absorption_fraction']:.3f}"
        print(line)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s. Outputs:")
    for name, r in zip(configs, results):
        print(f"  {r.output_dir}/  {name} transcoder (native format; metrics.jsonl has the training curve)")
    for p in written:
        print(f"  {p}")
    print(
        f"\nRead {out / 'comparison' / 'summary.txt'} or open {out / 'comparison' / 'report.html'}. "
        "Evaluate a checkpoint again with\n"
        f"  transcoderbench evaluate --checkpoint {out / 'matryoshka'} --batches {eval_batches}"
    )
    return {"matryoshka": results[0].output_dir, "batchtopk": results[1].output_dir, "comparison": out / "comparison"}
