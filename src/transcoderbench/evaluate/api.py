"""Evaluate one or many transcoders on the same tokens: the library API behind the CLI.

Flow: transcoders -> pick the language model -> resolve and check sites -> stream batches once
-> per-transcoder metric dicts plus the metadata every output carries (model, sites, dataset,
token counts, package versions).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from typing import Any

from transcoderbench import __version__
from transcoderbench.absorption.run import run_absorption
from transcoderbench.absorption.summary import VERSUS_REDUNDANCY
from transcoderbench.config import EvalConfig, SelectConfig, options_record
from transcoderbench.data import resolve_text_source, token_batches
from transcoderbench.errors import UserError
from transcoderbench.evaluate.engine import prepare_runs, run_pass
from transcoderbench.evaluate.runs import AccumulatorFactory
from transcoderbench.evaluate.splice import plan_downstream
from transcoderbench.formats import load_transcoder
from transcoderbench.latents import LatentsPlan, finish_latents, plan_latents
from transcoderbench.lm import LanguageModel, load_language_model, resolve_model_name
from transcoderbench.metrics import default_accumulators, weight_metrics
from transcoderbench.metrics.bootstrap import attach_uncertainty
from transcoderbench.transcoders import Transcoder


@dataclass
class EvaluationResult:
    """Everything one pass measured: shared metadata and one metrics dict per transcoder."""

    meta: dict[str, Any]
    """Model, dataset, token counts, options and versions (identical for every transcoder)."""
    metrics: dict[str, dict[str, Any]]
    """Transcoder name -> JSON-ready metrics (see ``transcoder_metrics``)."""
    latents: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Transcoder name -> latents record (``latents.records``), when ``config.latents.latents`` is on."""
    latent_matches: list[dict[str, Any]] = field(default_factory=list)
    """Latent matches of each pair of transcoders at the same sites (``latents.matching``)."""


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers, for every JSON output."""
    out = {"transcoderbench": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "safetensors", "numpy", "huggingface_hub", "datasets"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def load_transcoders(specs: dict[str, str], select: SelectConfig) -> dict[str, Transcoder]:
    """Load ``name -> spec``; the readers check weights (NaN/Inf) and the layer choice."""
    return {
        name: load_transcoder(spec, layer=select.layer, width=select.width, l0=select.l0)
        for name, spec in specs.items()
    }


def choose_model(transcoders: dict[str, Transcoder], model: str | None) -> str:
    """``model.name``, else the one model the transcoders' configs name."""
    if model:
        return resolve_model_name(model)
    named = {
        n: resolve_model_name(str(tc.info["model_name"])) for n, tc in transcoders.items() if tc.info.get("model_name")
    }
    distinct = sorted(set(named.values()))
    if not distinct:
        raise UserError(
            "no checkpoint names its language model: set `model.name` (a hub id, a local directory or smollm2-135m)"
        )
    if len(distinct) > 1:
        listing = ", ".join(f"{n}: {m}" for n, m in named.items())
        raise UserError(f"the transcoders name different models ({listing}): set `model.name` to choose one")
    return distinct[0]


def transcoder_metrics(name: str, tc: Transcoder, results: dict[str, Any], run_sites: dict[str, Any]) -> dict[str, Any]:
    """One transcoder's JSON: description, provenance, every metric, and the seed's field names."""
    rec = results.get("reconstruction", {})
    sp = results.get("sparsity", {})
    out: dict[str, Any] = {
        "name": name,
        "transcoder": tc.describe(),
        "source": {k: v for k, v in tc.info.items() if k != "training"},
        "training": tc.info.get("training"),
        "sites": run_sites,
        # Field names the seed's users read in their scripts:
        "fvu": rec.get("fvu"),
        "explained_variance": rec.get("explained_variance"),
        "mean_l0": sp.get("l0_mean"),
        "dead_percentage": sp.get("dead_percentage"),
        **results,
        **weight_metrics(tc),
    }
    out["absorption"] = None
    out["absorption_note"] = "not computed in this run (--no-absorption). " + VERSUS_REDUNDANCY
    return out


