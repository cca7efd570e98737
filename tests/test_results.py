"""Typed result records: exact round trips on real CLI outputs, tolerance of skipped phases, one-line shape errors.

The round trips run the real CLI (tiny model, a few dozen tokens) and compare each record's
``to_json()`` with the file text byte for byte, so the records cannot drift from what the
evaluation writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_cli import hidden_size, native_matryoshka, run_cli
from transcoderbench.cli import main
from transcoderbench.errors import UserError
from transcoderbench.report.html import REPORT_NAME, load_records
from transcoderbench.report.suggestions import RULES, THRESHOLD_SOURCES, THRESHOLDS, suggestions_as_dicts
from transcoderbench.results import Absorption, Comparison, Interval, TranscoderResult

FAST = ["--batches", "2", "--batch_size", "2", "--seq-len", "16", "--no-progress"]
#: The smallest absorption phase that runs on the tiny model (it reports "not scored", with every key written).
TINY_ABSORPTION = [
    "--absorption",
    "--absorption_icl_examples",
    "3",
    "--absorption_train_words",
    "200",
    "--absorption_test_words",
    "100",
    "--absorption_min_letters",
    "1",
    "--absorption_fit_tokens",
    "256",
    "--no-absorption_cache",
]


def file_text(record: TranscoderResult | Comparison) -> str:
    """What write_files would write for the record's JSON."""
    return json.dumps(record.to_json(), indent=2, allow_nan=False) + "\n"


