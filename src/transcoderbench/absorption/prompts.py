"""In-context prompts "{word} has the first letter:", built at the token level.

A prompt is ``BOS + newline + ten examples ("{ex} has the first letter: E", one per line) +
newline + the template's text before {word} + the word's own token``: like SAEBench's, the text
starts with the separator. Activations are read at the
word's token, so the text after the word cannot change them (the model is causal) and is not
run at all. Appending the word's token id, rather than re-tokenizing the text, guarantees that
the position read is exactly the word's token (SAEBench reads a fixed offset from the end,
which is wrong for any word that tokenizes differently in context).

Words are grouped into *contexts*: the words of one context share one draw of examples, so
their common prefix runs through the model once (see :mod:`activations`). With one word per
context every word draws its own examples, as in SAEBench.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transcoderbench.absorption.vocab import Word

EXAMPLE_SEPARATOR = "\n"


def answer_text(word: str) -> str:
    """SAEBench's first-letter answer: a space and the capital first letter (" C" for "cat")."""
    return " " + word.strip()[0].upper()


def context_text(examples: list[Word], template: str) -> str:
    """A newline, the examples one per line, then the start of the word's own line (up to ``{word}``)."""
    before = template.split("{word}")[0]
    lines = [template.format(word=ex.text) + answer_text(ex.text) for ex in examples]
    return EXAMPLE_SEPARATOR + EXAMPLE_SEPARATOR.join(lines) + EXAMPLE_SEPARATOR + before


@dataclass
class Context:
    """Words that share one prefix: ``prefix_ids + [word.token_id]`` is each word's prompt."""

    prefix_ids: list[int]
    words: list[Word]


def build_contexts(
    words: list[Word],
    pool: list[Word],
    tokenizer,
    bos_id: int,
    *,
    template: str,
    n_examples: int,
    words_per_context: int,
    rng: np.random.Generator,
) -> list[Context]:
    """Group ``words`` (in order) into contexts, each with ``n_examples`` examples drawn from ``pool``.

    Examples never include a word of the same context (SAEBench's contamination check).
    """
    contexts = []
    for start in range(0, len(words), words_per_context):
        group = words[start : start + words_per_context]
        examples = draw_examples(pool, n_examples, {w.token_id for w in group}, rng)
        ids = tokenizer(context_text(examples, template), add_special_tokens=False)["input_ids"]
        contexts.append(Context(prefix_ids=[bos_id, *ids], words=group))
    return contexts


def draw_examples(pool: list[Word], n: int, banned: set[int], rng: np.random.Generator) -> list[Word]:
    """``n`` distinct words of ``pool`` whose token is not ``banned``, in draw order.

    Rejection sampling costs O(n) per draw however large the pool (a full permutation per
    word would make SAEBench's one-context-per-word budget quadratic in the vocabulary).
    """
    allowed = sum(1 for w in pool if w.token_id not in banned) if len(pool) <= n + len(banned) else len(pool)
    if allowed < n:
        raise ValueError(f"only {allowed} words to draw {n} in-context examples from")
    picks: list[int] = []
    seen: set[int] = set()
    while len(picks) < n:
        i = int(rng.integers(len(pool)))
        if i in seen or pool[i].token_id in banned:
            continue
        seen.add(i)
        picks.append(i)
    return [pool[i] for i in picks]
