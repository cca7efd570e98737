"""Bootstrap intervals over words for the absorption headline numbers, paired comparisons, comparability.

Words are the unit: the headline is the mean over scored letters of each letter's mean over its
probe-positive test words, and each resample redraws, within every letter, that letter's words
with replacement (a stratified bootstrap: the letters, which define the statistic, stay fixed and
none can come out empty). The draws for a letter depend only on ``(seed, letter)`` and its number
of words, taken in token-id order, so two transcoders measured on the same words get the same
draws: the difference of their resampled statistics is the paired bootstrap of the difference.

Everything here works on the JSON result alone (``per_letter[c]["word_token_ids"]``,
``"word_absorption_fraction"``, ``"word_full_absorption"``), so a comparison can be made later.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transcoderbench.absorption.vocab import LETTERS
from transcoderbench.metrics.bootstrap import excludes_zero, interval

RESAMPLES = 1000
CONFIDENCE = 0.95
METHOD = (
    "bootstrap over words, stratified by letter: each resample redraws every scored letter's probe-positive test "
    "words with replacement (draws seeded by (seed, letter) over the words in token-id order, so transcoders "
    "measured on the same words share them: paired); percentile intervals"
)
#: The headline metrics and their per-word field.
PER_WORD = {
    "mean_absorption_fraction": "word_absorption_fraction",
    "full_absorption_rate": "word_full_absorption",
}


def _letter_words(result: dict[str, Any], letter: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One letter's word ids (sorted) and per-word values in that order."""
    entry = result["per_letter"][letter]
    ids = np.asarray(entry["word_token_ids"], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    values = {m: np.asarray(entry[f], dtype=np.float64)[order] for m, f in PER_WORD.items()}
    return ids[order], values


def _draws(seed: int, letter: str, n: int, resamples: int) -> np.ndarray:
    rng = np.random.default_rng([int(seed), LETTERS.index(letter)])
    return rng.integers(0, n, size=(resamples, n))


def _resampled(per_letter: dict[str, np.ndarray], seed: int, resamples: int) -> tuple[float, np.ndarray]:
    """(full-sample statistic, resampled statistics [R]) of the mean over letters of per-letter means."""
    point = float(np.mean([v.mean() for v in per_letter.values()]))
    total = np.zeros(resamples)
    for letter, v in per_letter.items():
        total += v[_draws(seed, letter, v.size, resamples)].mean(axis=1)
    return point, total / len(per_letter)


def headline_intervals(
    result: dict[str, Any], *, resamples: int = RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> dict[str, dict[str, Any]]:
    """``metric -> {value, low, high, se}`` for the headline metrics of one result (empty if there is none)."""
    letters = result.get("letters_scored") or []
    if result.get("mean_absorption_fraction") is None or not letters or resamples < 2:
        return {}
    out = {}
    for metric in PER_WORD:
        per_letter = {c: _letter_words(result, c)[1][metric] for c in letters}
        point, samples = _resampled(per_letter, seed, resamples)
        out[metric] = interval(point, samples, confidence)
    return out


def comparability_problems(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Why two absorption results cannot be compared (empty when they can): another probe site, mode,
    seed, input-decoder text budget, set of scored letters or set of words, or no headline number."""
    problems = []
    for key, what in (("probe_site", "probe site"), ("mode", "mode"), ("seed", "absorption seed")):
        if a.get(key) != b.get(key):
            problems.append(f"different {what} ({a.get(key)} vs {b.get(key)})")
    tokens = [(r.get("input_decoder") or {}).get("n_text_tokens") for r in (a, b)]
    if tokens[0] != tokens[1]:  # the shares move with the fit's text budget (docs/absorption.md)
        problems.append(f"input decoders fitted on different text budgets ({tokens[0]} vs {tokens[1]} tokens)")
    if a.get("mean_absorption_fraction") is None or b.get("mean_absorption_fraction") is None:
        problems.append("no headline absorption number for one of them")
    elif a.get("letters_scored") != b.get("letters_scored"):
        problems.append(
            f"different letters scored ({''.join(a.get('letters_scored') or [])} vs "
            f"{''.join(b.get('letters_scored') or [])})"
        )
    elif any(not np.array_equal(_letter_words(a, c)[0], _letter_words(b, c)[0]) for c in a["letters_scored"]):
        problems.append("different test words (another word budget, vocabulary or probe)")
    return problems


def paired_difference(
    a: dict[str, Any],
    b: dict[str, Any],
    names: tuple[str, str] = ("a", "b"),
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """The paired bootstrap interval of ``a - b`` for each headline metric, and a verdict.

    Less absorption is better: a transcoder wins a metric only when the interval of the difference
    excludes 0 in its favour. When the results are not comparable, ``comparable`` is False,
    ``problems`` says why, and there is no interval and no winner.
    """
    problems = comparability_problems(a, b)
    out: dict[str, Any] = {"comparable": not problems, "problems": problems, "method": METHOD, "metrics": {}}
    if problems:
        return out
    for metric in PER_WORD:
        diffs = {}
        for c in a["letters_scored"]:
            diffs[c] = _letter_words(a, c)[1][metric] - _letter_words(b, c)[1][metric]
        point, samples = _resampled(diffs, seed, resamples)
        iv = interval(point, samples, confidence)
        winner = None
        if excludes_zero(iv):
            winner = names[0] if iv["high"] < 0 else names[1]
        verdict = f"{winner} absorbs less" if winner else "no significant difference (the interval contains 0)"
        out["metrics"][metric] = {**iv, "winner": winner, "verdict": verdict}
    return out
