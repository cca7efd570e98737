"""The learning-rate schedule: linear warmup, then cosine or linear decay to ``min_lr``.

A pure function of the step, so resuming a run needs only the step number.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int, decay: str) -> float:
    """Learning rate for ``step`` (0-based) of ``total_steps``.

    Warmup: ``lr * (step + 1) / warmup_steps``, so the first step already moves. Decay runs from
    ``lr`` right after the warmup to exactly ``min_lr`` at the last step.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(total_steps - 1 - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    if decay == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay == "linear":
        return lr - (lr - min_lr) * progress
    raise ValueError(f"unknown decay {decay!r}")
