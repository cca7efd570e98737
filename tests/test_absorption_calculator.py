"""The per-word absorption formula on constructed cases whose answers are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from transcoderbench.absorption.calculator import Thresholds, word_absorption


def one_word(acts, cos, P, main, scale=None, **thresholds):
    """Absorption of a single word; ``scale`` defaults to ``cos`` (SAEBench's projection)."""
    acts_t = torch.tensor([acts], dtype=torch.float64)
    cos_t = torch.tensor(cos, dtype=torch.float64)
    scale_t = cos_t if scale is None else torch.tensor(scale, dtype=torch.float64)
    r = word_absorption(acts_t, scale_t, cos_t, torch.tensor([P], dtype=torch.float64), main, Thresholds(**thresholds))
    return float(r.absorption_fraction[0]), bool(r.full_absorption[0]), r


def test_no_absorption_when_the_main_latent_carries_the_probe_projection():
    # main latent 0 projects 2.0 * 1.0 = 2.0 >= P = 2.0, although latent 1 (cos 0.5) also fires
    frac, full, r = one_word([2.0, 3.0, 0.0], [1.0, 0.5, 0.5], P=2.0, main=[0])
    assert frac == 0.0 and not full
    assert float(r.main_projection[0]) == 2.0 and float(r.absorber_projection[0]) == 1.5


def test_partial_absorption_fraction_by_hand():
    # main: 1.0 * 1.0 = 1.0; absorber candidates: latent 1 (cos 0.5, proj 1.0); latent 2 has cos
    # 0.05 < 0.1 and is ignored. A = 1.0, A / P = 0.4 (passes, the gate is "< 0.4 -> 0"),
    # unaccounted P - main = 1.5, absorbed = min(1.0, 1.5) = 1.0 -> 1.0 / (1.0 + 1.0) = 0.5
    frac, full, r = one_word([1.0, 2.0, 10.0], [1.0, 0.5, 0.05], P=2.5, main=[0])
    assert frac == pytest.approx(0.5, abs=1e-12)
    assert not full  # the main latent fires
    assert r.absorbers[0] == [1]


def test_partial_absorption_capped_by_what_the_main_latents_leave():
    # main 1.0, A = 4 * 0.5 = 2.0 > P - main = 1.0 -> absorbed 1.0 -> 1.0 / (1.0 + 1.0) = 0.5
    frac, _, _ = one_word([1.0, 4.0], [1.0, 0.5], P=2.0, main=[0])
    assert frac == pytest.approx(0.5, abs=1e-12)
    # main 0.5, A = 2.0, P - main = 1.5 -> 1.5 / 2.0 = 0.75
    frac, _, _ = one_word([0.5, 4.0], [1.0, 0.5], P=2.0, main=[0])
    assert frac == pytest.approx(0.75, abs=1e-12)


def test_full_absorption_by_hand():
    # main silent; latent 1 projects 3 * 0.5 = 1.5; A / P = 0.75 >= 0.4 -> fraction 1;
    # top latent is 1 with cos 0.5 >= 0.025 and 1.5 / 2.0 >= 0.4 -> full absorption
    frac, full, r = one_word([0.0, 3.0, 0.0], [0.9, 0.5, 0.0], P=2.0, main=[0])
    assert frac == 1.0 and full
    assert int(r.top_latent[0]) == 1 and float(r.top_projection[0]) == 1.5


def test_negative_main_projection_counts_as_fully_absorbed():
    # main projects 1.0 * -0.2 = -0.2 <= 0 while the absorber carries 1.0 / 2.0 of P -> 1.0
    frac, full, _ = one_word([1.0, 2.0], [-0.2, 0.5], P=2.0, main=[0])
    assert frac == 1.0
    assert not full  # the main latent fires (activation 1.0), so this is not *full* absorption


def test_proportion_gate_at_0_4():
    # A / P just below 0.4 -> 0; at 0.4 (up to rounding) -> counted
    below, _, _ = one_word([0.0, 0.79], [1.0, 1.0], P=2.0, main=[0])
    above, _, _ = one_word([0.0, 0.81], [1.0, 1.0], P=2.0, main=[0])
    assert below == 0.0 and above == 1.0
    # the same gate for full absorption: top projection / P
    _, full_below, _ = one_word([0.0, 0.79], [1.0, 1.0], P=2.0, main=[0])
    _, full_above, _ = one_word([0.0, 0.81], [1.0, 1.0], P=2.0, main=[0])
    assert not full_below and full_above


def test_cosine_gates_0_1_for_the_fraction_and_0_025_for_full_absorption():
    # cos 0.03: too weak to count as an absorbing latent (0.1), strong enough for full absorption
    frac, full, _ = one_word([0.0, 100.0], [0.9, 0.03], P=2.0, main=[0])
    assert frac == 0.0 and full
    # cos 0.02: below the full-absorption gate as well
    frac, full, _ = one_word([0.0, 100.0], [0.9, 0.02], P=2.0, main=[0])
    assert frac == 0.0 and not full
    # cos exactly 0.1 counts (the gate is ">= 0.1")
    frac, _, _ = one_word([0.0, 10.0], [0.9, 0.1], P=2.0, main=[0])
    assert frac == 1.0


def test_at_most_three_absorbing_latents_are_summed():
    # five candidates projecting 1.0, 0.9, 0.8, 0.7, 0.6: A = 1.0 + 0.9 + 0.8 = 2.7
    acts = [1.0, 1.0, 0.9, 0.8, 0.7, 0.6]
    cos = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    frac, _, r = one_word(acts, cos, P=5.0, main=[0])
    assert float(r.absorber_projection[0]) == pytest.approx(2.7)
    assert r.absorbers[0] == [1, 2, 3]
    # A / P = 0.54; main 1.0, absorbed = min(2.7, 5.0 - 1.0) = 2.7 -> 2.7 / 3.7
    assert frac == pytest.approx(2.7 / 3.7)
    # five absorbers: A = 4.0 = P - main -> 4.0 / 5.0
    frac5, _, r5 = one_word(acts, cos, P=5.0, main=[0], max_absorbers=5)
    assert float(r5.absorber_projection[0]) == pytest.approx(4.0) and frac5 == pytest.approx(4.0 / 5.0)


def test_negative_or_zero_probe_projection_is_never_absorption():
    for P in (-1.0, 0.0):
        frac, full, _ = one_word([0.0, 5.0], [1.0, 1.0], P=P, main=[0])
        assert frac == 0.0 and not full


def test_main_latents_firing_even_slightly_rule_out_full_absorption():
    _, full, _ = one_word([1e-6, 0.0, 3.0], [1.0, 1.0, 0.5], P=2.0, main=[0, 1])
    assert not full
    _, full, _ = one_word([1e-9, 0.0, 3.0], [1.0, 1.0, 0.5], P=2.0, main=[0, 1])
    assert full  # below SAEBench's EPS of 1e-8 counts as silent


def test_scale_differs_from_cos_in_transcoder_mode():
    # transcoder mode: proj = activation * cos / |encoder row|; a latent with a row of norm 4
    # and cos 0.5 firing at 8 projects 8 * 0.5 / 4 = 1.0
    frac, _, r = one_word([1.0, 8.0], [1.0, 0.5], P=2.5, main=[0], scale=[1.0, 0.5 / 4])
    assert float(r.absorber_projection[0]) == pytest.approx(1.0)
    assert frac == pytest.approx(0.5)


def test_words_are_independent_rows():
    acts = torch.tensor([[2.0, 3.0], [0.0, 3.0]], dtype=torch.float64)
    cos = torch.tensor([1.0, 0.5], dtype=torch.float64)
    r = word_absorption(acts, cos, cos, torch.tensor([2.0, 2.0], dtype=torch.float64), [0])
    assert r.absorption_fraction.tolist() == [0.0, 1.0]
    assert r.full_absorption.tolist() == [False, True]
