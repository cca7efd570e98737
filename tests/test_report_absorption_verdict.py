"""compare's absorption verdicts: a paired bootstrap over words names a winner only when the interval
of the difference excludes 0, and results measured on other letters/words/sites are flagged, not compared."""

from __future__ import annotations

import copy

import numpy as np

from transcoderbench.absorption.uncertainty import headline_intervals
from transcoderbench.report.comparison import as_results, decide

LETTERS = ["a", "b", "c"]


def absorption(fractions: dict[str, np.ndarray], *, site: str = "blocks.1.ln2.hook_normalized") -> dict:
    per_letter = {}
    for c, values in fractions.items():
        ids = list(range(100 * (ord(c) - 96), 100 * (ord(c) - 96) + values.size))
        per_letter[c] = {
            "word_token_ids": ids,
            "word_absorption_fraction": values.tolist(),
            "word_full_absorption": (values > 0.5).astype(float).tolist(),
        }
    result = {
        "mean_absorption_fraction": float(np.mean([v.mean() for v in fractions.values()])),
        "full_absorption_rate": float(np.mean([(v > 0.5).mean() for v in fractions.values()])),
        "letters_scored": list(fractions),
        "probe_site": site,
        "mode": "transcoder_input_decoder",
        "seed": 0,
        "per_letter": per_letter,
        "bootstrap": {"resamples": 400, "seed": 0},
    }
    result["intervals"] = headline_intervals(result, resamples=400)
    return result


def verdict(metrics: dict, name: str = "absorption"):
    return next(v for v in decide(as_results(metrics)) if v.name == name)


def words(seed: int, shift: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: np.clip(rng.uniform(0, 0.6, 40) + shift, 0, 1) for c in LETTERS}


def test_clear_difference_names_the_transcoder_that_absorbs_less():
    base = words(0, 0.0)
    more = {c: np.clip(v + 0.3, 0, 1) for c, v in base.items()}
    v = verdict({"low": {"absorption": absorption(base)}, "high": {"absorption": absorption(more)}})
    assert v.winner == "low" and v.pairs[0].significant and v.pairs[0].high < 0


def test_identical_words_with_noise_name_no_winner():
    base = words(0, 0.0)
    rng = np.random.default_rng(1)
    noisy = {c: np.clip(v + rng.normal(0, 0.05, v.size), 0, 1) for c, v in base.items()}
    v = verdict({"x": {"absorption": absorption(base)}, "y": {"absorption": absorption(noisy)}})
    assert v.winner is None and v.pairs[0].low < 0 < v.pairs[0].high
    assert v.verdict == "no significant difference"


def test_other_probe_site_or_letters_are_flagged_not_compared():
    a = absorption(words(0, 0.0))
    b = absorption(words(0, 0.3), site="blocks.1.hook_mlp_in")
    v = verdict({"a": {"absorption": a}, "b": {"absorption": b}})
    assert v.winner is None and v.verdict.startswith("not comparable") and "probe site" in v.verdict
    fewer = absorption({c: x for c, x in words(0, 0.3).items() if c != "c"})
    v = verdict({"a": {"absorption": copy.deepcopy(a)}, "b": {"absorption": fewer}}, "full absorption")
    assert v.winner is None and "different letters scored" in v.verdict


def test_other_input_decoder_text_budgets_are_flagged_and_a_poor_fit_is_noted_in_the_report():
    from transcoderbench.report.html import render_report

    a = absorption(words(0, 0.0))
    b = absorption(words(0, 0.3))
    a["input_decoder"] = {"n_text_tokens": 65536, "warning": "the fitted input decoder reconstructs poorly"}
    b["input_decoder"] = {"n_text_tokens": 8192, "warning": ""}
    v = verdict({"a": {"absorption": a}, "b": {"absorption": b}})
    assert v.winner is None and "different text budgets (65536 vs 8192 tokens)" in v.verdict
    b["input_decoder"]["n_text_tokens"] = 65536
    assert verdict({"a": {"absorption": a}, "b": {"absorption": b}}).winner == "a"
    page = render_report({}, {"a": {"absorption": a}, "b": {"absorption": b}})
    assert "a: absorption: caution: the fitted input decoder reconstructs poorly" in page
    assert "b: absorption: caution" not in page
    from transcoderbench.report.comparison import comparison_summary

    text = comparison_summary({}, {"a": {"absorption": a}, "b": {"absorption": b}})
    assert "Note: a: absorption: caution: the fitted input decoder reconstructs poorly" in text
    assert "b: absorption: caution" not in text


def test_report_shows_letter_diagnostics_and_prefix_absorption():
    from transcoderbench.report.html import render_report
    from transcoderbench.report.plots import absorption_prefixes

    result = absorption(words(0, 0.0))
    for c in LETTERS:
        result["per_letter"][c].update(
            scored=True, probe_f1=0.9, main_latents=[3, 7], main_cos=[0.81, 0.42], main_share=0.25, total_share=0.9
        )
    result["prefixes"] = [
        {
            "prefix_end": 8,
            "mean_absorption_fraction": 0.05,
            "intervals": {"mean_absorption_fraction": {"value": 0.05, "low": 0.01, "high": 0.09}},
        },
        {"prefix_end": 32, "mean_absorption_fraction": None},
    ]
    record = as_results({"m": {"absorption": result}})["m"]
    ((end, value, iv),) = absorption_prefixes(record)
    assert (end, value, iv.low, iv.high) == (8, 0.05, 0.01, 0.09)
    page = render_report({}, {"m": {"absorption": result}})
    assert "Absorption by letter" in page and "0.81, 0.42" in page and "3, 7" in page
