"""One-vs-rest letter probes, trained as SAEBench trains them, but seeded.

The ground-truth probe and the L1 probe that ranks latents for k-sparse probing are the same
model: 26 independent logistic regressions ``x @ W.T + b`` trained jointly with binary
cross-entropy (each letter's positives up-weighted by negatives/positives), Adam, and a learning
rate decaying exponentially to ``end_lr`` over the epochs; the L1 probe adds
``l1 * mean_letter(sum_i |W[letter, i]|)``. Initialisation and batch order come from one
``torch.Generator``, so the same seed gives the same probe.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from transcoderbench.progress import progress_bar

END_LR = 1e-5
#: Below this many multiply-adds per step, CPU training runs on one thread: for small matrices,
#: thread hand-offs cost more than they save, and on a busy machine far more (50x measured).
SINGLE_THREAD_WORK = 10_000_000


@contextmanager
def cpu_threads_for(work: int, device: torch.device):
    """Run small CPU work on one thread (restoring the setting afterwards); leave the rest alone."""
    if device.type != "cpu" or work >= SINGLE_THREAD_WORK or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class LinearProbe:
    """``logits = x @ weight.T + bias``; ``weight [n_classes, d]``, ``bias [n_classes]`` (CPU, float32)."""

    weight: Tensor
    bias: Tensor

    def logits(self, x: Tensor) -> Tensor:
        return x.float() @ self.weight.to(x.device).T + self.bias.to(x.device)


def train_probe(
    x: Tensor,
    labels: Tensor,
    *,
    n_classes: int = 26,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    l1: float = 0.0,
    zero_init: bool = False,
    seed: int,
    show_progress: bool = False,
    desc: str = "probe",
) -> LinearProbe:
    """Train one-vs-rest probes on ``x [n, d]`` (any device) for integer ``labels [n]``.

    A class without positives gets positive weight 1 instead of n_neg/0 (it simply learns
    "never"), so a small word budget cannot turn the loss into NaN. ``zero_init`` starts from
    zero weights instead of ``torch.nn.Linear``'s random ones (see ``score_transcoder``).
    """
    device = x.device
    n, d = x.shape
    target = torch.nn.functional.one_hot(labels.long().cpu(), n_classes).float()
    n_pos = target.sum(0)
    pos_weight = torch.where(n_pos > 0, (n - n_pos) / n_pos.clamp(min=1), torch.ones_like(n_pos)).to(device)
    target = target.to(device)

    generator = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(d)  # torch.nn.Linear's default initialisation
    weight = (torch.rand(n_classes, d, generator=generator) * 2 - 1).mul_(bound)
    bias = (torch.rand(n_classes, generator=generator) * 2 - 1).mul_(bound)
    if zero_init:
        weight.zero_()
        bias.zero_()
    weight = weight.to(device).requires_grad_()
    bias = bias.to(device).requires_grad_()
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    gamma = math.exp(math.log(END_LR / lr) / epochs) if lr > END_LR else 1.0
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    work = min(batch_size, n) * d * n_classes
    with (
        torch.enable_grad(),
        cpu_threads_for(work, device),
        progress_bar(total=epochs, desc=desc, unit="epoch", disable=not show_progress) as bar,
    ):
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                logits = x[idx].float() @ weight.T + bias
                loss = loss_fn(logits, target[idx])
                if l1:
                    loss = loss + l1 * weight.abs().sum(dim=-1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            scheduler.step()
            bar.update(1)
    return LinearProbe(weight.detach().float().cpu(), bias.detach().float().cpu())


def f1_score(predicted: Tensor, actual: Tensor) -> float:
    """Binary F1 of boolean tensors; 0.0 when there are neither positives nor predictions
    (sklearn's ``zero_division=0``)."""
    predicted, actual = predicted.bool().cpu(), actual.bool().cpu()
    tp = int((predicted & actual).sum())
    denominator = 2 * tp + int((predicted & ~actual).sum()) + int((~predicted & actual).sum())
    return 2 * tp / denominator if denominator else 0.0


def per_letter_f1(logits: Tensor, labels: Tensor) -> list[float]:
    """Test F1 of each class's probe, predicting positive where its logit is above 0 (SAEBench)."""
    return [f1_score(logits[:, c] > 0, labels == c) for c in range(logits.shape[1])]
