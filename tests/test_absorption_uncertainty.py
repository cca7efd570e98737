"""Bootstrap intervals over words, paired comparisons and comparability of absorption results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_absorption import OPTIONS, data, letter_transcoder, synthetic  # noqa: F401 (fixtures)
from transcoderbench.absorption.run import MODE_TRANSCODER, score_transcoder
from transcoderbench.absorption.uncertainty import comparability_problems, headline_intervals, paired_difference
from transcoderbench.absorption.vocab import LETTERS


def make_result(values: dict[str, np.ndarray], full: dict[str, np.ndarray] | None = None, **extra) -> dict:
    """A result as the JSON holds it: per-letter means and per-word values (word ids 1000 * letter + j)."""
    per_letter = {}
    for c, v in values.items():
        f = np.zeros_like(v) if full is None else full[c]
        ids = [1000 * LETTERS.index(c) + j for j in range(v.size)]
        per_letter[c] = {
            "scored": True,
            "mean_absorption_fraction": float(v.mean()),
            "full_absorption_rate": float(f.mean()),
            "word_token_ids": ids[::-1],  # stored order does not matter: pairing is by token id
            "word_absorption_fraction": [float(x) for x in v[::-1]],
            "word_full_absorption": [int(x) for x in f[::-1]],
        }
    letters = list(values)
    return {
        "mean_absorption_fraction": float(np.mean([v.mean() for v in values.values()])),
        "full_absorption_rate": float(np.mean([p["full_absorption_rate"] for p in per_letter.values()])),
        "letters_scored": letters,
        "per_letter": per_letter,
        "probe_site": "blocks.0.hook_mlp_in",
        "mode": MODE_TRANSCODER,
        "seed": 42,
        **extra,
    }


def random_values(seed: int, letters: str = "abcdefghij", n: int = 40) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.uniform(0, 1, n) * (rng.uniform(0, 1, n) < 0.3) for c in letters}


def test_interval_matches_the_analytic_standard_error_of_a_mean_of_letter_means():
    values = random_values(0)
    result = make_result(values)
    iv = headline_intervals(result, resamples=4000, seed=1)["mean_absorption_fraction"]
    assert iv["value"] == pytest.approx(result["mean_absorption_fraction"], abs=1e-15)
    # stratified bootstrap of a mean of L letter means: se^2 = sum_l var_l / n_l / L^2 (var with ddof 0)
    analytic = np.sqrt(sum(v.var() / v.size for v in values.values())) / len(values)
    assert iv["se"] == pytest.approx(analytic, rel=0.06)
    assert iv["low"] < iv["value"] < iv["high"]
    assert iv["high"] - iv["low"] == pytest.approx(2 * 1.96 * analytic, rel=0.1)


def test_intervals_are_seeded_and_need_a_headline():
    result = make_result(random_values(0))
    assert headline_intervals(result, seed=3) == headline_intervals(result, seed=3)
    assert headline_intervals(result, seed=3) != headline_intervals(result, seed=4)
    assert headline_intervals({**result, "mean_absorption_fraction": None}) == {}
    assert headline_intervals(result, resamples=0) == {}


def test_paired_difference_of_identical_results_is_exactly_zero():
    a = make_result(random_values(0))
    out = paired_difference(a, json.loads(json.dumps(a)), ("x", "y"))
    assert out["comparable"]
    for metric in ("mean_absorption_fraction", "full_absorption_rate"):
        m = out["metrics"][metric]
        assert (m["value"], m["low"], m["high"], m["winner"]) == (0.0, 0.0, 0.0, None)


def test_pairing_removes_the_word_to_word_spread():
    """b = a + 0.02 on every word: unpaired intervals overlap widely, the paired one excludes 0."""
    values = random_values(1)
    a = make_result(values)
    b = make_result({c: v + 0.02 for c, v in values.items()})
    ia, ib = headline_intervals(a)["mean_absorption_fraction"], headline_intervals(b)["mean_absorption_fraction"]
    assert ia["high"] > ib["low"]  # separately, the two could not be told apart
    diff = paired_difference(a, b, ("a", "b"))["metrics"]["mean_absorption_fraction"]
    assert diff["value"] == pytest.approx(-0.02) and diff["high"] < 0
    assert diff["winner"] == "a" and diff["verdict"] == "a absorbs less"
    assert paired_difference(b, a, ("b", "a"))["metrics"]["mean_absorption_fraction"]["winner"] == "a"


def test_no_winner_when_the_interval_contains_zero():
    values = random_values(2)
    rng = np.random.default_rng(5)
    noise = {c: rng.normal(0, 0.2, v.size) for c, v in values.items()}
    noisy = {c: v + noise[c] - noise[c].mean() for c, v in values.items()}  # word by word apart, same means
    out = paired_difference(make_result(values), make_result(noisy))["metrics"]["mean_absorption_fraction"]
    assert out["value"] == pytest.approx(0.0, abs=1e-12)
    assert out["low"] < -0.01 and out["high"] > 0.01 and out["winner"] is None
    assert "no significant difference" in out["verdict"]


def test_results_that_are_not_comparable_say_why_and_name_no_winner():
    base = make_result(random_values(0))
    cases = {
        "probe site": make_result(random_values(0), probe_site="blocks.1.hook_mlp_in"),
        "mode": make_result(random_values(0), mode="sae_decoder"),
        "letters": make_result(random_values(0, letters="abcdefghik")),
        "words": make_result(random_values(0, n=39)),
        "seed": make_result(random_values(0), seed=7),
    }
    assert comparability_problems(base, make_result(random_values(9))) == []
    for what, other in cases.items():
        problems = comparability_problems(base, other)
        assert len(problems) == 1 and what in problems[0], (what, problems)
        out = paired_difference(base, other)
        assert not out["comparable"] and out["metrics"] == {} and out["problems"] == problems
    assert "headline" in comparability_problems(base, {**base, "mean_absorption_fraction": None})[0]


def test_comparison_from_the_json_of_two_scored_transcoders(data, synthetic):  # noqa: F811
    clean = score_transcoder(letter_transcoder(synthetic, absorber=False), data, OPTIONS, MODE_TRANSCODER)
    absorbing = score_transcoder(letter_transcoder(synthetic, absorber=True), data, OPTIONS, MODE_TRANSCODER)
    clean, absorbing = json.loads(json.dumps(clean)), json.loads(json.dumps(absorbing))
    out = paired_difference(absorbing, clean, ("absorbing", "clean"))
    assert out["comparable"]
    m = out["metrics"]["full_absorption_rate"]
    assert m["value"] == pytest.approx(absorbing["full_absorption_rate"] - clean["full_absorption_rate"])
    assert m["low"] >= 0.0  # only 'a' differs, and only by its two absorbed words
    # the intervals stored in the result are the ones recomputed from its JSON
    assert absorbing["intervals"] == headline_intervals(
        absorbing, resamples=OPTIONS.absorption_bootstrap_resamples, seed=OPTIONS.absorption_bootstrap_seed
    )
