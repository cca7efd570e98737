"""The absorption phase: probe data per site (cached), then k-sparse probing and scoring per transcoder.

Flow for each probe site (a transcoder's input site; transcoders that share it share everything
here): letter-only vocabulary -> seeded split -> prompts -> activations at the word tokens ->
ground-truth probe -> test F1 per letter. Then per transcoder: latent activations -> (transcoder
mode) the input decoder fitted on text tokens and the training words, the test words held out
(:mod:`text_fit`, :mod:`input_decoder`) -> per nested prefix: L1 probe ranking -> k-sparse probing
(main latents) -> per-word absorption on the test words that the probe calls positive -> per-letter
and overall means over the letters whose probe is good enough, with bootstrap intervals over words.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import transcoderbench.absorption.cache as disk_cache
from transcoderbench.absorption.activations import collect
from transcoderbench.absorption.calculator import (
    Thresholds,
    WordAbsorption,
    word_absorption,
)
from transcoderbench.absorption.input_decoder import NormalEquations, fvu, solve_input_decoder
from transcoderbench.absorption.ksparse import k_sparse_probe, rank_latents
from transcoderbench.absorption.options import AbsorptionOptions
from transcoderbench.absorption.probe import (
    LinearProbe,
    cpu_threads_for,
    per_letter_f1,
    train_probe,
)
from transcoderbench.absorption.prompts import build_contexts
from transcoderbench.absorption.text_fit import text_equations
from transcoderbench.absorption.uncertainty import CONFIDENCE, headline_intervals
from transcoderbench.absorption.uncertainty import METHOD as BOOTSTRAP_METHOD
from transcoderbench.absorption.vocab import (
    LETTERS,
    Word,
    first_letter,
    letter_vocabulary,
    split_words,
)
from transcoderbench.data import TextSource, resolve_text_source
from transcoderbench.distributed import barrier, is_rank0
from transcoderbench.errors import UserError
from transcoderbench.lm import LanguageModel, Site, resolve_site
from transcoderbench.progress import progress_bar
from transcoderbench.transcoders import Transcoder

MODE_SAE = "sae_decoder"
MODE_TRANSCODER = "transcoder_input_decoder"
PROJECTIONS = {
    MODE_SAE: "activation * cos(W_dec[i], probe)  (SAEBench)",
    MODE_TRANSCODER: "activation * <D_in[i], probe>, D_in fitted by least squares (x ~ activations @ D_in + b) "
    "on text tokens and the training words; the scored test words are held out",
}
#: Held-out FVU of the input decoder above which the shares are flagged as uncertain.
POOR_FIT_FVU = 0.5
#: Fewer fitted rows per fitted latent than this are flagged too (the fit nears interpolation).
MIN_ROWS_PER_LATENT = 10
#: The L1 latent probe's optimiser settings (SAEBench's ``train_sparse_multi_probe`` defaults).
SPARSE_LR = 0.01
SPARSE_WEIGHT_DECAY = 1e-6
#: Rows of latent activations encoded at once (bounds the [rows, d_in] x [d_in, d_sae] product).
ENCODE_CHUNK = 1024


@dataclass
class ProbeData:
    """Everything that does not depend on the transcoder, for one probe site."""

    site_name: str
    train_words: list[Word]
    test_words: list[Word]
    x_train: Tensor
    """``[n_train, d]`` float32, CPU: the site's value at each training word's token."""
    x_test: Tensor
    y_train: Tensor
    """``[n_train]`` int64 letter indices."""
    y_test: Tensor
    probe: LinearProbe
    probe_f1: list[float]
    """Test F1 of each letter's probe (26 values)."""
    vocab_size: int = 0
    wall_time_s: float = 0.0
    cache: str = "off"


def _seed(options: AbsorptionOptions, stream: int) -> int:
    """Independent, reproducible seeds for the split, the examples, and each trained probe."""
    return int(np.random.default_rng([options.absorption_seed, stream]).integers(2**62))


