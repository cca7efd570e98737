"""Plain-text lines for an absorption result (for summary.txt and the ``absorption`` command)."""

from __future__ import annotations

from typing import Any

#: The one sentence that keeps the two metrics apart in every summary.
VERSUS_REDUNDANCY = (
    "Absorption (first-letter method) asks whether latents that should fire for a letter stay silent on some "
    "words while other latents carry the letter instead; decoder redundancy only counts pairs of latents whose "
    "decoder rows point the same way, and says nothing about absorption."
)


def summary_lines(name: str, result: dict[str, Any]) -> list[str]:
    """A few lines: the headline numbers (or the plain reason there are none), sites, mode, words, time."""
    head = f"{name}: first-letter absorption ({result['mode']}, probe at {result['probe_site']}"
    head += f", {result['n_train_words']} train / {result['n_test_words']} test words, seed {result['seed']})"
    lines = [head]
    if result["mean_absorption_fraction"] is None:
        lines.append(f"  {result['note']}")
    else:
        intervals = result.get("intervals") or {}
        lines.append(
            f"  mean absorption fraction {result['mean_absorption_fraction']:.3f}"
            f"{_interval(intervals.get('mean_absorption_fraction'))}, full absorption rate "
            f"{result['full_absorption_rate']:.3f}{_interval(intervals.get('full_absorption_rate'))}, mean split "
            f"latents {result['mean_num_split_latents']:.2f} over {result['n_letters_scored']} letters "
            f"({''.join(result['letters_scored'])})"
        )
        worst = sorted(
            ((c, r["mean_absorption_fraction"]) for c, r in result["per_letter"].items() if r.get("scored")),
            key=lambda item: -item[1],
        )[:3]
        lines.append("  most absorbed letters: " + ", ".join(f"{c} {f:.2f}" for c, f in worst))
        prefixes = [p for p in result.get("prefixes", []) if p["mean_absorption_fraction"] is not None]
        if prefixes:
            lines.append(
                "  per nested prefix (latents: fraction / full rate): "
                + ", ".join(
                    f"{p['prefix_end']}: {p['mean_absorption_fraction']:.3f} / {p['full_absorption_rate']:.3f}"
                    for p in prefixes
                )
            )
    fit = result.get("input_decoder")
    if fit:
        heldout = "n/a" if fit["heldout_fvu"] is None else f"{fit['heldout_fvu']:.3f}"
        lines.append(
            f"  input decoder: fitted on {fit['n_text_tokens']:,} text tokens + {fit['n_train_words']} training words "
            f"({fit['n_latents_fitted']} latents), FVU on the held-out test words {heldout}"
        )
        if fit.get("warning"):
            lines.append(f"  caution: {fit['warning']}")
    lines.append(
        f"  took {result['wall_time_s']:.1f} s (+ {result['probe_wall_time_s']:.1f} s for the shared probe, "
        f"cache {result['cache']})"
    )
    return lines


def _interval(iv: dict[str, Any] | None) -> str:
    """`` [low, high]`` of a bootstrap interval, or nothing."""
    if not iv or iv.get("low") is None:
        return ""
    return f" [{iv['low']:.3f}, {iv['high']:.3f}]"
