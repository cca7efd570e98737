"""The seed's checkpoint directories, written the way the seed wrote them, against the math by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_formats_common import D_IN, D_OUT, D_SAE, MarkerPayload, assert_margin, inputs, torch_out, weights
from transcoderbench.errors import UserError
from transcoderbench.formats import detect_format, load_transcoder
from transcoderbench.transcoders import BatchTopKTranscoder, MatryoshkaTranscoder, TopKTranscoder

THRESHOLD = 0.3125
SEED_CONFIG = {  # json_safe_cfg as the seed wrote it: non-JSON values went through str()
    "model_name": "gemma-2-2b",
    "source_hook_point": "blocks.8.hook_mlp_in",
    "target_hook_point": "blocks.8.hook_mlp_out",
    "source_layer": 8,
    "target_layer": 8,
    "source_act_size": D_IN,
    "target_act_size": D_OUT,
    "act_size": D_IN,
    "dict_size": D_SAE,
    "group_sizes": "[8, 16, 24]",
    "top_k": 6,
    "input_unit_norm": True,
    "dtype": "torch.bfloat16",
    "model_dtype": "torch.bfloat16",
    "aux_penalty": "1/32",
    "lr": 0.0003,
    "sae_type": "matryoshka-transcoder",
    "device": "cuda",
}


def state_dict(seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    sd = {k: torch.from_numpy(v).to(dtype) for k, v in weights(seed).items()}
    sd["threshold"] = torch.tensor(THRESHOLD, dtype=dtype)
    return sd


def write_seed_dir(root: Path, layout: str, config: dict | None = None, payload=None) -> Path:
    """A seed checkpoint directory in one of its three layouts."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config if config is not None else SEED_CONFIG, indent=4))
    obj = payload if payload is not None else state_dict()
    if layout == "sae.pt":
        torch.save(obj, root / "sae.pt")
    elif layout == "checkpoint.pt":
        torch.save({"model_state_dict": obj, "optimizer_state_dict": {"step": 3}, "step": 1000}, root / "checkpoint.pt")
    elif layout == "final.pt":
        (root / "checkpoints").mkdir()
        torch.save(obj, root / "checkpoints" / "final.pt")
        torch.save(state_dict(seed=9), root / "checkpoints" / "step_500.pt")
    else:
        raise ValueError(layout)
    return root


