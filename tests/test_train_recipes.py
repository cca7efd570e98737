"""Training recipe options adopted from sparsify (issue 15): the centred encoder-bias initialisation."""

from __future__ import annotations

import pytest
import torch

from transcoderbench.cli import main
from transcoderbench.errors import UserError
from transcoderbench.train import TrainConfig, TranscoderTrainer
from transcoderbench.train.config import config_dict, make_config


def offset_data(n: int = 512, d: int = 16, seed: int = 0) -> torch.Tensor:
    """Activations with a large shared mean, as residual streams have: mean norm 10, spread ~1 per token."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0) * 10
    return mean + torch.randn(n, d, generator=g)


def trainer(init: str, d: int = 16, d_sae: int = 64) -> TranscoderTrainer:
    config = TrainConfig.from_flat(
        layer=0, architecture="topk", dict_size=d_sae, top_k=4, encoder_bias_init=init, batch_size=256
    )
    return TranscoderTrainer(config, d_in=d, d_out=d, input_site="a", output_site="b")


def test_default_is_centred_and_bad_values_are_one_line_errors():
    assert TrainConfig().coders.encoder_bias_init == "centred"
    assert config_dict(make_config({"layer": 0, "encoder_bias_init": "zero"}))["encoder_bias_init"] == "zero"
    with pytest.raises(UserError, match="encoder_bias_init"):
        make_config({"layer": 0, "encoder_bias_init": "median"})


def test_train_command_refuses_an_unknown_init_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse checks the choices
        main(["train", "--layer", "1", "--encoder_bias_init", "median", "--output_dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "encoder_bias_init" in err and "median" in err, err
    assert err.strip().count("\n") <= 1, err  # usage-free: at most the program line and the error
    assert not (tmp_path / "r").exists()


def test_centred_init_centres_every_pre_activation_on_the_data():
    x = offset_data()
    t = trainer("centred")
    t.init_from_data(x, x)
    p = t.params
    pre = (x * t.input_scale) @ p["W_enc"] + p["b_enc"]  # the pre-activation a step computes
    assert pre.mean(dim=0).abs().max() < 1e-4 * pre.std(dim=0).min()
    # b_enc is -mean(x) W_enc, computed independently in float64
    want = -((x.double() * t.input_scale).mean(dim=0) @ p["W_enc"].double())
    torch.testing.assert_close(p["b_enc"].double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(trainer("zero").params["b_enc"], torch.zeros(64))


def test_centred_init_spreads_the_first_selection_over_many_latents():
    """With b_enc = 0 the latents most aligned with the shared mean win on every token; centred,
    the tokens' own deviations decide, so far more latents fire at the first step."""
    x = offset_data()
    used = {}
    for init in ("zero", "centred"):
        t = trainer(init)
        t.init_from_data(x, x)
        tc = t.final_transcoder({})
        used[init] = int((tc.encode(x) > 0).any(dim=0).sum())
    assert used["zero"] <= 24 and used["centred"] >= 56, used
