"""SAELens: export -> import gives identical outputs; SAELens files written by hand import to
the math SAELens computes (written out in numpy); what SAELens cannot express is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from interop import need
from test_formats_common import D_IN, D_OUT, D_SAE, assert_margin, inputs, torch_out, weights
from test_formats_native import make
from transcoderbench.errors import UserError
from transcoderbench.formats import detect_format, export_saelens, load_transcoder
from transcoderbench.transcoders import JumpReLUTranscoder, TopKTranscoder


def same_site(tc):
    """The SAE form of ``tc``: input site = output site, d_out = d_in."""
    w = weights(0, d_out=D_IN)
    kw = {"threshold": tc.threshold} if isinstance(tc, JumpReLUTranscoder) else tc.hyperparameters()
    return type(tc)(
        *(torch.from_numpy(w[k]) for k in ("W_enc", "b_enc", "W_dec", "b_dec")),
        input_site="blocks.2.hook_resid_post",
        output_site="blocks.2.hook_resid_post",
        prefix_ends=tc.prefix_ends,
        input_unit_norm=tc.input_unit_norm,
        info=dict(tc.info),
        **kw,
    )


CASES = {
    "jumprelu transcoder": lambda: make("jumprelu"),
    "jumprelu skip transcoder": lambda: make("jumprelu", skip=True),
    "matryoshka transcoder": lambda: make("matryoshka_batchtopk", prefixes=[8, 20, D_SAE]),
    "batchtopk transcoder": lambda: make("batchtopk"),
    "topk sae": lambda: same_site(make("topk")),
    "matryoshka sae with input_unit_norm": lambda: same_site(
        make("matryoshka_batchtopk", unit_norm=True, prefixes=[8, D_SAE])
    ),
    "jumprelu sae": lambda: same_site(make("jumprelu")),
}
EXPECTED_ARCH = {
    "jumprelu transcoder": "jumprelu_transcoder",
    "jumprelu skip transcoder": "jumprelu_skip_transcoder",
    "matryoshka transcoder": "jumprelu_transcoder",
    "batchtopk transcoder": "jumprelu_transcoder",
    "topk sae": "topk",
    "matryoshka sae with input_unit_norm": "jumprelu",
    "jumprelu sae": "jumprelu",
}


@pytest.mark.parametrize("case", list(CASES))
def test_export_then_import_is_identical(tmp_path, case):
    tc = CASES[case]()
    out = export_saelens(tc, tmp_path / "sae")
    assert detect_format(str(out)) == "saelens"
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == EXPECTED_ARCH[case]
    assert cfg["metadata"]["hook_name"] == tc.input_site and cfg["apply_b_dec_to_input"] is False
    back = load_transcoder(str(out))
    assert type(back) is type(tc)
    assert (back.input_site, back.output_site, back.prefix_ends, back.input_unit_norm) == (
        tc.input_site,
        tc.output_site,
        tc.prefix_ends,
        tc.input_unit_norm,
    )
    assert back.hyperparameters() == tc.hyperparameters()
    for k, v in tc.tensors().items():
        assert torch.equal(back.tensors()[k], v), k
    x = torch.from_numpy(inputs())
    with torch.no_grad():
        assert torch.equal(back(x)[0], tc(x)[0])
        f = tc.encode(x)
        assert torch.equal(back.decode_prefixes(f, x), tc.decode_prefixes(f, x))
    assert back.info["model_name"] == "tiny/model" and back.info["training"] == tc.info["training"]


def test_export_layout_follows_saelens(tmp_path):
    tc = make("matryoshka_batchtopk", skip=True, prefixes=[8, D_SAE])
    out = export_saelens(tc, tmp_path / "m")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu_skip_transcoder"
    assert (cfg["d_in"], cfg["d_sae"], cfg["d_out"]) == (D_IN, D_SAE, D_OUT)
    assert cfg["metadata"]["hook_name_out"] == "blocks.3.hook_mlp_out"
    assert cfg["metadata"]["sae_lens_version"] >= "6"
    assert cfg["metadata"]["transcoderbench"]["prefix_ends"] == [8, D_SAE]
    tensors = load_file(str(out / "sae_weights.safetensors"))
    assert list(tensors["W_skip"].shape) == [D_OUT, D_IN]  # SAELens: [d_out, d_in], used as x @ W_skip.T
    assert torch.equal(tensors["W_skip"], tc.W_skip.T)
    assert torch.equal(tensors["threshold"], torch.full((D_SAE,), 0.125))


def test_export_refuses_what_saelens_cannot_express(tmp_path):
    with pytest.raises(UserError, match="SAELens has no TopK transcoder class"):
        export_saelens(make("topk"), tmp_path / "a")
    with pytest.raises(UserError, match="input_unit_norm cannot be expressed"):
        export_saelens(make("batchtopk", unit_norm=True), tmp_path / "b")
    tc = make("jumprelu")
    tc.threshold[3] = -0.5
    with pytest.raises(UserError, match="negative JumpReLU thresholds"):
        export_saelens(tc, tmp_path / "c")
    assert not any(tmp_path.iterdir())  # nothing half-written


# --------------------------------------------------------- SAELens files written by hand
def write_saelens(d: Path, cfg: dict, tensors: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True)
    (d / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}, str(d / "sae_weights.safetensors")
    )
    return d


def sae_cfg(arch: str, **extra) -> dict:
    return {
        "architecture": arch,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "model_name": "gpt2-small", "hook_name": "blocks.6.hook_resid_pre"},
        **extra,
    }


def test_saelens_jumprelu_sae_with_b_dec_applied_to_input(tmp_path):
    w = weights(3, d_out=D_IN)
    thr = np.abs(np.random.default_rng(0).standard_normal(D_SAE)).astype(np.float32) * 0.3
    thr[:5] = -0.4  # SAELens: relu(pre) * (pre > threshold), so a negative threshold acts as 0
    d = write_saelens(tmp_path / "s", sae_cfg("jumprelu", apply_b_dec_to_input=True), {**w, "threshold": thr})
    tc = load_transcoder(str(d))
    assert tc.input_site == tc.output_site == "blocks.6.hook_resid_pre" and tc.info["layer"] == 6
    x = inputs().astype(np.float64)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    assert_margin(pre, np.maximum(thr, 0))
    f = np.maximum(pre, 0) * (pre > thr)
    ref = f @ w["W_dec"].astype(np.float64) + w["b_dec"]
    np.testing.assert_allclose(torch_out(tc, x.astype(np.float32)), ref, rtol=1e-4, atol=1e-4)
    notes = " ".join(tc.info["notes"])
    assert "apply_b_dec_to_input folded into b_enc" in notes and "negative thresholds raised to 0" in notes


def test_saelens_relu_transcoder_with_skip(tmp_path):
    w = weights(4)
    skip = (np.random.default_rng(1).standard_normal((D_OUT, D_IN)) * 0.2).astype(np.float32)  # SAELens [d_out, d_in]
    cfg = sae_cfg("skip_transcoder", d_out=D_OUT)
    cfg["metadata"]["hook_name_out"] = "blocks.6.hook_mlp_out"
    d = write_saelens(tmp_path / "t", cfg, {**w, "W_skip": skip})
    tc = load_transcoder(str(d))
    assert (tc.input_site, tc.output_site) == ("blocks.6.hook_resid_pre", "blocks.6.hook_mlp_out")
    x = inputs().astype(np.float64)
    pre = x @ w["W_enc"] + w["b_enc"]
    ref = np.maximum(pre, 0) @ w["W_dec"].astype(np.float64) + w["b_dec"] + x @ skip.T.astype(np.float64)
    np.testing.assert_allclose(torch_out(tc, x.astype(np.float32)), ref, rtol=1e-4, atol=1e-4)


def test_saelens_topk_with_decoder_norm_rescaling_and_layer_norm(tmp_path):
    w = weights(5, d_out=D_IN)
    cfg = sae_cfg("topk", k=5, rescale_acts_by_decoder_norm=True, normalize_activations="layer_norm")
    tc = load_transcoder(str(write_saelens(tmp_path / "k", cfg, w)))
    assert isinstance(tc, TopKTranscoder) and tc.k == 5 and tc.input_unit_norm
    x = inputs().astype(np.float64)
    mu = x.mean(1, keepdims=True)
    sd = (x - mu).std(1, ddof=1, keepdims=True)
    xn = (x - mu) / (sd + 1e-5)
    norms = np.linalg.norm(w["W_dec"].astype(np.float64), axis=1)
    pre = (xn @ w["W_enc"] + w["b_enc"]) * norms
    top = np.argsort(-pre, axis=1)[:, :5]
    f = np.zeros_like(pre)
    np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    ref = ((f / norms) @ w["W_dec"].astype(np.float64) + w["b_dec"]) * sd + mu
    np.testing.assert_allclose(torch_out(tc, x.astype(np.float32)), ref, rtol=1e-4, atol=1e-4)


def test_saelens_refusals(tmp_path):
    w = weights(0, d_out=D_IN)
    with pytest.raises(UserError, match="SAELens architecture 'gated' is not supported"):
        load_transcoder(str(write_saelens(tmp_path / "a", sae_cfg("gated"), w)))
    with pytest.raises(UserError, match=r"missing weights threshold \(found: W_dec, W_enc, b_dec, b_enc\)"):
        load_transcoder(str(write_saelens(tmp_path / "b", sae_cfg("jumprelu"), w)))
    with pytest.raises(
        UserError, match="normalize_activations 'expected_average_only_in' needs a dataset scaling factor"
    ):
        load_transcoder(
            str(write_saelens(tmp_path / "c", sae_cfg("standard", normalize_activations="expected_average_only_in"), w))
        )
    with pytest.raises(UserError, match="a jumprelu_transcoder with no metadata.hook_name_out"):
        load_transcoder(
            str(
                write_saelens(
                    tmp_path / "d",
                    sae_cfg("jumprelu_transcoder", d_out=D_IN),
                    {**w, "threshold": np.zeros(D_SAE, np.float32)},
                )
            )
        )
    with pytest.raises(UserError, match="the config says d_in=99 but the weights have d_in=16"):
        load_transcoder(str(write_saelens(tmp_path / "e", sae_cfg("standard", d_in=99), w)))
    bad = {**w, "W_enc": np.full_like(w["W_enc"], np.nan)}
    with pytest.raises(UserError, match="weights W_enc contain NaN or Inf"):
        load_transcoder(str(write_saelens(tmp_path / "f", sae_cfg("standard"), bad)))


def test_real_saelens_loads_our_export(tmp_path):
    """Runs where SAELens is installed (it is not a dependency): SAELens computes our outputs."""
    sae_lens = need("sae_lens")
    x = torch.from_numpy(inputs())
    for name, build in CASES.items():
        if "input_unit_norm" in name:
            continue  # checked below with SAELens's own layer_norm path
        tc = build()
        sae = sae_lens.SAE.load_from_disk(str(export_saelens(tc, tmp_path / name.replace(" ", "_"))))
        with torch.no_grad():
            torch.testing.assert_close(sae(x), tc(x)[0], rtol=1e-6, atol=1e-6, msg=name)
    tc = CASES["matryoshka sae with input_unit_norm"]()
    sae = sae_lens.SAE.load_from_disk(str(export_saelens(tc, tmp_path / "unit_norm")))
    with torch.no_grad():
        torch.testing.assert_close(sae(x), tc(x)[0], rtol=1e-5, atol=1e-5)


def test_real_saelens_files_import(tmp_path):
    """Runs where SAELens is installed: files SAELens itself saved load to the same function."""
    sae_lens = need("sae_lens")
    from sae_lens.saes.sae import SAEMetadata

    x = torch.from_numpy(inputs())
    specs = {
        "jumprelu_skip_transcoder": (
            sae_lens.JumpReLUSkipTranscoder,
            sae_lens.JumpReLUSkipTranscoderConfig,
            {"d_out": D_OUT, "apply_b_dec_to_input": False},
        ),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 5}),
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
    }
    torch.manual_seed(0)
    for name, (cls, cfg_cls, kw) in specs.items():
        cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, **kw)
        cfg.metadata = SAEMetadata(
            model_name="m", hook_name="blocks.1.hook_mlp_in", hook_name_out="blocks.1.hook_mlp_out"
        )
        sae = cls(cfg)
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn_like(p) * 0.3)
            if hasattr(sae, "threshold"):
                sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.3)
        sae.save_model(tmp_path / name)
        tc = load_transcoder(str(tmp_path / name))
        with torch.no_grad():
            torch.testing.assert_close(tc(x)[0], sae(x), rtol=1e-5, atol=1e-5, msg=name)
