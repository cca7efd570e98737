"""Round trips against the real libraries (``pip install -e .[interop]``; ``make test-interop``).

Each test loads our export with the library's own loader and compares its encode/decode with
ours on random inputs to 1e-5, and loads files the library itself saved. A test is skipped
where its library is not installed (the libraries are not dependencies of transcoderbench).
The SAELens export/import cases for every architecture are in test_formats_saelens.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from interop import need
from transcoderbench.formats import export, load_transcoder
from transcoderbench.transcoders import JumpReLUTranscoder, MatryoshkaTranscoder, TopKTranscoder

D, S = 16, 48
TOL = dict(rtol=1e-5, atol=1e-5)


def inputs(n: int = 64, seed: int = 11) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def randomise(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def matryoshka(layer: int, seed: int, *, skip: bool = False) -> MatryoshkaTranscoder:
    g = torch.Generator().manual_seed(seed)
    return MatryoshkaTranscoder(
        torch.randn(D, S, generator=g) * 0.5,
        torch.randn(S, generator=g) * 0.1,
        torch.randn(S, D, generator=g) * 0.3,
        torch.randn(D, generator=g) * 0.1,
        input_site=f"blocks.{layer}.ln2.hook_normalized",
        output_site=f"blocks.{layer}.hook_mlp_out",
        prefix_ends=[8, 24, S],
        threshold=0.2,
        k=6,
        W_skip=torch.randn(D, D, generator=g) * 0.1 if skip else None,
        info={"model_name": "google/gemma-2-2b"},
    )


def topk(seed: int, *, transcode: bool = True, skip: bool = False) -> TopKTranscoder:
    g = torch.Generator().manual_seed(seed)
    return TopKTranscoder(
        torch.randn(D, S, generator=g) * 0.5,
        torch.randn(S, generator=g) * 0.1,
        torch.randn(S, D, generator=g) * 0.3,
        torch.randn(D, generator=g) * 0.1,
        input_site="model.layers.2.mlp.input" if transcode else "model.layers.2.mlp.output",
        output_site="model.layers.2.mlp.output",
        W_skip=torch.randn(D, D, generator=g) * 0.1 if skip else None,
        k=5,
        info={"model_name": "HuggingFaceTB/SmolLM2-135M"},
    )


# ------------------------------------------------------------------------------- SAELens
def test_saelens_constant_norm_rescale_both_ways(tmp_path):
    sae_lens = need("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    cfg = sae_lens.StandardSAEConfig(d_in=D, d_sae=S, normalize_activations="constant_norm_rescale")
    cfg.metadata = SAEMetadata(model_name="gpt2", hook_name="blocks.1.hook_resid_pre")
    sae = sae_lens.StandardSAE(cfg)
    randomise(sae, 1)
    sae.save_model(tmp_path / "theirs")
    ours = load_transcoder(str(tmp_path / "theirs"))
    assert ours.constant_norm_rescale
    x = inputs() * 5
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), sae.encode(x), **TOL)
        torch.testing.assert_close(ours(x)[0], sae(x), **TOL)
        again = sae_lens.SAE.load_from_disk(str(export(ours, "saelens", tmp_path / "ours")))
        torch.testing.assert_close(again(x), ours(x)[0], **TOL)


def test_saelens_reads_pre_6_topk_config_as_we_do(tmp_path):
    """A SAELens 5.x TopK layout: SAELens's own loader and ours give the same function (L0 <= k)."""
    sae_lens = need("sae_lens")
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(2)
    d = tmp_path / "old"
    d.mkdir()
    tensors = {
        "W_enc": torch.randn(D, S, generator=g),
        "b_enc": torch.full((S,), 0.5),
        "W_dec": torch.randn(S, D, generator=g),
        "b_dec": torch.randn(D, generator=g) * 0.1,
    }
    save_file(tensors, str(d / "sae_weights.safetensors"))
    cfg = {
        "d_in": D,
        "d_sae": S,
        "dtype": "float32",
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_point": "blocks.2.hook_resid_pre",
        "hook_point_layer": 2,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "sae_lens_version": "3.13.0",
    }
    (d / "cfg.json").write_text(json.dumps(cfg))
    theirs = sae_lens.SAE.load_from_disk(str(d))
    ours = load_transcoder(str(d))
    x = inputs()
    with torch.no_grad():
        f = ours.encode(x)
        assert int((f != 0).sum(-1).max()) <= 3
        torch.testing.assert_close(f, theirs.encode(x), **TOL)
        torch.testing.assert_close(ours(x)[0], theirs(x), **TOL)


# ------------------------------------------------------------------------------ sparsify
@pytest.mark.parametrize(("transcode", "skip"), [(True, False), (True, True), (False, False)])
def test_sparsify_loads_our_export(tmp_path, transcode, skip):
    sparsify = need("sparsify")
    tc = topk(3, transcode=transcode, skip=skip)
    out = export(tc, "sparsify", tmp_path / "run")
    coder = sparsify.SparseCoder.load_from_disk(out / "layers.2.mlp", device="cpu")
    assert coder.cfg.transcode is transcode and coder.cfg.k == 5
    x = inputs()
    with torch.no_grad():
        enc = coder.encode(x)
        dense = torch.zeros(x.shape[0], S).scatter_(-1, enc.top_indices, enc.top_acts)
        torch.testing.assert_close(dense, tc.encode(x), **TOL)
        torch.testing.assert_close(coder(x).sae_out, tc(x)[0], **TOL)


