"""Issue 14's fault campaign, one regression test per group: nothing lost, nothing half-written, one line.

Faults that need a kill at an exact step use the named injection points of ``io.fault_point``
(``TRANSCODERBENCH_FAULT=between_renames`` etc.), never timing.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import FAST, assert_user_error, hidden_size, native_matryoshka, run_cli
from transcoderbench.cli import error_line
from transcoderbench.errors import UserError
from transcoderbench.io import (
    SWAP_JOURNAL,
    check_output_folder,
    directory_lock,
    lock_path,
    one_line,
    printable,
    recover_outputs,
    write_files,
)

ROOT = os.geteuid() == 0


def py(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (for faults that kill the process)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )


def old_set(d: Path) -> dict[str, str]:
    d.mkdir(parents=True, exist_ok=True)
    files = {"metrics.json": '{"v": "old"}\n', "summary.txt": "old\n", "report.html": "<p>old</p>\n"}
    for name, text in files.items():
        (d / name).write_text(text)
    (d / "notes.txt").write_text("the user's own file\n")
    return files


NEW = {"metrics.json": {"v": "new"}, "summary.txt": "new\n", "report.html": "<p>new</p>\n"}


def contents(d: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(d.iterdir())}


# ----------------------------------------------------------------------------- item 5: one unit
def test_full_disk_leaves_the_old_set_and_no_temporaries(tmp_path, monkeypatch):
    d = tmp_path / "out"
    before = contents(d) if old_set(d) else {}
    monkeypatch.setenv("TRANSCODERBENCH_FAULT", "disk_full")
    with pytest.raises(UserError, match="No space left.*previous outputs there are unchanged") as err:
        write_files(d, NEW)
    assert "\n" not in str(err.value)
    assert contents(d) == before  # nothing new, nothing missing, no .tmp left


def test_kill_between_renames_is_finished_by_the_next_start(tmp_path):
    d = tmp_path / "out"
    old_set(d)
    code = f"from transcoderbench.io import write_files; write_files({str(d)!r}, {NEW!r})"
    proc = py(code, TRANSCODERBENCH_FAULT="between_renames")
    assert proc.returncode == 137, proc.stderr
    assert (d / SWAP_JOURNAL).is_file()  # killed mid-swap: the journal says what to finish
    recover_outputs(d)  # what every writer (evaluate, compare, report DIR) does first, under the lock
    after = contents(d)
    assert json.loads(after["metrics.json"]) == {"v": "new"}
    assert after["summary.txt"] == "new\n" and after["report.html"] == "<p>new</p>\n"
    assert after["notes.txt"] == "the user's own file\n"
    assert set(after) == {"metrics.json", "summary.txt", "report.html", "notes.txt"}


def test_kill_before_commit_keeps_the_old_set(tmp_path):
    d = tmp_path / "out"
    before = contents(d) if old_set(d) else {}
    code = f"from transcoderbench.io import write_files; write_files({str(d)!r}, {NEW!r})"
    assert py(code, TRANSCODERBENCH_FAULT="before_commit").returncode == 137
    recover_outputs(d)
    assert contents(d) == before


def test_stale_temporaries_are_cleaned_and_user_files_kept(tmp_path):
    d = tmp_path / "out"
    old_set(d)
    (d / ".summary.txt.abc123.tmp").write_text("half")
    (d / ".outputs.tmp-xyz").mkdir()
    (d / ".outputs.tmp-xyz" / "metrics.json").write_text("half")
    (d / ".x.stale-1234").mkdir()
    write_files(d, NEW)
    assert sorted(p.name for p in d.iterdir()) == ["metrics.json", "notes.txt", "report.html", "summary.txt"]


def test_outputs_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        paths = write_files(tmp_path / "out", NEW)
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o644}


def test_killed_gguf_conversion_leaves_nothing_for_good(tmp_path):
    pytest.importorskip("gguf")
    from tiny_models import make_tiny_gguf

    gguf = tmp_path / "tiny.gguf"
    make_tiny_gguf(gguf)
    target = tmp_path / "cache" / "tiny"
    code = (
        "from pathlib import Path; from transcoderbench.lm.loading import cached_gguf_dir; "
        f"cached_gguf_dir(Path({str(gguf)!r}), Path({str(target)!r}))"
    )
    assert py(code, TRANSCODERBENCH_FAULT="during_conversion").returncode == 137
    assert list(target.parent.glob(".tiny.tmp-*"))  # what a kill -9 leaves ...
    from transcoderbench.lm.loading import cached_gguf_dir

    cached_gguf_dir(gguf, target)  # ... is removed by the next start, which converts afresh
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny"]
    assert (target / "source.json").is_file()


# ----------------------------------------------------------------------------- item 4: one writer
def test_second_writer_is_refused_and_the_lock_leaves_nothing(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    ckpt = native_matryoshka(tmp_path / "ckpt", hidden_size(model), model_name=str(model))
    out = tmp_path / "new" / "out"
    with directory_lock(out):
        proc = run_cli("evaluate", "--checkpoint", str(ckpt), "--output_dir", str(out), *FAST)
        assert_user_error(proc, r"another transcoderbench run is writing this output folder")
        assert "loading language model" not in proc.stderr  # refused before any long work
        with pytest.raises(UserError, match="another transcoderbench run"):
            with directory_lock(out):
                pass
    assert not lock_path(out).exists() and not (tmp_path / "new").exists()  # nothing left behind


def test_report_dir_is_locked_too(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    with directory_lock(d):
        proc = run_cli("report", str(d))
    assert_user_error(proc, "another transcoderbench run")


# ----------------------------------------------------------------------------- item 7: flags and outputs
def flag_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "afile").write_text("x")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    return {
        "file_where_folder": (["--output_dir", str(tmp_path / "afile" / "out")], r"afile.* is a file"),
        "symlink_loop": (["--output_dir", str(tmp_path / "loop" / "out")], r"loop.*(resolved|loop)"),
        "variants": (["--variants_per_pass", "-1"], r"--variants_per_pass -1"),
        "device_meta": (["--device", "meta"], r"--device 'meta'"),
        "device_xla": (["--device", "xla"], r"--device 'xla'"),
        "huge_batches": (["--batches", "100000000000000000000"], r"--batches .*between"),
        "huge_resamples": (["--bootstrap_resamples", "1000000000"], r"--bootstrap_resamples .*between"),
        "huge_seed": (["--bootstrap_seed", "100000000000000000000"], r"--bootstrap_seed .*between"),
        "template": (["--absorption", "--absorption_prompt_template", "{word} {x} has"], r"template.*KeyError"),
        "template_brace": (["--absorption", "--absorption_prompt_template", "{word} has {"], r"template"),
        "cache_file": (
            ["--absorption", "--absorption_cache_dir", str(tmp_path / "afile")],
            r"--absorption-cache-dir .*not a folder",
        ),
        "seq_len": (["--seq_len", "4096"], r"--seq_len 4096: longer than .*\(128 positions\)"),
        "math_name": (["--name", "$\\foo$"], r"--name '\$\\\\foo\$'"),
        "long_name": (["--name", "n" * 300], r"--name 'nnn.*1-100 letters"),
    }


CASES = [
    "file_where_folder",
    "symlink_loop",
    "variants",
    "device_meta",
    "device_xla",
    "huge_batches",
    "huge_resamples",
    "huge_seed",
    "template",
    "template_brace",
    "cache_file",
    "seq_len",
    "math_name",
    "long_name",
]


@pytest.mark.parametrize("case", CASES)
def test_flag_mistakes_are_one_line_before_the_pass(tmp_path, tiny_model_dir, case):
    model = tiny_model_dir("llama")
    ckpt = native_matryoshka(tmp_path / "ckpt", hidden_size(model), model_name=str(model))
    extra, pattern = flag_cases(tmp_path)[case]
    fast = [a for a in FAST if a != "--seq-len" and a != "16"] if "--seq_len" in extra else FAST
    if "--absorption" in extra:
        fast = [a for a in fast if a != "--no-absorption"]
    args = ["evaluate", "--checkpoint", str(ckpt), "--no-downstream", *fast, *extra]
    if "--output_dir" not in extra:
        args += ["--output_dir", str(tmp_path / "out")]
    proc = run_cli(*args)
    assert_user_error(proc, pattern)
    assert "evaluated" not in proc.stderr  # no pass ran
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(ROOT, reason="root writes anywhere whatever the permissions")
def test_read_only_output_parent_is_refused_up_front(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match="not writable"):
            check_output_folder(ro / "out")
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- item 7: broken model folders
def broken_model(src: Path, dst: Path, case: str) -> Path:
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    if case == "heads":
        cfg["num_attention_heads"] = 5
    elif case == "hidden_str":
        cfg["hidden_size"] = "big"
    elif case == "shapes":
        cfg["intermediate_size"] = cfg["intermediate_size"] + 8
    elif case == "truncated":
        w = dst / "model.safetensors"
        w.write_bytes(w.read_bytes()[:-1000])
    elif case == "pickled":
        (dst / "model.safetensors").unlink()
        (dst / "pytorch_model.bin").write_bytes(b"\x80\x04\x95not a real pickle")
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("case", ["heads", "hidden_str", "shapes", "truncated", "pickled"])
def test_broken_model_folders_are_one_line(tmp_path, tiny_model_dir, case):
    from transcoderbench.lm import load_language_model

    d = broken_model(tiny_model_dir("llama"), tmp_path / "m", case)
    with pytest.raises(UserError) as err:
        load_language_model(str(d))
    line = error_line(err.value, {"model.name": "--model"})
    assert "\n" not in line and line.startswith("error: --model ")


# ----------------------------------------------------------------------------- item 7: checkpoints
def test_string_array_in_npz_and_saelens_threshold(tmp_path):
    import numpy as np

    from test_formats_saelens import sae_cfg, write_saelens
    from transcoderbench.formats import load_transcoder

    rng = np.random.default_rng(0)
    arrays = {
        "W_enc": rng.normal(size=(8, 16)).astype("f4"),
        "b_enc": np.zeros(16, "f4"),
        "W_dec": rng.normal(size=(16, 8)).astype("f4"),
        "b_dec": np.array(["a"] * 8),
        "threshold": np.zeros(16, "f4"),
    }
    np.savez(tmp_path / "params.npz", **arrays)
    with pytest.raises(UserError, match="b_dec.*<U1"):
        load_transcoder(str(tmp_path / "params.npz"), layer=0)
    for bad in ("x", None):
        cfg = sae_cfg("jumprelu", d_in=8, d_sae=16)
        cfg["metadata"]["transcoderbench"] = {"architecture": "batchtopk", "threshold": bad, "k": 3}
        tensors = {**arrays, "b_dec": np.zeros(8, "f4")}
        d = write_saelens(tmp_path / f"sae-{bad}", cfg, tensors)
        with pytest.raises(UserError, match="threshold"):
            load_transcoder(str(d))


# ----------------------------------------------------------------------------- item 8: one line
def test_newlines_and_escape_codes_are_escaped(tmp_path):
    proc = run_cli("evaluate", "--checkpoint", str(tmp_path / "a\nb\x1b[31mred"), "--output_dir", str(tmp_path / "o"))
    assert_user_error(proc, r"a\\nb\\x1b\[31mred")
    assert "\x1b" not in proc.stderr
    proc = run_cli("evaluate", "--checkpoint", "x", "--batches", "1\n2")
    assert_user_error(proc, r"--batches.*1\\n2")
    assert printable("a\u202eb") == "a\\u202eb" and one_line("x\ny\x07") == "x y\\x07"


# ----------------------------------------------------------------------------- item 9: a FIFO as data
def test_fifo_dataset_is_refused_before_the_model_loads(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    ckpt = native_matryoshka(tmp_path / "ckpt", hidden_size(model), model_name=str(model))
    fifo = tmp_path / "data.txt"
    os.mkfifo(fifo)
    proc = run_cli("evaluate", "--checkpoint", str(ckpt), "--dataset", str(fifo), *FAST)  # hangs forever if read
    assert_user_error(proc, r"--dataset .*not a regular file")
    assert "loading language model" not in proc.stderr


# ----------------------------------------------------------------------------- item 10: smaller
def test_nul_text_is_refused(tmp_path):
    from transcoderbench.data import resolve_text_source

    (tmp_path / "nul.txt").write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="NUL bytes"):
        resolve_text_source(str(tmp_path / "nul.txt"))
    (tmp_path / "deep.jsonl").write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(UserError, match="deep.jsonl:1: JSON nested too deeply"):
        resolve_text_source(str(tmp_path / "deep.jsonl"))


def test_report_reads_only_inside_its_folder(tmp_path):
    from transcoderbench.report.html import load_records

    d = tmp_path / "run"
    d.mkdir()
    (tmp_path / "secret_metrics.json").write_text("{}")
    (d / "comparison.json").write_text(json.dumps({"transcoders": {"../secret": {}, "ok": {}}, "meta": {}}))
    with pytest.raises(UserError, match="points outside"):
        load_records(d)


def test_report_on_json_of_the_wrong_shape_is_one_line(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    for text in ('{"meta": [], "name": 3}', '{"meta": {"model": 5}, "reconstruction": []}', "[1, 2]"):
        (d / "metrics.json").write_text(text)
        proc = run_cli("report", str(d))
        assert_user_error(proc, r"metrics\.json")
        assert not (d / "report.html").exists()


def test_non_utf8_config_file_is_one_line(tmp_path):
    from transcoderbench.train.config import read_config_file

    (tmp_path / "c.json").write_bytes(b'{"lr": "\xff\xfe"}')
    with pytest.raises(UserError, match="not UTF-8"):
        read_config_file(tmp_path / "c.json")
    (tmp_path / "d.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        read_config_file(tmp_path / "d.json")
