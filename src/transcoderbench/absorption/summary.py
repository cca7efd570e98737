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
        lines.append(
            f"  mean absorption fraction {result['mean_absorption_fraction']:.3f}, full absorption rate "
            f"{result['full_absorption_rate']:.3f}, mean split latents {result['mean_num_split_latents']:.2f} "
            f"over {result['n_letters_scored']} letters ({''.join(result['letters_scored'])})"
        )
        worst = sorted(
            ((c, r["mean_absorption_fraction"]) for c, r in result["per_letter"].items() if r.get("scored")),
            key=lambda item: -item[1],
        )[:3]
        lines.append("  most absorbed letters: " + ", ".join(f"{c} {f:.2f}" for c, f in worst))
    lines.append(
        f"  took {result['wall_time_s']:.1f} s (+ {result['probe_wall_time_s']:.1f} s for the shared probe, "
        f"cache {result['cache']})"
    )
    return lines
