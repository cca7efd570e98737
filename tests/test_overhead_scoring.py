"""The spliced scoring's allocation-free paths give the same numbers as the plain operations they replace."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from test_downstream import BATCH, batches, matryoshka
from transcoderbench.evaluate import plan_downstream, prepare_runs, run_pass
from transcoderbench.evaluate import splice as splice_mod
from transcoderbench.lm.splice import Head, find_head
from transcoderbench.metrics.downstream import CleanNextToken, logsumexp_


def test_logsumexp_in_place_is_torch_logsumexp_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1000, generator=g) * 5
    x[1] = -1e4
    x[1, 7] = 60.0
    x[2] = -math.inf  # every token impossible: -inf, as torch gives
    x[3, 5] = math.inf
    ref = torch.logsumexp(x, -1)
    assert torch.equal(logsumexp_(x, scratch=torch.empty_like(x)), ref)
    assert ref[2] == -math.inf and ref[3] == math.inf
    clone = x.clone()
    assert torch.equal(logsumexp_(clone), ref)
    assert not torch.equal(clone, x)  # without scratch, x itself was the workspace


def test_clean_next_token_with_a_buffer_matches_the_plain_formulas():
    """The same CE/KL bits as log-space formulas written with fresh tensors; logits untouched unless asked."""
    g = torch.Generator().manual_seed(1)
    clean_logits = torch.randn(40, 500, generator=g) * 3
    logits = clean_logits + torch.randn(40, 500, generator=g)
    labels = torch.randint(0, 500, (40,), generator=g)
    lse_c = torch.logsumexp(clean_logits, -1)
    p = torch.exp(clean_logits - lse_c[:, None])
    lse = torch.logsumexp(logits, -1)
    ref_ce = lse - logits.gather(-1, labels[:, None]).squeeze(-1)
    ref_kl = ((p * clean_logits).sum(-1) - lse_c) - ((p * logits).sum(-1) - lse)

    clean = CleanNextToken(clean_logits, labels, probs=torch.empty_like(clean_logits))
    kept = logits.clone()
    ce, kl = clean.versus(kept)
    assert torch.equal(kept, logits)  # overwrite=False leaves the caller's logits alone
    ce2, kl2 = clean.versus(kept, overwrite=True)
    assert torch.equal(ce, ce2) and torch.equal(kl, kl2)
    assert torch.equal(clean.probs, p)
    assert torch.allclose(ce, ref_ce, rtol=0, atol=1e-5)
    assert torch.allclose(kl, ref_kl, rtol=0, atol=1e-5)
    assert torch.equal(clean.versus(clean_logits.clone(), overwrite=True)[1], torch.zeros(40))


@pytest.mark.parametrize("family", ["gemma2", "llama", "gpt2"])
def test_head_into_is_the_head_bit_for_bit(tiny_lm, family):
    """Soft-capping (gemma2), plain (llama, gpt2), and an unembedding with a bias built here."""
    lm = tiny_lm(family)
    head = find_head(lm)
    assert head is not None
    hidden = torch.randn(9, lm.d_model, generator=torch.Generator().manual_seed(2))
    weight = lm.model.get_output_embeddings().weight
    vocab = int(weight.shape[0])
    out = torch.full((9, vocab), float("nan"))
    assert torch.equal(splice_mod.head_into(head, hidden, out), head(hidden))
    biased = torch.nn.Linear(lm.d_model, vocab, bias=True)
    with torch.no_grad():
        biased.weight.copy_(weight)
        biased.bias.normal_()
    with_bias = Head(head.norm, head.norm_path, biased, head.softcap)
    assert torch.equal(splice_mod.head_into(with_bias, hidden, out), with_bias(hidden))


def _downstream(lm, tbs, chunk_elements: int | None, monkeypatch) -> tuple[dict, dict]:
    if chunk_elements is not None:
        monkeypatch.setattr(splice_mod, "HEAD_CHUNK_ELEMENTS", chunk_elements)
    runs = prepare_runs(lm, {"m": matryoshka(lm.d_model, 1)}, n_sequences=len(tbs) * BATCH)
    plan = plan_downstream(lm, runs, tbs[:1], n_sequences=len(tbs) * BATCH, variants_per_pass=1)
    run_pass(lm, runs, tbs, splice=plan, show_progress=False)
    monkeypatch.undo()
    return runs[0].results()["downstream"], plan.buffers


def test_chunked_head_with_reused_buffers_gives_the_one_chunk_result(tiny_lm, monkeypatch):
    """Chunks of 7 rows (a short last chunk, buffers reused by every batch) equal one chunk per batch."""
    lm = tiny_lm("llama")
    tbs = batches(lm)
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    whole, whole_buffers = _downstream(lm, tbs, None, monkeypatch)
    chunked, buffers = _downstream(lm, tbs, 7 * vocab, monkeypatch)
    assert buffers["logits"].shape == (7, vocab) and buffers["probs"].shape == (7, vocab)
    assert whole_buffers["logits"].shape[0] > 7
    for key in ("ce_clean", "ce_spliced", "kl_div", "ce_zero_ablation", "ce_mean_ablation", "n_tokens"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-6, abs=1e-9), key


def test_head_into_leaves_the_buffer_alone_for_a_bf16_head(tiny_lm):
    """A head it cannot write in place (bf16 unembedding) is run as is: same logits, buffer untouched."""
    lm = tiny_lm("llama")
    head = find_head(lm)
    assert head is not None
    half = Head(
        copy.deepcopy(head.norm).to(torch.bfloat16),
        head.norm_path,
        copy.deepcopy(head.unembed).to(torch.bfloat16),
        head.softcap,
    )
    hidden = torch.randn(5, lm.d_model, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    out = torch.full((5, int(lm.model.get_output_embeddings().weight.shape[0])), float("nan"))
    got = splice_mod.head_into(half, hidden, out)
    assert got.dtype == torch.float32 and torch.equal(got, half(hidden))
    assert out.isnan().all()