def reference(x: np.ndarray, sd: dict, ends: list[int], unit_norm: bool) -> np.ndarray:
    """The seed's inference forward, written out: standardise, relu, keep > threshold, prefix decode."""
    W_enc, b_enc, W_dec, b_dec = (sd[k].double().numpy() for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    thr = float(sd["threshold"])
    x = x.astype(np.float64)
    if unit_norm:
        mean = x.mean(axis=1, keepdims=True)
        std = (x - mean).std(axis=1, ddof=1, keepdims=True)
        xs = (x - mean) / (std + 1e-5)
    else:
        xs = x
    pre = xs @ W_enc + b_enc
    assert_margin(np.maximum(pre, 0), thr)
    acts = np.maximum(pre, 0)
    f = np.where(acts > thr, acts, 0.0)
    outs = []
    for e in ends:
        y = f[:, :e] @ W_dec[:e] + b_dec
        outs.append(y * std + mean if unit_norm else y)
    return np.stack(outs)


@pytest.mark.parametrize("layout", ["sae.pt", "checkpoint.pt", "final.pt"])
def test_three_layouts_match_the_seed_forward(tmp_path, layout):
    d = write_seed_dir(tmp_path / "run_15000", layout)
    assert detect_format(str(d)) == "legacy"
    tc = load_transcoder(str(d))
    assert isinstance(tc, MatryoshkaTranscoder)
    assert tc.prefix_ends == (8, 24, 48)
    # The seed's hook_mlp_in never fired: it trained on ln2.hook_normalized * ln2.w (issue 9).
    assert (tc.input_site, tc.output_site) == ("blocks.8.ln2.hook_normalized_times_w", "blocks.8.hook_mlp_out")
    assert any("the seed never trained on hook_mlp_in" in n for n in tc.info["notes"])
    assert tc.input_unit_norm and tc.k == 6
    x = inputs()
    ref = reference(x, state_dict(), [8, 24, 48], unit_norm=True)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        got = tc.decode_prefixes(tc.encode(xt), xt).double().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(torch_out(tc, x), ref[-1], rtol=1e-4, atol=1e-4)
    info = tc.info
    assert info["format"] == "legacy" and info["model_name"] == "gemma-2-2b" and info["layer"] == 8
    assert info["training"]["top_k"] == 6 and info["training"]["aux_penalty"] == 1 / 32
    assert info["training"]["group_sizes"] == [8, 16, 24]
    assert any("per-group sizes because they sum to d_sae=48" in n for n in info["notes"])
    if layout == "checkpoint.pt":
        assert any("'model_state_dict' entry" in n for n in info["notes"])
    if layout == "final.pt":
        assert info["source"].endswith("checkpoints/final.pt")
        assert any("final.pt (preferred over step_N.pt" in n for n in info["notes"])


def test_highest_step_when_there_is_no_final(tmp_path):
    d = tmp_path / "run"
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({**SEED_CONFIG, "input_unit_norm": False}))
    for step, seed in ((900, 1), (10000, 2), (2000, 3)):  # numeric, not string, order: 10000 > 2000 > 900
        torch.save(state_dict(seed), d / "checkpoints" / f"step_{step}.pt")
    tc = load_transcoder(str(d))
    assert tc.info["source"].endswith("step_10000.pt")
    assert torch.equal(tc.W_enc, state_dict(2)["W_enc"])
    assert any("no checkpoints/final.pt: read step_10000.pt, the highest step of 3" in n for n in tc.info["notes"])
    # A step file can be chosen by its path; config.json is found one directory up.
    assert torch.equal(load_transcoder(str(d / "checkpoints" / "step_900.pt")).W_enc, state_dict(1)["W_enc"])


@pytest.mark.parametrize(
    ("group_sizes", "ends", "inferred"),
    [
        ("[8, 16, 24]", (8, 24, 48), "per-group sizes because they sum to d_sae=48"),
        ("[24, 16, 8]", (24, 40, 48), "per-group sizes because they sum to d_sae=48"),
        ("[8, 24, 48]", (8, 24, 48), "cumulative prefix ends because the last equals d_sae=48"),
        ([12, 48], (12, 48), "cumulative prefix ends"),
        ("[48]", (48,), "single group"),
    ],
)
def test_prefix_lists_are_decided_by_the_weights(tmp_path, group_sizes, ends, inferred):
    cfg = {**SEED_CONFIG, "group_sizes": group_sizes, "input_unit_norm": "False"}
    tc = load_transcoder(str(write_seed_dir(tmp_path / "r", "sae.pt", cfg)))
    assert tc.prefix_ends == ends
    assert type(tc) is (MatryoshkaTranscoder if len(ends) > 1 else BatchTopKTranscoder)
    assert any(inferred in n for n in tc.info["notes"])
    x = inputs()
    with torch.no_grad():
        xt = torch.from_numpy(x)
        got = tc.decode_prefixes(tc.encode(xt), xt).double().numpy()
    np.testing.assert_allclose(got, reference(x, state_dict(), list(ends), unit_norm=False), rtol=1e-4, atol=1e-4)


def test_prefix_list_matching_neither_reading_is_refused(tmp_path):
    cfg = {**SEED_CONFIG, "group_sizes": "[8, 16, 20]"}
    with pytest.raises(UserError, match=r"group_sizes \[8, 16, 20\] neither sums to d_sae=48 .* nor ends at it"):
        load_transcoder(str(write_seed_dir(tmp_path / "r", "sae.pt", cfg)))


