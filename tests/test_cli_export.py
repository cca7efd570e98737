"""``transcoderbench export`` / ``convert`` as a subprocess: native checkpoints -> circuit-tracer set and
SAELens folder, read back by our readers with identical encode/decode; refusals exit 2 with no output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from test_formats_export import D, matryoshka, topk_tc
from transcoderbench.formats import load_transcoder, save_native


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "transcoderbench", *args], capture_output=True, text=True, env=env, check=False
    )


def native_checkpoints(tmp_path: Path, layers: list[int]) -> list[str]:
    paths = []
    for layer in layers:
        path = tmp_path / f"layer{layer}"
        save_native(matryoshka(layer, seed=layer), path)
        paths.append(str(path))
    return paths


def test_export_per_layer_checkpoints_to_one_circuit_tracer_set(tmp_path):
    specs = native_checkpoints(tmp_path, [0, 1])
    out = tmp_path / "ct"
    done = cli("export", "--format", "circuit-tracer", "--output_dir", str(out), *specs)
    assert done.returncode == 0, done.stderr
    assert "config.yaml" in done.stdout
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(1))
    for layer, spec in enumerate(specs):
        ours, back = load_transcoder(spec), load_transcoder(str(out), layer=layer)
        torch.testing.assert_close(back.decode_prefixes(back.encode(x), x), ours.decode_prefixes(ours.encode(x), x))


def test_convert_to_saelens_round_trips(tmp_path):
    (spec,) = native_checkpoints(tmp_path, [0])
    out = tmp_path / "sl"
    done = cli("convert", "--format", "saelens", "--output_dir", str(out), spec)
    assert done.returncode == 0, done.stderr
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(2))
    ours, back = load_transcoder(spec), load_transcoder(str(out))
    torch.testing.assert_close(back(x)[0], ours(x)[0])


def test_export_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path):
    path = tmp_path / "topk"
    save_native(topk_tc(layer=0), path)
    out = tmp_path / "ct"
    done = cli("export", "--format", "circuit-tracer", "--output_dir", str(out), str(path))
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and done.stderr.count("\n") == 1, done.stderr
    assert "ReLU and JumpReLU transcoders only" in done.stderr
    assert not out.exists()
    bad = cli("export", "--format", "onnx", "--output_dir", str(out), str(path))
    assert bad.returncode == 2 and "--format" in bad.stderr and not out.exists()
