"""Planted checkpoints for the silent-wrong-number fixes of issue 9.

Each test hand-builds a checkpoint whose exact answer is known at the right site (FVU 0, L0 <= k,
Google's formula) and shows the answer is clearly wrong at the site or reading the old code used,
so the test fails if the reader regresses. Models are the tiny real ones (norm gains != 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tiny_models import tiny_input_ids
from transcoderbench.errors import UserError
from transcoderbench.formats import load_transcoder
from transcoderbench.lm import capture, resolve_site
from transcoderbench.transcoders import JumpReLUTranscoder, TopKTranscoder

LAYER = 1
D = 32  # tiny_models.HIDDEN


def identity_weights(d: int, b_dec: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """relu(x) - relu(-x) = x: a dictionary whose reconstruction is exactly its input (plus b_dec)."""
    eye = torch.eye(d)
    return {
        "W_enc": torch.cat([eye, -eye], dim=1),
        "b_enc": torch.zeros(2 * d),
        "W_dec": torch.cat([eye, -eye], dim=0),
        "b_dec": torch.zeros(d) if b_dec is None else b_dec.clone(),
    }


def fvu(lm, input_site: str, output_site: str, tc) -> float:
    """Pooled FVU of ``tc`` reading ``input_site`` and predicting ``output_site`` on the tiny model."""
    ids = tiny_input_ids(batch=2, seq=12)
    names = list(dict.fromkeys([input_site, output_site]))
    got = capture(lm, ids, torch.ones_like(ids), [resolve_site(lm, n) for n in names], stop_early=False)
    x, y = got[input_site].reshape(-1, D)[2:], got[output_site].reshape(-1, D)[2:]
    with torch.no_grad():
        y_hat, _ = tc(x)
    y64, r = y.double(), (y - y_hat).double()
    return float(r.pow(2).sum() / (y64 - y64.mean(0)).pow(2).sum())


# --------------------------------------------------------------------- 1. seed hook_mlp_in
def write_seed(path: Path, cfg: dict, state: dict[str, torch.Tensor]) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    torch.save(state, path / "sae.pt")
    return path


@pytest.mark.parametrize("family", ["gemma2", "llama", "gpt2"])
def test_seed_hook_mlp_in_reads_the_gained_norm_output_without_bias(tiny_lm, tmp_path, family):
    lm = tiny_lm(family)
    # Output site: the norm's full output. For GPT-2 that includes ln_2's bias, which b_dec adds
    # back, so FVU is 0 only if the input is exactly normalized * w without the bias.
    bias = lm.layers[LAYER].ln_2.bias.detach().clone() if family == "gpt2" else torch.zeros(D)
    w = identity_weights(D, b_dec=bias)
    cfg = {
        "model_name": "x",
        "source_hook_point": f"blocks.{LAYER}.hook_mlp_in",
        "target_hook_point": f"blocks.{LAYER}.mlp.hook_in",
        "dict_size": 2 * D,
        "top_k": 4,
    }
    tc = load_transcoder(str(write_seed(tmp_path / "s", cfg, {**w, "threshold": torch.tensor(0.0)})))
    assert tc.input_site == f"blocks.{LAYER}.ln2.hook_normalized_times_w"
    assert any("hook_mlp_in, whose TransformerLens hook was off" in n for n in tc.info["notes"])
    assert fvu(lm, tc.input_site, tc.output_site, tc) < 1e-10
    # The old reading (the raw residual at hook_mlp_in) is clearly wrong on these models.
    assert fvu(lm, f"blocks.{LAYER}.hook_mlp_in", tc.output_site, tc) > 0.05


@pytest.mark.parametrize("family", ["gemma2", "gpt2"])
def test_normalized_times_w_site_matches_hand_computation(tiny_lm, family):
    lm = tiny_lm(family)
    ids = tiny_input_ids()
    names = [f"blocks.{LAYER}.hook_resid_mid", f"blocks.{LAYER}.ln2.hook_normalized_times_w"]
    got = capture(lm, ids, torch.ones_like(ids), [resolve_site(lm, n) for n in names])
    x = got[names[0]].double()
    block = lm.layers[LAYER]
    if family == "gpt2":
        eps, gain = block.ln_2.eps, block.ln_2.weight.double()
        ref = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps) * gain
    else:
        eps = lm.model.config.rms_norm_eps
        ref = (
            x
            * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            * (1 + block.pre_feedforward_layernorm.weight.double())
        )
    torch.testing.assert_close(got[names[1]].double(), ref, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------- seed prefix_sizes (loud)
def seed_state(d_sae: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D, d_sae, generator=g),
        "b_enc": torch.zeros(d_sae),
        "W_dec": torch.randn(d_sae, D, generator=g),
        "b_dec": torch.zeros(D),
        "threshold": torch.tensor(0.1),
    }


def test_seed_prefix_sizes_are_decided_by_the_weights(tmp_path):
    # Scaled-down layer-12 config: dict_size = sum, but the seed built last-value latents.
    base = {"hook_point": "blocks.3.hook_resid_pre", "top_k": 4, "prefix_sizes": "[4, 8, 16, 36]", "dict_size": 64}
    tc = load_transcoder(str(write_seed(tmp_path / "a", base, seed_state(36))))
    assert tc.prefix_ends == (4, 8, 16, 36) and tc.d_sae == 36
    notes = " | ".join(tc.info["notes"])
    assert "cumulative prefix ends because the last equals d_sae=36" in notes
    assert "dict_size 64 disagrees with the weights (36 latents)" in notes
    tc = load_transcoder(str(write_seed(tmp_path / "b", base, seed_state(64))))
    assert tc.prefix_ends == (4, 12, 28, 64)
    with pytest.raises(UserError, match=r"prefix_sizes \[4, 8, 16, 36\] neither sums to d_sae=50"):
        load_transcoder(str(write_seed(tmp_path / "c", base, seed_state(50))))


# ------------------------------------------------------------ 2. SAELens < 6.0 TopK configs
def write_saelens(d: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    d.mkdir(parents=True)
    (d / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "sae_weights.safetensors"))
    return d


def old_topk_cfg(**extra) -> dict:
    return {
        "d_in": D,
        "d_sae": 64,
        "dtype": "float32",
        "hook_point": "blocks.2.hook_resid_pre",
        "model_name": "gpt2-small",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3},
        "apply_b_dec_to_input": False,
        "sae_lens_version": "3.13.0",
        **extra,
    }


def test_saelens_5x_topk_config_keeps_k(tmp_path):
    g = torch.Generator().manual_seed(1)
    t = {
        "W_enc": torch.randn(D, 64, generator=g),
        "b_enc": torch.full((64,), 0.5),
        "W_dec": torch.randn(64, D, generator=g),
        "b_dec": torch.zeros(D),
    }
    tc = load_transcoder(str(write_saelens(tmp_path / "a", old_topk_cfg(), t)))
    assert isinstance(tc, TopKTranscoder) and tc.k == 3 and tc.input_site == "blocks.2.hook_resid_pre"
    x = torch.randn(200, D, generator=g)
    l0 = (tc.encode(x) != 0).sum(-1)
    assert int(l0.max()) <= 3
    # Read as a dense ReLU SAE (the old bug), the same weights fire on far more latents.
    assert float((torch.relu(x @ t["W_enc"] + t["b_enc"]) != 0).sum(-1).float().mean()) > 10
    # architecture "standard" (as SAELens < 6 wrote it) means the same
    tc = load_transcoder(str(write_saelens(tmp_path / "b", old_topk_cfg(architecture="standard"), t)))
    assert isinstance(tc, TopKTranscoder) and tc.k == 3


def test_saelens_old_config_other_activation_is_refused(tmp_path):
    t = identity_weights(D)
    with pytest.raises(UserError, match="activation_fn 'tanh-relu' is not supported"):
        load_transcoder(str(write_saelens(tmp_path / "a", old_topk_cfg(activation_fn_str="tanh-relu"), t)))


# -------------------------------------------------------------- 3. hf_hook_name wins
def test_hf_hook_name_wins_over_hook_name(tiny_lm, tmp_path):
    lm = tiny_lm("gemma2")
    hf = f"model.layers.{LAYER}.pre_feedforward_layernorm.output"
    cfg = {
        "architecture": "transcoder",
        "d_in": D,
        "d_sae": 2 * D,
        "d_out": D,
        "dtype": "float32",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {
            "sae_lens_version": "6.54.12",
            "model_name": "google/gemma-3-1b-pt",
            "hook_name": f"blocks.{LAYER}.hook_mlp_in",
            "hf_hook_name": hf,
            "hook_name_out": f"blocks.{LAYER}.hook_mlp_out",
            "hf_hook_name_out": hf,
        },
    }
    tc = load_transcoder(str(write_saelens(tmp_path / "a", cfg, identity_weights(D))))
    assert (tc.input_site, tc.output_site) == (hf, hf)
    assert any(f"hf_hook_name {hf} and hook_name blocks.{LAYER}.hook_mlp_in both given" in n for n in tc.info["notes"])
    assert fvu(lm, tc.input_site, tc.output_site, tc) < 1e-10
    assert fvu(lm, f"blocks.{LAYER}.hook_mlp_in", hf, tc) > 0.05  # where hook_name would have read


# ----------------------------------------------------------- 4. center_writing_weights
def test_center_writing_weights_is_refused(tmp_path):
    cfg = sae6_cfg(architecture="topk", k=3)
    cfg["metadata"]["hook_name"] = "blocks.2.hook_resid_pre"
    cfg["metadata"]["model_from_pretrained_kwargs"] = {"center_writing_weights": True}
    with pytest.raises(UserError, match="center_writing_weights is true, so blocks.2.hook_resid_pre was read"):
        load_transcoder(str(write_saelens(tmp_path / "a", cfg, identity_weights(D))))
    cfg["metadata"]["model_from_pretrained_kwargs"] = {"center_writing_weights": False}
    assert load_transcoder(str(write_saelens(tmp_path / "b", cfg, identity_weights(D)))).k == 3


# ------------------------------------------------------- 5. JumpReLU negative thresholds
def test_gemma_scope_negative_threshold_follows_googles_reference(tmp_path):
    g = torch.Generator().manual_seed(2)
    params = {
        "W_enc": torch.randn(D, 48, generator=g).numpy(),
        "W_dec": torch.randn(48, D, generator=g).numpy(),
        "b_enc": torch.zeros(48).numpy(),
        "b_dec": torch.zeros(D).numpy(),
        "threshold": np.full(48, -0.5, dtype=np.float32),
    }
    path = tmp_path / "layer_3" / "width_16k" / "average_l0_5" / "params.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, **params)
    tc = load_transcoder(str(path))
    x = torch.randn(100, D, generator=g) * 0.1  # many pre-activations in (-0.5, 0)
    pre = (x @ torch.from_numpy(params["W_enc"])).double()
    google = torch.relu(pre) * (pre > -0.5)  # Google's reference
    got = tc.encode(x).double()
    torch.testing.assert_close(got, google, rtol=1e-5, atol=1e-6)
    assert bool((got >= 0).all())
    assert any("48 negative thresholds raised to 0" in n for n in tc.info["notes"])
    assert float((pre * (pre > -0.5) - google).abs().max()) > 0.01  # the old formula differs


# ----------------------------------------------------------- SAELens loud failures
def sae6_cfg(**extra) -> dict:
    cfg = {
        "architecture": "standard",
        "d_in": D,
        "d_sae": 2 * D,
        "dtype": "float32",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "model_name": "gpt2", "hook_name": "blocks.1.hook_resid_pre"},
    }
    cfg.update(extra)
    return cfg


def test_constant_norm_rescale_is_supported(tmp_path):
    g = torch.Generator().manual_seed(3)
    t = {
        "W_enc": torch.randn(D, 64, generator=g),
        "b_enc": torch.randn(64, generator=g) * 0.1,
        "W_dec": torch.randn(64, D, generator=g),
        "b_dec": torch.randn(D, generator=g) * 0.1,
    }
    tc = load_transcoder(str(write_saelens(tmp_path / "a", sae6_cfg(normalize_activations="constant_norm_rescale"), t)))
    assert tc.constant_norm_rescale
    x = torch.randn(50, D, generator=g) * 7
    coeff = D**0.5 / x.norm(dim=-1, keepdim=True)
    f = torch.relu((x * coeff) @ t["W_enc"] + t["b_enc"])
    ref = (f @ t["W_dec"] + t["b_dec"]) / coeff
    with torch.no_grad():
        y, got_f = tc(x)
    torch.testing.assert_close(got_f, f, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)
    # and it survives the native round trip
    from transcoderbench.formats import save_native

    back = load_transcoder(str(save_native(tc, tmp_path / "n")))
    assert back.constant_norm_rescale
    torch.testing.assert_close(back(x)[0], y)


def test_apply_b_dec_to_input_on_a_transcoder_is_noted(tmp_path):
    cfg = sae6_cfg(architecture="transcoder", d_out=D, apply_b_dec_to_input=True)
    cfg["metadata"]["hook_name_out"] = "blocks.1.hook_mlp_out"
    tc = load_transcoder(str(write_saelens(tmp_path / "a", cfg, identity_weights(D))))
    assert any("SAELens itself rejects it for transcoders" in n for n in tc.info["notes"])
    x = torch.randn(5, D)
    torch.testing.assert_close(tc(x)[0], x)  # not subtracted


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("gemma-v3-1b-pt", "google/gemma-3-1b-pt"),
        ("gemma-v3-270m-pt", "google/gemma-3-270m"),
        ("google/gemma-3-4b-it", "google/gemma-3-4b-it"),
    ],
)
def test_gemma_scope_2_model_name_is_normalised_as_saelens_does(tmp_path, raw, expected):
    folder = tmp_path / "transcoder_all" / "layer_1_width_16k_l0_small"
    folder.mkdir(parents=True)
    w = identity_weights(D)
    tensors = {"w_enc": w["W_enc"], "w_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"]}
    save_file({**tensors, "threshold": torch.zeros(2 * D)}, str(folder / "params.safetensors"))
    cfg = {
        "hf_hook_point_in": "model.layers.1.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.1.post_feedforward_layernorm.output",
        "model_name": raw,
        "type": "transcoder",
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    tc = load_transcoder(str(folder))
    assert tc.info["model_name"] == expected
    assert isinstance(tc, JumpReLUTranscoder)
