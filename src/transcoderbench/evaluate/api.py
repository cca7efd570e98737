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
from pathlib import Path
from typing import Any

import torch

from transcoderbench import __version__
from transcoderbench.absorption.run import run_absorption_rank0
from transcoderbench.absorption.summary import VERSUS_REDUNDANCY
from transcoderbench.config import EvalConfig, SelectConfig, options_record
from transcoderbench.data import TokenBatch, text_source_of, token_batches
from transcoderbench.data.batching import shard_batches
from transcoderbench.distributed import init_from_env, rank_device
from transcoderbench.errors import UserError
from transcoderbench.evaluate.checkpoint import Checkpointer, SavedPass, fingerprint
from transcoderbench.evaluate.engine import prepare_runs, reduce_pass, run_pass
from transcoderbench.evaluate.runs import AccumulatorFactory, PassStats
from transcoderbench.evaluate.splice import plan_downstream
from transcoderbench.formats import load_transcoder
from transcoderbench.io import fault_point
from transcoderbench.latents import LatentsPlan, finish_latents, plan_latents
from transcoderbench.lm import LanguageModel, load_language_model, resolve_model_name
from transcoderbench.lm.loading import check_seq_len
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


def _everyone(flag: bool) -> bool:
    """True when ``flag`` holds on every torch.distributed rank (just ``flag`` on one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return bool(t.item())


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
    state_dir: str | Path | None = None,
) -> EvaluationResult:
    """Evaluate every transcoder on exactly the same tokens in one streaming pass.

    ``config`` defaults to ``EvalConfig()`` (spliced loss and absorption on); set
    ``config.downstream.downstream = False`` for reconstruction only, which stops the forward early.

    Under ``torchrun`` every rank calls this: rank ``r`` evaluates global batches ``r, r + N, ...``,
    the sums are all-reduced, and every rank returns the same numbers (absorption: rank 0 only).
    ``state_dir`` (with ``config.checkpoint_every`` / ``config.resume``) saves and resumes the pass;
    the caller removes it once the outputs are written.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    config = config or EvalConfig()
    rank, world_size, _ = init_from_env()
    if rank != 0:
        say = lambda msg: None  # noqa: E731 - rank 0 speaks for all
    data, downstream = config.data, config.downstream
    bootstrap = config.check().bootstrap
    if make_accumulators is default_accumulators:
        make_accumulators = functools.partial(default_accumulators, bootstrap=bootstrap)
    if data.batches <= 0 or data.batch_size <= 0 or data.seq_len < 2:
        raise UserError("`data.batches` and `data.batch_size` must be positive and `data.seq_len` at least 2")
    source = text_source_of(data, trust_remote_code=config.model.trust_remote_code)
    if (config.checkpoint_every or config.resume) and state_dir is None:
        raise UserError("`checkpoint_every` and `resume` need a folder for the saved state (an output folder)")
    if config.latents.latents and (config.checkpoint_every or config.resume or world_size > 1):
        raise UserError(
            "`latents.latents` cannot yet be combined with `checkpoint_every`, `resume` or several processes: "
            "collect latents in a single uninterrupted run"
        )
    if config.checkpoint_every < 0:
        raise UserError(f"`checkpoint_every` {config.checkpoint_every}: must be 0 (never) or a number of batches")
    saver: Checkpointer | None = None
    saved_state: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None
    saved: SavedPass | None = None
    if state_dir is not None and (config.checkpoint_every or config.resume):
        saver = Checkpointer(
            Path(state_dir), config.checkpoint_every, fingerprint(config, transcoders, world_size), rank, world_size
        )
        saved_state = saver.read() if config.resume and _everyone(saver.exists()) else None
        if config.resume and saved_state is None:
            say(f"no complete saved state in {state_dir}: starting from the first batch")
    if lm is None:
        model_name = choose_model(transcoders, config.model.name)
        say(f"loading language model {model_name} ...")
        lm = load_language_model(
            model_name,
            device=rank_device(config.model.device),
            dtype=config.model.dtype,
            trust_remote_code=config.model.trust_remote_code,
        )
    check_seq_len(lm, data.seq_len)
    n_sequences = data.batches * data.batch_size
    runs = prepare_runs(lm, transcoders, make_accumulators, n_sequences=n_sequences)
    latents_plan = add_latent_collectors(runs, transcoders, config, lm)
    planned = data.batches * data.batch_size * data.seq_len
    say(
        f"reading up to {planned:,} tokens ({data.batches} batches x {data.batch_size} sequences x {data.seq_len} tokens) "
        f"from {source.name}; BOS, PAD and EOS positions are excluded from every metric"
        + (f"; {world_size} processes share the batches" if world_size > 1 else "")
    )
    stream = token_batches(
        source, lm.tokenizer, seq_len=data.seq_len, batch_size=data.batch_size, n_batches=data.batches
    )
    head: list[TokenBatch] = []
    plan = None
    if downstream.downstream:
        if saver is not None and saved_state is not None:
            meta_saved, tensors = saved_state
            means = {k.removeprefix("mean/"): v for k, v in tensors.items() if k.startswith("mean/")}
            plan = plan_downstream(
                lm,
                runs,
                [],
                n_sequences=n_sequences,
                variants_per_pass=downstream.variants_per_pass,
                site_means=means,
                mean_source=meta_saved.get("mean_source"),
            )
        else:
            head = list(itertools.islice(stream, max(1, downstream.mean_ablation_batches)))
            say(
                f"estimating the mean-ablation baseline from {len(head)} batches; then the pass runs the whole model "
                "(downstream metrics on; --no-downstream stops it early)"
            )
            mine = list(shard_batches(head, rank, world_size))
            plan = plan_downstream(
                lm, runs, mine, n_sequences=n_sequences, variants_per_pass=downstream.variants_per_pass
            )
        for run in runs:
            run.accumulators.update(plan.accumulators(run.name))
    resumed = None
    if saver is not None and saved_state is not None:
        saved = saver.restore(runs, *saved_state)
        resumed = saved.stats
        say(
            f"resuming from {state_dir}: {resumed.n_batches} batches of this process were saved; "
            f"continuing from global batch {saved.position + 1}"
        )
    batches = shard_batches(itertools.chain(head, stream), rank, world_size, start=saved.position if saved else 0)

    def after_batch(tb: TokenBatch, stats: PassStats) -> None:
        if saver is not None:
            saver.position = int(tb.seq_index[0]) // data.batch_size + 1
            if saver.due(stats.n_batches):
                saver.save(runs, stats, plan)
        fault_point("eval_after_batch", stats.n_batches)

    stats = run_pass(
        lm,
        runs,
        batches,
        total_batches=len(range(rank, data.batches, world_size)),
        stop_early=stop_early,
        show_progress=config.progress and rank == 0,
        splice=plan,
        resume_from=resumed,
        after_batch=after_batch,
        reduce=False,
    )
    if saver is not None and config.checkpoint_every:
        saver.save(runs, stats, plan)  # the whole pass: a crash in absorption resumes after it
    reduce_pass(runs, stats)
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
        "world_size": world_size,
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
        found = run_absorption_rank0(
            lm,
            transcoders,
            config.absorption,
            text=source,
            log=say,
            show_progress=config.progress,
        )
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
