"""benchmarks/eval_overhead.py runs end to end on a tiny model (real subprocesses): ratios, splits, memory."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "eval_overhead.py"
SMALL = ["--layer", "1", "--batch_size", "2", "--seq_len", "16", "--l0", "4", "--threads", "1"]


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_spliced_split_names_every_stage(tiny_model_dir):
    out = run("--model", str(tiny_model_dir("llama")), *SMALL, "--batches", "2", "--repeats", "1", "--split")
    for kind in ("recon", "spliced"):
        ratio = float(re.search(rf"ratio {kind}\s+([\d.]+)x", out).group(1))  # type: ignore[union-attr]
        assert ratio > 0
    spliced = out[out.index("ours spliced per-stage split") :]
    for stage in ("clean forward", "encode", "decode", "later blocks", "head", "CE/KL scoring", "results+bootstrap"):
        assert re.search(rf"\n  {re.escape(stage)}\s+[\d.]+ s", spliced), (stage, out)
    floor = out[out.index("floor spliced per-stage split") : out.index("ours spliced per-stage split")]
    assert "CE/KL" not in floor and "head" in floor and "later blocks" in floor


def test_memory_child_reports_tables_and_glibc_counts(tiny_model_dir):
    out = run("--model", str(tiny_model_dir("llama")), *SMALL, "--batches", "12", "--rss_child").split()
    assert out[0] == "12" and len(out) == 11
    peak_before, peak_after, tables, data = (float(v) for v in out[1:5])
    assert 0 < peak_before <= peak_after
    # Every per-sequence table holds 24 sequences of float64 rows: tiny, but not zero.
    assert 0 < tables < 1
    rss_warm, in_use_warm, free_warm, rss_end, in_use_end, free_end = (float(v) for v in out[5:])
    assert rss_warm > 0 and rss_end > 0 and data >= 0
    if sys.platform.startswith("linux") and not math.isnan(in_use_end):
        assert 0 < in_use_warm < rss_warm and 0 <= free_end
