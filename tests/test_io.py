"""io.py: the one JSON sanitiser, the one message squasher, and writes that appear whole or not at all."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from transcoderbench.errors import UserError
from transcoderbench.io import atomic_directory, json_ready, one_line, write_files, write_json


def test_json_ready_gives_strict_json():
    value = {
        1: (1.5, float("nan"), float("inf")),
        "np": [np.float32(0.25), np.int64(3), np.bool_(True), np.arange(3)],
        "torch": [torch.tensor(2.5), torch.tensor([1, 2])],
        "path": Path("/a/b"),
        "ok": [None, True, "s"],
    }
    out = json_ready(value)
    assert out == {
        "1": [1.5, None, None],
        "np": [0.25, 3, True, [0, 1, 2]],
        "torch": [2.5, [1, 2]],
        "path": "/a/b",
        "ok": [None, True, "s"],
    }
    json.dumps(out, allow_nan=False)  # strict


def test_one_line():
    assert one_line("a\n  b\tc") == "a b c"
    assert one_line(ValueError()) == "ValueError"
    long = one_line("x" * 500, limit=20)
    assert len(long) == 20 and long.endswith("...")


def test_write_files_renders_everything_before_writing(tmp_path):
    with pytest.raises(ValueError):
        write_files(tmp_path / "out", {"a.txt": "hello", "b.json": {"x": object.__new__(_Unrenderable)}})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    written = write_files(tmp_path / "out", {"a.txt": "hello", "b.json": {"x": math.nan}})
    assert [p.name for p in written] == ["a.txt", "b.json"]
    assert json.loads((tmp_path / "out" / "b.json").read_text()) == {"x": None}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "b.json"]  # no temporaries left


class _Unrenderable:
    def __str__(self) -> str:
        raise ValueError("cannot render")


def test_atomic_directory_with_subfolders_and_failure(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_directory(target, replaceable=lambda d: (d / "marker").exists(), kind="test") as tmp:
        (tmp / "sub").mkdir()
        write_json(tmp / "sub" / "cfg.json", {"a": 1})
        (tmp / "marker").write_text("")
    assert json.loads((target / "sub" / "cfg.json").read_text()) == {"a": 1}
    with pytest.raises(RuntimeError), atomic_directory(target, replaceable=lambda d: True, kind="test") as tmp:
        (tmp / "partial").write_text("x")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["marker", "sub"]  # unchanged
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary left beside it
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match="does not hold a test checkpoint"):
        with atomic_directory(other, replaceable=lambda d: False, kind="test"):
            pass
    assert (other / "precious.txt").read_text() == "keep"


def test_directory_lock_refuses_a_second_writer_and_releases(tmp_path):
    """A second holder (here another process) gets a one-line UserError; after release it works again."""
    import subprocess
    import sys

    from transcoderbench.errors import UserError
    from transcoderbench.io import directory_lock

    target = tmp_path / "out"
    code = (
        "import sys\nfrom transcoderbench.io import directory_lock\nfrom transcoderbench.errors import UserError\n"
        f"try:\n    with directory_lock({str(target)!r}):\n        print('got it')\n"
        "except UserError as e:\n    print('refused:', e)\n"
    )
    with directory_lock(target):
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert other.stdout.startswith("refused:") and "another transcoderbench run" in other.stdout
        assert other.stdout.count("\n") == 1
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout == "got it\n"
    with directory_lock(target):  # reentrant across sequential uses in one process
        pass
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="cannot use this output folder"):
        with directory_lock(tmp_path / "file.txt" / "sub"):
            pass
