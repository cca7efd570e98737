"""report.html opened in headless Chromium: the page renders (not blank) and every image loads.

Needs a Chromium binary (.ci/run installs Debian's `chromium` and sets
TRANSCODERBENCH_REQUIRE_CHROMIUM=1, so CI fails rather than skips when it is missing).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_report_html import write_compare_dir

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless as root on a machine with no network: no sandbox, no GPU, and none of Chromium's
# background connections (they would be refused, many at a time).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
FRONTIER_BLUE = np.array([31, 119, 180])  # the first transcoder's colour in every plot (#1f77b4)

#: Injected into a copy of the page only (the report itself has no script): after load, record
#: how many images there are and how many decoded to a real size.
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; } }
  document.body.setAttribute('data-images', imgs.length + ':' + ok);
});
</script>"""


def chromium() -> str:
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("TRANSCODERBENCH_REQUIRE_CHROMIUM"):
        pytest.fail(
            "TRANSCODERBENCH_REQUIRE_CHROMIUM is set but no chromium binary is on PATH (apt-get install chromium)"
        )
    pytest.skip("no chromium binary on PATH (install Debian's `chromium`; .ci/run does)")


def run_chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run(
        [binary, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture(scope="module")
def report(tiny_lm, tmp_path_factory) -> Path:
    return write_compare_dir(tiny_lm("llama"), tmp_path_factory.mktemp("chromium")) / "report.html"


def test_screenshot_is_not_blank(report, tmp_path):
    binary = chromium()
    shot = tmp_path / "report.png"
    proc = run_chromium(binary, tmp_path, f"--screenshot={shot}", "--window-size=1280,4000", report.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (4000, 1280)
    background = np.median(pixels.reshape(-1, 3), axis=0)
    differs = np.abs(pixels - background).sum(axis=2) > 30
    assert differs.mean() > 0.05, f"only {differs.mean():.1%} of the screenshot differs from the background"
    # the plots drew: pixels in the first transcoder's plot colour exist (a broken image would be grey)
    blue = (np.abs(pixels - FRONTIER_BLUE).sum(axis=2) < 40).sum()
    assert blue > 500, blue
    shutil.copy(shot, report.parent / "report-screenshot.png")  # left beside the report for a person to look at


def test_every_image_loads(report, tmp_path):
    binary = chromium()
    text = report.read_text(encoding="utf-8")
    n_images = text.count("<img ")
    assert n_images >= 4
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    proc = run_chromium(binary, tmp_path, "--dump-dom", "--virtual-time-budget=10000", probe.as_uri())
    found = re.search(r'data-images="(\d+):(\d+)"', proc.stdout)
    assert found, f"the probe did not run; chromium said: {proc.stderr[-2000:]}"
    assert (int(found.group(1)), int(found.group(2))) == (n_images, n_images)
