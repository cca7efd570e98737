"""The training math against dense, hand-written references: BatchTopK/TopK selection, sparse
decoding, the sparse encoder gradient, Matryoshka prefix losses, the auxiliary loss, one full
optimisation step, the schedule, and the settings parser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transcoderbench.errors import UserError
from transcoderbench.train.config import (
    TrainConfig,
    coerce,
    make_config,
    parse_group_sizes,
)
from transcoderbench.train.objective import (
    aux_loss,
    prefix_losses,
    select_batch_topk,
    select_topk,
    sparse_decode,
    total_variance,
    with_encoder_grad,
)
from transcoderbench.train.schedule import lr_at
from transcoderbench.train.trainer import TranscoderTrainer


def dense(sel, shape) -> torch.Tensor:
    f = torch.zeros(shape, dtype=sel.values.dtype)
    f[sel.tokens, sel.latents] = sel.values.detach()
    return f


def reference_batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Bussmann et al.'s BatchTopK written densely: top k*N of relu(pre) over the flattened batch."""
    acts = torch.relu(pre).flatten()
    idx = acts.topk(k * pre.shape[0]).indices
    out = torch.zeros_like(acts)
    out[idx] = acts[idx]
    return out.view_as(pre)


@pytest.mark.parametrize("crowded", [False, True])
def test_batch_topk_matches_dense_reference(crowded):
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(64, 200, generator=g, dtype=torch.float64)
    if crowded:  # one token holds far more than 4k of the batch's largest values: the fallback path runs
        pre[3] += 10.0
    sel = select_batch_topk(pre, k=5)
    ref = reference_batch_topk(pre, 5)
    assert torch.equal(dense(sel, pre.shape), ref)
    assert torch.all(sel.tokens[1:] >= sel.tokens[:-1])
    assert sel.values.numel() == 5 * 64


