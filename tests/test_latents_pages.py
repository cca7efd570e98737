"""latents.html / latents_compare.html from the real CLI, and opened in headless Chromium."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from test_cli import FAST, assert_user_error, hidden_size, native_matryoshka, run_cli
from test_report_chromium import chromium, run_chromium

PROBE = """<script>
window.addEventListener('load', function () {
  setTimeout(function () {
    document.body.setAttribute('data-resources', String(performance.getEntriesByType('resource').length));
  }, 50);
});
</script>"""


class Sources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.fixture(scope="module")
def compare_dir(tiny_model_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("latents")
    model = tiny_model_dir("llama")
    d = hidden_size(model)
    a = native_matryoshka(tmp / "a", d, model_name=str(model))
    b = native_matryoshka(tmp / "b", d, model_name=str(model))
    out = tmp / "out"
    proc = run_cli(
        "compare",
        "--transcoder",
        f"mat={a}",
        "--transcoder",
        f"twin={b}",
        "--output_dir",
        str(out),
        "--latents",
        "--latents_top_k",
        "4",
        "--no-downstream",
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_compare_writes_pages_json_and_report_links(compare_dir):
    for name in ("mat_latents.html", "twin_latents.html", "latents_compare.html", "mat_latents.json"):
        assert (compare_dir / name).is_file(), name
    rec = json.loads((compare_dir / "mat_latents.json").read_text())
    assert rec["top_k"] == 4 and len(rec["latents"]) == 24
    assert all(len(lat["top"]) <= 4 for lat in rec["latents"])
    matches = json.loads((compare_dir / "latents_compare.json").read_text())
    # identical weights: every latent's best counterpart is itself, by cosine and by correlation
    assert matches["best_cos_id"] == list(range(24))
    fired = [i for i, lat in enumerate(rec["latents"]) if lat["count"] > 0]
    assert fired and all(matches["best_corr_id"][i] == i for i in fired)
    report = (compare_dir / "report.html").read_text()
    assert "mat_latents.html#latent=" in report and "latents_compare.html" in report
    metrics = json.loads((compare_dir / "mat_metrics.json").read_text())
    assert metrics["latents"]["page"] == "mat_latents.html"
    for page in ("mat_latents.html", "latents_compare.html"):
        parser = Sources()
        parser.feed((compare_dir / page).read_text())
        assert parser.urls == [], parser.urls


def test_evaluate_without_latents_writes_no_page(tmp_path, tiny_model_dir):
    model = tiny_model_dir("llama")
    ckpt = native_matryoshka(tmp_path / "ckpt", hidden_size(model), model_name=str(model))
    proc = run_cli("evaluate", "--checkpoint", str(ckpt), "--no-downstream", "--latents_subset", "0:8", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert not (ckpt / "interpretability_eval" / "latents.html").exists()
    proc = run_cli(
        "evaluate", "--checkpoint", str(ckpt), "--no-downstream", "--latents", "--latents_subset", "0:8", *FAST
    )
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((ckpt / "interpretability_eval" / "latents.json").read_text())
    assert [lat["id"] for lat in rec["latents"]] == list(range(8))
    bad = run_cli(
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--output_dir",
        str(tmp_path / "bad"),
        "--latents",
        "--latents_subset",
        "5:x",
        *FAST,
    )
    assert_user_error(bad, "--latents_subset")
    assert not (tmp_path / "bad").exists()


def open_page(page: Path, fragment: str, tmp: Path) -> str:
    """The DOM after load, with the Content-Security-Policy removed so a stray request would be made and counted."""
    copy = tmp / page.name
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page.read_text())
    copy.write_text(text.replace("</body>", PROBE + "</body>"))
    proc = run_chromium(chromium(), tmp, "--virtual-time-budget=3000", "--dump-dom", copy.as_uri() + fragment)
    assert "<main>" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout.split('<script type="application/json"')[0]  # the rendered page, not the scripts' source


def test_chromium_search_finds_a_latent_and_renders_contexts(compare_dir, tmp_path):
    rec = json.loads((compare_dir / "mat_latents.json").read_text())
    lat = max(rec["latents"], key=lambda e: e["count"])
    dom = open_page(compare_dir / "mat_latents.html", f"#search={lat['id']}", tmp_path)
    assert 'data-resources="0"' in dom
    assert f'data-latent="{lat["id"]}"' in dom
    assert dom.count('class="ctx"') == len(lat["top"]) + len(lat["samples"]) > 0
    assert dom.count('data-marked="1"') == dom.count('class="ctx"')
    assert "1-1 of 1 latents" in dom
    # search by token text: the strongest input token of this latent finds it
    token = rec["vocab"][str(lat["inputs"][0][0])].strip()
    if token:
        dom = open_page(compare_dir / "mat_latents.html", f"#search={token}", tmp_path)
        assert f'<tr class="row" data-id="{lat["id"]}"' in dom
    dom = open_page(compare_dir / "latents_compare.html", f"#latent={lat['id']}", tmp_path)
    assert 'data-resources="0"' in dom and dom.count("data-latent=") == 2
