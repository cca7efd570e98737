"""Shared by the torchrun and resume tests: two tiny transcoders, the CLI as a subprocess, JSON comparison."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from transcoderbench.formats import save_native
from transcoderbench.transcoders import JumpReLUTranscoder, MatryoshkaTranscoder

#: Differ between runs by design (time stamps, timings, the number of processes, the cache).
VOLATILE = {"created", "world_size", "wall_time_s", "probe_wall_time_s"}


def two_transcoders(tmp: Path, d: int) -> tuple[Path, Path]:
    """A Matryoshka BatchTopK and a JumpReLU transcoder at layer 1 of a tiny model of width ``d``."""
    g = torch.Generator().manual_seed(1)
    ours = save_native(
        MatryoshkaTranscoder(
            torch.randn(d, 24, generator=g) * 0.3,
            torch.zeros(24),
            torch.randn(24, d, generator=g) * 0.1,
            torch.zeros(d),
            input_site="blocks.1.hook_mlp_in",
            output_site="blocks.1.hook_mlp_out",
            prefix_ends=[8, 24],
            threshold=0.05,
            k=4,
            info={"layer": 1},
        ),
        tmp / "ours",
    )
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
        tmp / "other",
    )
    return ours, other


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}
    out.pop("TRANSCODERBENCH_FAULT", None)
    out.update(extra)
    return out


def run_cli(*args: str, nproc: int = 1, **extra_env: str) -> subprocess.CompletedProcess:
    """``python -m transcoderbench ...``, or under ``torch.distributed.run`` with ``nproc`` processes."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "transcoderbench", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(free_port()),
            "-m",
            "transcoderbench",
            *args,
        ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(**extra_env), timeout=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_outputs(folder: Path) -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def assert_same_numbers(a: Any, b: Any, rel: float, where: str = "") -> int:
    """Every leaf equal (numbers to ``rel``), except the VOLATILE keys; returns how many numbers were compared."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        return sum(assert_same_numbers(a[k], b[k], rel, f"{where}.{k}") for k in a if k not in VOLATILE)
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{where}: lengths"
        return sum(assert_same_numbers(x, y, rel, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    if isinstance(a, float) and not isinstance(a, bool):
        assert isinstance(b, (int, float)), f"{where}: {a} vs {b}"
        assert math.isclose(a, b, rel_tol=rel, abs_tol=rel * 1e-3), f"{where}: {a} vs {b}"
        return 1
    assert a == b, f"{where}: {a!r} vs {b!r}"
    return 1 if isinstance(a, int) and not isinstance(a, bool) else 0
