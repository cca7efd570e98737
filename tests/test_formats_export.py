"""sparsify and circuit-tracer formats, and ``formats.export``: hand-written files in each layout,
read back against the formats' own math written out here, and refusals of what a target cannot express."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tiny_models import tiny_input_ids
from transcoderbench.errors import UserError
from transcoderbench.formats import detect_format, export, load_transcoder, writable_formats
from transcoderbench.lm import capture, resolve_site
from transcoderbench.transcoders import (
    BatchTopKTranscoder,
    JumpReLUTranscoder,
    MatryoshkaTranscoder,
    TopKTranscoder,
)

D, S = 16, 40


def rand(*shape: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * scale


# ----------------------------------------------------------------------------- sparsify
def write_sparsify_folder(folder: Path, *, transcode: bool, skip: bool = False, seed: int = 0, **cfg_extra) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = {
        "encoder.weight": rand(S, D, g=g),
        "encoder.bias": rand(S, g=g, scale=0.1),
        "W_dec": rand(S, D, g=g),
        "b_dec": rand(D, g=g, scale=0.3),
    }
    if skip:
        t["W_skip"] = rand(D, D, g=g, scale=0.2)
    folder.mkdir(parents=True)
    save_file(t, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": S, "k": 5}
    cfg.update(multi_topk=False, skip_connection=skip, transcode=transcode, d_in=D, **cfg_extra)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


def sparsify_reference(t: dict, x: torch.Tensor, *, transcode: bool, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """sparsify's SparseCoder.encode/decode/forward, written out."""
    x_in = x if transcode else x - t["b_dec"]
    pre = torch.relu(x_in @ t["encoder.weight"].T + t["encoder.bias"])
    vals, idx = pre.topk(k, dim=-1, sorted=False)
    f = torch.zeros_like(pre).scatter_(-1, idx, vals)
    y = f @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        y = y + x @ t["W_skip"].mT
    return y, f


