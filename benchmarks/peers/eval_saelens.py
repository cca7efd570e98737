"""SAELens' ``run_evals`` on the held-out token batches every tool reads; prints one JSON line.

    peer-venvs/saelens/bin/python benchmarks/peers/eval_saelens.py TOKENS MODEL_DIR SAE_DIR [--batch 8]

TOKENS is ``make_tokens.py``'s file (its ``eval`` rows), MODEL_DIR the HF folder of the built-in
model, SAE_DIR a SAELens folder (``transcoderbench export --format saelens``). SAELens reads
batches from an ``ActivationsStore``; here a minimal store hands it these rows in order, so it
sees exactly the sequences ``transcoderbench evaluate`` sees. Both of its passes (reconstruction
with CE/KL, then sparsity and variance) cover all rows. ``eval_s`` times ``run_evals`` alone;
``total_s`` the whole process (imports and loading included).
"""

from __future__ import annotations

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402
from hooked_smollm2 import check_against_hf, hooked_model  # noqa: E402
from sae_lens import SAE  # noqa: E402
from sae_lens.evals import EvalConfig, run_evals  # noqa: E402
from sae_lens.training.activation_scaler import ActivationScaler  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformer_lens import HookedTransformer  # noqa: E402


class RowStore:
    """What ``run_evals`` uses of an ``ActivationsStore``: consecutive token rows, rewound between passes."""

    def __init__(self, rows: torch.Tensor, batch: int) -> None:
        self.rows = rows
        self.context_size = rows.shape[1]
        self.store_batch_size_prompts = batch
        self.next = 0

    def get_batch_tokens(self, n: int) -> torch.Tensor:
        out = self.rows[self.next : self.next + n]
        if len(out) < n:
            raise SystemExit("eval_saelens: asked for more rows than the token file holds")
        self.next += n
        return out

    def reset_input_dataset(self) -> None:
        self.next = 0


def load_rows_and_model(tokens: str, model_dir: str) -> tuple[torch.Tensor, HookedTransformer, float]:
    """The held-out rows, the TransformerLens model, and its largest logit difference from HF's."""
    torch.set_grad_enabled(False)
    rows = load_file(tokens)["eval"]
    model, hf = hooked_model(model_dir)
    return rows, model, check_against_hf(model, hf, rows[:2])


def core_record(tool: str, metrics: dict, features: dict, eval_s: float) -> dict:
    """One JSON line from ``run_evals``' output (SAELens and SAEBench name these metrics alike)."""
    quality, loss = (
        metrics["reconstruction_quality"],
        metrics["model_performance_preservation"],
    )
    return {
        "tool": tool,
        "explained_variance": quality["explained_variance"],
        "explained_variance_legacy": quality["explained_variance_legacy"],
        "cosine": quality["cossim"],
        "mse": quality["mse"],
        "l0": metrics["sparsity"]["l0"],
        "dead": int((torch.as_tensor(features["feature_density"]) == 0).sum()),
        "ce_clean": loss["ce_loss_without_sae"],
        "ce_spliced": loss["ce_loss_with_sae"],
        "ce_zero_ablation": loss["ce_loss_with_ablation"],
        "ce_loss_score": loss["ce_loss_score"],
        "kl_spliced": metrics["model_behavior_preservation"]["kl_div_with_sae"],
        "eval_s": eval_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tokens")
    ap.add_argument("model_dir")
    ap.add_argument("sae_dir")
    ap.add_argument("--batch", type=int, default=8, help="prompts per batch (ours: --batch_size 8)")
    args = ap.parse_args()
    rows, model, max_logit_diff = load_rows_and_model(args.tokens, args.model_dir)
    sae = SAE.load_from_disk(args.sae_dir, device="cpu")
    n_batches = len(rows) // args.batch
    config = EvalConfig(
        batch_size_prompts=args.batch,
        n_eval_reconstruction_batches=n_batches,
        compute_kl=True,
        compute_ce_loss=True,
        n_eval_sparsity_variance_batches=n_batches,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
    )
    t0 = time.perf_counter()
    metrics, features = run_evals(sae, RowStore(rows, args.batch), model, ActivationScaler(), config)
    out = core_record("saelens", metrics, features, time.perf_counter() - t0)
    out.update(
        rows=n_batches * args.batch,
        max_logit_diff_vs_hf=max_logit_diff,
        total_s=time.perf_counter() - START,
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
