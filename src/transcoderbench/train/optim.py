"""Optimizers other than Adam: schedule-free SignSGD ("signum"), as EleutherAI's sparsify trains by default.

SignSGD (Bernstein et al. 2018) moves every weight by ``lr`` times the sign of its gradient:
steepest descent in the L-infinity norm, insensitive to the gradient's scale. Schedule-free
(Defazio et al. 2024) replaces the learning-rate schedule by averaging: three sequences are kept,

- ``z``: the base iterate, updated by the SignSGD step ``z <- z - lr * sign(grad)``;
- ``x``: the running average of ``z`` (weight ``lr_max^2`` per step, i.e. uniform at a constant lr),
  ``x <- (1 - c) x + c z`` with ``c = weight / sum of weights``;
- ``y = momentum * x + (1 - momentum) * z``: where gradients are taken.

During training the parameters hold ``y``; :meth:`ScheduleFreeSignSGD.eval` swaps in ``x`` (the
weights to save or evaluate) and :meth:`train` swaps ``y`` back. The math is the published
algorithm (the ``schedulefree`` package's wrapper around sparsify's SignSGD, momentum 0.95); this
implementation keeps ``z`` as state and recovers ``x`` from ``y`` and ``z`` when needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

OPTIMIZER_CHOICES = ("adam", "signum")


def signum_lr(dict_size: int) -> float:
    """sparsify's default SignSGD learning rate at this width: ``5e-3 / sqrt(dict_size / 2**14)``."""
    return 5e-3 / (dict_size / 2**14) ** 0.5


class ScheduleFreeSignSGD(torch.optim.Optimizer):
    """Schedule-free SignSGD. ``lr`` may change between steps (e.g. a warmup); the average then
    weights each step by ``max lr so far ** 2``, as the reference implementation does."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.95) -> None:
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"lr {lr} must be > 0 and momentum {momentum} in [0, 1)")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_sum": 0.0, "lr_max": 0.0, "k": 0})
        self.train_mode = True

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """One SignSGD step on ``z`` at the gradient taken at ``y``; then the new ``x`` and ``y``."""
        if not self.train_mode:
            raise RuntimeError("ScheduleFreeSignSGD.step() in eval mode: call train() first")
        for group in self.param_groups:
            lr, beta = group["lr"], group["momentum"]
            group["lr_max"] = max(lr, group["lr_max"])
            weight = group["lr_max"] ** 2
            group["weight_sum"] += weight
            c = weight / group["weight_sum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "z" not in state:
                    state["z"] = p.detach().clone()
                z = state["z"]
                # x from y = beta x + (1 - beta) z.
                x = (p - (1 - beta) * z) / beta if beta > 0 else z.clone()
                z.add_(p.grad.sign(), alpha=-lr)
                x.lerp_(z, c)
                p.copy_(x.mul_(beta).add_(z, alpha=1 - beta))
            group["k"] += 1

    @torch.no_grad()
    def eval(self) -> None:
        """Parameters <- ``x``, the averaged weights (call before saving or evaluating)."""
        if self.train_mode:
            for p, z, beta in self._with_z():
                self.state[p]["y"] = p.detach().clone()  # restored exactly by train()
                p.sub_(z, alpha=1 - beta).div_(beta) if beta > 0 else p.copy_(z)
        self.train_mode = False

    @torch.no_grad()
    def train(self) -> None:
        """Parameters <- ``y`` again (after :meth:`eval`)."""
        if not self.train_mode:
            for p, z, beta in self._with_z():
                y = self.state[p].pop("y", None)
                p.copy_(y) if y is not None else p.mul_(beta).add_(z, alpha=1 - beta)
        self.train_mode = True

    def _with_z(self) -> Iterable[tuple[Tensor, Tensor, float]]:
        for group in self.param_groups:
            for p in group["params"]:
                if "z" in self.state[p]:
                    yield p, self.state[p]["z"], group["momentum"]


def make_optimizer(config: Any, params: list[Tensor]) -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` names (``adam`` unless set): Adam, or schedule-free SignSGD."""
    name = getattr(config, "optimizer", "adam")
    if name == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    if name == "signum":
        return ScheduleFreeSignSGD(params, lr=peak_signum_lr(config), momentum=getattr(config, "signum_momentum", 0.95))
    raise ValueError(f"unknown optimizer {name!r}: one of {', '.join(OPTIMIZER_CHOICES)}")


def peak_signum_lr(config: Any) -> float:
    return getattr(config, "signum_lr", None) or signum_lr(config.dict_size)


def step_lr(config: Any, step: int, scheduled: float) -> float:
    """The learning rate of ``step``: Adam follows the warmup/decay schedule (``scheduled``);
    schedule-free SignSGD keeps its peak rate constant (the averaging does the annealing)."""
    if getattr(config, "optimizer", "adam") == "signum":
        return peak_signum_lr(config)
    return scheduled


class averaged_weights:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within the block the parameters hold the weights to save: schedule-free's average ``x``
    (for Adam, nothing changes)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer

    def __enter__(self) -> None:
        if isinstance(self.optimizer, ScheduleFreeSignSGD):
            self.optimizer.eval()

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.optimizer, ScheduleFreeSignSGD):
            self.optimizer.train()


_SIGNUM_GROUP_KEYS = ("weight_sum", "lr_max", "k")


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Schedule-free state to save for resuming (``z`` per parameter and the averaging weights);
    empty for Adam, whose state the trainer saves itself."""
    if not isinstance(optimizer, ScheduleFreeSignSGD):
        return {}
    out = {f"signum.{k}.z": optimizer.state[v]["z"] for k, v in params.items() if "z" in optimizer.state[v]}
    group = optimizer.param_groups[0]
    out.update(
        {f"signum.group.{key}": torch.tensor(float(group[key]), dtype=torch.float64) for key in _SIGNUM_GROUP_KEYS}
    )
    return out


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, params: Mapping[str, Tensor], tensors: dict[str, Tensor]
) -> None:
    if not isinstance(optimizer, ScheduleFreeSignSGD) or "signum.group.k" not in tensors:
        return
    for k, v in params.items():
        if f"signum.{k}.z" in tensors:
            optimizer.state[v]["z"] = tensors[f"signum.{k}.z"].to(v.device).clone()
    group = optimizer.param_groups[0]
    for key in _SIGNUM_GROUP_KEYS:
        value = float(tensors[f"signum.group.{key}"])
        group[key] = int(value) if key == "k" else value
