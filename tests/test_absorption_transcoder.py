"""Transcoder-mode absorption: shares through a fitted input decoder (additive, rescaling-invariant).

The planted toy is the one that showed the encoder-row share was wrong (issue 10): a parent latent
reading ``p - (v1 + v2 + v3)`` whose contribution to the input is ``p``, three token latents that
absorb it on ``p + v_j``, and a generic latent reading ``0.45 p + 0.89 u`` that co-fires.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import transcoderbench.absorption.input_decoder as input_decoder
from test_absorption import OPTIONS, S_TEST, data, letter_transcoder, synthetic  # noqa: F401 (fixtures)
from transcoderbench.absorption.calculator import Thresholds, word_absorption
from transcoderbench.absorption.input_decoder import NormalEquations, fvu, solve_input_decoder
from transcoderbench.absorption.run import MODE_SAE, MODE_TRANSCODER, latent_geometry, score_transcoder
from transcoderbench.absorption.summary import summary_lines
from transcoderbench.transcoders import JumpReLUTranscoder, TopKTranscoder

DIM = 16
PARENT, GENERIC = 0, 4


def basis():
    e = torch.eye(DIM, dtype=torch.float64)
    return {"p": e[0], "v": e[1:4], "u": e[4], "w": e[5:9]}


def toy_transcoder(scales: torch.Tensor | None = None) -> JumpReLUTranscoder:
    """Latents: 0 parent, 1-3 token absorbers, 4 generic, 5-8 one per word vector w_k."""
    b = basis()
    cols = [b["p"] - b["v"].sum(0), *b["v"], 0.45 * b["p"] + 0.89 * b["u"], *b["w"]]
    W_enc = torch.stack(cols, dim=1)
    threshold = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.6, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    W_dec = torch.randn(9, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = torch.ones(9, dtype=torch.float64) if scales is None else scales
    return JumpReLUTranscoder(
        W_enc * s,
        torch.zeros(9, dtype=torch.float64),
        W_dec / s[:, None],
        torch.zeros(8, dtype=torch.float64),
        threshold=threshold * s,
        input_site="blocks.0.hook_mlp_in",
        output_site="blocks.0.hook_mlp_out",
    )


def toy_words() -> torch.Tensor:
    """The population the input decoder is fitted on: unabsorbed, absorbed, generic-only and plain words."""
    b = basis()
    xs = []
    for w in b["w"]:
        xs += [b["p"] + w + c * b["u"] for c in (0.0, 0.3, 0.6, 0.9, 1.2)]
        xs += [c * b["u"] + w for c in (0.8, 1.0, 1.5)]
        xs.append(w)
    xs += [b["p"] + v for v in b["v"]]
    xs += [b["p"], b["u"], 1.5 * b["u"]]  # words without a w latent pin the intercept down
    return torch.stack(xs)


def fit(acts: torch.Tensor, x: torch.Tensor, **kwargs):
    eq = NormalEquations(acts.shape[1], x.shape[1])
    eq.update(acts.detach(), x)
    return eq, solve_input_decoder(eq, **kwargs)


def shares(tc: JumpReLUTranscoder, words: torch.Tensor, x_fit: torch.Tensor):
    """(word absorption, D_in, acts) of ``words`` for the parent, input decoder fitted on ``x_fit``."""
    D_in = fit(tc.encode(x_fit), x_fit)[1].rows
    p = basis()["p"]
    scale, cos = latent_geometry(D_in, p, MODE_TRANSCODER)
    acts = tc.encode(words).detach()
    return word_absorption(acts, scale, cos, words @ p, [PARENT], Thresholds()), D_in, acts


def probe_words() -> torch.Tensor:
    b = basis()
    return torch.stack([b["p"] + b["w"][0] + 0.9 * b["u"], b["p"] + b["v"][0]])


def test_planted_toy_unabsorbed_word_scores_zero_and_absorbed_word_scores_one():
    tc = toy_transcoder()
    result, D_in, _ = shares(tc, probe_words(), toy_words())
    assert result.absorption_fraction.tolist() == [0.0, 1.0]
    assert result.full_absorption.tolist() == [False, True]
    assert result.main_projection[0] == pytest.approx(1.0, abs=1e-3)  # the parent carries all of P = 1
    assert result.absorbers[1] == [1] and result.top_latent[1] == 1
    # the fit recovers what each latent adds to the input along p: parent p, absorbers p + v_j, generic 0
    p = basis()["p"]
    assert (D_in @ p)[:5].tolist() == pytest.approx([1, 1, 1, 1, 0], abs=1e-3)

    # the encoder-row share that this replaces scores the unabsorbed word 0.693 (issue 10's figure)
    rows = tc.W_enc.detach().T
    cos = rows @ p / rows.norm(dim=1)
    old = word_absorption(tc.encode(probe_words()).detach(), cos / rows.norm(dim=1), cos, probe_words() @ p, [0])
    assert old.absorption_fraction[0] == pytest.approx(0.693, abs=1e-3)


def test_rescaling_a_latent_changes_nothing():
    """Encoder column and threshold x c, decoder row / c: same function, same shares, same scores."""
    scales = torch.tensor([0.2, 3.0, 1.0, 7.0, 0.5, 2.0, 1.0, 0.1, 4.0], dtype=torch.float64)
    base, D_base, acts_base = shares(toy_transcoder(), probe_words(), toy_words())
    scaled, D_scaled, acts_scaled = shares(toy_transcoder(scales), probe_words(), toy_words())
    torch.testing.assert_close(acts_scaled, acts_base * scales)
    torch.testing.assert_close(D_scaled, D_base / scales[:, None], rtol=1e-9, atol=1e-12)
    for field in ("absorption_fraction", "main_projection", "absorber_projection", "total_projection"):
        torch.testing.assert_close(getattr(scaled, field), getattr(base, field), rtol=1e-9, atol=1e-12)
    assert torch.equal(scaled.full_absorption, base.full_absorption)


def test_shares_plus_residual_equal_the_probe_projection():
    """Additivity: sum_i a_i <D_in[i], p> + <b, p> + <error, p> = P for every word, whatever the data."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, DIM, generator=g, dtype=torch.float64) + 2.0  # an offset for the intercept
    tc = TopKTranscoder(
        torch.randn(DIM, 40, generator=g, dtype=torch.float64),
        torch.zeros(40, dtype=torch.float64),
        torch.randn(40, 8, generator=g, dtype=torch.float64),
        torch.zeros(8, dtype=torch.float64),
        input_site="blocks.0.hook_mlp_in",
        output_site="blocks.0.hook_mlp_out",
        k=4,
    )
    acts = tc.encode(x).detach()
    decoder = fit(acts, x)[1]
    p = torch.randn(DIM, generator=g, dtype=torch.float64)
    p /= p.norm()
    scale, cos = latent_geometry(decoder.rows, p, MODE_TRANSCODER)
    result = word_absorption(acts, scale, cos, x @ p, [0, 1])
    error = x - acts @ decoder.rows - decoder.bias
    torch.testing.assert_close(result.total_projection + decoder.bias @ p + error @ p, x @ p, rtol=0, atol=1e-10)
    # least squares: the error is orthogonal to every latent's activations (up to the small ridge) and sums to 0
    assert (acts.T @ error).abs().max() < 1e-3 * (acts.T @ x).abs().max()
    assert error.sum(0).abs().max() < 1e-8 * x.abs().sum()
    # in SAE mode (cosines of rows that are not unit-norm) the same sum does not hold
    scale_sae, _ = latent_geometry(decoder.rows, p, MODE_SAE)
    assert not torch.allclose((acts * scale_sae).sum(1) + decoder.bias @ p + error @ p, x @ p, atol=1e-3)


