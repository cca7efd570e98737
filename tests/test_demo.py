"""`transcoderbench demo` end to end on the real built-in SmolLM2, with a tiny token budget."""

from __future__ import annotations

import json

import pytest
import torch

from transcoderbench.cli.demo import run_demo
from transcoderbench.formats import load_transcoder
from transcoderbench.train.demo import SHARED


@pytest.mark.slow
def test_demo_writes_loadable_checkpoints_and_a_comparison(tmp_path, capsys):
    out = tmp_path / "demo"
    # Absorption on SmolLM2 has its own slow test; here the demo's other phases run on a tiny budget.
    paths = run_demo(out, progress=False, eval_batches=2, absorption=False, token_budget=4 * SHARED["batch_size"])
    printed = capsys.readouterr().out
    for name in ("matryoshka", "batchtopk"):
        tc = load_transcoder(str(out / name))
        assert tc.d_sae == SHARED["dict_size"] and tc.k == SHARED["top_k"] and tc.info["layer"] == 10
        assert tc.info["model_name"] == "smollm2-135m" and tc.info["training"]["steps"] == 4
        assert str(out / name) in printed
        assert (out / name / "metrics.jsonl").is_file()
    assert load_transcoder(str(out / "matryoshka")).prefix_ends == (128, 384, 896, 2304)
    comparison = json.loads((out / "comparison" / "comparison.json").read_text())
    assert set(comparison["transcoders"]) == {"matryoshka", "batchtopk"}
    assert comparison["meta"]["dataset"]["name"] == "builtin:pydoc_data.topics"  # held out: not the training text
    assert (out / "comparison" / "summary.txt").is_file() and paths["comparison"] == out / "comparison"
    assert (out / "comparison" / "report.html").is_file()
    for name in ("matryoshka", "batchtopk"):
        m = json.loads((out / "comparison" / f"{name}_metrics.json").read_text())
        assert m["downstream"]["path"] == "resumed" and m["downstream"]["n_tokens"] > 0
    # both transcoders saw the same activations: same initial decoder bias, from the same first buffer
    a, b = (load_transcoder(str(out / n)) for n in ("matryoshka", "batchtopk"))
    assert a.info["training"]["target_scale"] == b.info["training"]["target_scale"]
    assert not torch.equal(a.W_dec, b.W_dec)