def evaluate_transcoders(
    transcoders: dict[str, Transcoder],
    config: EvalConfig | None = None,
    *,
    stop_early: bool = True,
    make_accumulators: AccumulatorFactory = default_accumulators,
    lm: LanguageModel | None = None,
    log: Any = None,
) -> EvaluationResult:
    """Evaluate every transcoder on exactly the same tokens in one streaming pass.

    ``config`` defaults to ``EvalConfig()`` (spliced loss and absorption on); set
    ``config.downstream.downstream = False`` for reconstruction only, which stops the forward early.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    config = config or EvalConfig()
    data, downstream = config.data, config.downstream
    bootstrap = config.bootstrap.check()
    if make_accumulators is default_accumulators:
        make_accumulators = functools.partial(default_accumulators, bootstrap=bootstrap)
    if data.batches <= 0 or data.batch_size <= 0 or data.seq_len < 2:
        raise UserError("`data.batches` and `data.batch_size` must be positive and `data.seq_len` at least 2")
    if lm is None:
        model_name = choose_model(transcoders, config.model.name)
        say(f"loading language model {model_name} ...")
        lm = load_language_model(
            model_name,
            device=config.model.device,
            dtype=config.model.dtype,
            trust_remote_code=config.model.trust_remote_code,
        )
    n_sequences = data.batches * data.batch_size
    runs = prepare_runs(lm, transcoders, make_accumulators, n_sequences=n_sequences)
    latents_plan = add_latent_collectors(runs, transcoders, config, lm)
    source = resolve_text_source(
        data.dataset,
        text_field=data.text_field,
        split=data.dataset_split,
        dataset_config=data.dataset_config,
        trust_remote_code=config.model.trust_remote_code,
    )
    planned = data.batches * data.batch_size * data.seq_len
    say(
        f"reading up to {planned:,} tokens ({data.batches} batches x {data.batch_size} sequences x {data.seq_len} tokens) "
        f"from {source.name}; BOS, PAD and EOS positions are excluded from every metric"
    )
    batches = token_batches(
        source, lm.tokenizer, seq_len=data.seq_len, batch_size=data.batch_size, n_batches=data.batches
    )
    plan = None
    if downstream.downstream:
        first = list(itertools.islice(batches, max(1, downstream.mean_ablation_batches)))
        say(
            f"estimating the mean-ablation baseline from {len(first)} batches; then the pass runs the whole model "
            "(downstream metrics on; --no-downstream stops it early)"
        )
        plan = plan_downstream(lm, runs, first, n_sequences=n_sequences, variants_per_pass=downstream.variants_per_pass)
        batches = itertools.chain(first, batches)
    stats = run_pass(
        lm, runs, batches, total_batches=data.batches, stop_early=stop_early, show_progress=config.progress, splice=plan
    )
    if stats.n_batches < data.batches:
        say(f"the dataset ran out after {stats.n_batches} of {data.batches} batches")
    say(f"evaluated {stats.n_tokens_evaluated:,} tokens ({stats.n_positions:,} positions read)")
    meta = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": lm.describe(),
        "dataset": source.describe(),
        "tokens": {
            "planned_tokens": planned,
            "seq_len": data.seq_len,
            "batch_size": data.batch_size,
            **stats.as_dict(),
        },
        "options": options_record(config),
        "versions": package_versions(),
    }
    metrics = {}
    for run in runs:
        sites = {
            "input": {
                "name": run.input_site.name,
                "module": run.input_site.module_path,
                "direction": run.input_site.direction,
                "normalize": run.input_site.normalize,
            },
            "output": {
                "name": run.output_site.name,
                "module": run.output_site.module_path,
                "direction": run.output_site.direction,
                "normalize": run.output_site.normalize,
            },
        }
        metrics[run.name] = transcoder_metrics(run.name, run.transcoder, run.results(), sites)
    attach_uncertainty({run.name: run.accumulators for run in runs}, metrics, bootstrap)
    if config.run_absorption:
        say("measuring first-letter absorption (--no-absorption skips it)")
        found = run_absorption(lm, transcoders, config.absorption, log=say, show_progress=config.progress)
        for name, result in found.items():
            metrics[name]["absorption"] = result
            metrics[name]["absorption_note"] = (
                (result.get("note") or "") + (" " if result.get("note") else "") + VERSUS_REDUNDANCY
            )
    evaluation = EvaluationResult(meta=meta, metrics=metrics)
    if latents_plan is not None:
        say("building the per-latent records (contexts, logit lens, matches)")
        evaluation.latents, evaluation.latent_matches = finish_latents(latents_plan, transcoders, lm)
        meta["latents"] = dataclasses.asdict(config.latents)
    return evaluation


def add_latent_collectors(
    runs: list[Any], transcoders: dict[str, Transcoder], config: EvalConfig, lm: LanguageModel
) -> LatentsPlan | None:
    """With ``config.latents.latents``: a latents collector in every run, fed by the same pass."""
    if not config.latents.latents:
        return None
    plan = plan_latents(transcoders, config.latents)
    for run in runs:
        collector = plan.collectors[run.name]
        collector.state = {k: v.to(lm.device) for k, v in collector.state.items()}
        run.accumulators["latents"] = collector
    return plan
