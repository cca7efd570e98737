"""Suggestions: rules applied to measured metrics, each naming the training setting to change.

All thresholds live in ``THRESHOLDS`` below. They are this project's heuristics, not published
standards: they flag values that usually mean training went wrong, and every suggestion shows
the measured value that triggered it so the reader can judge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

THRESHOLDS: dict[str, float] = {
    # FVU above this: the transcoder misses a fifth of the target variance (heuristic).
    "fvu_high": 0.2,
    # Dead latents above this fraction waste capacity (heuristic; dead = never fired in the evaluation).
    "dead_fraction_high": 0.10,
    # More than this fraction of latents firing on >10% of tokens (heuristic).
    "dense_fraction_high": 0.01,
    # Inference L0 further than this relative distance from the trained k: the inference
    # threshold does not reproduce training sparsity (the training issue asks for 20%).
    "l0_vs_k_relative": 0.2,
    # Latents whose max |cos| to another decoder row exceeds 0.9, as a fraction (heuristic).
    "redundant_latent_fraction_high": 0.05,
    # The last Matryoshka group improves FVU by less than this (absolute): it adds little.
    "last_group_fvu_gain_low": 0.005,
    # Norm of the reconstruction systematically below the target (shrinkage), heuristic.
    "relative_bias_low": 0.9,
    # Splicing the reconstruction in raises the model's loss by more than this fraction of
    # the clean loss (heuristic).
    "delta_loss_relative_high": 0.1,
    # Mean first-letter absorption fraction above this (heuristic).
    "absorption_high": 0.2,
    # Half-width of the FVU interval above this fraction of FVU: the evaluation is too short
    # to tell close transcoders apart (heuristic).
    "fvu_interval_relative_wide": 0.05,
}

#: Where each threshold comes from (shown in the report and the docs).
THRESHOLD_SOURCES: dict[str, str] = {
    "fvu_high": "this project's heuristic",
    "dead_fraction_high": "this project's heuristic",
    "dense_fraction_high": "this project's heuristic (dense = firing on more than 10% of tokens)",
    "l0_vs_k_relative": "this project's requirement for its own trainer (inference L0 within 20% of top_k)",
    "redundant_latent_fraction_high": "this project's heuristic",
    "last_group_fvu_gain_low": "this project's heuristic",
    "relative_bias_low": "this project's heuristic",
    "delta_loss_relative_high": "this project's heuristic",
    "absorption_high": "this project's heuristic",
    "fvu_interval_relative_wide": "this project's heuristic",
}


@dataclass
class Suggestion:
    """One actionable finding."""

    rule: str
    """Identifier of the rule (a key of THRESHOLDS)."""
    finding: str
    """What was measured, with the number."""
    change: str
    """Which training settings to change, and in which direction."""
    why: str
    """Why that change addresses the finding."""


def suggest(metrics: dict[str, Any]) -> list[Suggestion]:
    """Suggestions for one transcoder's metrics dict (as written to metrics.json)."""
    t = THRESHOLDS
    out: list[Suggestion] = []
    rec = metrics.get("reconstruction") or {}
    sp = metrics.get("sparsity") or {}
    fvu = rec.get("fvu")
    if fvu is not None and fvu > t["fvu_high"]:
        out.append(
            Suggestion(
                "fvu_high",
                f"FVU is {fvu:.3f}: {100 * fvu:.1f}% of the target's variance is not reconstructed (flagged above {t['fvu_high']}).",
                "increase dict_size or top_k; train on more tokens; check lr (try a higher lr with warmup_steps ~1000 and "
                "decay to min_lr = lr/10 or lower)",
                "more latents or more active latents per token give the transcoder capacity; an undertrained run "
                "usually shows a still-falling loss at the end",
            )
        )
    dead = sp.get("dead_fraction")
    if dead is not None and dead > t["dead_fraction_high"]:
        out.append(
            Suggestion(
                "dead_fraction_high",
                f"{100 * dead:.1f}% of latents never fired on {sp.get('n_tokens', 0):,} evaluated tokens "
                f"(flagged above {100 * t['dead_fraction_high']:.0f}%).",
                "raise aux_penalty (e.g. 1/32 -> 1/16) or top_k_aux (e.g. 512), shorten the dead-latent window, "
                "or lower lr",
                "the auxiliary loss trains dead latents to predict the residual error, which revives them; "
                "a smaller window starts that sooner",
            )
        )
    dense = sp.get("dense_fraction")
    if dense is not None and dense > t["dense_fraction_high"]:
        out.append(
            Suggestion(
                "dense_fraction_high",
                f"{100 * dense:.2f}% of latents fire on more than 10% of tokens (flagged above {100 * t['dense_fraction_high']:.0f}%).",
                "lower top_k or lr; for Matryoshka, give the first group more latents (group sizes)",
                "dense latents usually encode a bias-like direction that the first prefix is forced to carry",
            )
        )
    k = (metrics.get("training") or {}).get("top_k") or (metrics.get("transcoder") or {}).get("k")
    l0 = sp.get("l0_mean")
    arch = (metrics.get("transcoder") or {}).get("architecture", "")
    if (
        k
        and l0 is not None
        and arch in ("batchtopk", "matryoshka_batchtopk")
        and abs(l0 - k) / k > t["l0_vs_k_relative"]
    ):
        direction = "above" if l0 > k else "below"
        out.append(
            Suggestion(
                "l0_vs_k_relative",
                f"inference L0 is {l0:.1f}, {abs(l0 - k) / k:.0%} {direction} the trained top_k={k} "
                f"(flagged beyond {t['l0_vs_k_relative']:.0%}).",
                "re-estimate the inference threshold over more training batches (or train longer after the last "
                "threshold update); if the evaluation data differs from the training data, evaluate on the training dataset",
                "BatchTopK picks k latents per token on average during training; at inference one global threshold "
                "stands in for that choice, and a badly estimated threshold changes sparsity and every other metric",
            )
        )
    red = (metrics.get("decoder_redundancy") or {}).get("redundant_latent_fraction")
    if red is not None and red > t["redundant_latent_fraction_high"]:
        out.append(
            Suggestion(
                "redundant_latent_fraction_high",
                f"{100 * red:.1f}% of latents have a decoder row with |cos| > 0.9 to another latent "
                f"(flagged above {100 * t['redundant_latent_fraction_high']:.0f}%).",
                "lower lr, or reduce dict_size; check that decoder rows are kept at unit norm during training",
                "near-duplicate decoder rows usually split one feature across several latents instead of learning new ones",
            )
        )
    prefixes = (metrics.get("prefixes") or {}).get("per_prefix") or []
    if len(prefixes) >= 2 and prefixes[-2].get("fvu") is not None and prefixes[-1].get("fvu") is not None:
        gain = prefixes[-2]["fvu"] - prefixes[-1]["fvu"]
        if gain < t["last_group_fvu_gain_low"]:
            out.append(
                Suggestion(
                    "last_group_fvu_gain_low",
                    f"the last Matryoshka group (latents {prefixes[-2]['prefix_end']}..{prefixes[-1]['prefix_end']}) "
                    f"lowers FVU by only {gain:.4f} (flagged below {t['last_group_fvu_gain_low']}).",
                    "change the group sizes (give earlier groups more latents) or reduce dict_size",
                    "latents in the last group that add no reconstruction are capacity spent for nothing",
                )
            )
    bias = rec.get("relative_reconstruction_bias")
    if bias is not None and bias < t["relative_bias_low"]:
        out.append(
            Suggestion(
                "relative_bias_low",
                f"relative reconstruction bias is {bias:.3f}: reconstructions are systematically too small "
                f"(flagged below {t['relative_bias_low']}).",
                "train longer or raise lr; check the decoder bias initialisation (b_dec from the data mean)",
                "a bias below 1 means the transcoder shrinks its outputs, as an under-trained or over-regularised one does",
            )
        )
    ds = metrics.get("downstream") or {}
    dl, ce = ds.get("delta_loss"), ds.get("ce_clean")
    if dl is not None and ce and dl / ce > t["delta_loss_relative_high"]:
        low_fvu = fvu is not None and fvu <= t["fvu_high"]
        out.append(
            Suggestion(
                "delta_loss_relative_high",
                f"splicing the reconstruction in raises the loss by {dl:.4f} nats, {dl / ce:.1%} of the clean loss "
                f"{ce:.4f} (flagged above {t['delta_loss_relative_high']:.0%})"
                + (f", although FVU is only {fvu:.3f}." if low_fvu else "."),
                "first check that the transcoder's output site is the one it was trained on; then fine-tune with a "
                "KL/next-token loss through the model (end-to-end) or raise dict_size/top_k",
                "an FVU that looks good while the loss suffers means the errors fall in directions the later layers "
                "read; matching the loss directly trains those directions"
                if low_fvu
                else "the model's later layers see the reconstruction error; more capacity lowers it",
            )
        )
    ab = metrics.get("absorption")
    frac = ab.get("mean_absorption_fraction") if isinstance(ab, dict) else None
    if frac is not None and frac > t["absorption_high"]:
        out.append(
            Suggestion(
                "absorption_high",
                f"mean first-letter absorption fraction is {frac:.3f} (flagged above {t['absorption_high']}).",
                "use Matryoshka groups (or give the first groups fewer latents), or reduce dict_size",
                "absorption grows as wider dictionaries learn specific latents that swallow general ones; nested "
                "prefixes make the early latents reconstruct alone, which keeps general features whole",
            )
        )
    iv = ((metrics.get("uncertainty") or {}).get("intervals") or {}).get("fvu") or {}
    if fvu and iv.get("low") is not None and (iv["high"] - iv["low"]) / 2 / fvu > t["fvu_interval_relative_wide"]:
        half = (iv["high"] - iv["low"]) / 2
        out.append(
            Suggestion(
                "fvu_interval_relative_wide",
                f"the FVU interval is ±{half:.4f} around {fvu:.4f} ({half / fvu:.0%} of the value; flagged above "
                f"{t['fvu_interval_relative_wide']:.0%}).",
                "evaluation setting, not training: raise --batches (or --batch_size) before acting on small differences",
                "the interval shrinks like one over the square root of the number of sequences evaluated",
            )
        )
    return out


def suggestions_as_dicts(metrics: dict[str, Any]) -> list[dict[str, str]]:
    return [asdict(s) for s in suggest(metrics)]
