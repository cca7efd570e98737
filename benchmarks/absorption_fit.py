"""How the transcoder-mode absorption depends on what the input decoder is fitted on (docs/absorption.md).

Scores the same held-out test words with input decoders fitted on: all words (test words included,
the first version), the training words only, text tokens only, text + training words, each with or
without an intercept; then the shipped fit (text + training words + intercept) at several text
budgets. Prints each fit's FVU on the test words and the mean absorption fraction with its interval.

    python benchmarks/absorption_fit.py --checkpoint matryoshka=DIR [--checkpoint NAME=DIR ...] [--tokens 65536]
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor

from transcoderbench.absorption.input_decoder import InputDecoder, NormalEquations, fvu, solve_input_decoder
from transcoderbench.absorption.run import (
    MODE_TRANSCODER,
    _headline,
    _score_latents,
    build_probe_data,
    latent_activations,
    seen_inputs,
)
from transcoderbench.config import AbsorptionOptions
from transcoderbench.data import resolve_text_source, token_batches
from transcoderbench.formats import load_transcoder
from transcoderbench.lm import capture, load_language_model, resolve_site


def text_inputs(lm, site, n_tokens: int) -> Tensor:
    chunks, seen = [], 0
    with torch.no_grad():
        for tb in token_batches(resolve_text_source(None), lm.tokenizer, seq_len=128, batch_size=16):
            got = capture(lm, tb.input_ids, tb.attention_mask, [site])[site.name]
            chunks.append(got.reshape(-1, got.shape[-1])[tb.keep.reshape(-1)].float())
            seen += chunks[-1].shape[0]
            if seen >= n_tokens:
                break
    return torch.cat(chunks)[:n_tokens]


def without_intercept(eq: NormalEquations, ridge: float) -> InputDecoder:
    """The same ridge fit with the intercept fixed at 0."""
    active = eq.active
    gram = eq.gram[active][:, active].clone()
    diag = torch.arange(active.numel())
    gram[diag, diag] *= 1 + ridge
    rows = torch.zeros_like(eq.cross)
    rows[active] = torch.linalg.solve(gram, eq.cross[active])
    return InputDecoder(rows, torch.zeros(eq.cross.shape[1], dtype=torch.float64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--tokens", type=int, default=65536, help="most text tokens")
    args = parser.parse_args()
    lm = load_language_model("smollm2-135m")
    options = AbsorptionOptions().resolved("cpu")
    cache: dict[str, tuple] = {}
    for spec in args.checkpoint:
        name, path = spec.split("=", 1)
        tc = load_transcoder(path)
        site = resolve_site(lm, tc.input_site)
        if site.name not in cache:
            data = build_probe_data(lm, site, options, log=print, show_progress=False)
            cache[site.name] = (data, text_inputs(lm, site, args.tokens))
        data, text = cache[site.name]
        compare_fits(name, tc, data, text, options)


def compare_fits(name: str, tc, data, text: Tensor, options: AbsorptionOptions) -> None:
    """Print every fit's held-out FVU and absorption for one transcoder."""
    ridge = options.absorption_input_decoder_ridge
    a_train, a_test, a_text = (latent_activations(tc, x) for x in (data.x_train, data.x_test, text))
    x_train, x_test, x_text = (seen_inputs(tc, x) for x in (data.x_train, data.x_test, text))

    def equations(*parts: tuple[Tensor, Tensor]) -> NormalEquations:
        eq = NormalEquations(tc.d_sae, tc.d_in)
        for acts, x in parts:
            eq.update(acts, x)
        return eq

    def report(label: str, decoder: InputDecoder) -> None:
        per_letter, scored = _score_latents(
            tc, data, options, MODE_TRANSCODER, a_train, a_test, decoder.rows, False, label
        )
        head = _headline(per_letter, scored, options)
        iv = head["intervals"]["mean_absorption_fraction"]
        print(
            f"{name:12s} {label:46s} FVU(test words) {fvu(decoder, a_test, x_test):6.3f}  absorption "
            f"{head['mean_absorption_fraction']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]",
            flush=True,
        )

    words, train = equations((a_train, x_train), (a_test, x_test)), equations((a_train, x_train))
    for label, eq in (("all words (test words in the fit)", words), ("training words", train)):
        report(label, without_intercept(eq, ridge))
    text_only = equations((a_text, x_text))
    text_train = equations((a_text, x_text), (a_train, x_train))
    report(f"{len(text)} text tokens, no intercept", without_intercept(text_only, ridge))
    report(f"{len(text)} text tokens, intercept", solve_input_decoder(text_only, ridge=ridge))
    report(f"{len(text)} text + training words, no intercept", without_intercept(text_train, ridge))
    n = 8192
    while n <= len(text):
        eq = equations((a_text[:n], x_text[:n]), (a_train, x_train))
        report(f"{n} text + training words, intercept", solve_input_decoder(eq, ridge=ridge))
        n *= 2


if __name__ == "__main__":
    main()
