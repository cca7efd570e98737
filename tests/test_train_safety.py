"""Issue 14 for `train`: --overwrite checks everything before deleting and deletes only what it
wrote, --resume takes no code-running setting from the saved state, the resume-state swap
survives a kill at its worst moment, a second writer is refused, divergence stops with exit 2 and
keeps the last good checkpoint, and checkpoints name the model by an absolute path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transcoderbench.cli import main
from transcoderbench.cli.demo import run_demo
from transcoderbench.errors import UserError
from transcoderbench.formats import load_transcoder
from transcoderbench.io import directory_lock, load_safetensors
from transcoderbench.train import TrainConfig, TranscoderTrainer
from transcoderbench.train.trainer import RUN_MARKER, Diverged


def tiny_args(model: Path | str, out: Path | str, *extra: str, steps: int = 4) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--layer",
        "1",
        "--architecture",
        "batchtopk",
        "--dict_size",
        "32",
        "--top_k",
        "4",
        "--top_k_aux",
        "8",
        "--batch_tokens",
        "128",
        "--token_budget",
        str(128 * steps),
        "--seq_len",
        "32",
        "--lm_batch_size",
        "4",
        "--buffer_tokens",
        "1024",
        "--lr",
        "0.01",
        "--warmup_steps",
        "1",
        "--dataset",
        "builtin:stdlib-docstrings",
        "--device",
        "cpu",
        "--no-progress",
        "--output_dir",
        str(out),
        *extra,
    ]


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "transcoderbench", *args], cwd=cwd, env=full_env, capture_output=True, text=True
    )


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> Path:
    return tiny_model_dir("llama")


# ------------------------------------------------------------------------------ 1. --overwrite
def test_overwrite_refuses_the_cwd_and_foreign_files(model, tmp_path, monkeypatch, capsys):
    p = tmp_path / "p"
    p.mkdir()
    (p / "notes.txt").write_text("x")
    (p / "metrics.jsonl").write_text("{}\n")
    monkeypatch.chdir(p)
    assert main(tiny_args(model, ".", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "never clears the current directory" in err and err.count("\n") == 1, err
    assert (p / "notes.txt").read_text() == "x"
    # a marked run folder that also holds a foreign file
    monkeypatch.chdir(tmp_path)
    (p / RUN_MARKER).write_text("")
    assert main(tiny_args(model, p, "--overwrite")) == 2
    assert "also holds 'notes.txt'" in capsys.readouterr().err
    assert sorted(x.name for x in p.iterdir()) == sorted([RUN_MARKER, "metrics.jsonl", "notes.txt"])
    # an unmarked folder that merely looks like a run is not ours to delete
    (p / RUN_MARKER).unlink()
    (p / "notes.txt").unlink()
    assert main(tiny_args(model, p, "--overwrite")) == 2
    assert "replaces only folders this tool marked" in capsys.readouterr().err
    assert (p / "metrics.jsonl").is_file()


def test_overwrite_validates_flags_model_and_data_before_deleting(model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(tiny_args(model, run)) == 0
    assert (run / RUN_MARKER).is_file()
    before = snapshot(run)
    capsys.readouterr()
    bad = [
        (["--layer", "99"], "99"),
        (["--model", str(tmp_path / "no-such-model")], "no-such-model"),
        (["--dataset", str(tmp_path / "missing.txt")], "missing.txt"),
        (["--top_k", "lots"], "--top_k"),
    ]
    for extra, named in bad:
        assert main([*tiny_args(model, run, "--overwrite"), *extra]) == 2, extra
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error")]
        assert len(errors) == 1 and named in errors[0] and "Traceback" not in err, err
        assert snapshot(run) == before, extra  # nothing deleted, nothing half-written
    # a correct --overwrite replaces the run, and only that
    (tmp_path / "beside.txt").write_text("kept")
    assert main(tiny_args(model, run, "--overwrite", "--seed", "1")) == 0
    assert json.loads((run / "train_config.json").read_text())["seed"] == 1
    assert (tmp_path / "beside.txt").read_text() == "kept"


# ------------------------------------------------------------------------------ 2 + 3. resume
def test_resume_state_swap_survives_a_kill_and_takes_no_trust_from_the_file(model, tmp_path):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    extra = ("--checkpoint_every", "2")
    assert run_cli(tiny_args(model, whole, *extra, steps=6), tmp_path).returncode == 0
    # killed in the second save, after the old state was moved aside and before the new one is in
    killed = run_cli(
        tiny_args(model, crashed, *extra, steps=6), tmp_path, TRANSCODERBENCH_FAULT="after_resume_delete@2"
    )
    assert killed.returncode == 137, killed.stderr
    assert not (crashed / "resume").exists()
    assert any(p.name.startswith(".resume.tmp-") for p in crashed.iterdir())
    # a hand-edited state that asks for remote code: --resume must not take it from there
    tmp_state = next(p for p in crashed.iterdir() if p.name.startswith(".resume.tmp-")) / "state.json"
    state = json.loads(tmp_state.read_text())
    state["config"]["trust_remote_code"] = True
    tmp_state.write_text(json.dumps(state))
    resumed = run_cli(["train", "--output_dir", str(crashed), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 4 of 6" in resumed.stderr  # the newer, complete state was recovered
    assert not [p.name for p in crashed.iterdir() if p.name.startswith(".resume")]
    assert load_transcoder(str(crashed)).info["training"]["trust_remote_code"] is False
    a, b = load_safetensors(whole / "model.safetensors"), load_safetensors(crashed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ 4. one writer
def test_a_second_writer_gets_a_one_line_error(model, tmp_path, capsys):
    out = tmp_path / "run"
    with directory_lock(out):
        assert main(tiny_args(model, out)) == 2
        err = capsys.readouterr().err
        assert "another transcoderbench run is writing" in err and err.count("\n") == 1
    assert not out.exists()


def test_demo_locks_its_output_folder(tmp_path):
    with directory_lock(tmp_path / "demo"), pytest.raises(UserError, match="another transcoderbench run"):
        run_demo(tmp_path / "demo", progress=False)


# ------------------------------------------------------------------------------ 6. divergence
def test_divergence_stops_with_exit_2_and_keeps_the_last_good_checkpoint(model, tmp_path):
    out = tmp_path / "run"
    # step 1 saves a checkpoint, then the weights blow up
    result = run_cli(tiny_args(model, out, "--lr", "1e30", "--warmup_steps", "1", "--checkpoint_every", "1"), tmp_path)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "diverged at step" in line and "Lower --lr" in line and "Traceback" not in result.stderr
    assert not (out / "model.safetensors").exists()  # no NaN transcoder was saved as the result
    assert "step 1" in line and any((out / "checkpoints").iterdir())
    for ckpt in (out / "checkpoints").iterdir():
        assert all(torch.isfinite(v).all() for v in load_safetensors(ckpt / "model.safetensors").values())


def test_a_constant_target_is_refused_and_a_non_finite_loss_updates_nothing():
    config = TrainConfig.from_flat(layer=0, architecture="batchtopk", dict_size=16, top_k=2, batch_size=64)
    t = TranscoderTrainer(config, d_in=8, d_out=8, input_site="a", output_site="b")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    with pytest.raises(Diverged, match="the target b is constant"):
        t.init_from_data(x, torch.full((64, 8), 3.0))
    y = torch.randn(64, 8, generator=g)
    t.init_from_data(x, y)
    with torch.no_grad():
        t.params["b_dec"][0] = float("inf")  # as an overflowing update would leave it
    before = {k: v.detach().clone() for k, v in t.params.items()}
    with pytest.raises(Diverged, match="the loss is (nan|inf)"):
        t.step(x, y, 1e-3)
    assert all(torch.equal(before[k], t.params[k]) for k in before)  # no update from a non-finite loss


# ------------------------------------------------------------------------------ 10. model path
def test_checkpoints_store_the_model_path_resolved(model, tmp_path, monkeypatch):
    monkeypatch.chdir(model.parent)
    out = tmp_path / "run"
    assert main(tiny_args(model.name, out)) == 0  # a path relative to the cwd
    info = load_transcoder(str(out)).info
    assert info["model_name"] == str(model.absolute()) and info["model_given"] == model.name


def test_a_run_that_fails_after_starting_leaves_nothing_that_blocks_the_next(tmp_path, tiny_model_dir, monkeypatch):
    """Issue 14 item 5: a failure removes the run folder it created, unless it holds a resume state."""
    model = tiny_model_dir("llama")
    real_step = TranscoderTrainer.step
    calls = {"n": 0}

    def failing_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure at the third step")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(TranscoderTrainer, "step", failing_step)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected"):
        main(tiny_args(model, out))
    assert not out.exists()
    calls["n"] = 0
    resumable = tmp_path / "resumable"
    with pytest.raises(RuntimeError, match="injected"):
        main(tiny_args(model, resumable, "--checkpoint_every", "1"))
    assert (resumable / "resume").is_dir()  # a saved state is worth keeping: --resume continues it
    monkeypatch.setattr(TranscoderTrainer, "step", real_step)
    assert main(tiny_args(model, out)) == 0  # nothing blocks the next run
    assert (out / RUN_MARKER).is_file()


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--seed", "1e20", "must be between 0 and"),
        ("--token_budget", "100000000000000000000", "must be at most"),
        ("--dict_size", "100000000000", "must be at most"),
    ],
)
def test_huge_train_numbers_are_one_line_errors_before_anything(tmp_path, model, capsys, flag, value, message):
    out = tmp_path / "run"
    assert main(tiny_args(model, out, flag, value)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and err.count("\n") == 1
    assert not out.exists()
