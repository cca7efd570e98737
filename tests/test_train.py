"""Training end to end on tiny real models: the loss falls, Matryoshka prefixes are nested,
inference L0 matches k on held-out text, a resumed run equals an uninterrupted one, the
auxiliary loss revives dead latents, and checkpoints load in `evaluate` and `compare`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transcoderbench.cli import main
from transcoderbench.config import DataConfig, DownstreamConfig, EvalConfig, ModelConfig
from transcoderbench.errors import UserError
from transcoderbench.evaluate import evaluate_transcoders
from transcoderbench.formats import load_transcoder
from transcoderbench.io import load_safetensors
from transcoderbench.train import TrainConfig, TranscoderTrainer, train
from transcoderbench.train.buffer import ActivationBuffer

K = 4
TINY = dict(
    layer=1,
    dict_size=64,
    top_k=K,
    top_k_aux=16,
    lr=1e-2,
    warmup_steps=5,
    min_lr=1e-3,
    batch_size=256,
    token_budget=256 * 80,
    dead_window=2048,
    seq_len=64,
    lm_batch_size=16,
    buffer_tokens=4096,
    log_every=5,
    dataset="builtin:stdlib-docstrings",
    device="cpu",
    progress=False,
)
HELD_OUT = "builtin:pydoc_data.topics"


@pytest.fixture(scope="module")
def trained(tiny_lm, tmp_path_factory):
    """A Matryoshka and a BatchTopK transcoder trained side by side on the tiny Llama."""
    lm = tiny_lm("llama")
    root = tmp_path_factory.mktemp("train")
    configs = [
        TrainConfig.from_flat(
            **TINY, model=lm.name, architecture="matryoshka", group_sizes="8,24,32", output_dir=str(root / "mat")
        ),
        TrainConfig.from_flat(**TINY, model=lm.name, architecture="batchtopk", output_dir=str(root / "btk")),
    ]
    results = train(configs, names=["mat", "btk"], lm=lm, log=lambda m: None)
    return {r.name: r for r in results}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loss_falls(trained):
    for result in trained.values():
        lines = read_jsonl(result.output_dir / "metrics.jsonl")
        assert [m["step"] for m in lines] == list(range(5, 81, 5))
        first, last = lines[0], lines[-1]
        assert last["loss"] < 0.8 * first["loss"], (first["loss"], last["loss"])
        assert last["fvu"] < 0.9
        assert last["l0"] == pytest.approx(K)  # BatchTopK keeps k per token on average, exactly


@pytest.fixture(scope="module")
def held_out(trained, tiny_lm):
    """Both saved checkpoints, reloaded and evaluated on text they were not trained on."""
    tcs = {name: load_transcoder(str(r.output_dir)) for name, r in trained.items()}
    config = EvalConfig(
        model=ModelConfig(device="cpu"),
        data=DataConfig(dataset=HELD_OUT, batches=6, batch_size=8, seq_len=64),
        downstream=DownstreamConfig(downstream=False),
        run_absorption=False,
        progress=False,
    )
    return evaluate_transcoders(
        tcs,
        config,
        lm=tiny_lm("llama"),
        log=lambda m: None,
    )


def test_heldout_prefix_fvus_never_increase(held_out):
    fvus = [p["fvu"] for p in held_out.metrics["mat"]["prefixes"]["per_prefix"]]
    assert len(fvus) == 3
    assert all(b <= a for a, b in zip(fvus, fvus[1:])), fvus
    assert fvus[-1] < 1.0


def test_heldout_inference_l0_close_to_k(held_out, trained):
    for name, m in held_out.metrics.items():
        assert abs(m["mean_l0"] - K) / K < 0.2, (name, m["mean_l0"])
        assert m["training"]["top_k"] == K  # what the evaluation compares L0 against
        assert m["training"]["inference_threshold"] > 0
        assert m["transcoder"]["architecture"] == {"mat": "matryoshka_batchtopk", "btk": "batchtopk"}[name]
    assert held_out.metrics["mat"]["transcoder"]["prefix_ends"] == [8, 32, 64]


def test_saved_transcoder_is_the_trained_one(trained, tiny_lm):
    """Folding the training scales into the saved weights gives the same latents and reconstruction."""
    r = trained["btk"]
    saved = load_transcoder(str(r.output_dir))
    for key, value in saved.tensors().items():
        assert torch.equal(value, r.transcoder.tensors()[key])
    assert torch.allclose(saved.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    assert saved.info["model_name"] == tiny_lm("llama").name and saved.info["layer"] == 1
    assert saved.info["training"]["architecture"] == "batchtopk"


# ------------------------------------------------------------------------------ resume
def interrupted_run(monkeypatch, config, lm, after_batches: int) -> None:
    """Train until the buffer has served ``after_batches`` batches, then stop as Ctrl-C would."""
    served = {"n": 0}
    original = ActivationBuffer.next_batch

    def next_batch(self, batch_size):
        if served["n"] >= after_batches:
            raise KeyboardInterrupt
        served["n"] += 1
        return original(self, batch_size)

    monkeypatch.setattr(ActivationBuffer, "next_batch", next_batch)
    with pytest.raises(KeyboardInterrupt):
        train(config, lm=lm, log=lambda m: None)
    monkeypatch.undo()


@pytest.mark.parametrize("mode", ["streaming", "in_memory"])
def test_resumed_run_reaches_the_same_weights(tiny_lm, tmp_path, monkeypatch, mode):
    lm = tiny_lm("llama")
    if mode == "in_memory":  # a small text file that fits in the buffer: several epochs from one read
        import pydoc_data.topics

        text = "\n\n".join(pydoc_data.topics.topics.values())[:8000]  # ~3k tokens: 24 steps x 256 need 2+ epochs
        (tmp_path / "small.txt").write_text(text)
        data = dict(dataset=str(tmp_path / "small.txt"), buffer_tokens=16384)
    else:  # a buffer far smaller than the data: refills, shuffles, and an unserved remainder to save
        data = dict(buffer_tokens=1536)
    base = dict(
        TINY,
        model=lm.name,
        architecture="matryoshka",
        group_sizes="1/4,3/4",
        token_budget=256 * 24,
        dict_size=256,
        checkpoint_every=10,
        dead_window=1,
        log_every=2,
        **data,
    )
    whole = TrainConfig.from_flat(**{**base, "output_dir": str(tmp_path / "whole")})
    resumed = TrainConfig.from_flat(**{**base, "output_dir": str(tmp_path / "resumed")})
    result = train(whole, lm=lm, log=lambda m: None)[0]
    assert any(r["aux_loss"] is not None for r in read_jsonl(result.output_dir / "metrics.jsonl"))  # aux path ran
    if mode == "in_memory":
        meta = json.loads((tmp_path / "whole" / "config.json").read_text())["training"]["buffer"]
        assert meta["in_memory"] and meta["epochs_started"] >= 2

    interrupted_run(monkeypatch, resumed, lm, after_batches=15)  # checkpoint at 10, killed during step 16
    assert (tmp_path / "resumed" / "resume" / "state.json").is_file()
    assert not (tmp_path / "resumed" / "config.json").exists()
    train(resumed, resume=True, lm=lm, log=lambda m: None)

    a = load_safetensors(tmp_path / "whole" / "model.safetensors")
    b = load_safetensors(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]
    assert strip(read_jsonl(tmp_path / "whole" / "metrics.jsonl")) == strip(
        read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    )
    assert not (tmp_path / "resumed" / "resume").exists()  # a finished run leaves no resume state


def test_resume_refuses_changed_settings(tiny_lm, tmp_path, monkeypatch):
    lm = tiny_lm("llama")
    config = TrainConfig.from_flat(
        **{
            **TINY,
            "model": lm.name,
            "architecture": "topk",
            "token_budget": 256 * 8,
            "checkpoint_every": 4,
            "output_dir": str(tmp_path / "run"),
        }
    )
    interrupted_run(monkeypatch, config, lm, after_batches=6)
    with pytest.raises(UserError, match="--top_k: the run in .* was started with 4, not 5"):
        train(config.replace(top_k=5), resume=True, lm=lm)
    with pytest.raises(UserError, match="already holds a training run; pass --resume"):
        train(config, lm=lm)
    # from the command line, with only the run directory; the reporting settings may change
    assert main(["train", "--output_dir", str(tmp_path / "run"), "--resume", "--log_every", "1"]) == 0
    assert load_transcoder(str(tmp_path / "run")).architecture == "topk"
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [5, 6, 7, 8]  # 4 = checkpoint


# ------------------------------------------------------------------------------ dead latents
def test_aux_loss_revives_latents_dead_at_initialisation():
    """Data made of 32 directions; 8 latents start with zero encoder columns, so they are never
    kept (dead from the first step). Only the auxiliary loss gives them a gradient (unclipped
    pre-activations: a ReLU'd auxiliary loss could not move them); with it they learn to fire and
    the reconstruction improves."""

    def run(aux_penalty: float):
        g = torch.Generator().manual_seed(0)
        d, n_latents, k, batch = 16, 32, 2, 256
        directions = torch.nn.functional.normalize(torch.randn(n_latents, d, generator=g), dim=1)

        def sample():
            idx = torch.rand(batch, n_latents, generator=g).argsort(dim=1)[:, :k]  # k distinct directions per token
            x = ((1 + torch.rand(batch, k, generator=g))[..., None] * directions[idx]).sum(1)
            return x, x

        config = TrainConfig.from_flat(
            layer=0,
            architecture="batchtopk",
            dict_size=n_latents,
            top_k=k,
            top_k_aux=8,
            aux_penalty=aux_penalty,
            lr=1e-2,
            warmup_steps=0,
            batch_size=batch,
            token_budget=batch * 60,
            dead_window=2 * batch,
            encoder_bias_init="zero",  # b_enc = 0, so the zeroed columns below can never fire
        )
        t = TranscoderTrainer(config, d_in=d, d_out=d, input_site="a", output_site="b")
        t.init_from_data(*sample())
        with torch.no_grad():
            t.params["W_enc"][:, :8] = 0.0  # pre-activation = b_enc = 0 on every token: never positive, never kept
        history = [t.step(*sample(), 1e-2) for _ in range(60)]
        x = torch.cat([sample()[0] for _ in range(8)])
        fired = (t.final_transcoder({}, x).encode(torch.cat([sample()[0] for _ in range(8)])) > 0).any(dim=0)
        return history, fired

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small run fastest on one thread, and a busy machine does not stall them
    try:
        with_aux, fired = run(1 / 32)
        without_aux, fired_without = run(0.0)
    finally:
        torch.set_num_threads(threads)
    assert with_aux[3]["dead_fraction"] == pytest.approx(0.25)  # the 8 are dead once the window has passed
    assert without_aux[-1]["dead_fraction"] == pytest.approx(0.25) and not fired_without[:8].any()
    assert fired[:8].float().mean() >= 0.75
    assert with_aux[-1]["dead_fraction"] < 0.1
    assert with_aux[-1]["fvu"] < 0.8 * without_aux[-1]["fvu"]


# ------------------------------------------------------------------------------ command line
def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "transcoderbench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_checkpoints_load_in_evaluate_and_compare(trained, tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("llama"))
    mat, btk = (str(trained[n].output_dir) for n in ("mat", "btk"))
    # (the tiny model's 128 positions cannot hold the absorption phase's prompts)
    common = [
        "--model",
        model,
        "--batches",
        "2",
        "--batch_size",
        "4",
        "--seq_len",
        "32",
        "--no-progress",
        "--no-absorption",
    ]
    ev = run_cli("evaluate", "--checkpoint", mat, "--output_dir", str(tmp_path / "ev"), *common, cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["transcoder"]["architecture"] == "matryoshka_batchtopk" and metrics["training"]["top_k"] == K
    cp = run_cli(
        "compare",
        "--transcoder",
        f"mat={mat}",
        "--transcoder",
        f"btk={btk}",
        "--output_dir",
        str(tmp_path / "cp"),
        *common,
        cwd=tmp_path,
    )
    assert cp.returncode == 0, cp.stderr
    comparison = json.loads((tmp_path / "cp" / "comparison.json").read_text())
    assert set(comparison["transcoders"]) == {"mat", "btk"}


def test_train_command_with_config_file(tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir("llama"))
    (tmp_path / "run.yaml").write_text(
        f"model: {model}\nlayer: 1\narchitecture: matryoshka\ngroup_sizes: [16, 48]\ndict_size: 64\ntop_k: 8\n"
        "batch_size: 256\ntoken_budget: 1024\nseq_len: 64\nlm_batch_size: 16\nbuffer_tokens: 2048\nlr: 0.01\n"
        "warmup_steps: 1\nprogress: false\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--top_k", "4", "--output_dir", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["top_k"] == 4 and saved["group_sizes"] == "16,48" and saved["dict_size"] == 64  # flag > file
    tc = load_transcoder(str(out))
    assert tc.prefix_ends == (16, 64) and tc.info["training"]["steps"] == 4
    # the saved train_config.json is itself a valid --config file
    assert main(["train", "--config", str(out / "train_config.json"), "--output_dir", str(tmp_path / "again")]) == 0
    assert torch.equal(load_transcoder(str(tmp_path / "again")).W_enc, tc.W_enc)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "{dir}/bad.json"], "unknown key 'learning_rate'"),
        (["--layer", "1", "--group_sizes", "1/2,1/4"], "fractions must add up to 1"),
        (["--layer", "1", "--top_k", "lots"], "--top_k: top_k='lots' is not a valid int"),
        (["--output_dir", "{dir}/nothing", "--resume"], "holds no resume state"),
        (["--layer", "1", "--wandb", "--output_dir", "{dir}/w"], None),
    ],
)
def test_train_command_errors_are_one_line(tmp_path, capsys, args, message):
    (tmp_path / "bad.json").write_text(json.dumps({"layer": 1, "learning_rate": 0.1}))
    if message is None:  # --wandb without the package installed
        if importlib.util.find_spec("wandb") is not None:
            pytest.skip("wandb is installed here")
        message = "--wandb needs the wandb package"
    code = main(["train", *[a.format(dir=tmp_path) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