def fit_ground_truth(
    site_name: str,
    train_words: list[Word],
    test_words: list[Word],
    x_train: Tensor,
    x_test: Tensor,
    options: AbsorptionOptions,
    *,
    device: torch.device | str = "cpu",
    show_progress: bool = False,
) -> ProbeData:
    """Train the 26-way probe on ``x_train`` and score it on ``x_test`` (words give the labels)."""
    y_train = torch.tensor([w.letter for w in train_words], dtype=torch.long)
    y_test = torch.tensor([w.letter for w in test_words], dtype=torch.long)
    probe = train_probe(
        x_train.to(device),
        y_train,
        epochs=options.absorption_probe_epochs,
        lr=options.absorption_probe_lr,
        batch_size=options.absorption_probe_batch_size,
        weight_decay=options.absorption_probe_weight_decay,
        seed=_seed(options, 2),
        show_progress=show_progress,
        desc="first-letter probe",
    )
    f1 = per_letter_f1(probe.logits(x_test), y_test)
    return ProbeData(
        site_name,
        list(train_words),
        list(test_words),
        x_train.float().cpu(),
        x_test.float().cpu(),
        y_train,
        y_test,
        probe,
        f1,
    )


def _cache_key(lm: LanguageModel, site: Site, options: AbsorptionOptions) -> dict[str, Any]:
    return {
        "model": disk_cache.model_fingerprint(lm),
        "site": disk_cache.site_key(site),
        "seed": options.absorption_seed,
        "train_words": options.absorption_train_words,
        "test_words": options.absorption_test_words,
        "words_per_context": options.absorption_words_per_context,
        "icl_examples": options.absorption_icl_examples,
        "template": options.absorption_prompt_template,
        "probe": {
            "epochs": options.absorption_probe_epochs,
            "lr": options.absorption_probe_lr,
            "batch_size": options.absorption_probe_batch_size,
            "weight_decay": options.absorption_probe_weight_decay,
        },
    }


def build_probe_data(
    lm: LanguageModel,
    site: Site,
    options: AbsorptionOptions,
    *,
    log: Callable[[str], None],
    show_progress: bool = True,
) -> ProbeData:
    """Words, activations and ground-truth probe at ``site``: from the cache, else computed (and cached)."""
    start = time.perf_counter()
    cache_dir = (
        disk_cache.default_cache_dir()
        if options.absorption_cache_dir is None
        else Path(options.absorption_cache_dir).expanduser()
    )
    key = _cache_key(lm, site, options) if options.absorption_cache else None
    if key is not None:
        found = disk_cache.load(cache_dir, key)
        if found is not None:
            words, tensors = found
            data = _from_cache(site.name, words, tensors)
            data.wall_time_s, data.cache = time.perf_counter() - start, "hit"
            log(f"absorption: reusing probe and activations at {site.name} from {disk_cache.entry_dir(cache_dir, key)}")
            return data

    train_words, test_words = options.absorption_train_words, options.absorption_test_words
    batch, per_context = options.absorption_batch_size, options.absorption_words_per_context
    if train_words is None or test_words is None or batch is None or per_context is None:
        raise ValueError("absorption options must be resolved (AbsorptionOptions.resolved) before probing")
    vocab = letter_vocabulary(lm.tokenizer)
    split = split_words(vocab, _seed(options, 0), train_words, test_words)
    contexts = functools.partial(
        build_contexts,
        tokenizer=lm.tokenizer,
        bos_id=lm.bos_token_id,
        template=options.absorption_prompt_template,
        n_examples=options.absorption_icl_examples,
        words_per_context=per_context,
        rng=np.random.default_rng(_seed(options, 1)),
    )
    train_contexts = contexts(split.train, split.train_pool)
    test_contexts = contexts(split.test, split.test_pool)
    check_prompt_length(lm, train_contexts + test_contexts)
    log(
        f"absorption: {len(split.train)} training and {len(split.test)} test words (of {split.vocab_size} letter-only "
        f"tokens), {options.absorption_icl_examples} in-context examples, read at {site.name}"
    )
    x_train = collect(
        lm, site, train_contexts, batch_size=batch, show_progress=show_progress, desc="absorption: train words"
    )
    x_test = collect(
        lm, site, test_contexts, batch_size=batch, show_progress=show_progress, desc="absorption: test words"
    )
    data = fit_ground_truth(
        site.name, split.train, split.test, x_train, x_test, options, device=lm.device, show_progress=show_progress
    )
    data.vocab_size = split.vocab_size
    if key is not None:
        words = {
            "train": [[w.token_id, w.text] for w in data.train_words],
            "test": [[w.token_id, w.text] for w in data.test_words],
            "vocab_size": data.vocab_size,
            "probe_f1": data.probe_f1,
        }
        tensors = {
            "x_train": data.x_train,
            "x_test": data.x_test,
            "probe_weight": data.probe.weight,
            "probe_bias": data.probe.bias,
        }
        disk_cache.save(cache_dir, key, words, tensors)
        data.cache = "miss"
    data.wall_time_s = time.perf_counter() - start
    return data


