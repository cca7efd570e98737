"""The benchmark scripts run end to end (tiny settings, real subprocesses)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_scale_tiny_runs_compare_and_prints_the_figures() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_scale.py"), "--tiny"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "tiny gemma-2 (random init)" in out
    assert re.search(r"tokens read\s+384\b", out), out  # 3 batches x 4 sequences x 32 tokens
    assert re.search(r"tokens/s\s+[\d,]+", out), out
    ratio = float(re.search(r"ratio ours / floor\s+([\d.]+)x", out).group(1))  # type: ignore[union-attr]
    assert ratio > 0
    for name in ("jumprelu", "matryoshka"):  # both transcoders evaluated, with downstream metrics
        assert re.search(rf"{name}: fvu [\d.]+, L0 [\d.]+, delta loss -?[\d.]+", out), out