@pytest.fixture(scope="module")
def compare_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A real `compare` output: downstream, bootstrap and absorption phases all on."""
    tmp = tmp_path_factory.mktemp("results")
    model = tiny_model_dir("llama")
    d = hidden_size(model)
    ours = native_matryoshka(tmp / "ours", d)
    other = native_matryoshka(tmp / "other", d, layer=1)
    out = tmp / "cmp"
    proc = run_cli(
        "compare",
        "--transcoder",
        f"ours={ours}",
        "--transcoder",
        f"other={other}",
        "--model",
        str(model),
        "--output_dir",
        str(out),
        *FAST,
        *TINY_ABSORPTION,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_records_reproduce_every_compare_file_byte_for_byte(compare_dir):
    for name in ("ours", "other"):
        path = compare_dir / f"{name}_metrics.json"
        data = json.loads(path.read_text())
        record = TranscoderResult.from_json(data, str(path))
        assert record.to_json() == data
        assert file_text(record) == path.read_text()
        # typed access to every family, the seed's fields included
        assert record.fvu == data["fvu"] == record.reconstruction.fvu
        assert record.mean_l0 == data["mean_l0"] == record.sparsity.l0_mean
        assert record.dead_percentage == data["dead_percentage"] and record.explained_variance is not None
        assert record.downstream is not None and record.downstream.delta_loss == data["downstream"]["delta_loss"]
        assert [p.prefix_end for p in record.prefixes.per_prefix] == [8, 24]
        assert record.decoder_redundancy.n_pairs == data["decoder_redundancy"]["n_pairs"]
        assert record.meta.tokens.n_positions == 2 * 2 * 16
        assert record.sites.input.name == "blocks.1.hook_mlp_in"
        assert isinstance(record.interval("fvu"), Interval) and record.interval("fvu").low <= record.fvu
        other = "other" if name == "ours" else "ours"
        assert record.uncertainty.differences[other].intervals["fvu"].significant is not None
        # absorption: known fields typed, everything else kept raw
        assert record.absorption is not None and record.absorption.n_letters_scored == 0
        assert "per_letter" in record.absorption.extra and "options" in record.absorption.extra
    path = compare_dir / "comparison.json"
    data = json.loads(path.read_text())
    comparison = Comparison.from_json(data, str(path))
    assert comparison.to_json() == data and file_text(comparison) == path.read_text()
    assert {c.name for c in comparison.categories} >= {"reconstruction", "sparsity", "downstream loss"}


def test_report_from_records_is_the_page_compare_wrote(compare_dir):
    written = (compare_dir / REPORT_NAME).read_bytes()
    (compare_dir / REPORT_NAME).unlink()
    assert main(["report", str(compare_dir)]) == 0
    assert (compare_dir / REPORT_NAME).read_bytes() == written


def test_skipped_phases_are_none_and_round_trip(tiny_model_dir, tmp_path):
    model = tiny_model_dir("llama")
    ckpt = native_matryoshka(tmp_path / "ckpt", hidden_size(model), model_name=str(model))
    out = tmp_path / "eval"
    proc = run_cli(
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--output_dir",
        str(out),
        "--no-downstream",
        "--no-absorption",
        "--bootstrap_resamples",
        "0",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    path = out / "metrics.json"
    data = json.loads(path.read_text())
    record = TranscoderResult.from_json(data, str(path))
    assert file_text(record) == path.read_text()
    assert record.downstream is None and "downstream" not in record.to_json()
    assert record.absorption is None and record.absorption_note
    assert record.interval("fvu") is None
    meta, records, comparison = load_records(out)
    assert comparison is None and list(records) == ["ours"] and records["ours"].meta is None
    assert meta.tokens.n_tokens_evaluated == data["meta"]["tokens"]["n_tokens_evaluated"]


def test_missing_sections_are_none_and_stay_missing():
    record = TranscoderResult.from_json({"name": "x", "fvu": 0.5})
    assert record.reconstruction is None and record.uncertainty is None and record.absorption is None
    assert record.to_json() == {"name": "x", "fvu": 0.5}
    assert TranscoderResult(name="x").to_json()["downstream"] is None  # built in code: every field


def test_absorption_keeps_unknown_keys_raw():
    data = {"mean_absorption_fraction": 0.3, "per_letter": {"a": {"scored": True}}, "added_later": [1, 2]}
    ab = Absorption.from_json(data)
    assert ab.mean_absorption_fraction == 0.3 and ab.extra["added_later"] == [1, 2]
    assert ab.to_json() == data and list(ab.to_json()) == list(data)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda m: m["reconstruction"].update(fvu="0.3"), "reconstruction.fvu"),
        (lambda m: m.update(sparsity=[1, 2]), "sparsity"),
        (lambda m: m["uncertainty"]["intervals"].update(fvu=0.2), "uncertainty.intervals.fvu"),
        (lambda m: m["sparsity"].update(dead_latents=True), "sparsity.dead_latents"),
    ],
)
def test_a_wrong_shape_is_one_user_error_naming_file_and_key(compare_dir, tmp_path, capsys, edit, key):
    out = tmp_path / "edited"
    out.mkdir()
    for f in compare_dir.glob("*.json"):
        (out / f.name).write_text(f.read_text())
    data = json.loads((out / "ours_metrics.json").read_text())
    edit(data)
    (out / "ours_metrics.json").write_text(json.dumps(data))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"ours_metrics.json: {key}: expected" in err, err
    assert not (out / REPORT_NAME).exists()
    with pytest.raises(UserError):
        load_records(out)


# ------------------------------------------------------------------ suggestion rules
TRIGGERS_ALL = {
    "name": "x",
    "transcoder": {"architecture": "matryoshka_batchtopk", "k": 8, "d_sae": 64},
    "training": {"top_k": 16},
    "reconstruction": {"fvu": 0.3, "relative_reconstruction_bias": 0.8},
    "sparsity": {"n_tokens": 12345, "dead_fraction": 0.25, "dense_fraction": 0.03, "l0_mean": 24.0},
    "decoder_redundancy": {"redundant_latent_fraction": 0.07},
    "prefixes": {"per_prefix": [{"prefix_end": 16, "fvu": 0.302}, {"prefix_end": 64, "fvu": 0.3}]},
    "downstream": {"delta_loss": 0.5, "ce_clean": 3.0},
    "absorption": {"mean_absorption_fraction": 0.35},
    "uncertainty": {"intervals": {"fvu": {"value": 0.3, "low": 0.27, "high": 0.33}}},
}


def test_every_rule_has_a_threshold_and_a_source():
    assert [r.name for r in RULES] == list(THRESHOLDS) == list(THRESHOLD_SOURCES)
    assert all(THRESHOLD_SOURCES.values())


def test_rule_table_gives_the_texts_the_if_chain_gave():
    """Texts pinned from the 114-line `if` chain the table replaced (same inputs, same words)."""
    found = {s["rule"]: s for s in suggestions_as_dicts(TRIGGERS_ALL)}
    assert list(found) == list(THRESHOLDS)
    expected = {
        "fvu_high": "FVU is 0.300: 30.0% of the target's variance is not reconstructed (flagged above 0.2).",
        "dead_fraction_high": "25.0% of latents never fired on 12,345 evaluated tokens (flagged above 10%).",
        "dense_fraction_high": "3.00% of latents fire on more than 10% of tokens (flagged above 1%).",
        "l0_vs_k_relative": "inference L0 is 24.0, 50% above the trained top_k=16 (flagged beyond 20%).",
        "redundant_latent_fraction_high": "7.0% of latents have a decoder row with |cos| > 0.9 to another latent "
        "(flagged above 5%).",
        "last_group_fvu_gain_low": "the last Matryoshka group (latents 16..64) lowers FVU by only 0.0020 "
        "(flagged below 0.005).",
        "relative_bias_low": "relative reconstruction bias is 0.800: reconstructions are systematically too small "
        "(flagged below 0.9).",
        "delta_loss_relative_high": "splicing the reconstruction in raises the loss by 0.5000 nats, 16.7% of the "
        "clean loss 3.0000 (flagged above 10%).",
        "absorption_high": "mean first-letter absorption fraction is 0.350 (flagged above 0.2).",
        "fvu_interval_relative_wide": "the FVU interval is ±0.0300 around 0.3000 (10% of the value; flagged above 5%).",
    }
    assert {k: s["finding"] for k, s in found.items()} == expected
    assert found["delta_loss_relative_high"]["why"].startswith("the model's later layers see the reconstruction")


def test_rules_that_depend_on_other_metrics():
    low_fvu = {
        **TRIGGERS_ALL,
        "reconstruction": {"fvu": 0.1},
        "training": None,
        "sparsity": {"l0_mean": 5.0},
        "uncertainty": {"intervals": {"fvu": {"value": 0.1, "low": 0.1, "high": 0.1005}}},
    }
    found = {s["rule"]: s for s in suggestions_as_dicts(low_fvu)}
    assert list(found) == [
        "l0_vs_k_relative",
        "redundant_latent_fraction_high",
        "last_group_fvu_gain_low",
        "delta_loss_relative_high",
        "absorption_high",
    ]
    assert found["l0_vs_k_relative"]["finding"] == (
        "inference L0 is 5.0, 38% below the trained top_k=8 (flagged beyond 20%)."  # transcoder.k without training
    )
    assert found["delta_loss_relative_high"]["finding"].endswith(", although FVU is only 0.100.")
    assert found["delta_loss_relative_high"]["why"].startswith("an FVU that looks good while the loss suffers")
    jumprelu = {**TRIGGERS_ALL, "transcoder": {"architecture": "jumprelu"}, "training": None}
    assert "l0_vs_k_relative" not in {s["rule"] for s in suggestions_as_dicts(jumprelu)}
    assert suggestions_as_dicts({"name": "nothing measured"}) == []
