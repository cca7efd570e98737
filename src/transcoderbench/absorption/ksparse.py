"""k-sparse probing: which latents carry a letter (its "main" latents), as in SAEBench.

1. An L1-penalised one-vs-rest probe on the latent activations ranks the latents of each letter
   by their (signed) weight: latents that *predict* the letter, not ones that rule it out.
2. For k = 1..max_k, a logistic regression on the top-k latents alone (L2, C = 1, balanced class
   weights: what SAEBench fits with scikit-learn) is scored by F1 on the test words.
3. The main latents are the top-k for the largest k reached while each step improves F1 by more
   than ``f1_jump`` (k = 1 always counts); their number is the letter's "split" count.

The small logistic regressions are solved by Newton's method in float64 (exact to ~1e-10 and
deterministic; scikit-learn, which checks it in the tests, is not a runtime dependency).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from transcoderbench.absorption.probe import LinearProbe, f1_score

NEWTON_MAX_STEPS = 100
NEWTON_TOLERANCE = 1e-10


def fit_logistic(x: Tensor, y: Tensor, *, C: float = 1.0) -> tuple[Tensor, float]:
    """``(coef [k], intercept)`` minimising ``C * sum_i s_i * logloss_i + |coef|^2 / 2`` with
    balanced weights ``s_i = n / (2 * n_{class of i})`` and an unpenalised intercept:
    scikit-learn's ``LogisticRegression(C=C, class_weight="balanced")``.

    Raises ``ValueError`` when ``y`` holds a single class (as scikit-learn does). Runs in numpy:
    the problems are tiny, and per-call overhead dominates.
    """
    X = np.concatenate([x.detach().double().cpu().numpy(), np.ones((x.shape[0], 1))], axis=1)
    t = y.detach().bool().cpu().numpy()
    n_pos = int(t.sum())
    n = t.size
    if n_pos in (0, n):
        raise ValueError("logistic regression needs examples of both classes")
    s = np.where(t, n / (2.0 * n_pos), n / (2.0 * (n - n_pos))) * C
    sign = np.where(t, -1.0, 1.0)
    penalty = np.ones(X.shape[1])
    penalty[-1] = 0.0

    def objective(w: np.ndarray) -> float:
        # log(1 + exp(-z)) for positives, log(1 + exp(z)) for negatives, computed stably
        return float(s @ np.logaddexp(0.0, sign * (X @ w)) + 0.5 * (penalty * w * w).sum())

    w = np.zeros(X.shape[1])
    value = objective(w)
    for _ in range(NEWTON_MAX_STEPS):
        p = 0.5 * (1.0 + np.tanh(0.5 * (X @ w)))  # a sigmoid that cannot overflow
        grad = X.T @ (s * (p - t)) + penalty * w
        hessian = (X * (s * p * (1 - p))[:, None]).T @ X + np.diag(penalty + 1e-12)
        step = np.linalg.solve(hessian, grad)
        size = 1.0
        while True:  # backtracking: Newton steps can overshoot on (nearly) separable data
            candidate = w - size * step
            new_value = objective(candidate)
            if new_value <= value or size < 1e-8:
                break
            size *= 0.5
        w, previous, value = candidate, value, new_value
        if np.abs(step).max() * size < NEWTON_TOLERANCE or abs(previous - value) < 1e-14 * max(1.0, abs(value)):
            break
    return torch.from_numpy(w[:-1].copy()).float(), float(w[-1])


@dataclass
class LetterSparseProbes:
    """k-sparse probing result for one letter."""

    ranking: list[int]
    """Top ``max_k`` latents by L1-probe weight, best first."""
    f1: list[float] = field(default_factory=list)
    """Test F1 of the k-sparse probe for k = 1, 2, ... (stops early if a class is missing)."""
    main_latents: list[int] = field(default_factory=list)


def rank_latents(l1_probe: LinearProbe, letter: int, max_k: int) -> list[int]:
    """The ``max_k`` latents with the largest signed weight for ``letter`` (ties: lower index first)."""
    weights = l1_probe.weight[letter]
    order = torch.sort(weights, descending=True, stable=True).indices
    return [int(i) for i in order[:max_k]]


def k_sparse_probe(
    train_latents: Tensor,
    train_labels: Tensor,
    test_latents: Tensor,
    test_labels: Tensor,
    letter: int,
    ranking: list[int],
    *,
    f1_jump: float,
) -> LetterSparseProbes:
    """Fit k-sparse probes on the top-k of ``ranking`` and pick the main latents (F1-jump rule)."""
    result = LetterSparseProbes(ranking=ranking)
    y_train = train_labels == letter
    y_test = test_labels == letter
    best = float("-inf")
    stopped = False
    for k in range(1, len(ranking) + 1):
        ids = ranking[:k]
        try:
            coef, intercept = fit_logistic(train_latents[:, ids], y_train)
        except ValueError:
            break  # no training positives: nothing to probe
        scores = test_latents[:, ids].double().cpu() @ coef.double() + intercept
        f1 = f1_score(scores > 0, y_test)
        result.f1.append(f1)
        if not stopped and f1 > best + f1_jump:
            best = f1
            result.main_latents = list(ids)
        else:
            stopped = True  # SAEBench stops at the first k that does not improve enough
    return result
