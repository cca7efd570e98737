"""SAEBench's core and absorption evaluations on the built-in model; prints one JSON line.

    peer-venvs/saebench/bin/python benchmarks/peers/eval_saebench.py core TOKENS MODEL_DIR SAE_DIR [--batch 8]
    peer-venvs/saebench/bin/python benchmarks/peers/eval_saebench.py absorption MODEL_DIR SAE_DIR --out DIR

``core`` runs SAEBench's ``run_evals`` on TOKENS' ``eval`` rows in order (the rows every tool reads,
through the same minimal store as ``eval_saelens.py``), with the special tokens SAEBench's own
driver ignores (BOS, EOS, PAD) and its default of reconstructing them in the spliced pass.
``absorption`` runs SAEBench's first-letter absorption with its defaults (one prompt per word,
``{word} has the first letter:``, an 80/20 split of the words) on the SAE, over every letter-only
token of the vocabulary or, with ``--words N``, a seeded random sample of N of them (all 47k take
hours on a CPU); its model loader is pointed at the converted SmolLM2, which TransformerLens does
not list.
``eval_s`` times the evaluation call; ``total_s`` the whole process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time

START = time.perf_counter()

from eval_saelens import RowStore, core_record, load_rows_and_model  # noqa: E402
from hooked_smollm2 import hooked_model  # noqa: E402
from sae_lens import SAE  # noqa: E402


def core(args: argparse.Namespace) -> dict:
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals
    from sae_bench.sae_bench_utils.general_utils import load_and_format_sae

    rows, model, max_logit_diff = load_rows_and_model(args.tokens, args.model_dir)
    _, sae, _ = load_and_format_sae("transcoderbench", SAE.load_from_disk(args.sae_dir, device="cpu"), "cpu")
    n_batches = len(rows) // args.batch
    config = CoreEvalConfig(
        model_name="smollm2-135m",
        batch_size_prompts=args.batch,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
        context_size=rows.shape[1],
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
    )
    tok = model.tokenizer
    ignore = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}
    t0 = time.perf_counter()
    metrics, features = run_evals(sae, RowStore(rows, args.batch), model, config, ignore_tokens=ignore)
    out = core_record("saebench-core", metrics, features, time.perf_counter() - t0)
    return {
        **out,
        "rows": n_batches * args.batch,
        "max_logit_diff_vs_hf": max_logit_diff,
    }


def absorption(args: argparse.Namespace) -> dict:
    from sae_bench.evals.absorption import common, feature_absorption
    from sae_bench.evals.absorption import main as absorption_main
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.evals.absorption.vocab import get_alpha_tokens
    from transformer_lens import HookedTransformer

    if args.words:  # a seeded sample of the vocabulary, the same for both of SAEBench's phases

        def sample(tokenizer):  # type: ignore[no-untyped-def]
            vocab = get_alpha_tokens(tokenizer)
            return random.Random(args.seed).sample(vocab, min(args.words, len(vocab)))

        for module in (common, feature_absorption):
            module.get_alpha_tokens = sample

    model, _ = hooked_model(args.model_dir)
    HookedTransformer.from_pretrained_no_processing = staticmethod(lambda *a, **k: model)  # type: ignore[method-assign]
    sae = SAE.load_from_disk(args.sae_dir, device="cpu")
    config = AbsorptionEvalConfig(model_name="smollm2-135m", llm_batch_size=args.batch, llm_dtype="float32")
    if args.min_letters is not None:
        config.min_feats_for_eval = args.min_letters
    # SAEBench caches the probe, its training activations and its word split inside its own package
    # (sae_bench/artifacts/absorption) and reuses them whatever the vocabulary: start empty, as ours does.
    shutil.rmtree(common.RESULTS_DIR, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    os.chdir(args.out)  # SAEBench writes its artifacts/ folder into the working directory
    t0 = time.perf_counter()
    results = absorption_main.run_eval(config, [("transcoderbench", sae)], "cpu", ".", force_rerun=True)
    eval_s = time.perf_counter() - t0
    out = next(iter(results.values()))
    mean = out["eval_result_metrics"]["mean"]
    return {
        "tool": "saebench-absorption",
        "mean_absorption_fraction": mean["mean_absorption_fraction_score"],
        "full_absorption_rate": mean["mean_full_absorption_score"],
        "letters": len(out["eval_result_details"]),
        "per_letter": {d["first_letter"]: d["mean_absorption_fraction"] for d in out["eval_result_details"]},
        "words": f"{args.words or 'all'} (80/20)",
        "eval_s": eval_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="eval", required=True)
    c = sub.add_parser("core")
    c.add_argument("tokens")
    c.add_argument("model_dir")
    c.add_argument("sae_dir")
    c.add_argument("--batch", type=int, default=8, help="prompts per batch (ours: --batch_size 8)")
    a = sub.add_parser("absorption")
    a.add_argument("model_dir")
    a.add_argument("sae_dir")
    a.add_argument("--out", required=True, help="folder for SAEBench's result and artifact files")
    a.add_argument(
        "--batch",
        type=int,
        default=64,
        help="SAEBench's llm_batch_size (ours on GPU: 64)",
    )
    a.add_argument(
        "--words",
        type=int,
        default=0,
        help="a random sample of N letter-only tokens (default 0: all)",
    )
    a.add_argument("--seed", type=int, default=42, help="seed of that sample")
    a.add_argument(
        "--min_letters",
        type=int,
        default=None,
        help="SAEBench's min_feats_for_eval (its default 20: with fewer letters passing its probe it reports nothing)",
    )
    args = ap.parse_args()
    out = core(args) if args.eval == "core" else absorption(args)
    out["total_s"] = time.perf_counter() - START
    print(json.dumps(out))


if __name__ == "__main__":
    main()