def test_prefix_sizes_key_and_no_prefix_list(tmp_path):
    cfg = {k: v for k, v in SEED_CONFIG.items() if k != "group_sizes"}
    tc = load_transcoder(str(write_seed_dir(tmp_path / "a", "sae.pt", {**cfg, "prefix_sizes": "[16, 32]"})))
    assert tc.prefix_ends == (16, 48)
    plain = load_transcoder(str(write_seed_dir(tmp_path / "b", "sae.pt", cfg)))
    assert type(plain) is BatchTopKTranscoder and plain.architecture == "batchtopk" and plain.prefix_ends == (48,)


def test_string_config_values(tmp_path):
    cfg = {
        **SEED_CONFIG,
        "top_k": "6",
        "dict_size": "48",
        "input_unit_norm": "True",
        "source_act_size": "16",
        "lr": "3e-4",
    }
    tc = load_transcoder(str(write_seed_dir(tmp_path / "r", "sae.pt", cfg)))
    assert tc.k == 6 and tc.input_unit_norm and tc.info["training"]["lr"] == 3e-4
    assert tc.info["training"]["dtype"] == "torch.bfloat16"  # not a literal: kept as written


def test_older_hook_names_with_a_layer(tmp_path):
    cfg = {k: v for k, v in SEED_CONFIG.items() if not k.endswith(("hook_point", "_layer"))}
    cfg.update(layer=17, source_site="mlp_in", target_site="mlp_out")
    tc = load_transcoder(str(write_seed_dir(tmp_path / "a", "sae.pt", cfg)))
    assert (tc.input_site, tc.output_site) == ("blocks.17.ln2.hook_normalized_times_w", "blocks.17.hook_mlp_out")
    assert "config hook `mlp_in` (source_site) read as blocks.17.hook_mlp_in" in tc.info["notes"]
    assert tc.info["layer"] == 17

    # No layer anywhere in the config: --layer supplies it.
    del cfg["layer"]
    tc = load_transcoder(str(write_seed_dir(tmp_path / "b", "sae.pt", cfg)), layer=5)
    assert tc.input_site == "blocks.5.ln2.hook_normalized_times_w"
    with pytest.raises(
        UserError, match="names no layer and the config has none; add layer to the config or set select.layer"
    ):
        load_transcoder(str(tmp_path / "b"))


def test_sae_with_only_hook_point(tmp_path):
    cfg = {
        "hook_point": "blocks.4.hook_resid_pre",
        "dict_size": 48,
        "act_size": 16,
        "top_k": 3,
        "model_name": "gpt2-small",
        "sae_type": "global-matryoshka-topk",
        "group_sizes": "[16, 32]",
    }
    sd = {k: torch.from_numpy(v) for k, v in weights(d_out=D_IN).items()} | {"threshold": torch.tensor(0.2)}
    tc = load_transcoder(str(write_seed_dir(tmp_path / "sae", "sae.pt", cfg, payload=sd)))
    assert tc.input_site == tc.output_site == "blocks.4.hook_resid_pre"
    assert any("read as an SAE" in n for n in tc.info["notes"])
    cfg["sae_type"] = "matryoshka-transcoder"
    (tmp_path / "sae" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="a transcoder config with no output hook"):
        load_transcoder(str(tmp_path / "sae"))


def test_nested_and_prefixed_state_dicts(tmp_path):
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state_dict().items()}, "epoch": 3}
    tc = load_transcoder(str(write_seed_dir(tmp_path / "r", "sae.pt", payload=wrapped)))
    assert torch.equal(tc.W_dec, state_dict()["W_dec"])
    assert any("'state_dict' entry" in n for n in tc.info["notes"])
    assert any("'module.' prefix" in n for n in tc.info["notes"])