def ridge_reference(acts: torch.Tensor, x: torch.Tensor, ridge: float, keep: list[int]):
    """(rows of ``keep``, intercept) by numpy least squares on the augmented system (independent of the code)."""
    a = acts[:, keep].numpy()
    design = np.hstack([a, np.ones((a.shape[0], 1))])
    penalty = np.hstack([np.diag(np.sqrt(ridge * (a**2).sum(0))), np.zeros((len(keep), 1))])
    target = np.vstack([x.numpy(), np.zeros((len(keep), x.shape[1]))])
    solution = np.linalg.lstsq(np.vstack([design, penalty]), target, rcond=None)[0]
    return torch.from_numpy(solution[:-1]), torch.from_numpy(solution[-1])


@pytest.mark.parametrize("rows_per_step", [7, 4096])
def test_streamed_fit_equals_a_least_squares_reference(monkeypatch, rows_per_step):
    """The chunked sparse normal equations give the ridge least-squares solution with an intercept."""
    monkeypatch.setattr(input_decoder, "ROWS", rows_per_step)
    g = torch.Generator().manual_seed(2)
    n, d_sae, ridge = 120, 30, 1e-2
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64) + 1.0
    acts = torch.relu(torch.randn(n, d_sae, generator=g, dtype=torch.float64) - 1.0)
    acts[:, 5] = 0.0  # a latent that never fires gets a zero row
    eq = NormalEquations(d_sae, DIM)
    eq.update(acts[:50], x[:50])
    eq.update(acts[50:], x[50:])
    full = solve_input_decoder(eq, ridge=ridge)
    assert full.rows[5].abs().max() == 0 and eq.n_rows == n
    # a nested prefix is the same fit restricted to its latents
    prefix = solve_input_decoder(eq, ridge=ridge, prefix_end=12)
    assert prefix.rows[12:].abs().max() == 0
    for decoder, end in ((full, d_sae), (prefix, 12)):
        keep = [i for i in range(end) if i != 5]
        rows, bias = ridge_reference(acts, x, ridge, keep)
        torch.testing.assert_close(decoder.rows[keep], rows, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(decoder.bias, bias, rtol=1e-8, atol=1e-10)
        # the reported FVU is the fraction of variance this fit leaves (numpy reference)
        residual = x[:, :].numpy() - acts[:, keep].numpy() @ rows.numpy() - bias.numpy()
        expected = (residual**2).sum() / ((x.numpy() - x.numpy().mean(0)) ** 2).sum()
        assert fvu(decoder, acts[:, :end], x) == pytest.approx(expected, rel=1e-9)


# ----------------------------------------------------------------------- through score_transcoder


def test_matryoshka_prefixes_choose_main_latents_within_the_prefix(data, synthetic):  # noqa: F811
    """Prefix 13 holds the latents of a..m only; the absorber of 'a' (latent 26) lies outside it."""
    tc = letter_transcoder(synthetic, absorber=True)
    nested = JumpReLUTranscoder(
        tc.W_enc,
        tc.b_enc,
        tc.W_dec,
        tc.b_dec,
        threshold=tc.threshold,
        input_site=tc.input_site,
        output_site=tc.output_site,
        prefix_ends=(13, 27),
    )
    result = score_transcoder(nested, data, OPTIONS, MODE_TRANSCODER)
    flat = score_transcoder(tc, data, OPTIONS, MODE_TRANSCODER)
    assert "prefixes" not in flat
    first, last = result["prefixes"]
    assert (first["prefix_end"], last["prefix_end"]) == (13, 27)
    for key in ("mean_absorption_fraction", "full_absorption_rate", "letters_scored", "intervals"):
        assert last[key] == result[key] == flat[key], key
    assert all(i < 13 for entry in first["per_letter"].values() for i in entry["main_latents"])
    a_full, a_first = result["per_letter"]["a"], first["per_letter"]["a"]
    assert a_full["num_full_absorption"] == S_TEST and a_full["main_latents"] == [0]
    # without latent 26 nothing carries the letter on the absorbed words: not absorption, just lost
    assert a_first["main_latents"] == [0] and a_first["mean_absorption_fraction"] == 0.0
    text = "\n".join(summary_lines("nested", result))
    lo, hi = (result["intervals"]["mean_absorption_fraction"][k] for k in ("low", "high"))
    assert f"mean absorption fraction {result['mean_absorption_fraction']:.3f} [{lo:.3f}, {hi:.3f}]" in text
    assert f"per nested prefix (latents: fraction / full rate): 13: {first['mean_absorption_fraction']:.3f}" in text


def text_rows(tc, n: int = 400):
    """Normal equations over ``n`` "text" rows on which no latent fires (they pin the intercept down)."""
    x = 0.1 * torch.randn(n, tc.d_in, generator=torch.Generator().manual_seed(9))
    eq = NormalEquations(tc.d_sae, tc.d_in)
    eq.update(tc.encode(x).detach(), x)
    return eq, x


def test_scored_words_are_held_out_of_the_input_decoder_fit(data, synthetic):  # noqa: F811
    """The fit sees the text rows and the training words only; its held-out FVU is numpy's on the test words."""
    tc = letter_transcoder(synthetic, absorber=True)
    eq, x_text = text_rows(tc)
    result = score_transcoder(tc, data, OPTIONS, MODE_TRANSCODER, equations=eq, n_text_tokens=len(x_text))
    record = result["input_decoder"]
    assert (record["n_text_tokens"], record["n_train_words"]) == (len(x_text), len(data.train_words))
    assert record["n_rows"] == len(x_text) + len(data.train_words)
    x_fit = torch.cat([x_text, data.x_train]).double()
    acts = tc.encode(x_fit.float()).detach().double()
    rows, bias = ridge_reference(acts, x_fit, OPTIONS.absorption_input_decoder_ridge, list(range(tc.d_sae)))
    x_test = data.x_test.double()
    residual = (x_test - tc.encode(data.x_test).detach().double() @ rows - bias).numpy()
    expected = (residual**2).sum() / ((x_test - x_test.mean(0)).numpy() ** 2).sum()
    assert record["heldout_fvu"] == pytest.approx(expected, rel=1e-6)
    assert record["heldout_fvu"] < 0.1 and record["warning"] == ""  # the planted latents do carry the input


def test_a_poor_or_thin_fit_is_flagged(data, synthetic):  # noqa: F811
    """Training words only (no text), a tenth of them: 3 rows per latent, and a warning says to raise the text budget."""
    few = dataclasses.replace(
        data, train_words=data.train_words[::10], x_train=data.x_train[::10], y_train=data.y_train[::10]
    )
    result = score_transcoder(letter_transcoder(synthetic, absorber=True), few, OPTIONS, MODE_TRANSCODER)
    assert "absorption_fit_tokens" in result["input_decoder"]["warning"]
    assert "caution:" in "\n".join(summary_lines("thin", result))


def test_letter_diagnostics_and_per_word_values(data, synthetic):  # noqa: F811
    tc = letter_transcoder(synthetic, absorber=True)
    eq, x_text = text_rows(tc)
    result = score_transcoder(tc, data, OPTIONS, MODE_TRANSCODER, equations=eq, n_text_tokens=len(x_text))
    for c in result["letters_scored"]:
        entry = result["per_letter"][c]
        n = entry["n_probe_true_positives"]
        assert len(entry["word_token_ids"]) == len(entry["word_absorption_fraction"]) == n
        assert sum(entry["word_absorption_fraction"]) / n == pytest.approx(entry["mean_absorption_fraction"])
        assert sum(entry["word_full_absorption"]) == entry["num_full_absorption"]
        # the letter's latent adds 3 u_c to its words, so its input-decoder row is u_c
        letter = "abcdefghijklmnopqrstuvwxyz".index(c)
        p = data.probe.weight[letter] / data.probe.weight[letter].norm()
        assert entry["main_latents"] == [letter]
        assert entry["main_cos"] == [pytest.approx(float(synthetic.u[letter] @ p), abs=0.02)]
        assert 0.5 < entry["total_share"] < 1.5
    # 'a': the parent carries nothing on the two absorbed words, everything on the others
    a = result["per_letter"]["a"]
    assert a["main_share"] < result["per_letter"]["b"]["main_share"]
    assert result["input_decoder"]["intercept"]
    iv = result["intervals"]["mean_absorption_fraction"]
    assert iv["low"] <= result["mean_absorption_fraction"] <= iv["high"]


def test_negative_ridge_is_a_user_error_naming_the_config_field(data, synthetic):  # noqa: F811
    from transcoderbench.errors import UserError

    bad = dataclasses.replace(OPTIONS, absorption_input_decoder_ridge=-1.0)
    with pytest.raises(UserError, match="absorption.input_decoder_ridge"):
        score_transcoder(letter_transcoder(synthetic, absorber=False), data, bad, MODE_TRANSCODER)
