"""The flag generator and the field -> flag mapping of error messages (in process: no model is loaded)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch

from transcoderbench.cli import build_parser, main
from transcoderbench.cli.flags import FlagTable, add_config_flags, config_from_args
from transcoderbench.config import EvalConfig, field_types, opt
from transcoderbench.errors import UserError, render
from transcoderbench.formats import save_native
from transcoderbench.train.config import TrainConfig, read_config_file
from transcoderbench.transcoders import TopKTranscoder


def checkpoint(path, d=16):
    g = torch.Generator().manual_seed(0)
    tc = TopKTranscoder(
        torch.randn(d, 8, generator=g),
        torch.zeros(8),
        torch.randn(8, d, generator=g),
        torch.zeros(d),
        input_site="blocks.0.hook_mlp_in",
        output_site="blocks.0.hook_mlp_out",
        k=2,
        info={"layer": 0},  # names no model
    )
    return str(save_native(tc, path))


def leaf_fields(cls: type) -> int:
    """Fields of ``cls``, counting a section's fields instead of the section."""
    hints = field_types(cls)
    return sum(
        leaf_fields(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else 1 for f in dataclasses.fields(cls)
    )


def test_render_maps_fields_to_flags_and_keeps_unknown_fields():
    flags = {"downstream.downstream": "--downstream", "data.batches": "--batches"}
    text = "set `downstream.downstream=false`, raise `data.batches` or `data.batches=9`; `other.field` stays"
    assert render(text, flags) == "set --no-downstream, raise --batches or --batches 9; other.field stays"
    assert render("`downstream.downstream=true`", flags) == "--downstream"
    assert UserError("x", field="data.batches").field == "data.batches"


def test_every_eval_field_gets_one_flag_and_defaults_round_trip():
    parser = build_parser()
    args = parser.parse_args(["evaluate", "--checkpoint", "c"])
    assert config_from_args(args, EvalConfig) == EvalConfig()
    table = FlagTable()
    add_config_flags(type(parser)(), EvalConfig, table)
    assert len(table) == len(set(table.values()))
    assert table["model.name"] == "--model" and table["run_absorption"] == "--absorption"
    assert table["absorption.absorption_seed"] == "--absorption_seed" and table["data.batches"] == "--batches"
    assert len(table) == leaf_fields(EvalConfig)


def test_flags_reach_the_nested_config_in_both_spellings():
    args = build_parser().parse_args(
        [
            "evaluate",
            "--checkpoint",
            "c",
            "--seq-len",
            "16",
            "--no-downstream",
            "--absorption-max-k",
            "3",
            "--layer",
            "2",
        ]
    )
    config = config_from_args(args, EvalConfig)
    assert config.data.seq_len == 16 and config.downstream.downstream is False
    assert config.absorption.absorption_max_k == 3 and config.select.layer == 2


def test_library_error_is_shown_with_the_flag(tmp_path, capsys):
    ckpt = checkpoint(tmp_path / "tc")
    assert main(["evaluate", "--checkpoint", ckpt, "--output_dir", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: no checkpoint names its language model: set --model (") and "model.name" not in err
    code = main(["evaluate", "--checkpoint", ckpt, "--model", "m", "--bootstrap_resamples", "5", "--no-progress"])
    assert code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("error: --bootstrap_resamples 5: use at least 100 (or 0 for no intervals)")
    )
    assert not (tmp_path / "o").exists()


def test_train_batch_tokens_and_its_deprecated_alias(tmp_path, capsys):
    parser = build_parser()
    new = parser.parse_args(["train", "--batch_tokens", "512"])
    old = parser.parse_args(["train", "--batch-size", "512"])
    assert getattr(new, "optim.batch_size") == getattr(old, "optim.batch_size") == "512"
    assert capsys.readouterr().err.strip() == "note: --batch-size is deprecated; use --batch_tokens"
    (tmp_path / "a.yaml").write_text("batch_tokens: 256\nlayer: 1\n")
    (tmp_path / "b.yaml").write_text("batch_size: 256\nlayer: 1\n")
    assert (
        read_config_file(tmp_path / "a.yaml")
        == read_config_file(tmp_path / "b.yaml")
        == {"batch_size": 256, "layer": 1}
    )
    assert TrainConfig().batch_size == 4096


def test_train_value_errors_name_the_flag(capsys):
    assert main(["train", "--layer", "1", "--batch_tokens", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --batch_tokens 0: must be positive"


@pytest.mark.parametrize("command", ["evaluate", "compare", "absorption", "train", "demo", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage: transcoderbench " + command in capsys.readouterr().out


@dataclasses.dataclass
class _Probe:
    """A section whose flags carry a prefix from the nesting."""

    FLAG_PREFIX: ClassVar[str] = "probe_"
    epochs: int = opt(3, "epochs")
    lr: float | None = opt(None, "learning rate")


@dataclasses.dataclass
class _Outer:
    probe: _Probe = dataclasses.field(default_factory=_Probe)
    verbose: bool = opt(False, "talk")


def test_a_section_prefix_comes_from_the_nesting():
    parser = build_parser().__class__()
    table = FlagTable()
    add_config_flags(parser, _Outer, table)
    assert table == {"probe.epochs": "--probe_epochs", "probe.lr": "--probe_lr", "verbose": "--verbose"}
    config = config_from_args(parser.parse_args(["--probe-epochs", "7", "--probe_lr", "1e-3", "--verbose"]), _Outer)
    assert config == _Outer(_Probe(epochs=7, lr=1e-3), verbose=True)
