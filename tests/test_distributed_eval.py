"""``torchrun`` data parallel: 2 gloo processes on CPU give the 1-process numbers (metrics, intervals, verdicts)."""

from __future__ import annotations

import json

import pytest

from eval_helpers import assert_same_numbers, read_outputs, run_cli, two_transcoders
from transcoderbench.data import resolve_text_source, token_batches
from transcoderbench.data.batching import shard_batches

# 5 batches: rank 0 gets 3, rank 1 gets 2; one mean-ablation batch: rank 1 estimates from none.
ARGS = [
    "--batches",
    "5",
    "--batch_size",
    "2",
    "--seq-len",
    "16",
    "--mean_ablation_batches",
    "1",
    "--bootstrap_resamples",
    "200",
    "--no-progress",
    "--no-absorption",
]


def hidden_size(model_dir) -> int:
    return json.loads((model_dir / "config.json").read_text())["hidden_size"]


def test_shard_batches_partition_the_one_process_stream(tiny_lm):
    lm = tiny_lm("llama")
    stream = list(token_batches(resolve_text_source(None), lm.tokenizer, seq_len=16, batch_size=2, n_batches=7))
    shards = [list(shard_batches(stream, r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [3, 2, 2]
    got = sorted((int(tb.seq_index[0]), tb.input_ids.tolist()) for s in shards for tb in s)
    assert got == [(int(tb.seq_index[0]), tb.input_ids.tolist()) for tb in stream]
    assert [int(tb.seq_index[0]) for tb in shard_batches(stream, 1, 3, start=2)] == [8]  # global batch 4
    with pytest.raises(ValueError):
        list(shard_batches(stream, 3, 3))


def test_two_gloo_processes_equal_one(tmp_path, tiny_model_dir):
    model = tiny_model_dir("gemma2")
    ours, other = two_transcoders(tmp_path, hidden_size(model))
    common = ["compare", "--ours_checkpoint", str(ours), "--transcoder", f"jr={other}", "--model", str(model), *ARGS]
    one = run_cli(*common, "--output_dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = run_cli(*common, "--output_dir", str(tmp_path / "two"), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 processes share the batches" in two.stderr
    a, b = read_outputs(tmp_path / "one"), read_outputs(tmp_path / "two")
    assert set(a) == {"comparison.json", "ours_metrics.json", "jr_metrics.json"}
    n = assert_same_numbers(a, b, rel=1e-6)
    assert n > 500  # metrics, intervals, differences: not a vacuous comparison
    m1, m2 = a["ours_metrics.json"], b["ours_metrics.json"]
    assert m1["meta"]["world_size"] == 1 and m2["meta"]["world_size"] == 2
    assert m2["meta"]["tokens"]["n_batches"] == 5 and m2["meta"]["tokens"]["n_sequences"] == 10
    assert m2["uncertainty"]["n_sequences"] == 10 and m2["downstream"]["n_tokens"] > 0
    assert (
        m2["uncertainty"]["differences"]["jr"]["fvu"]["significant"]
        == m1["uncertainty"]["differences"]["jr"]["fvu"]["significant"]
    )
    # Only rank 0 wrote: one report, one "wrote:" listing.
    assert two.stdout.count("wrote:") == 1

    # Killed (both ranks at their 2nd batch, or rank 1 earlier by torchrun), then resumed: the same numbers.
    out = tmp_path / "resumed"
    saving = [*common, "--output_dir", str(out), "--checkpoint_every", "1"]
    killed = run_cli(*saving, nproc=2, TRANSCODERBENCH_FAULT="eval_after_batch:2")
    assert killed.returncode != 0 and not list(out.glob("*.json"))
    states = sorted(p.name for p in (out / ".resume").iterdir() if p.suffix == ".safetensors")
    resumed = run_cli(*saving, "--resume", nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if states == ["rank0-of-2.safetensors", "rank1-of-2.safetensors"]:
        assert "resuming from" in resumed.stderr
    assert not (out / ".resume").exists()
    assert_same_numbers(a, read_outputs(out), rel=1e-6)


def test_absorption_command_runs_on_rank0_only(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    ours, _ = two_transcoders(tmp_path, hidden_size(model))
    small = ["--absorption-train-words", "60", "--absorption-test-words", "20", "--absorption-icl-examples", "6"]
    small += ["--absorption-probe-epochs", "3", "--absorption-sparse-epochs", "3", "--absorption-fit-tokens", "512"]
    args = ["absorption", "--checkpoint", str(ours), "--model", str(model), "--no-progress", "--no-absorption-cache"]
    one = run_cli(*args, *small, "--output_dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = run_cli(*args, *small, "--output_dir", str(tmp_path / "two"), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_outputs(tmp_path / "one"), read_outputs(tmp_path / "two")
    assert b["absorption.json"]["meta"]["world_size"] == 2
    assert_same_numbers(a, b, rel=1e-6)
