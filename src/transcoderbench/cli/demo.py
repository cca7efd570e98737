"""``transcoderbench demo``: train two transcoders, evaluate and compare them, offline (settings: ``train/demo.py``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from transcoderbench.cli.common import comparison_files, write_outputs
from transcoderbench.cli.flags import add_flag
from transcoderbench.config import DataConfig, DownstreamConfig, EvalConfig, LatentsConfig, ModelConfig
from transcoderbench.errors import UserError
from transcoderbench.evaluate import evaluate_transcoders
from transcoderbench.formats import load_transcoder
from transcoderbench.io import directory_lock
from transcoderbench.latents import latents_files
from transcoderbench.lm import load_language_model
from transcoderbench.train.demo import (
    DEMO_LAYER,
    DEMO_MODEL,
    EVAL_BATCHES,
    EVAL_DATASET,
    MATRYOSHKA_GROUPS,
    SHARED,
    TRAIN_DATASET,
    demo_configs,
)
from transcoderbench.train.trainer import train


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="train, evaluate and compare two transcoders on the built-in model and text (offline)",
        description="On the built-in SmolLM2-135M and corpus: train a Matryoshka and a plain BatchTopK transcoder of "
        "the same width and k at layer 10, evaluate both on held-out text, compare them, and print "
        "where everything went. Minutes on a CPU (--no-downstream --no-absorption is fastest); the first run "
        "also converts the built-in model once. Timings: docs/training.md.",
    )
    add_flag(parser, "output_dir", default="demo_output", metavar="DIR", help="where to write (default: demo_output)")
    add_flag(parser, "progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    add_flag(
        parser,
        "downstream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure the spliced loss in the comparison (--no-downstream: faster, reconstruction only)",
    )
    add_flag(
        parser,
        "absorption",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure first-letter absorption in the comparison (--no-absorption skips it)",
    )
    add_flag(
        parser,
        "latents",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="collect per-latent evidence and write NAME_latents.html and latents_compare.html (--no-latents skips it)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_demo(
        args.output_dir,
        progress=args.progress,
        downstream=args.downstream,
        absorption=args.absorption,
        latents=args.latents,
    )
    return 0


def run_demo(
    output_dir: str | Path = "demo_output",
    *,
    progress: bool = True,
    eval_batches: int = EVAL_BATCHES,
    downstream: bool = True,
    absorption: bool = True,
    latents: bool = True,
    **overrides: object,
) -> dict[str, Path]:
    """Train both transcoders, evaluate and compare them (every phase of ``compare``); returns the paths.

    ``eval_batches`` and ``overrides`` (training settings, e.g. ``token_budget``) exist for tests.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out}: exists and is a file; choose a directory")
    with directory_lock(out, what="demo output folder"):
        return _run_demo(out, progress, eval_batches, downstream, absorption, latents, overrides)


def _run_demo(
    out: Path,
    progress: bool,
    eval_batches: int,
    downstream: bool,
    absorption: bool,
    latents: bool,
    overrides: dict[str, object],
) -> dict[str, Path]:
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[demo {time.perf_counter() - start:5.0f}s] {msg}", file=sys.stderr, flush=True)

    say(f"loading the built-in language model {DEMO_MODEL} (the first time converts it)")
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
    config = EvalConfig(
        model=ModelConfig(name=DEMO_MODEL, device="cpu"),
        data=DataConfig(dataset=EVAL_DATASET, batches=eval_batches, batch_size=8, seq_len=128),
        downstream=DownstreamConfig(downstream=downstream),
        run_absorption=absorption,
        latents=LatentsConfig(latents=latents),
        progress=progress,
    )
    result = evaluate_transcoders(transcoders, config, lm=lm, log=say)

    say("step 3/3: comparing")
    pages = latents_files(result.latents, result.latent_matches, result.metrics, {n: f"{n}_latents" for n in configs})
    files = {**comparison_files(result), **pages}
    written = write_outputs(out / "comparison", files, result, comparison=files["comparison.json"], show=False)
    print_summary(result.metrics)
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


def print_summary(metrics: dict[str, dict[str, Any]]) -> None:
    """One line per transcoder: held-out FVU, L0, dead latents, and the spliced loss and absorption when measured."""
    print()
    for name, m in metrics.items():
        line = (
            f"{name:>10}: held-out FVU {m['fvu']:.3f}, mean L0 {m['mean_l0']:.1f} (trained k "
            f"{SHARED['top_k']}), dead {m['dead_percentage']:.1f}%"
        )
        if isinstance(m.get("downstream"), dict):
            line += f", delta loss {m['downstream']['delta_loss']:.3f} nats"
        if isinstance(m.get("absorption"), dict) and m["absorption"].get("mean_absorption_fraction") is not None:
            line += f", absorption {m['absorption']['mean_absorption_fraction']:.3f}"
        print(line)