def check_prompt_length(lm: LanguageModel, contexts: list) -> None:
    """Refuse prompts longer than the model's positions (a model with a short context window)."""
    config = lm.model.config.get_text_config()
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    longest = max((len(c.prefix_ids) + 1 for c in contexts), default=0)
    if isinstance(limit, int) and longest > limit:
        raise UserError(
            f"absorption.icl_examples: prompts reach {longest} tokens but {lm.name} takes at most {limit}; "
            "use fewer in-context examples"
        )


def _from_cache(site_name: str, words: dict[str, Any], tensors: dict[str, Tensor]) -> ProbeData:
    train = [Word(int(i), t, first_letter(t)) for i, t in words["train"]]
    test = [Word(int(i), t, first_letter(t)) for i, t in words["test"]]
    return ProbeData(
        site_name=site_name,
        train_words=train,
        test_words=test,
        x_train=tensors["x_train"],
        x_test=tensors["x_test"],
        y_train=torch.tensor([w.letter for w in train], dtype=torch.long),
        y_test=torch.tensor([w.letter for w in test], dtype=torch.long),
        probe=LinearProbe(tensors["probe_weight"], tensors["probe_bias"]),
        probe_f1=[float(f) for f in words["probe_f1"]],
        vocab_size=int(words["vocab_size"]),
    )


# --------------------------------------------------------------------------- per transcoder


def encoder_input(tc: Transcoder, x: Tensor) -> Tensor:
    """``x`` as the encoder sees it (after the transcoder's own standardisation, if it has one)."""
    return tc.standardize(x)[0]


@torch.no_grad()
def latent_activations(tc: Transcoder, x: Tensor) -> Tensor:
    """``[n, d_sae]`` float32 on the transcoder's device, encoded ``ENCODE_CHUNK`` rows at a time."""
    device = tc.W_enc.device
    parts = [
        tc.encode(x[i : i + ENCODE_CHUNK].to(device=device, dtype=tc.W_enc.dtype)).float()
        for i in range(0, x.shape[0], ENCODE_CHUNK)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, tc.d_sae, device=device)


@torch.no_grad()
def seen_inputs(tc: Transcoder, x: Tensor) -> Tensor:
    """``[n, d_in]`` float64 on CPU: ``x`` as the encoder sees it, ``ENCODE_CHUNK`` rows at a time."""
    device = tc.W_enc.device
    parts = [
        encoder_input(tc, x[i : i + ENCODE_CHUNK].to(device=device, dtype=tc.W_enc.dtype)).double().cpu()
        for i in range(0, x.shape[0], ENCODE_CHUNK)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, tc.d_in, dtype=torch.float64)


