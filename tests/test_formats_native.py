"""The native format round-trips every architecture exactly, and refuses broken files clearly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_formats_common import D_IN, D_OUT, D_SAE, inputs, weights
from transcoderbench.errors import UserError
from transcoderbench.formats import detect_format, load_transcoder, save_native
from transcoderbench.transcoders import ARCHITECTURES, Transcoder

PROVENANCE = ("format", "source", "converted_from")


def make(arch: str, *, skip: bool = False, unit_norm: bool = False, prefixes=None, seed: int = 0) -> Transcoder:
    """One transcoder of each architecture with every optional part switched on when asked."""
    w = {k: torch.from_numpy(v) for k, v in weights(seed).items()}
    g = torch.Generator().manual_seed(seed)
    kwargs = {
        "matryoshka_batchtopk": {"threshold": 0.125, "k": 6},
        "batchtopk": {"threshold": 0.0625, "k": 5},
        "jumprelu": {"threshold": torch.rand(D_SAE, generator=g) * 0.3},
        "topk": {"k": 7},
    }[arch]  # a new architecture must be added here, so its round trip is tested too
    return ARCHITECTURES[arch](
        w["W_enc"],
        w["b_enc"],
        w["W_dec"],
        w["b_dec"],
        input_site="blocks.3.hook_mlp_in",
        output_site="blocks.3.hook_mlp_out",
        prefix_ends=prefixes,
        input_unit_norm=unit_norm,
        W_skip=torch.randn(D_IN, D_OUT, generator=g) * 0.1 if skip else None,
        info={
            "model_name": "tiny/model",
            "layer": 3,
            "training": {"top_k": 6, "lr": 3e-4},
            "notes": ["made in a test"],
        },
        **kwargs,
    )


VARIANTS = [
    (arch, skip, unit_norm, prefixes)
    for arch in ARCHITECTURES
    for skip, unit_norm, prefixes in ((False, False, None), (True, True, [8, 20, D_SAE]))
]


@pytest.mark.parametrize(("arch", "skip", "unit_norm", "prefixes"), VARIANTS)
def test_native_round_trip_is_exact(tmp_path, arch, skip, unit_norm, prefixes):
    tc = make(arch, skip=skip, unit_norm=unit_norm, prefixes=prefixes)
    out = save_native(tc, tmp_path / "ckpt", extra_config={"dataset": "fineweb"})
    assert out == tmp_path / "ckpt"
    assert detect_format(str(out)) == "native"
    back = load_transcoder(str(out))

    assert type(back) is type(tc)
    assert back.describe() == tc.describe()
    assert back.hyperparameters() == tc.hyperparameters()
    assert (back.input_site, back.output_site, back.prefix_ends, back.input_unit_norm) == (
        tc.input_site,
        tc.output_site,
        tc.prefix_ends,
        tc.input_unit_norm,
    )
    a, b = tc.tensors(), back.tensors()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype == torch.float32
        assert torch.equal(a[k], b[k]), k  # bit for bit
    assert {k: v for k, v in back.info.items() if k not in (*PROVENANCE, "extra")} == tc.info
    assert back.info["format"] == "native" and back.info["source"] == str(out)
    assert back.info["extra"] == {"dataset": "fineweb"}

    x = torch.from_numpy(inputs())
    with torch.no_grad():
        assert torch.equal(back(x)[0], tc(x)[0])
        f = tc.encode(x)
        assert torch.equal(back.decode_prefixes(f, x), tc.decode_prefixes(f, x))


def test_native_config_is_readable_and_complete(tmp_path):
    save_native(make("matryoshka_batchtopk", prefixes=[8, D_SAE]), tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["format"] == "transcoderbench" and cfg["format_version"] == 1
    assert cfg["architecture"] == "matryoshka_batchtopk"
    assert (cfg["d_in"], cfg["d_sae"], cfg["d_out"]) == (D_IN, D_SAE, D_OUT)
    assert cfg["prefix_ends"] == [8, D_SAE] and cfg["k"] == 6 and cfg["threshold"] == 0.125
    assert cfg["model_name"] == "tiny/model" and cfg["layer"] == 3
    assert set(cfg["versions"]) == {"transcoderbench", "torch", "safetensors"}
    assert sorted(load_file(str(tmp_path / "c" / "model.safetensors"))) == [
        "W_dec",
        "W_enc",
        "b_dec",
        "b_enc",
        "threshold",
    ]


def test_converted_checkpoint_keeps_its_origin(tmp_path):
    tc = make("batchtopk")
    tc.info.update(format="legacy", source="/old/run/sae.pt")
    back = load_transcoder(str(save_native(tc, tmp_path / "n")))
    assert back.info["converted_from"] == {"format": "legacy", "source": "/old/run/sae.pt"}
    assert back.info["format"] == "native"


def _saved(tmp_path, arch="batchtopk"):
    d = tmp_path / "n"
    save_native(make(arch), d)
    return d, json.loads((d / "config.json").read_text()), load_file(str(d / "model.safetensors"))


def test_missing_weight_is_listed(tmp_path):
    d, _, tensors = _saved(tmp_path)
    del tensors["W_dec"]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(
        UserError, match=r"model.safetensors: missing weights W_dec \(found: W_enc, b_dec, b_enc, threshold\)"
    ):
        load_transcoder(str(d))


def test_config_width_disagreeing_with_weights(tmp_path):
    d, cfg, _ = _saved(tmp_path)
    cfg["d_sae"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"the config says d_sae=64 but the weights have d_sae=48"):
        load_transcoder(str(d))


def test_weights_disagreeing_with_each_other(tmp_path):
    d, _, tensors = _saved(tmp_path)
    tensors["b_enc"] = torch.zeros(D_SAE + 1)
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(UserError, match=r"b_enc has shape \[49\], expected \[48\]"):
        load_transcoder(str(d))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_are_named(tmp_path, bad):
    d, _, tensors = _saved(tmp_path, "jumprelu")
    tensors["W_dec"][3, 2] = bad
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(UserError, match=r"weights W_dec contain NaN or Inf"):
        load_transcoder(str(d))


def test_unknown_architecture_and_newer_version(tmp_path):
    d, cfg, _ = _saved(tmp_path)
    (d / "config.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(UserError, match="unknown architecture 'gated'; expected one of"):
        load_transcoder(str(d))
    (d / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(UserError, match="format_version 99 is newer"):
        load_transcoder(str(d))
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "format"}))
    with pytest.raises(UserError, match="not a transcoderbench config"):
        load_transcoder(str(d))


def test_corrupt_safetensors(tmp_path):
    d, _, _ = _saved(tmp_path)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match="model.safetensors: not a readable safetensors file"):
        load_transcoder(str(d))


def test_layer_flag_must_match_the_checkpoint(tmp_path):
    d, _, _ = _saved(tmp_path)
    assert load_transcoder(str(d), layer=3).info["layer"] == 3
    with pytest.raises(UserError, match="is a layer-3 transcoder but select.layer is 17"):
        load_transcoder(str(d), layer=17)
    assert "ignored for this native checkpoint" in load_transcoder(str(d), width="16k").info["notes"][-1]


def test_loads_onto_the_requested_device_as_float32(tmp_path):
    tc = make("topk").to(torch.float64)
    back = load_transcoder(str(save_native(tc, tmp_path / "f64")), device="cpu")
    assert back.W_enc.dtype == torch.float32
    assert any("float64" in n and "float32" in n for n in back.info["notes"])
    with pytest.raises(UserError, match="device 'nonsense'"):
        load_transcoder(str(tmp_path / "f64"), device="nonsense")


def test_native_checkpoint_from_a_hub_id(tmp_path, monkeypatch):
    from test_formats_common import make_hub_cache

    tc = make("matryoshka_batchtopk", prefixes=[8, D_SAE])
    local = save_native(tc, tmp_path / "export")
    files = {f"layer3/{p.name}": p.read_bytes() for p in local.iterdir()}
    files["layer9/config.json"] = b"not json: must not be read"
    make_hub_cache(tmp_path / "cache", "someone/transcoders", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    back = load_transcoder("someone/transcoders/layer3")
    assert back.info["source"] == "someone/transcoders:layer3" and back.info["format"] == "native"
    assert back.info["revision"] and back.info["local_path"].endswith("layer3/model.safetensors")
    for k, v in tc.tensors().items():
        assert torch.equal(back.tensors()[k], v)
    with pytest.raises(UserError, match="holds no transcoder layout transcoderbench reads"):
        load_transcoder("someone/transcoders")
