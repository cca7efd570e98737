"""The nested TrainConfig: sections in the style of sparsify, flat names kept for flags and config keys."""

from __future__ import annotations

import json

import pytest

from transcoderbench.cli import build_parser
from transcoderbench.errors import UserError
from transcoderbench.train.config import (
    CodersConfig,
    OptimConfig,
    TrainConfig,
    config_dict,
    make_config,
    read_config_file,
)


def test_sections_and_flat_names():
    c = make_config({"layer": 3, "top_k": 8, "batch_tokens": 512, "model": "m", "output_dir": "o"})
    assert isinstance(c.coders, CodersConfig) and isinstance(c.optim, OptimConfig)
    assert c.coders.top_k == 8 and c.top_k == 8 and c.optim.batch_size == 512 and c.model.name == "m"
    assert c.model.layer == 3 and c.output.output_dir == "o"
    flat = config_dict(c)
    assert flat["model"] == "m" and flat["batch_size"] == 512 and "coders" not in flat
    assert c.replace(top_k=4).coders.top_k == 4 and c.coders.top_k == 8


def test_config_files_take_flat_nested_and_mixed_keys(tmp_path):
    (tmp_path / "flat.yaml").write_text("layer: 2\ntop_k: 8\nbatch_tokens: 256\nmodel: m\n")
    (tmp_path / "nested.yaml").write_text(
        "model: {name: m, layer: 2}\ncoders: {top_k: 8}\noptim: {batch_tokens: 256}\n"
    )
    (tmp_path / "mixed.json").write_text(
        json.dumps({"model": "m", "layer": 2, "coders": {"top_k": 8}, "batch_size": 256})
    )
    expected = {"layer": 2, "top_k": 8, "batch_size": 256, "model": "m"}
    for name in ("flat.yaml", "nested.yaml", "mixed.json"):
        assert read_config_file(tmp_path / name) == expected, name
    (tmp_path / "bad.yaml").write_text("coders: {topk: 8}\n")
    with pytest.raises(UserError, match="unknown key coders.topk"):
        read_config_file(tmp_path / "bad.yaml")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        read_config_file(tmp_path / "deep.json")


def test_saved_record_is_a_config_file(tmp_path):
    c = make_config({"layer": 1, "group_sizes": "1/4,3/4", "dict_size": 64, "top_k": 4})
    (tmp_path / "train_config.json").write_text(json.dumps(config_dict(c)))
    assert make_config(read_config_file(tmp_path / "train_config.json")) == c


def test_flags_come_from_the_sections():
    args = build_parser().parse_args(["train", "--model", "m", "--top_k", "8", "--lr", "0.1", "--no-progress"])
    assert getattr(args, "model.name") == "m" and getattr(args, "coders.top_k") == "8"
    assert getattr(args, "optim.lr") == "0.1" and getattr(args, "output.progress") is False
    assert TrainConfig().coders.top_k == 32
