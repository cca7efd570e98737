"""`train` under torchrun: 2 gloo processes on CPU train one transcoder data-parallel and end with
the weights of a 1-process run on the same tokens and the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transcoderbench.formats import load_transcoder
from transcoderbench.io import load_safetensors

#: Float32 sums of two half-batch gradients differ from one whole-batch sum in the last bits, and
#: Adam's first steps divide by sqrt(v) ~ |g|, so differences of ~1e-7 relative can grow to ~1e-6
#: over a few steps; 1e-5 holds with margin, and real divergence (wrong shard, missing all-reduce)
#: shows up at 1e-2 or more.
TOLERANCE = 1e-5


def args(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model", str(model), "--layer", "1", "--architecture", "matryoshka", "--group_sizes", "8,24",
        "--dict_size", "32", "--top_k", "4", "--top_k_aux", "8", "--dead_window", "256",
        "--batch_tokens", "128", "--token_budget", str(128 * 6), "--seq_len", "32", "--lm_batch_size", "4",
        "--buffer_tokens", "640", "--lr", "0.01", "--warmup_steps", "1", "--dataset", "builtin:stdlib-docstrings",
        "--device", "cpu", "--no-progress", "--output_dir", str(out), *extra,
    ]  # fmt: skip


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=600)


def torchrun(n: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    one = run([sys.executable, "-m", "transcoderbench", *args(model, tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr
    # a small buffer: several refills, so the shard reading and gathering run more than once
    two = run(
        [*torchrun(2), "-m", "transcoderbench", *args(model, tmp_path / "two", "--checkpoint_every", "3")], tmp_path
    )
    assert two.returncode == 0, two.stderr
    tc = load_transcoder(str(tmp_path / "two"))
    assert tc.info["training"]["world_size"] == 2
    assert tc.info["training"]["max_weight_difference_between_ranks"] == 0.0  # identical on every rank
    a, b = (
        load_safetensors(tmp_path / "one" / "model.safetensors"),
        load_safetensors(tmp_path / "two" / "model.safetensors"),
    )
    print("largest difference to one process:", max(float((a[k] - b[k]).abs().max()) for k in a))
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=TOLERANCE, atol=TOLERANCE), (key, (a[key] - b[key]).abs().max())
    lines = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert {m["world_size"] for m in lines} == {2}
    ref = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [m["step"] for m in ref]
    assert [m["l0"] for m in lines] == [m["l0"] for m in ref]  # the same tokens, the same selections
    assert [m["loss"] for m in lines] == pytest.approx([m["loss"] for m in ref], rel=TOLERANCE)


SIDE_BY_SIDE = """
import sys
from transcoderbench.train import make_config, train
common = dict(model=sys.argv[1], layer=1, dict_size=32, top_k=4, top_k_aux=8, batch_size=128, token_budget=512,
              seq_len=32, lm_batch_size=4, buffer_tokens=640, lr=0.01, warmup_steps=1, device="cpu", progress=False,
              dataset="builtin:stdlib-docstrings")
configs = [make_config({**common, "architecture": a, "output_dir": f"{sys.argv[2]}/{a}"}) for a in ("topk", "batchtopk")]
train(configs, names=["topk", "batchtopk"], log=lambda m: None)
"""


@pytest.mark.slow
def test_two_transcoders_from_one_buffer_under_torchrun(tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    (tmp_path / "side.py").write_text(SIDE_BY_SIDE)
    for n, where in ((1, "one"), (2, "two")):
        done = run([*torchrun(n), str(tmp_path / "side.py"), str(model), str(tmp_path / where)], tmp_path)
        assert done.returncode == 0, done.stderr
    for arch in ("topk", "batchtopk"):
        a = load_safetensors(tmp_path / "one" / arch / "model.safetensors")
        b = load_safetensors(tmp_path / "two" / arch / "model.safetensors")
        assert all(torch.allclose(a[k], b[k], rtol=TOLERANCE, atol=TOLERANCE) for k in a), arch
        assert load_transcoder(str(tmp_path / "two" / arch)).info["training"]["world_size"] == 2
