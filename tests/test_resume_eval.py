"""Resumable evaluation: a run killed (``os._exit(137)`` at a named point) and resumed ends with the numbers of a run
never stopped; the saved state is refused under other settings and removed once the outputs are written."""

from __future__ import annotations

import json

from eval_helpers import assert_same_numbers, read_outputs, run_cli, two_transcoders

ARGS = ["--batches", "6", "--batch_size", "2", "--seq-len", "16", "--bootstrap_resamples", "200"]
ARGS += ["--no-progress", "--no-absorption", "--checkpoint_every", "2"]


def hidden_size(model_dir) -> int:
    return json.loads((model_dir / "config.json").read_text())["hidden_size"]


def test_killed_compare_resumes_to_the_same_numbers(tmp_path, tiny_model_dir):
    model = tiny_model_dir("gemma2")
    ours, other = two_transcoders(tmp_path, hidden_size(model))
    common = ["compare", "--ours_checkpoint", str(ours), "--transcoder", f"jr={other}", "--model", str(model), *ARGS]

    whole = run_cli(*common, "--output_dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    assert not (tmp_path / "whole" / ".resume").exists()  # removed once the outputs were written
    expected = read_outputs(tmp_path / "whole")

    out = tmp_path / "out"
    killed = run_cli(*common, "--output_dir", str(out), TRANSCODERBENCH_FAULT="eval_after_batch:3")
    assert killed.returncode == 137
    assert not list(out.glob("*.json")) and (out / ".resume" / "rank0-of-1.safetensors").is_file()

    # Other settings: refused in one line, nothing written, the state kept.
    wrong = run_cli(*common, "--bootstrap_seed", "7", "--output_dir", str(out), "--resume")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().splitlines()[-1].startswith("error: ") and "different settings" in wrong.stderr
    assert not list(out.glob("*.json")) and (out / ".resume").is_dir()

    # Killed again in the middle of writing the state after batch 4: the state of batch 2 survives.
    torn = run_cli(*common, "--output_dir", str(out), "--resume", TRANSCODERBENCH_FAULT="eval_during_save:4")
    assert torn.returncode == 137
    assert "resuming" in torn.stderr and "continuing from global batch 3" in torn.stderr

    resumed = run_cli(*common, "--output_dir", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "continuing from global batch 3" in resumed.stderr
    assert not (out / ".resume").exists()
    got = read_outputs(out)
    assert assert_same_numbers(expected, got, rel=1e-9) > 500
    assert got["ours_metrics.json"]["meta"]["tokens"]["n_batches"] == 6


def test_killed_evaluate_resumes_after_the_pass(tmp_path, tiny_model_dir):
    """Killed after the last batch (the final state is saved): --resume reads no batch again."""
    model = tiny_model_dir("llama")
    ours, _ = two_transcoders(tmp_path, hidden_size(model))
    common = ["evaluate", "--checkpoint", str(ours), "--model", str(model), *ARGS, "--no-downstream"]
    whole = run_cli(*common, "--output_dir", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    killed = run_cli(*common, "--output_dir", str(tmp_path / "out"), TRANSCODERBENCH_FAULT="eval_after_batch:6")
    assert killed.returncode == 137
    fresh = run_cli(*common, "--output_dir", str(tmp_path / "out"), "--resume")
    assert fresh.returncode == 0, fresh.stderr
    assert "6 batches of this process were saved" in fresh.stderr
    assert assert_same_numbers(read_outputs(tmp_path / "whole"), read_outputs(tmp_path / "out"), rel=1e-9) > 50


def test_resume_without_state_starts_over(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    ours, _ = two_transcoders(tmp_path, hidden_size(model))
    proc = run_cli(
        "evaluate",
        "--checkpoint",
        str(ours),
        "--model",
        str(model),
        *ARGS,
        "--no-downstream",
        "--resume",
        "--output_dir",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "no complete saved state" in proc.stderr and (tmp_path / "out" / "metrics.json").is_file()
