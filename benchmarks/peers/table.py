"""Print the training side-by-side from run_training.sh's outputs: held-out FVU, dead latents, wall times, ratio."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def metrics(work: Path, tool: str) -> dict:
    """The ``metrics.json`` that ``transcoderbench evaluate`` wrote for ``tool``."""
    return json.loads((work / f"eval-{tool}" / "metrics.json").read_text())


def main() -> None:
    work, ours_s, sparsify_s = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    print(f"{'tool':<16}{'held-out FVU':>14}{'dead':>8}{'L0':>8}{'wall s':>10}")
    for tool, seconds in (("transcoderbench", ours_s), ("sparsify", sparsify_s)):
        m = metrics(work, "ours" if tool == "transcoderbench" else tool)
        rec, sp = m.get("reconstruction", {}), m.get("sparsity", {})
        print(
            f"{tool:<16}{rec.get('fvu', float('nan')):>14.4f}{sp.get('dead_latents', -1):>8}"
            f"{sp.get('l0_mean', float('nan')):>8.1f}{seconds:>10.1f}"
        )
    print(f"speed ratio (sparsify wall / ours): {sparsify_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
