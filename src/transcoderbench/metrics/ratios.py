"""Ratio metrics from per-sequence column sums: the one formula the full sample and every bootstrap
resample share (kept apart so ``bootstrap`` and ``per_sequence`` both use it without a cycle)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Ratio:
    """A metric equal to (sum over tokens of the numerator) / (sum of the denominator).

    Each side is ``{column: coefficient}``: e.g. delta loss = ``Ratio({"ce_spliced": 1,
    "ce_clean": -1}, {"n_tokens": 1})``.
    """

    numerator: dict[str, float]
    denominator: dict[str, float]


def _combine(fields: list[str], sums: Tensor, coefficients: dict[str, float]) -> Tensor:
    index = {f: i for i, f in enumerate(fields)}
    missing = set(coefficients) - set(index)
    if missing:
        raise KeyError(f"ratio uses unknown per-sequence columns {sorted(missing)}; columns are {fields}")
    out = torch.zeros(sums.shape[0], dtype=torch.float64)
    for name, c in coefficients.items():
        out = out + float(c) * sums[:, index[name]].to(torch.float64).cpu()
    return out


def divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, NaN where ``den`` is 0."""
    return torch.where(
        den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.full_like(num, float("nan"))
    )


def ratio_statistics(fields: list[str], ratios: Mapping[str, Ratio], sums: Tensor) -> dict[str, Tensor]:
    """Every ratio metric from column sums ``[R, k]`` (NaN where the denominator is 0)."""
    return {
        name: divide(_combine(list(fields), sums, r.numerator), _combine(list(fields), sums, r.denominator))
        for name, r in ratios.items()
    }
