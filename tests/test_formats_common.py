"""Shared pieces of the format tests (tiny weights, a real HF cache layout, numpy references),
and tests of the helpers every reader uses: config parsing, site names, atomic writes, detection."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from transcoderbench.errors import UserError
from transcoderbench.formats import detect_format, load_transcoder, save_native
from transcoderbench.formats.common import parse_value
from transcoderbench.io import atomic_directory
from transcoderbench.lm.sites import canonical_site
from transcoderbench.transcoders import BatchTopKTranscoder

D_IN, D_SAE, D_OUT = 16, 48, 12


# ----------------------------------------------------------------------------- helpers
def weights(seed: int = 0, d_in: int = D_IN, d_sae: int = D_SAE, d_out: int = D_OUT) -> dict[str, np.ndarray]:
    """Random float32 weights in the ``x @ W`` convention."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": (rng.standard_normal((d_in, d_sae)) * 0.4).astype(np.float32),
        "b_enc": (rng.standard_normal(d_sae) * 0.2).astype(np.float32),
        "W_dec": (rng.standard_normal((d_sae, d_out)) * 0.4).astype(np.float32),
        "b_dec": (rng.standard_normal(d_out) * 0.1).astype(np.float32),
    }


def inputs(seed: int = 1, n: int = 64, d_in: int = D_IN) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, d_in)) * 1.5 + 0.3).astype(np.float32)


def assert_margin(pre: np.ndarray, threshold: np.ndarray | float, margin: float = 1e-5) -> None:
    """Float32 vs float64 rounding must not flip a threshold comparison in these tests."""
    assert np.min(np.abs(pre - threshold)) > margin, "test data sits on a threshold; change the seed"


def torch_out(tc, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y, _ = tc(torch.from_numpy(x))
    return y.double().numpy()


def make_hub_cache(
    cache: Path, repo: str, files: dict[str, bytes], commit: str = "0123456789abcdef" * 2 + "01234567"
) -> Path:
    """The real huggingface_hub cache layout: blobs, a snapshot of relative symlinks, refs/main."""
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit
    for rel, data in files.items():
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


class MarkerPayload:
    """Unpickling this object creates ``marker``: proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# ------------------------------------------------------------------- config values
@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("[1152, 2304]", [1152, 2304]),
        ("1/32", 1 / 32),
        ("True", True),
        ("False", False),
        ("None", None),
        ("3e-4", 3e-4),
        ("96", 96),
        ("torch.bfloat16", "torch.bfloat16"),
        ("gemma-2-2b", "gemma-2-2b"),
        ("__import__('os').system('x')", "__import__('os').system('x')"),
        (7, 7),
    ],
)
def test_parse_value_reads_literals_and_fractions_only(raw, parsed):
    assert parse_value(raw) == parsed


def test_canonical_site_names():
    assert canonical_site("mlp_in", 17, key="k", source="c") == (
        "blocks.17.hook_mlp_in",
        "config hook `mlp_in` (k) read as blocks.17.hook_mlp_in",
    )
    assert canonical_site("hook_mlp_out", 3, key="k", source="c")[0] == "blocks.3.hook_mlp_out"
    assert canonical_site("ln2.hook_normalized", 3, key="k", source="c")[0] == "blocks.3.ln2.hook_normalized"
    assert canonical_site("blocks.8.hook_resid_mid", None, key="k", source="c") == ("blocks.8.hook_resid_mid", None)
    hf = "model.layers.5.pre_feedforward_layernorm.output"
    assert canonical_site(hf, None, key="k", source="c") == (hf, None)
    with pytest.raises(UserError, match="names no layer"):
        canonical_site("mlp_in", None, key="hook_point", source="cfg.json")


# ------------------------------------------------------------------- atomic writes
def _tiny() -> BatchTopKTranscoder:
    w = {k: torch.from_numpy(v) for k, v in weights().items()}
    return BatchTopKTranscoder(
        w["W_enc"],
        w["b_enc"],
        w["W_dec"],
        w["b_dec"],
        input_site="blocks.1.hook_mlp_in",
        output_site="blocks.1.hook_mlp_out",
        threshold=0.1,
        k=4,
    )


def test_atomic_write_failure_leaves_the_old_checkpoint(tmp_path):
    target = tmp_path / "ckpt"
    save_native(_tiny(), target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    loop: dict = {}
    loop["self"] = loop  # json cannot write a cycle: the save fails half way
    with pytest.raises(RecursionError):
        save_native(_tiny(), target, extra_config=loop)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind


def test_atomic_write_refuses_to_replace_an_unrelated_directory(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="does not hold a transcoderbench checkpoint"):
        save_native(_tiny(), target)
    assert (target / "notes.txt").read_text() == "keep me"
    file_target = tmp_path / "afile"
    file_target.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        save_native(_tiny(), file_target)


def test_atomic_directory_replaces_in_one_step(tmp_path):
    target = tmp_path / "d"
    with atomic_directory(target, replaceable=lambda p: True, kind="test") as tmp:
        (tmp / "a").write_text("1")
    with atomic_directory(target, replaceable=lambda p: True, kind="test") as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0o700


# ------------------------------------------------------------------------- detection
def test_detect_format_errors_name_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        detect_format(str(tmp_path / "missing"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.md").write_text("hi")
    with pytest.raises(UserError, match=r"not a transcoder checkpoint \(it holds readme.md\); expected config.json"):
        detect_format(str(tmp_path / "junk"))
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(UserError, match="not a file transcoderbench reads"):
        load_transcoder(str(tmp_path / "weights.bin"))


def test_relative_path_that_does_not_exist_is_not_silently_a_hub_repo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert detect_format("checkpoints/run_1") == "hub"
    with pytest.raises(
        UserError,
        match=r"checkpoints/run_1: no such file or directory, and checkpoints/run_1 is not in the Hugging Face cache",
    ):
        load_transcoder("checkpoints/run_1")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    path = tmp_path / "params.npz"
    np.savez(path, **weights(), threshold=np.zeros(D_SAE, np.float32))
    path.chmod(0)
    with pytest.raises(UserError, match="cannot read"):
        load_transcoder(str(path), layer=0)


def test_git_lfs_pointer_is_explained(tmp_path):
    path = tmp_path / "layer_3" / "width_16k" / "average_l0_9" / "params.npz"
    path.parent.mkdir(parents=True)
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 302000000\n")
    with pytest.raises(UserError, match="is a Git LFS pointer, not the weights"):
        load_transcoder(str(path))


def test_marker_payload_really_runs_code_when_unpickled(tmp_path):
    """The safety tests below rely on this payload being live; prove it here."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(MarkerPayload(marker)))
    assert marker.exists()


def test_json_error_names_file_line_and_column(tmp_path):
    d = tmp_path / "ckpt"
    save_native(_tiny(), d)
    (d / "config.json").write_text('{\n  "format": "transcoderbench",\n  "architecture" "batchtopk"\n}')
    with pytest.raises(UserError, match=r"config.json: not valid JSON \(line 3, column 18: Expecting ':' delimiter\)"):
        load_transcoder(str(d))
    json.loads('{"ok": 1}')  # the file above is the only broken JSON here