def latent_geometry(rows: Tensor, direction: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """``(scale, cos)`` per latent for a unit ``direction`` and the latents' input-space ``rows``.

    SAE mode (``rows`` = decoder rows): SAEBench's ``scale = cos(row, p)``. Transcoder mode
    (``rows`` = the fitted input decoder): ``scale = <row, p>``, the latent's contribution per unit
    of activation; see :mod:`calculator` and docs/absorption.md.
    """
    rows = rows.detach().double().cpu()
    norms = rows.norm(dim=1)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    dots = rows @ direction.double().cpu()
    cos = torch.where(norms > 0, dots / safe, torch.zeros_like(norms))
    return (cos if mode == MODE_SAE else dots), cos


def thresholds_of(options: AbsorptionOptions) -> Thresholds:
    return Thresholds(
        cos_threshold=options.absorption_cos_threshold,
        full_cos_threshold=options.full_absorption_cos_threshold,
        proportion_threshold=options.absorption_proportion_threshold,
        max_absorbers=options.absorption_max_absorbers,
    )


def letter_direction(data: ProbeData, letter: int) -> Tensor:
    direction = data.probe.weight[letter].double()
    return direction / direction.norm()


def probe_positive_words(data: ProbeData, letter: int) -> Tensor:
    """Indices (in ``data.test_words``) of the test words of ``letter`` that the probe calls positive."""
    logits = data.probe.logits(data.x_test)
    return torch.nonzero((data.y_test == letter) & (logits[:, letter] > 0)).flatten()


def letter_absorption(
    tc: Transcoder,
    data: ProbeData,
    letter: int,
    main_latents: list[int],
    test_latents: Tensor,
    mode: str,
    thresholds: Thresholds,
    *,
    rows: Tensor | None = None,
) -> tuple[Tensor, WordAbsorption]:
    """Per-word absorption for the test words of ``letter`` that the probe calls positive.

    ``test_latents [n_test, n]`` are the activations of the first ``n`` latents (a nested prefix or
    all); ``rows`` their input-space rows (default: the decoder rows, SAE mode only). Returns the
    indices of the words in ``data.test_words`` and their :class:`WordAbsorption`.
    """
    if rows is None:
        if mode != MODE_SAE:
            raise ValueError("transcoder mode needs the fitted input decoder (rows=)")
        rows = tc.W_dec
    words = probe_positive_words(data, letter)
    direction = letter_direction(data, letter)
    n = test_latents.shape[1]
    scale, cos = latent_geometry(rows[:n], direction, mode)
    x_seen = seen_inputs(tc, data.x_test[words])
    P = x_seen @ direction
    acts = test_latents[words.to(test_latents.device)].cpu()
    return words, word_absorption(acts, scale, cos, P, main_latents, thresholds)


def sites_of(lm: LanguageModel, tc: Transcoder) -> tuple[Site, Site, str]:
    """Resolved input and output sites, and the mode: SAE when both read the same tensor."""
    input_site = resolve_site(lm, tc.input_site)
    output_site = resolve_site(lm, tc.output_site)
    same = disk_cache.site_key(input_site) == disk_cache.site_key(output_site) and tc.d_in == tc.d_out
    return input_site, output_site, MODE_SAE if same else MODE_TRANSCODER


def check_scoring_options(options: AbsorptionOptions) -> None:
    """Refuse settings of the scoring step that cannot work, naming the config field."""
    if options.absorption_input_decoder_ridge < 0:
        raise UserError(f"absorption.input_decoder_ridge {options.absorption_input_decoder_ridge}: must be 0 or more")
    if options.absorption_bootstrap_resamples < 0:
        raise UserError(
            f"absorption.bootstrap_resamples {options.absorption_bootstrap_resamples}: must be 0 (no intervals) or more"
        )


def score_transcoder(
    tc: Transcoder,
    data: ProbeData,
    options: AbsorptionOptions,
    mode: str,
    *,
    equations: NormalEquations | None = None,
    n_text_tokens: int = 0,
    show_progress: bool = False,
    desc: str = "absorption",
) -> dict[str, Any]:
    """The JSON-ready absorption result of one transcoder on prepared probe data.

    Transcoder mode: ``equations`` are the input-decoder sums over ``n_text_tokens`` text tokens
    (:func:`text_equations`), or None for no text; the training words are added to them and the
    test words, the ones scored, stay out of the fit. A Matryoshka transcoder is also scored per nested prefix
    (``prefixes``): only the prefix's latents exist, its main latents are chosen among them and
    its input decoder is fitted on them.
    """
    start = time.perf_counter()
    if data.x_train.shape[1] != tc.d_in:
        raise UserError(
            f"transcoder input width {tc.d_in} does not match the width {data.x_train.shape[1]} of site "
            f"{data.site_name}; check the transcoder's input site and the model"
        )
    check_scoring_options(options)
    with torch.no_grad():
        train_latents = latent_activations(tc, data.x_train)
        test_latents = latent_activations(tc, data.x_test)
    if mode != MODE_SAE:
        if equations is None:
            equations = NormalEquations(tc.d_sae, tc.d_in, device=train_latents.device)
        equations.update(train_latents, seen_inputs(tc, data.x_train))
    ends = tuple(tc.prefix_ends)
    scored_prefixes = []
    heldout: list[float | None] = []
    x_test_seen = seen_inputs(tc, data.x_test) if equations is not None else data.x_test
    for end in ends:
        if equations is None:
            rows = tc.W_dec.detach()[:end]
        else:
            decoder = solve_input_decoder(equations, ridge=options.absorption_input_decoder_ridge, prefix_end=end)
            rows = decoder.rows[:end]
            heldout.append(fvu(decoder, test_latents[:, :end], x_test_seen))
        label = desc if len(ends) == 1 else f"{desc} (prefix {end})"
        scored_prefixes.append(
            _score_latents(
                tc, data, options, mode, train_latents[:, :end], test_latents[:, :end], rows, show_progress, label
            )
        )
    per_letter, scored = scored_prefixes[-1]
    result = _summarise(tc, data, options, mode, per_letter, scored, 0.0)
    if equations is not None:
        result["input_decoder"] = _fit_record(equations, options, n_text_tokens, len(data.train_words), heldout[-1])
    if len(ends) > 1:
        result["prefixes"] = [
            _prefix_summary(data, options, end, pl, sc) for end, (pl, sc) in zip(ends, scored_prefixes)
        ]
        for entry, value in zip(result["prefixes"], heldout):
            entry["input_decoder_heldout_fvu"] = value
    result["wall_time_s"] = time.perf_counter() - start
    return result


def _fit_record(
    equations: NormalEquations,
    options: AbsorptionOptions,
    n_text_tokens: int,
    n_train_words: int,
    heldout: float | None,
) -> dict[str, Any]:
    """What the input decoder was fitted on, how well it reconstructs the held-out words, and a warning if poorly."""
    n_latents = int(equations.active.numel())
    warnings = []
    if heldout is None or heldout > POOR_FIT_FVU:
        shown = "no variance" if heldout is None else f"FVU {heldout:.2f}"
        warnings.append(
            f"the fitted input decoder reconstructs the held-out test words poorly ({shown}), so how the letter "
            "splits between latents is uncertain: the latents do not carry much of the input there"
        )
    if equations.n_rows < MIN_ROWS_PER_LATENT * n_latents:
        warnings.append(
            f"the input decoder was fitted on {equations.n_rows} rows for {n_latents} latents (under "
            f"{MIN_ROWS_PER_LATENT} per latent); raise absorption.absorption_fit_tokens"
        )
    return {
        "ridge": options.absorption_input_decoder_ridge,
        "intercept": True,
        "n_text_tokens": n_text_tokens,
        "n_train_words": n_train_words,
        "n_rows": equations.n_rows,
        "n_latents_fitted": n_latents,
        "heldout_fvu": heldout,
        "warning": "; ".join(warnings),
    }


def _score_latents(
    tc: Transcoder,
    data: ProbeData,
    options: AbsorptionOptions,
    mode: str,
    train_latents: Tensor,
    test_latents: Tensor,
    rows: Tensor,
    show_progress: bool,
    desc: str,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per-letter results and the scored letters for one set of latents (all, or a nested prefix)."""
    thresholds = thresholds_of(options)
    n_latents = train_latents.shape[1]
    passing = [c for c in range(len(LETTERS)) if data.probe_f1[c] > options.absorption_min_probe_f1]
    per_letter: dict[str, dict[str, Any]] = {
        LETTERS[c]: {"probe_f1": data.probe_f1[c], "scored": False} for c in range(len(LETTERS))
    }
    # The L1 probe only ranks latents. SAEBench starts it from torch.nn.Linear's random weights,
    # which is harmless after its hundreds of steps over 16k latents, but with a CPU budget of
    # 50 full-batch steps that noise would decide the ranking; from zero, only the data does.
    l1_probe = (
        train_probe(
            train_latents,
            data.y_train,
            epochs=options.absorption_sparse_epochs,
            lr=SPARSE_LR,
            batch_size=options.absorption_sparse_batch_size,
            weight_decay=SPARSE_WEIGHT_DECAY,
            l1=options.absorption_sparse_l1,
            zero_init=True,
            seed=_seed(options, 3),
        )
        if passing
        else None
    )
    scored = []
    # Everything per letter is small (k <= 10 columns, a few hundred words): one CPU thread.
    with (
        cpu_threads_for(0, test_latents.device),
        progress_bar(total=len(passing), desc=desc, unit="letter", disable=not show_progress) as bar,
    ):
        for c in passing:
            entry = per_letter[LETTERS[c]]
            assert l1_probe is not None  # trained whenever a letter passes
            ranking = rank_latents(l1_probe, c, min(options.absorption_max_k, n_latents))
            sparse = k_sparse_probe(
                train_latents, data.y_train, test_latents, data.y_test, c, ranking, f1_jump=options.absorption_f1_jump
            )
            entry.update(
                main_latents=sparse.main_latents, num_split_latents=len(sparse.main_latents), k_sparse_f1=sparse.f1
            )
            if not sparse.main_latents:
                entry["note"] = "no training word starts with this letter, so no k-sparse probe"
                bar.update(1)
                continue
            words, result = letter_absorption(
                tc, data, c, sparse.main_latents, test_latents, mode, thresholds, rows=rows
            )
            n_tp = len(words)
            entry["n_probe_true_positives"] = n_tp
            if n_tp == 0:
                # SAEBench drops such a letter (it has no words to average over) rather than divide by 0.
                entry["note"] = "the probe calls no test word of this letter positive"
                bar.update(1)
                continue
            entry.update(scored=True, **_letter_entry(data, c, rows, mode, sparse.main_latents, words, result))
            scored.append(LETTERS[c])
            bar.update(1)
    return per_letter, scored


def _letter_entry(
    data: ProbeData, letter: int, rows: Tensor, mode: str, main: list[int], words: Tensor, result: WordAbsorption
) -> dict[str, Any]:
    """Per-letter numbers, diagnostics (why the letter scores as it does) and per-word values."""
    n_tp = len(words)
    fractions = result.absorption_fraction
    _, cos = latent_geometry(rows[: max(main) + 1], letter_direction(data, letter), mode)
    total_P = float(result.probe_projection.sum())
    return {
        "mean_absorption_fraction": float(fractions.sum()) / n_tp,
        "full_absorption_rate": int(result.full_absorption.sum()) / n_tp,
        "num_full_absorption": int(result.full_absorption.sum()),
        "main_cos": [float(cos[i]) for i in main],
        "main_share": float(result.main_projection.sum()) / total_P if total_P > 0 else None,
        "total_share": float(result.total_projection.sum()) / total_P if total_P > 0 else None,
        "word_token_ids": [data.test_words[int(w)].token_id for w in words],
        "word_absorption_fraction": [float(f) for f in fractions],
        "word_full_absorption": [int(f) for f in result.full_absorption],
        "absorbed_words": [
            {
                "word": data.test_words[int(w)].text,
                "absorption_fraction": float(fractions[j]),
                "full_absorption": bool(result.full_absorption[j]),
                "absorbing_latents": result.absorbers[j],
                "top_latent": int(result.top_latent[j]),
            }
            for j, w in enumerate(words)
            if fractions[j] > 0 or result.full_absorption[j]
        ],
    }


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _stdev(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def _headline(per_letter: dict[str, dict[str, Any]], scored: list[str], options: AbsorptionOptions) -> dict[str, Any]:
    """The means over scored letters (None with too few letters) and their bootstrap intervals over words."""
    enough = len(scored) >= options.absorption_min_letters
    fractions = [per_letter[c]["mean_absorption_fraction"] for c in scored]
    rates = [per_letter[c]["full_absorption_rate"] for c in scored]
    splits = [float(per_letter[c]["num_split_latents"]) for c in scored]
    head: dict[str, Any] = {
        "mean_absorption_fraction": _mean(fractions) if enough else None,
        "full_absorption_rate": _mean(rates) if enough else None,
        "mean_num_split_latents": _mean(splits) if enough else None,
        "std_absorption_fraction": _stdev(fractions) if enough else None,
        "std_full_absorption_rate": _stdev(rates) if enough else None,
        "std_num_split_latents": _stdev(splits) if enough else None,
        "n_letters_scored": len(scored),
        "letters_scored": scored,
    }
    head["intervals"] = headline_intervals(
        {**head, "per_letter": per_letter},
        resamples=options.absorption_bootstrap_resamples,
        seed=options.absorption_bootstrap_seed,
    )
    return head


def _prefix_summary(
    data: ProbeData, options: AbsorptionOptions, end: int, per_letter: dict[str, dict[str, Any]], scored: list[str]
) -> dict[str, Any]:
    """One nested prefix's headline, intervals and per-letter diagnostics (no per-word lists)."""
    keep = (
        "main_latents",
        "num_split_latents",
        "mean_absorption_fraction",
        "full_absorption_rate",
        "main_cos",
        "main_share",
        "total_share",
    )
    return {
        "prefix_end": end,
        **_headline(per_letter, scored, options),
        "per_letter": {c: {k: per_letter[c][k] for k in keep if k in per_letter[c]} for c in scored},
    }


def _summarise(
    tc: Transcoder,
    data: ProbeData,
    options: AbsorptionOptions,
    mode: str,
    per_letter: dict[str, dict[str, Any]],
    scored: list[str],
    wall_time_s: float,
) -> dict[str, Any]:
    note = ""
    if len(scored) < options.absorption_min_letters:
        f1s = ", ".join(f"{c}: {per_letter[c]['probe_f1']:.2f}" for c in LETTERS)
        note = (
            f"absorption is not reported: only {len(scored)} of 26 letters can be scored at {data.site_name} "
            f"(probe test F1 > {options.absorption_min_probe_f1} and at least one probe-positive test word), "
            f"fewer than the {options.absorption_min_letters} needed; the first-letter information is too weak "
            f"there for this word budget. Probe F1 per letter: {f1s}"
        )
    return {
        **_headline(per_letter, scored, options),
        "bootstrap": {
            "method": BOOTSTRAP_METHOD,
            "resamples": options.absorption_bootstrap_resamples,
            "seed": options.absorption_bootstrap_seed,
            "confidence": CONFIDENCE,
        },
        "probe_f1": {c: data.probe_f1[i] for i, c in enumerate(LETTERS)},
        "per_letter": per_letter,
        "mode": mode,
        "projection": PROJECTIONS[mode],
        "input_site": tc.input_site,
        "output_site": tc.output_site,
        "probe_site": data.site_name,
        "seed": options.absorption_seed,
        "n_train_words": len(data.train_words),
        "n_test_words": len(data.test_words),
        "vocab_size": data.vocab_size,
        "note": note,
        "wall_time_s": wall_time_s,
        "probe_wall_time_s": data.wall_time_s,
        "cache": data.cache,
        "options": dataclasses.asdict(options),
    }


# --------------------------------------------------------------------------- the phase


def run_absorption(
    lm: LanguageModel,
    transcoders: dict[str, Transcoder],
    options: AbsorptionOptions,
    *,
    text: TextSource | None = None,
    log: Callable[[str], None] | None = None,
    show_progress: bool = True,
) -> dict[str, dict]:
    """First-letter absorption of every transcoder: ``name -> JSON-ready result``.

    Transcoders that read the same site share one probe and one set of activations (one LM
    pass per site, cached on disk across runs), and one pass over ``text`` (default: the built-in
    corpus) for their input decoders. The headline numbers are None, with ``note`` saying why and
    listing the probe F1 per letter, when fewer than ``absorption_min_letters`` letters can be scored.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    resolved = options.resolved(lm.device.type)
    plans = {name: sites_of(lm, tc) for name, tc in transcoders.items()}
    by_site: dict[str, ProbeData] = {}
    fits: dict[str, tuple[NormalEquations, int]] = {}
    results: dict[str, dict] = {}
    for name, tc in transcoders.items():
        input_site, _, mode = plans[name]
        site_id = repr(disk_cache.site_key(input_site))
        if site_id not in by_site:
            by_site[site_id] = build_probe_data(lm, input_site, resolved, log=say, show_progress=show_progress)
            fitted = {
                other: transcoders[other]
                for other, (other_site, _, other_mode) in plans.items()
                if other_mode == MODE_TRANSCODER and repr(disk_cache.site_key(other_site)) == site_id
            }
            if fitted:
                fits.update(_fit_on_text(lm, input_site, fitted, resolved, text, say, show_progress))
        equations, n_tokens = fits.pop(name, (None, 0))
        results[name] = score_transcoder(
            tc,
            by_site[site_id],
            resolved,
            mode,
            equations=equations,
            n_text_tokens=n_tokens,
            show_progress=show_progress,
            desc=f"absorption: {name}",
        )
        summary = results[name]
        if summary["mean_absorption_fraction"] is None:
            say(f"absorption: {name}: {summary['note'].split('. Probe F1')[0]}")
        else:
            say(
                f"absorption: {name}: mean absorption fraction {summary['mean_absorption_fraction']:.3f}, full "
                f"absorption rate {summary['full_absorption_rate']:.3f} over {summary['n_letters_scored']} letters "
                f"({summary['wall_time_s']:.1f} s)"
            )
    return results


def _fit_on_text(
    lm: LanguageModel,
    site: Site,
    transcoders: dict[str, Transcoder],
    options: AbsorptionOptions,
    text: TextSource | None,
    say: Callable[[str], None],
    show_progress: bool,
) -> dict[str, tuple[NormalEquations, int]]:
    """The text part of each transcoder's input-decoder fit at ``site``: one truncated LM pass for all of them."""
    source = text or resolve_text_source(None)
    budget = options.absorption_fit_tokens or 0
    start = time.perf_counter()
    equations, n_tokens = text_equations(
        lm,
        site,
        transcoders,
        source,
        n_tokens=budget,
        batch_size=options.absorption_batch_size or 1,
        encode=lambda tc, x: (latent_activations(tc, x), encoder_input(tc, x.to(tc.W_enc))),  # stays on the device
        show_progress=show_progress,
    )
    if budget:
        say(
            f"absorption: input decoders fitted on {n_tokens:,} tokens of {source.name} at {site.name} "
            f"and the training words ({time.perf_counter() - start:.1f} s)"
        )
    return {name: (eq, n_tokens) for name, eq in equations.items()}


def run_absorption_rank0(
    lm: LanguageModel,
    transcoders: dict[str, Transcoder],
    options: AbsorptionOptions,
    *,
    text: TextSource | None = None,
    log: Callable[[str], None] | None = None,
    show_progress: bool = True,
) -> dict[str, dict]:
    """:func:`run_absorption` on rank 0 while the other torchrun ranks wait; they get ``{}``.

    Not sharded: the phase is small next to the token pass (a few thousand prompts, cached on
    disk), and its probes are trained by sequential SGD over all words, so sharding would change
    the numbers with the number of processes. One process gives the 1-process numbers exactly.
    """
    results = (
        run_absorption(lm, transcoders, options, text=text, log=log, show_progress=show_progress) if is_rank0() else {}
    )
    barrier()
    return results