def test_bfloat16_weights_become_float32(tmp_path):
    tc = load_transcoder(str(write_seed_dir(tmp_path / "r", "sae.pt", payload=state_dict(dtype=torch.bfloat16))))
    assert tc.W_enc.dtype == torch.float32
    assert torch.equal(tc.W_enc, state_dict(dtype=torch.bfloat16)["W_enc"].float())
    assert "weights stored as bfloat16; converted to float32" in tc.info["notes"]


def test_per_token_topk_without_threshold(tmp_path):
    sd = {k: v for k, v in state_dict().items() if k != "threshold"}
    cfg = {**SEED_CONFIG, "sae_type": "topk", "input_unit_norm": False}
    tc = load_transcoder(str(write_seed_dir(tmp_path / "r", "sae.pt", cfg, payload=sd)))
    assert isinstance(tc, TopKTranscoder) and tc.k == 6


def test_pickled_object_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code_ran"
    evil = {**state_dict(), "extra": MarkerPayload(marker)}
    d = write_seed_dir(tmp_path / "r", "sae.pt", payload=evil)
    with pytest.raises(UserError, match=r"sae.pt: refused: it holds pickled Python objects"):
        load_transcoder(str(d))
    assert not marker.exists()
    torch.load(d / "sae.pt", weights_only=False)  # an unsafe load would have run it
    assert marker.exists()


def test_missing_weights_are_listed(tmp_path):
    sd = {k: v for k, v in state_dict().items() if k not in ("W_dec", "threshold")}
    with pytest.raises(UserError, match=r"missing weights W_dec, threshold \(found: W_enc, b_dec, b_enc\)"):
        load_transcoder(str(write_seed_dir(tmp_path / "r", "sae.pt", payload=sd)))


def test_shapes_against_config_and_each_other(tmp_path):
    # The weights decide the width; a disagreeing dict_size is noted (issue 9), not refused.
    tc = load_transcoder(str(write_seed_dir(tmp_path / "a", "sae.pt", {**SEED_CONFIG, "dict_size": 64})))
    assert tc.d_sae == 48 and any("dict_size 64 disagrees with the weights (48 latents)" in n for n in tc.info["notes"])
    sd = state_dict()
    sd["W_dec"] = sd["W_dec"][:40]
    with pytest.raises(UserError, match=r"W_enc is \[16, 48\] \(\[d_in, d_sae\]\) but W_dec is \[40, 12\]"):
        load_transcoder(str(write_seed_dir(tmp_path / "b", "sae.pt", payload=sd)))
    sd = state_dict()
    sd["threshold"] = torch.zeros(3)
    with pytest.raises(UserError, match=r"threshold has shape \[3\], expected a single number"):
        load_transcoder(str(write_seed_dir(tmp_path / "c", "sae.pt", payload=sd)))


def test_nan_weights_are_refused(tmp_path):
    sd = state_dict()
    sd["b_enc"][5] = float("nan")
    with pytest.raises(UserError, match="weights b_enc contain NaN or Inf"):
        load_transcoder(str(write_seed_dir(tmp_path / "r", "sae.pt", payload=sd)))


def test_broken_config_and_checkpoint_files(tmp_path):
    d = write_seed_dir(tmp_path / "r", "sae.pt")
    (d / "config.json").write_text('{"dict_size": 48,\n "top_k": }')
    with pytest.raises(UserError, match=r"config.json: not valid JSON \(line 2, column 11"):
        load_transcoder(str(d))
    d2 = write_seed_dir(tmp_path / "r2", "sae.pt")
    (d2 / "sae.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="sae.pt: not a PyTorch checkpoint|sae.pt: not a readable PyTorch checkpoint"):
        load_transcoder(str(d2))
    d3 = tmp_path / "r3"
    d3.mkdir()
    (d3 / "sae.pt").write_bytes(b"")
    with pytest.raises(UserError, match="no config.json next to it"):
        load_transcoder(str(d3 / "sae.pt"))
