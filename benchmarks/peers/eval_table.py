"""Print the evaluation side-by-side from ``run_eval.sh``'s ``eval.jsonl``: values, wall times, ratios.

    python benchmarks/peers/eval_table.py WORK/eval.jsonl
    python benchmarks/peers/eval_table.py --absorption_json FILE --variant NAME --seconds S   (one JSON line)

Values come from the first round (every tool is deterministic on these rows); times are the
median over rounds. Ratios are peer time / ours, so above 1 means we are faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

TOOLS = {"transcoderbench": "transcoderbench", "saelens": "SAELens", "saebench-core": "SAEBench"}
CORE_ROWS = [
    ("explained variance", "explained_variance", "{:.5f}"),
    ("explained variance, legacy", "explained_variance_legacy", "{:.5f}"),
    ("cosine similarity", "cosine", "{:.5f}"),
    ("MSE as reported", "mse", "{:.4g}"),
    ("L0", "l0", "{:.2f}"),
    ("dead latents", "dead", "{:d}"),
    ("CE clean", "ce_clean", "{:.5f}"),
    ("CE spliced", "ce_spliced", "{:.5f}"),
    ("CE zero-ablated", "ce_zero_ablation", "{:.5f}"),
    ("loss recovered (zero)", "ce_loss_score", "{:.4f}"),
    ("KL spliced", "kl_spliced", "{:.5f}"),
]


def absorption_line(path: Path, variant: str, seconds: float) -> dict:
    """Our ``absorption.json`` as one line of ``eval.jsonl``."""
    doc = json.loads(path.read_text())
    (res,) = doc["results"].values()
    return {
        "tool": f"transcoderbench-absorption ({variant})",
        "mean_absorption_fraction": res["mean_absorption_fraction"],
        "full_absorption_rate": res["full_absorption_rate"],
        "letters": res["n_letters_scored"],
        "per_letter": {c: res["per_letter"][c]["mean_absorption_fraction"] for c in res["letters_scored"]},
        "words": f"{res['n_train_words']} + {res['n_test_words']}",
        "vocab": res["vocab_size"],
        "total_s": seconds,
    }


def print_core(lines: list[dict]) -> None:
    by_tool = {t: [x for x in lines if x["tool"] == t] for t in TOOLS}
    by_tool = {t: xs for t, xs in by_tool.items() if xs}
    if not by_tool:
        return
    first = {t: xs[0] for t, xs in by_tool.items()}
    rows = next(iter(first.values()))["rows"]
    print(f"core evaluation, the same {rows} rows x 128 tokens, rounds: {len(next(iter(by_tool.values())))}")
    print(f"{'':28}" + "".join(f"{TOOLS[t]:>17}" for t in by_tool))
    for label, key, fmt in CORE_ROWS:
        print(f"{label:28}" + "".join(f"{fmt.format(first[t][key]):>17}" for t in by_tool))
    ours = by_tool.get("transcoderbench")
    for label, key in (("evaluation s (median)", "eval_s"), ("process s (median)", "total_s")):
        med = {t: statistics.median(x[key] for x in xs) for t, xs in by_tool.items()}
        print(f"{label:28}" + "".join(f"{med[t]:>17.1f}" for t in by_tool))
        if ours:
            print(
                f"{'  ratio, peer / ours':28}" + "".join(f"{med[t] / med['transcoderbench']:>16.2f}x" for t in by_tool)
            )


def print_absorption(lines: list[dict]) -> None:
    rows = [x for x in lines if "absorption" in x["tool"]]
    if not rows:
        return
    ours = next((x for x in rows if "one-prompt-per-word" in x["tool"]), None)
    common = set.intersection(*(set(x["per_letter"]) for x in rows))
    print("\nfirst-letter absorption, the same SAE (fraction: mean over each tool's own letters; common: over")
    print(
        f"the {len(common)} letters every row scored: {''.join(sorted(common))}); vs ours: wall time / ours one prompt per word"
    )
    print(f"{'tool':48}{'words':>14}{'letters':>8}{'fraction':>10}{'common':>8}{'full':>7}{'wall s':>9}{'vs ours':>9}")
    for x in rows:
        ratio = f"{x['total_s'] / ours['total_s']:.2f}x" if ours else ""
        on_common = statistics.fmean(x["per_letter"][c] for c in common) if common else float("nan")
        print(
            f"{x['tool']:48}{x.get('words', ''):>14}{x['letters']:>8}{x['mean_absorption_fraction']:>10.3f}"
            f"{on_common:>8.3f}{x['full_absorption_rate']:>7.3f}{x['total_s']:>9.1f}{ratio:>9}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("jsonl", nargs="?")
    ap.add_argument("--absorption_json", type=Path)
    ap.add_argument("--variant")
    ap.add_argument("--seconds", type=float)
    args = ap.parse_args()
    if args.absorption_json:
        print(json.dumps(absorption_line(args.absorption_json, args.variant, args.seconds)))
        return
    lines = [json.loads(x) for x in Path(args.jsonl).read_text().splitlines() if x.strip()]
    print_core(lines)
    print_absorption(lines)


if __name__ == "__main__":
    main()