def test_batch_topk_guess_gives_the_same_selection():
    pre = torch.randn(32, 100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = select_batch_topk(pre, 4)
    kth = float(exact.values.min())
    for guess in (0.5 * kth, 0.99 * kth, 1.5 * kth, 1e-9, 100.0):  # too low, close, too high (fallback)
        s = select_batch_topk(pre, 4, guess=guess)
        assert torch.equal(s.tokens, exact.tokens) and torch.equal(s.latents, exact.latents)


def test_batch_topk_drops_non_positive_values():
    pre = -torch.rand(8, 10, dtype=torch.float64)
    pre[0, 0] = 0.5
    sel = select_batch_topk(pre, 3)
    assert sel.latents.tolist() == [0] and sel.tokens.tolist() == [0]


def test_topk_matches_dense_reference():
    pre = torch.randn(16, 50, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sel = select_topk(pre, 6)
    acts = torch.relu(pre)
    vals, idx = acts.topk(6, dim=-1)
    ref = torch.zeros_like(pre).scatter(-1, idx, vals)
    assert torch.equal(dense(sel, pre.shape), ref)


def test_sparse_decode_and_prefix_losses_match_dense_math():
    g = torch.Generator().manual_seed(3)
    n, s, d = 40, 30, 12
    pre = torch.randn(n, s, generator=g, dtype=torch.float64)
    W_dec = torch.randn(s, d, generator=g, dtype=torch.float64)
    b_dec = torch.randn(d, generator=g, dtype=torch.float64)
    y = torch.randn(n, d, generator=g, dtype=torch.float64)
    sel = select_batch_topk(pre, 4)
    f = dense(sel, (n, s))
    assert torch.allclose(sparse_decode(sel, W_dec), f @ W_dec, atol=1e-12)

    ends = (5, 12, 30)
    den = total_variance(y)
    losses, residual = prefix_losses(sel, y, W_dec, b_dec, ends, den)
    y_np, var = y.numpy(), ((y.numpy() - y.numpy().mean(0)) ** 2).sum()
    for loss, end in zip(losses, ends):
        y_hat = f[:, :end].numpy() @ W_dec[:end].numpy() + b_dec.numpy()
        assert float(loss) == pytest.approx(((y_np - y_hat) ** 2).sum() / var, rel=1e-10)
    assert torch.allclose(residual, y - f @ W_dec - b_dec, atol=1e-12)


def test_sparse_encoder_gradient_equals_autograd_of_the_dense_computation():
    g = torch.Generator().manual_seed(4)
    n, d_in, s = 24, 10, 40
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    W = torch.randn(d_in, s, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(n, s, generator=g, dtype=torch.float64)
    with torch.no_grad():
        pre = x @ W + b
    sel = with_encoder_grad(select_batch_topk(pre, 3), x, W, b)
    (sel.values * weights[sel.tokens, sel.latents]).sum().backward()
    got_W, got_b = W.grad.clone(), b.grad.clone()
    W.grad = b.grad = None
    mask = reference_batch_topk(pre, 3) > 0
    ((x @ W + b) * mask * weights).sum().backward()
    assert torch.allclose(got_W, W.grad, atol=1e-12) and torch.allclose(got_b, b.grad, atol=1e-12)


def test_aux_loss_matches_dense_reference():
    g = torch.Generator().manual_seed(5)
    n, d_in, s, d = 20, 8, 30, 6
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    W = torch.randn(d_in, s, generator=g, dtype=torch.float64)
    b = torch.randn(s, generator=g, dtype=torch.float64)
    W_dec = torch.randn(s, d, generator=g, dtype=torch.float64)
    residual = torch.randn(n, d, generator=g, dtype=torch.float64)
    den = torch.tensor(7.0, dtype=torch.float64)
    dead = torch.zeros(s, dtype=torch.bool)
    dead[[2, 5, 7, 11, 19, 23]] = True
    pre = x @ W + b
    for k_aux in (4, 10):  # fewer dead latents than k_aux: all of them, loss scaled by 6 / 10
        got = aux_loss(pre, dead, residual, x, W, b, W_dec, k_aux, den)
        masked = torch.where(dead, pre, torch.tensor(-math.inf, dtype=torch.float64))
        vals, idx = masked.topk(min(k_aux, 6), dim=-1)
        f = torch.zeros(n, s, dtype=torch.float64).scatter(-1, idx, vals)  # raw pre-activations, not ReLU'd
        ref = min(6 / k_aux, 1.0) * ((f @ W_dec - residual) ** 2).sum() / den
        assert float(got) == pytest.approx(float(ref), rel=1e-10)
    assert aux_loss(pre, torch.zeros(s, dtype=torch.bool), residual, x, W, b, W_dec, 4, den) is None


def test_one_step_keeps_decoder_rows_unit_and_moves_orthogonally():
    """The decoder update: the gradient part along each row is removed, then rows are renormalised."""
    c = TrainConfig.from_flat(
        layer=0,
        architecture="batchtopk",
        dict_size=24,
        top_k=3,
        lr=1e-2,
        warmup_steps=0,
        batch_size=64,
        token_budget=64 * 10,
    )
    t = TranscoderTrainer(c, d_in=8, d_out=8, input_site="a", output_site="b")
    assert torch.allclose(t.params["W_enc"], t.params["W_dec"].T)  # encoder = decoder transposed (d_in == d_out)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(64, 8, generator=g)
    y = x @ torch.randn(8, 8, generator=g)
    t.init_from_data(x, y)
    assert torch.allclose(t.params["b_dec"], y.mean(0) * t.target_scale)
    before = t.params["W_dec"].detach().clone()
    metrics = t.step(x, y, 1e-2)
    after = t.params["W_dec"].detach()
    assert torch.allclose(after.norm(dim=1), torch.ones(24), atol=1e-6)
    grad = t.params["W_dec"].grad
    assert torch.allclose((grad * before).sum(dim=1), torch.zeros(24), atol=1e-6)  # projected before the update
    assert metrics["l0"] == pytest.approx(3.0)


def test_encoder_is_a_separate_random_matrix_when_widths_differ():
    c = TrainConfig.from_flat(layer=0, dict_size=16, top_k=2, architecture="batchtopk")
    t = TranscoderTrainer(c, d_in=6, d_out=9, input_site="a", output_site="b")
    assert t.params["W_enc"].shape == (6, 16) and t.params["W_dec"].shape == (16, 9)
    assert torch.allclose(t.params["W_enc"].norm(dim=0), torch.ones(16), atol=1e-6)


def test_schedule():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    assert lr_at(0, decay="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(9, decay="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(10, decay="cosine", **kw) == pytest.approx(1.0)
    assert lr_at(109, decay="cosine", **kw) == pytest.approx(0.1)
    assert lr_at(59.5, decay="cosine", **kw) == pytest.approx(0.55)  # halfway: cos(pi/2)
    assert lr_at(59.5, decay="linear", **kw) == pytest.approx(0.55)
    assert lr_at(34.75, decay="linear", **kw) == pytest.approx(1 - 0.9 * 0.25)
    assert lr_at(34.75, decay="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi / 4)))


def test_group_sizes_parsing():
    assert parse_group_sizes("128,256,512,1408", 2304) == [128, 256, 512, 1408]
    assert parse_group_sizes("1/16,1/16,1/8,1/4,1/2", 4096) == [256, 256, 512, 1024, 2048]
    assert parse_group_sizes("0.25, 0.75", 10) == [2, 8]
    assert parse_group_sizes("1/3,1/3,1/3", 10) == [3, 3, 4]
    for bad, why in (
        ("128,256", "add up to 384"),
        ("1/2,1/4", "add up to 0.75"),
        ("a,b", "whole number"),
        ("0,1", "larger than 0"),
        ("1/100,99/100", "no latents"),
    ):
        with pytest.raises(UserError, match=why):
            parse_group_sizes(bad, 64 if "100" in bad else 2304)


def test_config_values_and_errors(tmp_path):
    assert coerce("aux_penalty", "1/32", "x") == pytest.approx(1 / 32)
    assert coerce("token_budget", "1e6", "x") == 1_000_000
    assert coerce("group_sizes", [1, 2], "x") == "1,2"
    with pytest.raises(UserError, match="top_k='many' is not a valid int"):
        coerce("top_k", "many", "--config f")
    with pytest.raises(UserError, match="--group_sizes applies only to --architecture matryoshka"):
        make_config({"layer": 1, "architecture": "topk", "group_sizes": "1/2,1/2"})
    with pytest.raises(UserError, match="--layer is required"):
        make_config({})
    with pytest.raises(UserError, match="--top_k 50: must not exceed --dict_size 32"):
        make_config({"layer": 1, "dict_size": 32, "top_k": 50})
    with pytest.raises(UserError, match="--buffer_tokens"):
        make_config({"layer": 1, "buffer_tokens": 100})
    c = make_config({"input_site": "blocks.3.hook_mlp_in", "output_site": "blocks.3.hook_mlp_out"})
    assert c.layer is None and c.input_site == "blocks.3.hook_mlp_in"
