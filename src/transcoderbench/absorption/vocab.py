"""The words of the first-letter task: letter-only tokens of the model's own tokenizer, split once.

As in SAEBench, a word is a vocabulary token that decodes to ASCII letters only, optionally
after one leading space (" cat" and "cat" are different tokens and both count). Tokenizers that
mark a space with "▁" (SentencePiece: Llama 2, Gemma) drop it when one token is decoded alone;
as in SAEBench, such a token's text gets its leading space back (" cat" for "▁cat"), so the word
stays distinct from "cat" and is shown with its space in the prompts. Unlike
SAEBench, the order is fixed (by token id) and the 80/20 split is seeded, so two runs see
the same words.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from transcoderbench.errors import UserError

LETTERS = string.ascii_lowercase
TRAIN_FRACTION = 0.8
SPACE_MARK = "\u2581"  # "▁"
_ALPHA = frozenset(string.ascii_letters)


@dataclass(frozen=True)
class Word:
    """One letter-only token: its id, its text (leading space kept) and its first letter's index."""

    token_id: int
    text: str
    letter: int
    """0..25 for a..z."""


def is_letter_word(text: str) -> bool:
    """ASCII letters only, after at most one leading space."""
    core = text.removeprefix(" ")
    return bool(core) and all(ch in _ALPHA for ch in core)


def first_letter(text: str) -> int:
    return LETTERS.index(text.strip()[0].lower())


def word_text(tokenizer, token: str) -> str:
    """A token's text, with the leading space that a "▁" marks (SAEBench's fix for SentencePiece)."""
    text = tokenizer.convert_tokens_to_string([token])
    if token.startswith(SPACE_MARK) and not text.startswith(" "):
        text = " " + text
    return text


def letter_vocabulary(tokenizer) -> list[Word]:
    """Every letter-only token of ``tokenizer``, ordered by token id (special tokens excluded)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    words = []
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if token_id in special:
            continue
        text = word_text(tokenizer, token)
        if is_letter_word(text):
            words.append(Word(int(token_id), text, first_letter(text)))
    return words


@dataclass(frozen=True)
class WordSplit:
    """Train and test words; ``*_pool`` are the whole split halves, the examples are drawn from them."""

    train: list[Word]
    test: list[Word]
    train_pool: list[Word]
    test_pool: list[Word]
    vocab_size: int


def split_words(words: list[Word], seed: int, n_train: int = 0, n_test: int = 0) -> WordSplit:
    """Seeded 80/20 split of ``words``; then the first ``n_train``/``n_test`` of each half (0 = all).

    In-context examples for a training word come from the training half only, and likewise for
    test words (as in SAEBench), so no test word is ever shown with its answer.
    """
    if len(words) < 10:
        raise UserError(
            f"the tokenizer has only {len(words)} letter-only tokens; the first-letter absorption task needs a "
            "word-level vocabulary (skip this phase with --no-absorption)"
        )
    order = np.random.default_rng([seed, 0]).permutation(len(words))
    shuffled = [words[i] for i in order]
    cut = int(len(shuffled) * TRAIN_FRACTION)
    train_pool, test_pool = shuffled[:cut], shuffled[cut:]
    train = train_pool[:n_train] if n_train else train_pool
    test = test_pool[:n_test] if n_test else test_pool
    return WordSplit(train=train, test=test, train_pool=train_pool, test_pool=test_pool, vocab_size=len(words))