@pytest.mark.parametrize(("transcode", "skip"), [(True, False), (True, True), (False, False)])
def test_sparsify_saved_coders_load_here(tmp_path, transcode, skip):
    sparsify = need("sparsify")
    cfg = sparsify.SparseCoderConfig(num_latents=S, k=4, transcode=transcode, skip_connection=skip)
    coder = sparsify.SparseCoder(D, cfg, device="cpu")
    randomise(coder, 4)
    coder.save_to_disk(tmp_path / "run" / "layers.1.mlp")
    tc = load_transcoder(str(tmp_path / "run"))
    assert tc.input_site == f"layers.1.mlp.{'input' if transcode else 'output'}"
    x = inputs()
    with torch.no_grad():
        enc = coder.encode(x)
        dense = torch.zeros(x.shape[0], S).scatter_(-1, enc.top_indices, enc.top_acts)
        torch.testing.assert_close(tc.encode(x), dense, **TOL)
        torch.testing.assert_close(tc(x)[0], coder(x).sae_out, **TOL)


# ------------------------------------------------------------------------ circuit-tracer
def _load_set(directory: Path):
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    cfg = yaml.safe_load((directory / "config.yaml").read_text())
    paths = {i: str(directory / p) for i, p in enumerate(cfg["transcoders"])}  # relative to the set
    return load_transcoder_set(
        paths,
        scan=cfg["scan"],
        feature_input_hook=cfg["feature_input_hook"],
        feature_output_hook=cfg["feature_output_hook"],
        device=torch.device("cpu"),
        dtype=torch.float32,
        lazy_encoder=False,
        lazy_decoder=False,
    )


@pytest.mark.parametrize("skip", [False, True])
def test_circuit_tracer_loads_our_matryoshka_set(tmp_path, skip):
    need("circuit_tracer")
    tcs = [matryoshka(layer, seed=layer, skip=skip) for layer in range(3)]
    tset = _load_set(export(tcs, "circuit_tracer", tmp_path / "set"))
    assert tset.feature_input_hook == "ln2.hook_normalized" and tset.feature_output_hook == "hook_mlp_out"
    x = inputs()
    with torch.no_grad():
        for layer, tc in enumerate(tcs):
            theirs = tset[layer]
            torch.testing.assert_close(theirs.encode(x), tc.encode(x), **TOL)
            torch.testing.assert_close(theirs.decode(theirs.encode(x), x), tc(x)[0], **TOL)


def test_circuit_tracer_computes_our_negative_jumprelu_thresholds(tmp_path):
    need("circuit_tracer")
    g = torch.Generator().manual_seed(5)
    tc = JumpReLUTranscoder(
        torch.randn(D, S, generator=g) * 0.5,
        torch.randn(S, generator=g) * 0.1,
        torch.randn(S, D, generator=g) * 0.3,
        torch.randn(D, generator=g) * 0.1,
        input_site="blocks.0.hook_resid_mid",
        output_site="blocks.0.hook_mlp_out",
        threshold=torch.rand(S, generator=g) - 0.5,  # half negative: negative activations pass
        info={"model_name": "m"},
    )
    theirs = _load_set(export([tc], "circuit_tracer", tmp_path / "set"))[0]
    x = inputs() * 0.2
    with torch.no_grad():
        assert bool((tc.encode(x) < 0).any())
        torch.testing.assert_close(theirs.encode(x), tc.encode(x), **TOL)
        torch.testing.assert_close(theirs.decode(theirs.encode(x), x), tc(x)[0], **TOL)


def test_circuit_tracer_saved_transcoders_load_here(tmp_path):
    need("circuit_tracer")
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder

    d = tmp_path / "set"
    d.mkdir()
    layers = []
    for layer in range(2):
        act = JumpReLU(torch.rand(S, generator=torch.Generator().manual_seed(layer)) * 0.3, 0.1)
        slt = SingleLayerTranscoder(
            D, S, act, layer, skip_connection=layer == 1, device=torch.device("cpu"), dtype=torch.float32
        )
        randomise(slt, 10 + layer)
        with torch.no_grad():
            slt.activation_function.threshold.copy_(torch.rand(S) * 0.3)
        slt.to_safetensors(str(d / f"layer_{layer}.safetensors"))
        layers.append(slt)
    cfg = {
        "model_name": "google/gemma-2-2b",
        "model_kind": "transcoder_set",
        "scan": "test",
        "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out",
        "transcoders": [f"layer_{i}.safetensors" for i in range(2)],
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    x = inputs()
    for layer, slt in enumerate(layers):
        tc = load_transcoder(str(d), layer=layer)
        assert isinstance(tc, JumpReLUTranscoder) and tc.input_site == f"blocks.{layer}.hook_resid_mid"
        with torch.no_grad():
            torch.testing.assert_close(tc.encode(x), slt.encode(x), **TOL)
            torch.testing.assert_close(tc(x)[0], slt(x), **TOL)
