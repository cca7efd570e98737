"""Schedule-free SignSGD against the published algorithm written out here, and wired into the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from transcoderbench.train.config import TrainConfig
from transcoderbench.train.optim import ScheduleFreeSignSGD, signum_lr, step_lr
from transcoderbench.train.trainer import TranscoderTrainer


def reference_schedule_free_signsgd(w0: torch.Tensor, grad_fn, lrs: list[float], beta: float):
    """Defazio et al.'s three sequences, by their definitions: gradient at y, SignSGD on z, x the
    lr_max^2-weighted average of z, y = beta x + (1 - beta) z. Returns (y, x) after the steps."""
    z, x = w0.clone().double(), w0.clone().double()
    weights, lr_max = 0.0, 0.0
    for lr in lrs:
        y = beta * x + (1 - beta) * z
        z = z - lr * torch.sign(grad_fn(y))
        lr_max = max(lr_max, lr)
        weights += lr_max**2
        c = lr_max**2 / weights
        x = (1 - c) * x + c * z
    return beta * x + (1 - beta) * z, x


def test_matches_the_reference_algorithm():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(7, generator=g, dtype=torch.float64)
    w0 = torch.randn(7, generator=g, dtype=torch.float64)

    def grad_fn(w):
        return w - target  # gradient of 0.5 ||w - target||^2

    lrs = [0.05 * min(1.0, (i + 1) / 3) for i in range(12)]  # a warmup, to exercise the lr_max weighting
    w = torch.nn.Parameter(w0.clone())
    opt = ScheduleFreeSignSGD([w], lr=lrs[0], momentum=0.9)
    for lr in lrs:
        opt.param_groups[0]["lr"] = lr
        w.grad = grad_fn(w.detach())
        opt.step()
    y_ref, x_ref = reference_schedule_free_signsgd(w0, grad_fn, lrs, 0.9)
    assert torch.allclose(w.detach(), y_ref, atol=1e-12)
    opt.eval()
    assert torch.allclose(w.detach(), x_ref, atol=1e-12)
    opt.train()
    assert torch.allclose(w.detach(), y_ref, atol=1e-12)
    with pytest.raises(RuntimeError):
        opt.eval()
        opt.step()


def test_sparsify_width_rule():
    assert signum_lr(2**14) == 5e-3
    assert signum_lr(2304) == pytest.approx(5e-3 / math.sqrt(2304 / 16384)) == pytest.approx(1.3333e-2, rel=1e-4)
    c = TrainConfig.from_flat(dict_size=2304, optimizer="signum")
    assert step_lr(c, 0, 123.0) == step_lr(c, 999, 0.5) == pytest.approx(1.3333e-2, rel=1e-4)
    assert step_lr(TrainConfig(), 5, 0.25) == 0.25  # Adam follows the schedule


def synthetic(n=4096, d=16, s=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.nn.functional.normalize(torch.randn(s, d, generator=g), dim=1)
    codes = torch.rand(n, s, generator=g) * (torch.rand(n, s, generator=g) < 4 / s)
    return codes @ atoms


def test_signum_trains_and_resumes_exactly():
    x = synthetic()
    c = TrainConfig.from_flat(
        dict_size=64, top_k=4, architecture="topk", optimizer="signum", signum_lr=3e-3, batch_size=256
    )
    t = TranscoderTrainer(c, d_in=16, d_out=16, input_site="a", output_site="a")
    t.init_from_data(x, x)
    first = t.step(x[:256], x[:256], lr=0.0)
    for i in range(1, 40):
        last = t.step(x[i * 64 : i * 64 + 256], x[i * 64 : i * 64 + 256], lr=0.0)
    assert last["fvu"] < 0.5 * first["fvu"]
    assert last["lr"] == pytest.approx(3e-3)
    meta, tensors = t.state()
    clone = TranscoderTrainer(c, d_in=16, d_out=16, input_site="a", output_site="a")
    clone.load_state(meta, {k: v.clone() for k, v in tensors.items()})
    a, b = t.step(x[:256], x[:256], lr=0.0), clone.step(x[:256], x[:256], lr=0.0)
    assert a["fvu"] == b["fvu"]
    for k in t.params:
        assert torch.equal(t.params[k], clone.params[k])
    # The saved transcoder holds the averaged weights x; training continues from y afterwards.
    before = {k: v.detach().clone() for k, v in t.params.items()}
    tc = t.final_transcoder({})
    for k, v in t.params.items():
        assert torch.equal(v, before[k])
    opt = t.optimizer
    assert isinstance(opt, ScheduleFreeSignSGD)
    opt.eval()
    assert torch.allclose(tc.W_dec, t.params["W_dec"].detach())
    opt.train()