@pytest.mark.parametrize(("transcode", "skip"), [(True, False), (True, True), (False, False)])
def test_sparsify_folder_matches_sparsify_math(tmp_path, transcode, skip):
    folder = tmp_path / "run" / "layers.3.mlp"
    t = write_sparsify_folder(folder, transcode=transcode, skip=skip)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "HuggingFaceTB/SmolLM2-135M"}))
    assert detect_format(str(tmp_path / "run")) == "sparsify"
    tc = load_transcoder(str(tmp_path / "run"))
    assert isinstance(tc, TopKTranscoder) and tc.k == 5
    expect_in = "layers.3.mlp.input" if transcode else "layers.3.mlp.output"
    assert (tc.input_site, tc.output_site) == (expect_in, "layers.3.mlp.output")
    assert tc.info["layer"] == 3 and tc.info["model_name"] == "HuggingFaceTB/SmolLM2-135M"
    x = torch.randn(30, D, generator=torch.Generator().manual_seed(9))
    y_ref, f_ref = sparsify_reference(t, x, transcode=transcode)
    with torch.no_grad():
        y, f = tc(x)
    torch.testing.assert_close(f, f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_sparsify_run_with_several_hookpoints_is_chosen_by_layer(tmp_path):
    for layer in (1, 2):
        write_sparsify_folder(tmp_path / "run" / f"layers.{layer}.mlp", transcode=True, seed=layer)
    with pytest.raises(
        UserError, match=r"several hookpoints \(layers.1.mlp, layers.2.mlp\); choose one with select.layer"
    ):
        load_transcoder(str(tmp_path / "run"))
    tc = load_transcoder(str(tmp_path / "run"), layer=2)
    assert tc.input_site == "layers.2.mlp.input"
    with pytest.raises(UserError, match="no hookpoint for layer 5"):
        load_transcoder(str(tmp_path / "run"), layer=5)


def test_sparsify_groupmax_is_refused(tmp_path):
    write_sparsify_folder(tmp_path / "layers.0.mlp", transcode=True, activation="groupmax")
    with pytest.raises(UserError, match="activation 'groupmax' is not supported"):
        load_transcoder(str(tmp_path / "layers.0.mlp"))


def test_sparsify_sites_evaluate_on_a_real_model_without_conversion(tiny_lm, tmp_path):
    """A sparsify transcoder's hookpoint sites resolve on the model: the MLP's own input and output."""
    lm = tiny_lm("llama")
    write_sparsify_folder(tmp_path / "layers.1.mlp", transcode=True)
    tc = load_transcoder(str(tmp_path / "layers.1.mlp"))
    ids = tiny_input_ids()
    names = [tc.input_site, tc.output_site, "blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out"]
    got = capture(lm, ids, torch.ones_like(ids), [resolve_site(lm, n) for n in names])
    torch.testing.assert_close(got[tc.input_site], got["blocks.1.mlp.hook_in"])
    torch.testing.assert_close(got[tc.output_site], got["blocks.1.hook_mlp_out"])


def topk_tc(
    seed: int = 0, *, layer: int = 3, skip: bool = False, same_site: bool = False, prefix=None
) -> TopKTranscoder:
    g = torch.Generator().manual_seed(seed)
    site = f"model.layers.{layer}.mlp"
    return TopKTranscoder(
        rand(D, S, g=g),
        rand(S, g=g, scale=0.1),
        rand(S, D, g=g),
        rand(D, g=g, scale=0.2),
        input_site=f"{site}.output" if same_site else f"{site}.input",
        output_site=f"{site}.output",
        W_skip=rand(D, D, g=g, scale=0.2) if skip else None,
        prefix_ends=prefix,
        k=4,
        info={"model_name": "tiny/llama"},
    )


@pytest.mark.parametrize(("skip", "same_site"), [(False, False), (True, False), (False, True)])
def test_sparsify_export_round_trip_and_layout(tmp_path, skip, same_site):
    tc = topk_tc(skip=skip, same_site=same_site, prefix=[8, 40] if not skip else None)
    out = export(tc, "sparsify", tmp_path / "out")
    folder = out / "layers.3.mlp"
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["transcode"] is (not same_site) and cfg["k"] == 4 and cfg["d_in"] == D and cfg["num_latents"] == S
    t = load_file(str(folder / "sae.safetensors"))
    assert list(t["encoder.weight"].shape) == [S, D] and list(t["W_dec"].shape) == [S, D]
    x = torch.randn(25, D, generator=torch.Generator().manual_seed(4))
    y_ref, f_ref = sparsify_reference(t, x, transcode=not same_site, k=4)
    with torch.no_grad():
        y, f = tc(x)
    torch.testing.assert_close(y_ref, y, rtol=1e-5, atol=1e-4)  # sparsify's own math on our export
    back = load_transcoder(str(out))
    assert (back.input_site, back.output_site, back.prefix_ends) == (tc.input_site, tc.output_site, tc.prefix_ends)
    torch.testing.assert_close(back(x)[0], y, rtol=1e-5, atol=1e-4)
    assert json.loads((out / "config.json").read_text())["model"] == "tiny/llama"


def test_sparsify_export_refuses_what_it_cannot_express(tmp_path):
    g = torch.Generator().manual_seed(0)
    batch = BatchTopKTranscoder(
        rand(D, S, g=g), rand(S, g=g), rand(S, D, g=g), rand(D, g=g), input_site="a.input", output_site="a.output"
    )
    with pytest.raises(UserError, match="sparsify runs per-token TopK only"):
        export(batch, "sparsify", tmp_path / "a")
    tc = topk_tc()
    tc.input_site = "blocks.3.hook_mlp_in"
    with pytest.raises(UserError, match="sparsify names one module \\(hookpoint\\) per coder"):
        export(tc, "sparsify", tmp_path / "b")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------ circuit-tracer
def ct_layer_tensors(seed: int, *, threshold: bool = True, skip: bool = False, old_orientation: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": rand(S, D, g=g),
        "b_enc": rand(S, g=g, scale=0.1),
        "W_dec": rand(S, D, g=g),
        "b_dec": rand(D, g=g, scale=0.2),
    }
    if threshold:
        t["activation_function.threshold"] = torch.rand(S, generator=g) * 0.5
    if skip:
        t["W_skip"] = rand(D, D, g=g, scale=0.2)
    if old_orientation:
        t["W_dec"] = t["W_dec"].T.contiguous()
    return t


def write_ct(d: Path, layers: list[dict]) -> Path:
    d.mkdir(parents=True)
    files = []
    for i, t in enumerate(layers):
        save_file(t, str(d / f"layer_{i}.safetensors"))
        files.append(f"layer_{i}.safetensors")
    cfg = {
        "model_name": "google/gemma-2-2b",
        "model_kind": "transcoder_set",
        "scan": "x",
        "feature_input_hook": "hook_resid_mid",
        "feature_output_hook": "hook_mlp_out",
        "transcoders": files,
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


def ct_reference(t: dict, x: torch.Tensor) -> torch.Tensor:
    """circuit-tracer's SingleLayerTranscoder.forward, written out."""
    pre = x @ t["W_enc"].T + t["b_enc"]
    thr = t.get("activation_function.threshold")
    f = torch.relu(pre) if thr is None else pre * (pre > thr)
    W_dec = t["W_dec"] if t["W_dec"].shape[0] == S else t["W_dec"].T
    y = f @ W_dec + t["b_dec"]
    return y + x @ t["W_skip"].T if "W_skip" in t else y


@pytest.mark.parametrize("variant", ["jumprelu", "relu", "skip", "old_orientation"])
def test_circuit_tracer_set_matches_its_math(tmp_path, variant):
    layers = [
        ct_layer_tensors(
            i, threshold=variant != "relu", skip=variant == "skip", old_orientation=variant == "old_orientation"
        )
        for i in range(3)
    ]
    d = write_ct(tmp_path / "ct", layers)
    assert detect_format(str(d)) == "circuit_tracer"
    with pytest.raises(
        UserError, match=r"a set of 3 per-layer transcoders \(layers 0..2\); choose one with select.layer"
    ):
        load_transcoder(str(d))
    tc = load_transcoder(str(d), layer=2)
    assert isinstance(tc, JumpReLUTranscoder)
    assert (tc.input_site, tc.output_site) == ("blocks.2.hook_resid_mid", "blocks.2.hook_mlp_out")
    assert tc.info["model_name"] == "google/gemma-2-2b" and tc.info["layer"] == 2
    x = torch.randn(30, D, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(tc(x)[0], ct_reference(layers[2], x), rtol=1e-5, atol=1e-4)
    if variant == "old_orientation":
        assert any("W_dec stored as [d_model, d_sae]" in n for n in tc.info["notes"])


def matryoshka(layer: int, seed: int) -> MatryoshkaTranscoder:
    g = torch.Generator().manual_seed(seed)
    return MatryoshkaTranscoder(
        rand(D, S, g=g),
        rand(S, g=g, scale=0.1),
        rand(S, D, g=g),
        rand(D, g=g, scale=0.2),
        input_site=f"blocks.{layer}.ln2.hook_normalized",
        output_site=f"blocks.{layer}.hook_mlp_out",
        prefix_ends=[8, 24, 40],
        threshold=0.3,
        k=4,
        info={"model_name": "google/gemma-2-2b"},
    )


def test_matryoshka_set_exports_to_circuit_tracer_exactly(tmp_path):
    tcs = [matryoshka(layer, seed=layer) for layer in (1, 0, 2)]  # any order
    d = export(tcs, "circuit-tracer", tmp_path / "set")
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["transcoders"] == ["layer_0.safetensors", "layer_1.safetensors", "layer_2.safetensors"]
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("ln2.hook_normalized", "hook_mlp_out")
    assert cfg["model_name"] == "google/gemma-2-2b" and cfg["model_kind"] == "transcoder_set"
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(6))
    for tc in tcs:
        layer = int(tc.input_site.split(".")[1])
        t = load_file(str(d / f"layer_{layer}.safetensors"))
        torch.testing.assert_close(ct_reference(t, x), tc(x)[0], rtol=1e-5, atol=1e-4)
        back = load_transcoder(str(d), layer=layer)
        assert isinstance(back, MatryoshkaTranscoder) and back.prefix_ends == (8, 24, 40)
        torch.testing.assert_close(back.decode_prefixes(back.encode(x), x), tc.decode_prefixes(tc.encode(x), x))


def test_negative_jumprelu_thresholds_export_exactly_to_circuit_tracer(tmp_path):
    g = torch.Generator().manual_seed(7)
    tc = JumpReLUTranscoder(
        rand(D, S, g=g),
        rand(S, g=g),
        rand(S, D, g=g),
        rand(D, g=g),
        input_site="blocks.0.hook_resid_mid",
        output_site="blocks.0.hook_mlp_out",
        threshold=torch.full((S,), -0.5),
        info={"model_name": "m"},
    )
    d = export([tc], "circuit_tracer", tmp_path / "set")
    x = torch.randn(40, D, generator=g)
    torch.testing.assert_close(ct_reference(load_file(str(d / "layer_0.safetensors")), x), tc(x)[0])


def test_circuit_tracer_export_refusals(tmp_path):
    with pytest.raises(UserError, match=r"needs a transcoder for every layer 0..2; missing layers 1"):
        export([matryoshka(0, 0), matryoshka(2, 2)], "circuit_tracer", tmp_path / "a")
    with pytest.raises(UserError, match="circuit-tracer's loader reads ReLU and JumpReLU transcoders only"):
        export([topk_tc(layer=0)], "circuit_tracer", tmp_path / "b")
    bad = matryoshka(0, 0)
    bad.input_site = "model.layers.0.pre_feedforward_layernorm.output"
    with pytest.raises(UserError, match="circuit-tracer names hooks as TransformerLens hooks"):
        export([bad], "circuit_tracer", tmp_path / "c")
    nameless = matryoshka(0, 0)
    nameless.info = {}
    with pytest.raises(UserError, match="needs model_name"):
        export([nameless], "circuit_tracer", tmp_path / "d")
    assert export([nameless], "circuit_tracer", tmp_path / "e", model_name="m").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]


def test_circuit_tracer_negative_thresholds_are_read_exactly(tmp_path):
    t = ct_layer_tensors(0)
    t["activation_function.threshold"][:10] = -0.4  # x * (x > t) lets negatives through
    tc = load_transcoder(str(write_ct(tmp_path / "ct", [t])))
    x = torch.randn(50, D, generator=torch.Generator().manual_seed(8))
    assert bool((tc.encode(x) < 0).any())
    torch.testing.assert_close(tc(x)[0], ct_reference(t, x), rtol=1e-5, atol=1e-4)


# -------------------------------------------------------------------------- export API
def test_export_api_formats_and_refusals(tmp_path):
    assert writable_formats() == ("native", "saelens", "sparsify", "circuit_tracer")
    with pytest.raises(UserError, match="format 'gemma_scope_1': transcoderbench writes native, saelens"):
        export(matryoshka(0, 0), "gemma_scope_1", tmp_path / "a")
    with pytest.raises(UserError, match="the native format holds one transcoder per directory"):
        export([matryoshka(0, 0), matryoshka(1, 1)], "native", tmp_path / "b")
    with pytest.raises(UserError, match="nothing to export"):
        export([], "saelens", tmp_path / "c")
    assert not any(tmp_path.iterdir())
    src = matryoshka(0, 0)
    for fmt in ("native", "saelens"):
        back = load_transcoder(str(export(src, fmt, tmp_path / fmt)))
        assert isinstance(back, MatryoshkaTranscoder) and back.prefix_ends == src.prefix_ends
        x = torch.randn(10, D)
        torch.testing.assert_close(back(x)[0], src(x)[0])
