"""report.html: built from the JSON files alone, self-contained, rebuilt identically by `report DIR`."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from test_report_compare import evaluate_pass, fitted_transcoders
from transcoderbench.cli import main
from transcoderbench.errors import UserError
from transcoderbench.io import write_files
from transcoderbench.report.comparison import comparison_record, comparison_summary
from transcoderbench.report.html import build_report, load_results, write_report
from transcoderbench.report.summary import evaluation_summary

#: What the absorption phase writes (its own module is tested elsewhere); used to check the report shows it.
ABSORPTION = {
    "mean_absorption_fraction": 0.31,
    "full_absorption_rate": 0.12,
    "mean_num_split_latents": 1.4,
    "n_letters_scored": 22,
    "probe_f1": 0.83,
    "per_letter": {},
    "mode": "encoder",
    "note": "test",
}


def write_compare_dir(lm, out: Path) -> Path:
    """A compare output directory written exactly as `compare` writes it, then its report."""
    tcs = fitted_transcoders(lm)
    meta, metrics, _ = evaluate_pass(lm, {"ours": tcs["matryoshka"], "topk": tcs["topk"]}, downstream=True)
    metrics["ours"]["absorption"] = ABSORPTION
    files = {f"{name}_metrics.json": {"meta": meta, **m} for name, m in metrics.items()}
    files["comparison.json"] = comparison_record(meta, metrics)
    files["summary.txt"] = comparison_summary(meta, metrics)
    write_files(out, files)
    write_report(out)
    return out


def write_evaluate_dir(lm, out: Path) -> Path:
    meta, metrics, _ = evaluate_pass(lm, {"ours": fitted_transcoders(lm)["topk"]})
    m = metrics["ours"]
    write_files(out, {"metrics.json": {"meta": meta, **m}, "summary.txt": evaluation_summary(meta, m)})
    write_report(out)
    return out


@pytest.fixture(scope="module")
def compare_dir(tiny_lm, tmp_path_factory) -> Path:
    return write_compare_dir(tiny_lm("llama"), tmp_path_factory.mktemp("compare"))


class Resources(HTMLParser):
    """Every tag name and every src/href value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v for k, v in attrs if k in ("src", "href", "srcset", "data", "action") and v is not None]


def test_report_is_self_contained_and_its_images_are_real_pngs(compare_dir):
    text = (compare_dir / "report.html").read_text(encoding="utf-8")
    page = Resources()
    page.feed(text)
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert page.refs and all(r.startswith("data:image/png;base64,") for r in page.refs)
    assert "url(" not in text and "@import" not in text
    for ref in page.refs:
        png = base64.b64decode(ref.split(",", 1)[1], validate=True)
        img = imread(io.BytesIO(png), format="png")
        assert img.shape[0] > 100 and img.shape[1] > 100 and np.ptp(img[..., :3]) > 0.5
    titles = re.findall(r"<h3>([^<]+)</h3><img", text)
    assert titles == ["Sparsity / fidelity frontier", "Matryoshka prefix curves", "L0 per token", "Feature density"]


def test_report_shows_verdicts_intervals_downstream_absorption_and_seed_fields(compare_dir):
    text = (compare_dir / "report.html").read_text(encoding="utf-8")
    comparison = json.loads((compare_dir / "comparison.json").read_text())
    for cat in comparison["categories"]:
        assert f"<b>{cat['name']}</b>" in text and cat["verdict"] in text
    for field in ("fvu", "mean_l0", "dead_percentage", "absorption", "explained_variance"):
        assert f"<code>{field}</code>" in text
    ours = json.loads((compare_dir / "ours_metrics.json").read_text())
    iv = ours["uncertainty"]["intervals"]["fvu"]
    assert f"[{iv['low']:.4f}, {iv['high']:.4f}]" in text
    assert "downstream.delta_loss" in text and f"{ours['downstream']['delta_loss']:.4g}" in text
    assert "absorption.mean_absorption_fraction" in text and "0.3100" in text
    assert "absorption_high" in text  # the suggestion rule fired on 0.31 and names its threshold's source
    assert "Matryoshka prefixes" in text and "L0 within prefix" in text
    assert "What the numbers mean" in text and "this project&#x27;s heuristic" in text


def test_comparison_json_carries_differences_with_intervals(compare_dir):
    comparison = json.loads((compare_dir / "comparison.json").read_text())
    diffs = comparison["differences"]["ours - topk"]
    for key in ("fvu", "l0_mean", "cosine_similarity", "delta_loss", "kl_div"):
        assert set(diffs[key]) >= {"value", "low", "high", "significant"} and diffs[key]["low"] <= diffs[key]["high"]
    assert comparison["bootstrap"]["n_resamples"] == 400 and comparison["bootstrap"]["n_sequences"] == 24
    sparsity = {c["name"]: c for c in comparison["categories"]}["sparsity"]
    assert sparsity["winner"] == "topk"  # 12 active latents vs ~23: far outside the noise
    assert comparison["transcoders"]["ours"]["mean_l0"] == pytest.approx(diffs["l0_mean"]["value"] + 12.0)


def test_report_command_rebuilds_the_same_page_from_json_alone(compare_dir, capsys):
    report = compare_dir / "report.html"
    before = report.read_bytes()
    report.unlink()
    assert main(["report", str(compare_dir)]) == 0
    assert report.read_bytes() == before
    assert str(report) in capsys.readouterr().out


def test_report_of_an_evaluate_directory(tiny_lm, tmp_path):
    out = write_evaluate_dir(tiny_lm("llama"), tmp_path / "eval")
    _, metrics, comparison = load_results(out)
    assert comparison is None and list(metrics) == ["ours"] and "meta" not in metrics["ours"]
    text = build_report(out)
    assert text == (out / "report.html").read_text(encoding="utf-8")
    assert "transcoderbench evaluation: ours" in text and "Verdicts" not in text
    assert "Matryoshka prefix curves" not in text  # a TopK transcoder has one prefix
    summary = (out / "summary.txt").read_text()
    assert "fvu" in summary and "mean_l0" in summary and "intervals: 95% bootstrap over 24 sequences" in summary


def test_report_errors_are_one_line_user_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "neither metrics.json nor comparison.json" in err and err.count("\n") == 1
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        build_report(tmp_path)
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "comparison.json").write_text(json.dumps({"meta": {}, "transcoders": {"a": {}}}))
    with pytest.raises(UserError, match="a_metrics.json is missing"):
        build_report(tmp_path)
