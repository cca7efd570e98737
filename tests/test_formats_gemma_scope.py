"""Gemma Scope 1 and 2 from files, local snapshots and hub ids (an offline HF cache laid out
exactly like huggingface_hub's), checked against the JumpReLU math written out in numpy."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from test_formats_common import D_IN, D_SAE, MarkerPayload, assert_margin, inputs, make_hub_cache, torch_out, weights
from transcoderbench.errors import UserError
from transcoderbench.formats import detect_format, load_transcoder
from transcoderbench.transcoders import JumpReLUTranscoder

GS1_REPO = "google/gemma-scope-2b-pt-transcoders"
GS2_REPO = "google/gemma-scope-2-1b-pt"
D = D_IN  # Gemma Scope transcoders map d_model -> d_model


def gs_params(seed: int) -> dict[str, np.ndarray]:
    w = weights(seed, d_out=D)
    w["threshold"] = (np.abs(np.random.default_rng(seed + 100).standard_normal(D_SAE)) * 0.3).astype(np.float32)
    return w


def npz_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **gs_params(seed))
    return buf.getvalue()


def jumprelu_reference(x: np.ndarray, p: dict[str, np.ndarray], skip: np.ndarray | None = None) -> np.ndarray:
    """pre = x@W_enc+b_enc; f = pre*(pre>threshold); y = f@W_dec+b_dec (+ x@A)."""
    x = x.astype(np.float64)
    pre = x @ p["W_enc"].astype(np.float64) + p["b_enc"]
    assert_margin(pre, p["threshold"])
    f = pre * (pre > p["threshold"])
    y = f @ p["W_dec"].astype(np.float64) + p["b_dec"]
    return y + x @ skip.astype(np.float64) if skip is not None else y


def write_gs1_tree(root: Path, spec: dict[tuple[int, str, int], int]) -> None:
    for (layer, width, l0), seed in spec.items():
        p = root / f"layer_{layer}" / f"width_{width}" / f"average_l0_{l0}" / "params.npz"
        p.parent.mkdir(parents=True)
        p.write_bytes(npz_bytes(seed))


# --------------------------------------------------------------------------- Gemma Scope 1
def test_gs1_direct_file_matches_the_jumprelu_math(tmp_path):
    root = tmp_path / "gs"
    write_gs1_tree(root, {(17, "16k", 12): 0})
    path = root / "layer_17" / "width_16k" / "average_l0_12" / "params.npz"
    assert detect_format(str(path)) == "gemma_scope_1"
    tc = load_transcoder(str(path))
    assert isinstance(tc, JumpReLUTranscoder)
    assert (tc.input_site, tc.output_site) == ("blocks.17.ln2.hook_normalized", "blocks.17.hook_mlp_out")
    assert tc.prefix_ends == (D_SAE,) and not tc.input_unit_norm and tc.W_skip is None
    x = inputs()
    np.testing.assert_allclose(torch_out(tc, x), jumprelu_reference(x, gs_params(0)), rtol=1e-4, atol=1e-4)
    assert tc.info["format"] == "gemma_scope_1" and tc.info["layer"] == 17
    assert tc.info["model_name"] == "google/gemma-2-2b"
    assert tc.info["training"] == {"d_sae": D_SAE, "width": "16k", "average_l0": 12}


def test_gs1_file_without_a_layer_in_its_path(tmp_path):
    path = tmp_path / "params.npz"
    path.write_bytes(npz_bytes(1))
    with pytest.raises(UserError, match="its path names no layer"):
        load_transcoder(str(path))
    tc = load_transcoder(str(path), layer=6)
    assert tc.output_site == "blocks.6.hook_mlp_out"
    assert any("taken from select.layer" in n for n in tc.info["notes"])
    write_gs1_tree(tmp_path / "gs", {(2, "16k", 5): 1})
    with pytest.raises(UserError, match="is the layer-2 transcoder but select.layer is 3"):
        load_transcoder(str(tmp_path / "gs" / "layer_2" / "width_16k" / "average_l0_5" / "params.npz"), layer=3)


def test_gs1_snapshot_picks_layer_width_and_lowest_l0(tmp_path):
    root = tmp_path / "gemma_scope_2b"
    write_gs1_tree(
        root, {(17, "16k", 40): 1, (17, "16k", 12): 2, (17, "16k", 120): 3, (17, "65k", 9): 4, (5, "16k", 7): 5}
    )
    assert detect_format(str(root)) == "gemma_scope_1"
    with pytest.raises(UserError, match=r"several layers \(5, 17\); choose one with select.layer"):
        load_transcoder(str(root))
    with pytest.raises(UserError, match=r"layer 17 has several widths \(16k, 65k\); choose one with select.width"):
        load_transcoder(str(root), layer=17)
    tc = load_transcoder(str(root), layer=17, width="16k")
    assert tc.info["training"]["average_l0"] == 12  # the lowest, not the first listed
    assert "chose L0 variant 12, the lowest of 12, 40, 120 (set select.l0 to choose another)" in tc.info["notes"]
    x = inputs()
    np.testing.assert_allclose(torch_out(tc, x), jumprelu_reference(x, gs_params(2)), rtol=1e-4, atol=1e-4)
    assert load_transcoder(str(root), layer=17, width="width_16k", l0=120).info["training"]["average_l0"] == 120
    assert load_transcoder(str(root), layer=17, width="65536").info["training"]["average_l0"] == 9
    with pytest.raises(UserError, match=r"no L0 variant 13 for layer 17; available: 12, 40, 120"):
        load_transcoder(str(root), layer=17, width="16k", l0=13)
    with pytest.raises(UserError, match=r"no transcoder for layer 3; available layers: 5, 17"):
        load_transcoder(str(root), layer=3)
    with pytest.raises(UserError, match=r"no width '1m' for layer 17; available widths: 16k, 65k"):
        load_transcoder(str(root), layer=17, width="1m")
    # Any level of the snapshot works: the layer folder picks its only layer.
    assert load_transcoder(str(root / "layer_5")).info["layer"] == 5


def test_gs1_object_arrays_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "code_ran"
    p = gs_params(0)
    p["threshold"] = np.array([MarkerPayload(marker)], dtype=object)
    path = tmp_path / "layer_1" / "width_16k" / "average_l0_3" / "params.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, **p)
    with pytest.raises(UserError, match=r"params.npz: refused: array 'threshold' holds pickled Python objects"):
        load_transcoder(str(path))
    assert not marker.exists()
    np.load(path, allow_pickle=True)["threshold"]  # an unsafe load would have run it
    assert marker.exists()


def test_gs1_bad_files(tmp_path):
    path = tmp_path / "layer_1" / "width_16k" / "average_l0_3" / "params.npz"
    path.parent.mkdir(parents=True)
    p = gs_params(0)
    np.savez(path, **{k: v for k, v in p.items() if k != "threshold"})
    with pytest.raises(UserError, match=r"missing weights threshold \(found: W_dec, W_enc, b_dec, b_enc\)"):
        load_transcoder(str(path))
    np.savez(path, **{**p, "threshold": p["threshold"][:10]})
    with pytest.raises(UserError, match=r"threshold has shape \[10\], expected \[48\]"):
        load_transcoder(str(path))
    np.savez(path, **{**p, "W_enc": np.where(np.arange(D_SAE) == 4, np.inf, p["W_enc"]).astype(np.float32)})
    with pytest.raises(UserError, match="weights W_enc contain NaN or Inf"):
        load_transcoder(str(path))
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="not a readable .npz archive"):
        load_transcoder(str(path))


# --------------------------------------------------------------------------- Gemma Scope 2
def gs2_folder_files(
    layer: int, seed: int, *, affine: bool, l0: int = 20, kind: str = "transcoder"
) -> dict[str, bytes]:
    p = gs_params(seed)
    tensors = {k.lower(): torch.from_numpy(v) for k, v in p.items()}
    if affine:
        tensors["affine_skip_connection"] = torch.from_numpy(skip_matrix(seed))
    config = {
        "hf_hook_point_in": f"model.layers.{layer}.pre_feedforward_layernorm.output",
        "hf_hook_point_out": f"model.layers.{layer}.post_feedforward_layernorm.output",
        "width": D_SAE,
        "model_name": "google/gemma-3-1b-pt",
        "architecture": "jump_relu",
        "l0": l0,
        "affine_connection": affine,
        "type": kind,
    }
    return {"config.json": json.dumps(config).encode(), "params.safetensors": st_save(tensors)}


def skip_matrix(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed + 7).standard_normal((D, D)) * 0.2).astype(np.float32)


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_gs2_affine_folder_matches_the_math(tmp_path):
    folder = write_folder(
        tmp_path / "transcoder_all" / "layer_5_width_16k_l0_big_affine", gs2_folder_files(5, 3, affine=True)
    )
    assert detect_format(str(folder)) == "gemma_scope_2"
    tc = load_transcoder(str(folder))
    assert (tc.input_site, tc.output_site) == (
        "model.layers.5.pre_feedforward_layernorm.output",
        "model.layers.5.post_feedforward_layernorm.output",
    )
    assert tc.W_skip is not None and tc.info["layer"] == 5 and tc.info["model_name"] == "google/gemma-3-1b-pt"
    x = inputs()
    np.testing.assert_allclose(
        torch_out(tc, x), jumprelu_reference(x, gs_params(3), skip=skip_matrix(3)), rtol=1e-4, atol=1e-4
    )
    # y += x @ A, not x @ A.T: the two differ for this (non-symmetric) A.
    assert not np.allclose(skip_matrix(3), skip_matrix(3).T)
    assert tc.info["training"]["l0"] == 20 and tc.info["training"]["affine_connection"] is True


def test_gs2_plain_folder_and_its_params_file(tmp_path):
    folder = write_folder(tmp_path / "f", gs2_folder_files(2, 4, affine=False))
    tc = load_transcoder(str(folder / "params.safetensors"))
    assert tc.W_skip is None
    x = inputs()
    np.testing.assert_allclose(torch_out(tc, x), jumprelu_reference(x, gs_params(4)), rtol=1e-4, atol=1e-4)


def test_gs2_refusals(tmp_path):
    files = gs2_folder_files(2, 4, affine=False)
    clt = write_folder(
        tmp_path / "clt",
        {**files, "config.json": json.dumps({**json.loads(files["config.json"]), "type": "clt"}).encode()},
    )
    with pytest.raises(UserError, match="a Gemma Scope 2 clt reads or writes several layers"):
        load_transcoder(str(clt))
    cfg = json.loads(files["config.json"])
    del cfg["hf_hook_point_out"]
    no_out = write_folder(tmp_path / "noout", {**files, "config.json": json.dumps(cfg).encode()})
    with pytest.raises(UserError, match="a transcoder config without hf_hook_point_out"):
        load_transcoder(str(no_out))
    cfg = {**json.loads(files["config.json"]), "affine_connection": True}
    lying = write_folder(tmp_path / "lying", {**files, "config.json": json.dumps(cfg).encode()})
    with pytest.raises(UserError, match="says affine_connection but there is no affine_skip_connection tensor"):
        load_transcoder(str(lying))
    cfg = {**json.loads(files["config.json"]), "width": 16384}
    wrong_width = write_folder(tmp_path / "width", {**files, "config.json": json.dumps(cfg).encode()})
    with pytest.raises(UserError, match="the config says d_sae=16384 but the weights have d_sae=48"):
        load_transcoder(str(wrong_width))


def test_gs2_snapshot_chooses_transcoders_and_lists_variants(tmp_path):
    root = tmp_path / "gemma-scope-2-1b-pt"
    write_folder(root / "transcoder_all" / "layer_5_width_16k_l0_small", gs2_folder_files(5, 1, affine=False))
    write_folder(root / "transcoder_all" / "layer_5_width_16k_l0_big", gs2_folder_files(5, 2, affine=False))
    write_folder(root / "transcoder_all" / "layer_5_width_16k_l0_medium", gs2_folder_files(5, 3, affine=False))
    write_folder(
        root / "resid_post_all" / "layer_5_width_16k_l0_small", gs2_folder_files(5, 4, affine=False, kind="sae")
    )
    assert detect_format(str(root)) == "gemma_scope_2"
    tc = load_transcoder(str(root))
    assert (
        "chose L0 variant small, the lowest of small, medium, big (set select.l0 to choose another)" in tc.info["notes"]
    )
    assert torch.equal(tc.W_enc, torch.from_numpy(gs_params(1)["W_enc"]))
    assert torch.equal(load_transcoder(str(root), l0="big").W_enc, torch.from_numpy(gs_params(2)["W_enc"]))
    with pytest.raises(UserError, match="Gemma Scope 2 names its L0 variants small, medium, big"):
        load_transcoder(str(root), l0=20)
    write_folder(root / "transcoder_all" / "layer_5_width_16k_l0_small_affine", gs2_folder_files(5, 5, affine=True))
    with pytest.raises(
        UserError, match=r"several Gemma Scope 2 variants match \(.*layer_5_width_16k_l0_small_affine.*\)"
    ):
        load_transcoder(str(root))


# ------------------------------------------------------------------------------- hub ids
@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_gs1_hub_id_reads_only_the_chosen_file(offline_cache):
    garbage = b"not an npz: reading this file would fail"
    files = {
        "README.md": b"# Gemma Scope",
        "layer_17/width_16k/average_l0_12/params.npz": npz_bytes(5),
        "layer_17/width_16k/average_l0_40/params.npz": garbage,
        "layer_17/width_16k/average_l0_80/params.npz": garbage,
        "layer_3/width_16k/average_l0_9/params.npz": garbage,
    }
    make_hub_cache(offline_cache, GS1_REPO, files)
    assert detect_format(GS1_REPO) == "hub"
    tc = load_transcoder(GS1_REPO, layer=17)
    assert tc.info["source"] == f"{GS1_REPO}:layer_17/width_16k/average_l0_12/params.npz"
    assert tc.info["revision"] == "0123456789abcdef" * 2 + "01234567"
    assert tc.info["model_name"] == "google/gemma-2-2b" and tc.info["layer"] == 17
    assert any("offline" in n for n in tc.info["notes"])
    x = inputs()
    np.testing.assert_allclose(torch_out(tc, x), jumprelu_reference(x, gs_params(5)), rtol=1e-4, atol=1e-4)
    # The subpath form names the variant directly.
    tc2 = load_transcoder(f"{GS1_REPO}/layer_17/width_16k/average_l0_12")
    assert torch.equal(tc2.W_dec, tc.W_dec)
    with pytest.raises(UserError, match=r"several layers \(3, 17\); choose one with select.layer"):
        load_transcoder(GS1_REPO)
    with pytest.raises(UserError, match="has no file or folder 'layer_99'"):
        load_transcoder(f"{GS1_REPO}/layer_99")


def test_gs2_hub_id_downloads_one_folder(offline_cache):
    garbage = b"unreadable"
    good = gs2_folder_files(7, 6, affine=True)
    files = {
        **{f"transcoder_all/layer_7_width_16k_l0_small_affine/{n}": d for n, d in good.items()},
        "transcoder_all/layer_7_width_16k_l0_big_affine/config.json": garbage,
        "transcoder_all/layer_7_width_16k_l0_big_affine/params.safetensors": garbage,
        "resid_post_all/layer_7_width_16k_l0_small/config.json": garbage,
        "resid_post_all/layer_7_width_16k_l0_small/params.safetensors": garbage,
    }
    make_hub_cache(offline_cache, GS2_REPO, files)
    tc = load_transcoder(GS2_REPO)
    assert tc.info["source"] == f"{GS2_REPO}:transcoder_all/layer_7_width_16k_l0_small_affine"
    x = inputs()
    np.testing.assert_allclose(
        torch_out(tc, x), jumprelu_reference(x, gs_params(6), skip=skip_matrix(6)), rtol=1e-4, atol=1e-4
    )
    tc2 = load_transcoder(f"{GS2_REPO}/transcoder_all/layer_7_width_16k_l0_small_affine")
    assert torch.equal(tc2.W_skip, tc.W_skip)


def test_hub_repo_missing_from_the_offline_cache(offline_cache):
    with pytest.raises(
        UserError, match=r"google/gemma-scope-2b-pt-transcoders is not in the Hugging Face cache at .*hf-cache"
    ):
        load_transcoder(GS1_REPO)
    make_hub_cache(offline_cache, GS1_REPO, {"layer_1/width_16k/average_l0_3/params.npz": npz_bytes(0)})
    with pytest.raises(UserError, match=r"no transcoder for layer 2; available layers: 1"):
        load_transcoder(GS1_REPO, layer=2)
