"""The absorption pipeline on synthetic activations with planted letters, latents and absorbers.

Activations are built so the answer is known: word ``w`` of letter ``L`` has input
``x = 3 u_L + noise`` with orthonormal letter directions ``u_0..u_25``; a chosen set ``S`` of
'a' words also carries a token direction ``v`` (orthogonal to every ``u``). The ground-truth probe
and everything after it run exactly as on a language model (``fit_ground_truth`` and
``score_transcoder``), so these tests exercise the real code path, only without the LM pass.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score as sk_f1

from transcoderbench.absorption import AbsorptionOptions
from transcoderbench.absorption.calculator import Thresholds
from transcoderbench.absorption.ksparse import fit_logistic, k_sparse_probe
from transcoderbench.absorption.probe import f1_score, per_letter_f1, train_probe
from transcoderbench.absorption.run import (
    MODE_SAE,
    MODE_TRANSCODER,
    fit_ground_truth,
    latent_geometry,
    letter_absorption,
    score_transcoder,
)
from transcoderbench.absorption.vocab import LETTERS, Word
from transcoderbench.transcoders import JumpReLUTranscoder

D = 64
D_OUT = 48
N_TRAIN_PER_LETTER = 24
N_TEST_PER_LETTER = 10
N_TRAIN_A = 200  # 'a' gets more words so that two absorbed test words move its F1 by < 0.03
N_TEST_A = 50
S_TRAIN = 8  # 'a' words carrying the token direction v
S_TEST = 2
OPTIONS = AbsorptionOptions(absorption_cache=False, absorption_probe_epochs=30).resolved("cpu")


@dataclasses.dataclass
class Synthetic:
    u: torch.Tensor  # [26, D] orthonormal letter directions
    v: torch.Tensor  # [D] token direction of the absorbed words
    train_words: list[Word]
    test_words: list[Word]
    x_train: torch.Tensor
    x_test: torch.Tensor
    s_train: torch.Tensor  # bool: word carries v
    s_test: torch.Tensor


def make_synthetic(seed: int = 0, noise: float = 0.1) -> Synthetic:
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    u, v = basis[:, :26].T.float(), basis[:, 26].float()

    def split(n_per_letter: int, n_a: int, n_s: int, offset: int):
        words, xs, s = [], [], []
        for letter in range(26):
            count = n_a if letter == 0 else n_per_letter
            for j in range(count):
                words.append(Word(offset + len(words), f"{LETTERS[letter]}{j}", letter))
                carries_v = letter == 0 and j < n_s
                x = 3 * u[letter] + noise * torch.randn(D, generator=g) + (2 * v if carries_v else 0)
                xs.append(x)
                s.append(carries_v)
        return words, torch.stack(xs), torch.tensor(s)

    train_words, x_train, s_train = split(N_TRAIN_PER_LETTER, N_TRAIN_A, S_TRAIN, 0)
    test_words, x_test, s_test = split(N_TEST_PER_LETTER, N_TEST_A, S_TEST, 100_000)
    return Synthetic(u, v, train_words, test_words, x_train, x_test, s_train, s_test)


@pytest.fixture(scope="module")
def synthetic() -> Synthetic:
    return make_synthetic()


@pytest.fixture(scope="module")
def data(synthetic):
    return fit_ground_truth(
        "synthetic", synthetic.train_words, synthetic.test_words, synthetic.x_train, synthetic.x_test, OPTIONS
    )


def letter_transcoder(syn: Synthetic, *, absorber: bool, site_out: str = "blocks.0.hook_mlp_out") -> JumpReLUTranscoder:
    """One JumpReLU latent per letter reading u_L (threshold 1.5: fires on its letter's words only).

    With ``absorber``: latent 0 also reads -v (it goes silent on the words carrying v), and a
    27th latent reads 0.8 u_0 + 0.6 v with threshold 2.8, so it fires on exactly those words.
    """
    d_sae = 27 if absorber else 26
    W_enc = torch.zeros(D, d_sae)
    W_enc[:, :26] = syn.u.T
    threshold = torch.full((d_sae,), 1.5)
    if absorber:
        W_enc[:, 0] = syn.u[0] - syn.v
        W_enc[:, 26] = 0.8 * syn.u[0] + 0.6 * syn.v
        threshold[26] = 2.8
    W_dec = torch.randn(d_sae, D_OUT, generator=torch.Generator().manual_seed(5))
    return JumpReLUTranscoder(
        W_enc,
        torch.zeros(d_sae),
        W_dec,
        torch.zeros(D_OUT),
        threshold=threshold,
        input_site="blocks.0.hook_mlp_in",
        output_site=site_out,
    )


# ----------------------------------------------------------------------- building blocks


def test_ground_truth_probe_finds_every_planted_letter(data, synthetic):
    assert all(f1 > 0.7 for f1 in data.probe_f1) and np.median(data.probe_f1) == 1.0, data.probe_f1
    cos = torch.nn.functional.cosine_similarity(data.probe.weight, synthetic.u, dim=1)
    assert (cos > 0.5).all(), cos


def test_probe_f1_matches_sklearn(data):
    logits = data.probe.logits(data.x_test)
    ours = per_letter_f1(logits, data.y_test)
    for c in range(26):
        assert ours[c] == pytest.approx(sk_f1((data.y_test == c).numpy(), (logits[:, c] > 0).numpy(), zero_division=0))


def test_f1_without_positives_or_predictions_is_zero():
    empty = torch.zeros(5, dtype=torch.bool)
    assert f1_score(empty, empty) == 0.0
    assert f1_score(torch.tensor([True, False]), torch.tensor([True, True])) == pytest.approx(2 / 3)


def test_probe_training_is_seeded(synthetic):
    y = torch.tensor([w.letter for w in synthetic.train_words])
    kwargs = {"epochs": 3, "lr": 0.01, "batch_size": 64, "weight_decay": 1e-4}
    a = train_probe(synthetic.x_train, y, seed=1, **kwargs)
    b = train_probe(synthetic.x_train, y, seed=1, **kwargs)
    c = train_probe(synthetic.x_train, y, seed=2, **kwargs)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)


def test_probe_survives_a_letter_without_training_words(synthetic):
    y = torch.tensor([w.letter for w in synthetic.train_words])
    keep = y != 25  # no 'z' at all
    probe = train_probe(synthetic.x_train[keep], y[keep], epochs=2, lr=0.01, batch_size=64, weight_decay=1e-4, seed=0)
    assert torch.isfinite(probe.weight).all() and torch.isfinite(probe.bias).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logistic_regression_matches_sklearn(seed):
    g = np.random.default_rng(seed)
    x = g.normal(size=(300, 4)) * np.array([1.0, 3.0, 0.2, 0.0])  # one constant column, like a dead latent
    y = x[:, 0] + 0.5 * x[:, 1] + g.normal(size=300) > 1.2
    ref = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10_000).fit(x, y)
    coef, intercept = fit_logistic(torch.tensor(x), torch.tensor(y))
    np.testing.assert_allclose(coef.numpy(), ref.coef_[0], rtol=1e-4, atol=1e-5)
    assert intercept == pytest.approx(ref.intercept_[0], rel=1e-4, abs=1e-5)


def test_logistic_regression_on_separable_data_stays_finite():
    x = torch.tensor([[0.0], [0.0], [5.0], [6.0]])
    coef, intercept = fit_logistic(x, torch.tensor([False, False, True, True]))
    ref = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10_000).fit(x.numpy(), [0, 0, 1, 1])
    assert coef[0].item() == pytest.approx(ref.coef_[0][0], rel=1e-4)
    assert intercept == pytest.approx(ref.intercept_[0], rel=1e-4)


def test_k_sparse_stops_at_the_first_small_f1_gain():
    # latent 0 finds 90 of 100 positives, latent 1 the other 10 (+0.05 F1), latent 2 nothing
    n = 400
    y = torch.zeros(n, dtype=torch.long)
    y[:100] = 1
    acts = torch.zeros(n, 3)
    acts[:90, 0] = 1.0
    acts[90:100, 1] = 1.0
    sparse = k_sparse_probe(acts, y, acts, y, 1, [0, 1, 2], f1_jump=0.03)
    assert sparse.f1[0] == pytest.approx(2 * 90 / (2 * 90 + 10))
    assert sparse.f1[1] == pytest.approx(1.0)
    assert sparse.main_latents == [0, 1]  # gain 0.053 > 0.03; k = 3 gains nothing
    # with a bigger jump required, latent 1 is not a main latent
    assert k_sparse_probe(acts, y, acts, y, 1, [0, 1, 2], f1_jump=0.06).main_latents == [0]


# ----------------------------------------------------------------------- planted transcoders


def test_one_always_firing_latent_per_letter_gives_zero_absorption(data, synthetic):
    tc = letter_transcoder(synthetic, absorber=False)
    result = score_transcoder(tc, data, OPTIONS, MODE_TRANSCODER)
    assert result["n_letters_scored"] == 26 and result["note"] == ""
    assert result["mean_absorption_fraction"] == 0.0
    assert result["full_absorption_rate"] == 0.0
    assert result["mean_num_split_latents"] == 1.0
    for c, letter in enumerate(LETTERS):
        assert result["per_letter"][letter]["main_latents"] == [c]


def test_planted_absorbing_latent_raises_the_score_by_the_expected_amount(data, synthetic):
    base = score_transcoder(letter_transcoder(synthetic, absorber=False), data, OPTIONS, MODE_TRANSCODER)
    planted = score_transcoder(letter_transcoder(synthetic, absorber=True), data, OPTIONS, MODE_TRANSCODER)
    a = planted["per_letter"]["a"]
    assert a["main_latents"] == [0], a  # the absorber is too rare to count as a split latent
    # Expected: every probe-positive test 'a' word carrying v is fully absorbed, no other word is.
    logits = data.probe.logits(data.x_test)
    positives = (data.y_test == 0) & (logits[:, 0] > 0)
    n_tp = int(positives.sum())
    n_absorbed = int((positives & synthetic.s_test).sum())
    assert n_absorbed == S_TEST and a["n_probe_true_positives"] == n_tp
    assert a["mean_absorption_fraction"] == pytest.approx(n_absorbed / n_tp)
    assert a["full_absorption_rate"] == pytest.approx(n_absorbed / n_tp)
    assert sorted(w["word"] for w in a["absorbed_words"]) == ["a0", "a1"]
    assert all(w["absorbing_latents"] == [26] and w["top_latent"] == 26 for w in a["absorbed_words"])
    # every other letter is untouched, so the overall means rise by (n_absorbed / n_tp) / 26
    expected_rise = n_absorbed / n_tp / 26
    assert planted["mean_absorption_fraction"] - base["mean_absorption_fraction"] == pytest.approx(expected_rise)
    assert planted["full_absorption_rate"] - base["full_absorption_rate"] == pytest.approx(expected_rise)
    for letter in LETTERS[1:]:
        assert planted["per_letter"][letter]["mean_absorption_fraction"] == 0.0


def test_absorption_is_invariant_to_rescaling_latents(data, synthetic):
    """Scaling latent i's encoder column, bias and threshold by s and its decoder row by 1/s leaves a
    JumpReLU transcoder's function unchanged; the transcoder-mode projection must not move either."""
    tc = letter_transcoder(synthetic, absorber=True)
    s = torch.linspace(0.2, 7.0, tc.d_sae)
    scaled = JumpReLUTranscoder(
        tc.W_enc * s,
        tc.b_enc * s,
        tc.W_dec / s[:, None],
        tc.b_dec,
        threshold=tc.threshold * s,
        input_site=tc.input_site,
        output_site=tc.output_site,
    )
    x = data.x_test[:20]
    torch.testing.assert_close(scaled(x)[0], tc(x)[0], rtol=1e-4, atol=1e-4)
    a = score_transcoder(tc, data, OPTIONS, MODE_TRANSCODER)
    b = score_transcoder(scaled, data, OPTIONS, MODE_TRANSCODER)
    for key in ("mean_absorption_fraction", "full_absorption_rate", "mean_num_split_latents"):
        assert a[key] == pytest.approx(b[key], abs=1e-9), key


def test_too_few_letters_gives_a_plain_statement_instead_of_a_number(data, synthetic):
    weak = dataclasses.replace(data, probe_f1=[0.9] * 5 + [0.3] * 21)
    result = score_transcoder(letter_transcoder(synthetic, absorber=False), weak, OPTIONS, MODE_TRANSCODER)
    assert result["n_letters_scored"] == 5
    assert result["mean_absorption_fraction"] is None and result["full_absorption_rate"] is None
    assert result["mean_num_split_latents"] is None
    assert "only 5 of 26 letters" in result["note"] and "f: 0.30" in result["note"]
    assert result["letters_scored"] == list("abcde")


def test_identical_seeds_identical_results(synthetic):
    def run(seed: int):
        options = dataclasses.replace(OPTIONS, absorption_seed=seed)
        d = fit_ground_truth(
            "s", synthetic.train_words, synthetic.test_words, synthetic.x_train, synthetic.x_test, options
        )
        r = score_transcoder(letter_transcoder(synthetic, absorber=True), d, options, MODE_TRANSCODER)
        r.pop("wall_time_s")
        return d, r

    d1, r1 = run(7)
    d2, r2 = run(7)
    d3, _ = run(8)
    assert torch.equal(d1.probe.weight, d2.probe.weight)
    assert r1 == r2
    assert not torch.equal(d1.probe.weight, d3.probe.weight)


# ----------------------------------------------------------------------- the SAE case


def saebench_reference(acts, W_dec, x, probe_direction, main_ids):
    """SAEBench's per-word loop written out by hand (plain Python floats, one word at a time)."""
    p = (probe_direction / probe_direction.norm()).detach()
    cos = [float(torch.dot(row, p) / row.norm()) for row in W_dec.detach().double()]
    out = []
    for a, xi in zip(acts.detach().double(), x.detach().double()):
        P = float(xi @ p)
        proj = [float(a[i]) * cos[i] for i in range(len(cos))]
        main = sum(proj[i] for i in main_ids)
        candidates = sorted(
            (proj[i] for i in range(len(cos)) if i not in main_ids and cos[i] >= 0.1 and proj[i] > 0), reverse=True
        )[:3]
        A = sum(candidates)
        if main >= P or A / P < 0.4:
            frac = 0.0
        elif main <= 0:
            frac = 1.0
        else:
            absorbed = min(A, P - main)
            frac = min(max(absorbed / (absorbed + main), 0.0), 1.0)
        top = max(range(len(cos)), key=lambda i: proj[i])
        full = all(abs(float(a[i])) < 1e-8 for i in main_ids) and cos[top] >= 0.025 and P >= 0 and proj[top] / P >= 0.4
        out.append((frac, full))
    return out


def sae_from(syn: Synthetic, seed: int = 3) -> JumpReLUTranscoder:
    """An SAE (same input and output site) whose decoder rows point along the letters, with
    non-unit norms and an encoder that differs from the decoder, plus an absorber for S."""
    g = torch.Generator().manual_seed(seed)
    d_sae = 40
    W_dec = torch.randn(d_sae, D, generator=g) * 0.3
    W_dec[:26] += syn.u * torch.linspace(0.5, 2.0, 26)[:, None]
    W_dec[26] = 0.8 * syn.u[0] + 0.6 * syn.v
    W_enc = torch.randn(D, d_sae, generator=g) * 0.05
    W_enc[:, :26] += syn.u.T
    W_enc[:, 0] -= syn.v
    W_enc[:, 26] += 0.8 * syn.u[0] + 0.6 * syn.v
    threshold = torch.full((d_sae,), 1.5)
    threshold[26] = 2.8
    return JumpReLUTranscoder(
        W_enc,
        torch.zeros(d_sae),
        W_dec,
        torch.zeros(D),
        threshold=threshold,
        input_site="blocks.0.hook_resid_mid",
        output_site="blocks.0.hook_mlp_in",
    )


def test_sae_case_follows_saebench_decomposition(data, synthetic):
    sae = sae_from(synthetic)
    test_latents = sae.encode(data.x_test)
    checked = 0
    for letter in range(26):
        main = [letter] if letter else [0]
        words, ours = letter_absorption(sae, data, letter, main, test_latents, MODE_SAE, Thresholds())
        ref = saebench_reference(
            test_latents[words], sae.W_dec.detach(), data.x_test[words], data.probe.weight[letter].double(), main
        )
        assert ours.absorption_fraction.tolist() == pytest.approx([f for f, _ in ref], abs=1e-9)
        assert ours.full_absorption.tolist() == [full for _, full in ref]
        checked += len(words)
    assert checked > 200
    # the planted absorber is seen through the decoder rows
    words, ours = letter_absorption(sae, data, 0, [0], test_latents, MODE_SAE, Thresholds())
    absorbed = {data.test_words[int(w)].text for w, f in zip(words, ours.full_absorption) if f}
    assert absorbed == {"a0", "a1"}


def test_sae_mode_uses_cosines_and_transcoder_mode_contributions(synthetic):
    sae = sae_from(synthetic)
    direction = synthetic.u[0].double()
    rows = sae.W_dec.detach().double()
    scale_sae, cos_sae = latent_geometry(rows, direction, MODE_SAE)
    scale_tc, cos_tc = latent_geometry(rows, direction, MODE_TRANSCODER)
    torch.testing.assert_close(cos_sae, rows @ direction / rows.norm(dim=1))
    torch.testing.assert_close(scale_sae, cos_sae)  # SAEBench: a_i * cos(d_i, p)
    torch.testing.assert_close(cos_tc, cos_sae)
    torch.testing.assert_close(scale_tc, rows @ direction)  # the contribution a_i * <d_i, p>


def test_unit_rows_give_the_same_absorption_in_both_modes(data, synthetic):
    """With unit-norm rows, the contribution a_i <d_i, p> is SAEBench's a_i cos(d_i, p) exactly."""
    sae = sae_from(synthetic)
    unit = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    tied = JumpReLUTranscoder(
        unit.T,
        torch.zeros(unit.shape[0]),
        unit,
        torch.zeros(D),
        threshold=sae.threshold,
        input_site="blocks.0.hook_mlp_in",
        output_site="blocks.0.hook_mlp_in",
    )
    latents = tied.encode(data.x_test)
    for letter in (0, 3, 17):
        _, a = letter_absorption(tied, data, letter, [letter], latents, MODE_SAE, Thresholds())
        _, b = letter_absorption(tied, data, letter, [letter], latents, MODE_TRANSCODER, Thresholds(), rows=unit)
        torch.testing.assert_close(a.absorption_fraction, b.absorption_fraction)
        assert torch.equal(a.full_absorption, b.full_absorption)


def test_width_mismatch_is_a_user_error(data, synthetic):
    from transcoderbench.errors import UserError

    tc = letter_transcoder(synthetic, absorber=False)
    narrow = JumpReLUTranscoder(
        tc.W_enc[:32],
        tc.b_enc,
        tc.W_dec,
        tc.b_dec,
        threshold=tc.threshold,
        input_site=tc.input_site,
        output_site=tc.output_site,
    )
    with pytest.raises(UserError, match="input width 32"):
        score_transcoder(narrow, data, OPTIONS, MODE_TRANSCODER)


def test_noise_free_words_have_probe_projection_along_their_letter(data, synthetic):
    # sanity of the fixture itself: the probe direction for 'c' is mostly u_2
    p = data.probe.weight[2] / data.probe.weight[2].norm()
    assert float(p @ synthetic.u[2]) > 0.5 and math.isfinite(float(p.norm()))
