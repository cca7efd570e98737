"""Training: one transcoder's step (:class:`TranscoderTrainer`) and the one training loop (:func:`train`).

How a step works, the scales, the initialisation and the inference threshold: ``docs/training.md``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

import transcoderbench.train.state as resume_state
from transcoderbench import distributed
from transcoderbench.data import resolve_text_source
from transcoderbench.errors import UserError
from transcoderbench.formats import save_native
from transcoderbench.io import directory_lock
from transcoderbench.lm import LanguageModel, load_language_model, resolve_site, site_widths
from transcoderbench.progress import progress_bar
from transcoderbench.train.buffer import ActivationBuffer
from transcoderbench.train.config import (
    DATA_FIELDS,
    FLAT_KEYS,
    RESUME_MUTABLE,
    TrainConfig,
    config_dict,
    default_sites,
    flag_of,
    group_sizes,
    layer_of,
    make_config,
)
from transcoderbench.train.objective import (
    Selection,
    aux_loss,
    prefix_losses,
    select_batch_topk,
    select_topk,
    total_variance,
    with_encoder_grad,
)
from transcoderbench.train.optim import (
    averaged_weights,
    load_optimizer_state,
    make_optimizer,
    optimizer_state_tensors,
    step_lr,
)
from transcoderbench.train.schedule import lr_at
from transcoderbench.transcoders import (
    BatchTopKTranscoder,
    MatryoshkaTranscoder,
    TopKTranscoder,
    Transcoder,
    group_sizes_to_ends,
)

#: The logged threshold estimate averages the last ``total_steps / 20`` batches (at least 10, at
#: most 100): long enough to smooth batch noise, short enough to follow the weights in a short run.
THRESHOLD_WINDOW = (10, 100)
#: The saved inference threshold is calibrated on this many of the most recent training tokens.
CALIBRATION_TOKENS = 16_384
#: The BatchTopK search first looks above this fraction of the previous batch's smallest kept value.
SEARCH_MARGIN = 0.8
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"
CHECKPOINTS_DIR = "checkpoints"
#: Written into every run folder this tool creates; --overwrite clears only folders that hold it.
RUN_MARKER = ".transcoderbench-run"
#: What a run folder may hold; --overwrite deletes these and refuses a folder holding anything else.
OWNED_NAMES = frozenset(
    {
        RUN_MARKER,
        CONFIG_FILE,
        METRICS_FILE,
        CHECKPOINTS_DIR,
        "config.json",
        "model.safetensors",
        ".final-staging",
        resume_state.RESUME_DIR,
        resume_state.OLD_DIR,
    }
)
_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


# ============================================================================ one transcoder
class TranscoderTrainer:
    """One transcoder being trained: its weights, Adam, and the per-latent state the losses need.

    :meth:`step` works on plain tensors, so the language-model buffer and synthetic data drive it
    alike. Weights live in the *training scale* (see :meth:`init_from_data`);
    :meth:`final_transcoder` folds the scales back, so saved checkpoints read raw activations.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        d_in: int,
        d_out: int,
        input_site: str,
        output_site: str,
        device: torch.device | str = "cpu",
        name: str = "transcoder",
    ):
        self.name, self.config = name, config
        self.input_site, self.output_site = input_site, output_site
        self.sizes = group_sizes(config)
        self.prefix_ends = group_sizes_to_ends(self.sizes)
        d_sae = config.dict_size
        g = torch.Generator().manual_seed(config.seed)
        W_dec = unit_rows(torch.randn(d_sae, d_out, generator=g))
        W_enc = W_dec.T.clone() if d_in == d_out else unit_rows(torch.randn(d_sae, d_in, generator=g)).T.contiguous()
        initial = {"W_enc": W_enc, "b_enc": torch.zeros(d_sae), "W_dec": W_dec, "b_dec": torch.zeros(d_out)}
        self.params = {key: torch.nn.Parameter(t.to(device)) for key, t in initial.items()}
        self.optimizer = make_optimizer(config, list(self.params.values()))
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.input_scale = 1.0
        self.target_scale = 1.0
        self.threshold: float | None = None
        """Moving average of the smallest kept activation (training scale)."""
        self.last_kept: float | None = None
        """The previous batch's smallest kept activation (speeds up the next BatchTopK search)."""
        self.steps_done = 0
        total_steps = math.ceil(config.token_budget / config.batch_size)
        self.threshold_beta = 1 - 1 / min(max(total_steps // 20, THRESHOLD_WINDOW[0]), THRESHOLD_WINDOW[1])

    @property
    def batch_topk(self) -> bool:
        return self.config.architecture != "topk"

    def init_from_data(self, x: Tensor, y: Tensor) -> None:
        """Training scale and decoder bias from a sample of the data.

        Inputs are multiplied by ``input_scale`` so that ``E ||x||^2 = d_in``, targets by
        ``target_scale`` so that their centred values have unit variance per dimension. The
        learning rate and the initialisation then mean the same at every site of every model
        (a random model's MLP output can be 1000 times smaller than its normalised input).
        ``b_dec`` = the mean (scaled) target, so latents start by explaining deviations from it.
        With ``encoder_bias_init=centred`` (the default), ``b_enc = -mean(x) W_enc``: every
        pre-activation starts centred on the data, as sparsify initialises. With ``b_enc = 0`` the
        latents that point along the activations' mean direction fire on every token and the rest
        on none, so many start dead.
        """
        self.input_scale = float(math.sqrt(x.shape[1] / x.pow(2).sum(dim=1).mean().clamp_min(1e-30)))
        centred = y - y.mean(dim=0)
        if not float(centred.pow(2).sum(dim=1).mean()) > 1e-10 * float(y.pow(2).sum(dim=1).mean()):
            raise Diverged(
                f"the target {self.output_site} is constant over the first {y.shape[0]:,} training tokens, so there "
                "is nothing to learn (its fraction of variance unexplained is undefined); choose another "
                "--output_site or --layer"
            )
        self.target_scale = float(math.sqrt(y.shape[1] / centred.pow(2).sum(dim=1).mean().clamp_min(1e-30)))
        with torch.no_grad():
            self.params["b_dec"].copy_(y.mean(dim=0) * self.target_scale)
            if self.config.encoder_bias_init == "centred":
                x_mean = x.mean(dim=0).to(self.params["W_enc"]) * self.input_scale
                self.params["b_enc"].copy_(-(x_mean @ self.params["W_enc"]))

    def step(self, x: Tensor, y: Tensor, lr: float, shard: tuple[int, int] | None = None) -> dict[str, Any]:
        """One optimisation step on raw ``x [N, d_in]``, ``y [N, d_out]``; returns the step's metrics.

        ``shard`` (data-parallel under torchrun): this rank's rows ``[lo, hi)`` of the global batch.
        The selection, the dead-latent counters and the loss denominator use the whole batch (every
        rank holds it), the decoding and the backward pass only this rank's rows; the gradients,
        summed over ranks, are the one-process gradients.
        """
        c, p = self.config, self.params
        x, y = x * self.input_scale, y * self.target_scale
        with torch.no_grad():
            pre = x @ p["W_enc"] + p["b_enc"]
        if self.batch_topk:
            sel = select_batch_topk(pre, c.top_k, None if self.last_kept is None else SEARCH_MARGIN * self.last_kept)
        else:
            sel = select_topk(pre, c.top_k)
        denominator = total_variance(y)
        full_sel, full_pre, (lo, hi) = sel, pre, shard or (0, x.shape[0])
        if shard is not None:
            sel, x, y, pre = _rows(sel, lo, hi), x[lo:hi], y[lo:hi], pre[lo:hi]
        sel = with_encoder_grad(sel, x, p["W_enc"], p["b_enc"])
        fvus, residual = prefix_losses(sel, y, p["W_dec"], p["b_dec"], self.prefix_ends, denominator)
        loss = torch.stack(fvus).mean()
        dead = self.tokens_since_fired >= c.dead_window
        aux = None
        if c.aux_penalty > 0:
            aux = aux_loss(pre, dead, residual, x, p["W_enc"], p["b_enc"], p["W_dec"], c.top_k_aux, denominator)
        if aux is not None:
            loss = loss + c.aux_penalty * aux
        parts = torch.stack([loss.detach(), *(f.detach() for f in fvus), (aux if aux is not None else loss).detach()])
        if shard is not None:
            dist.all_reduce(parts)  # the whole batch's losses: every rank sees the same, and stops together
        loss_value = float(parts[0])
        if not math.isfinite(loss_value):  # before any update: the weights stay the last finite ones
            raise Diverged(f"the loss is {loss_value}")

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if shard is not None:
            for v in p.values():
                if v.grad is None:
                    v.grad = torch.zeros_like(v)
                dist.all_reduce(v.grad)
        sel, n = full_sel, full_sel.n_tokens
        with torch.no_grad():
            W_dec, grad = p["W_dec"], p["W_dec"].grad
            assert grad is not None  # every parameter gets a gradient (sparse decode, encoder entries, biases)
            grad -= (grad * W_dec).sum(dim=1, keepdim=True) * W_dec  # keep rows on the unit sphere
            lr = step_lr(c, self.steps_done, lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            W_dec.copy_(unit_rows(W_dec))

            self.tokens_since_fired += n
            self.tokens_since_fired[torch.bincount(sel.latents, minlength=c.dict_size) > 0] = 0
            if self.batch_topk and sel.values.numel():
                self.last_kept = float(sel.values.min())
                self.threshold = (
                    self.last_kept
                    if self.threshold is None
                    else (self.threshold_beta * self.threshold + (1 - self.threshold_beta) * self.last_kept)
                )
            self.steps_done += 1
            out: dict[str, Any] = {
                "loss": loss_value,
                "fvu": float(parts[len(fvus)]),
                "aux_loss": None if aux is None else float(parts[-1]),
                "l0": sel.latents.numel() / n,
                "dead_fraction": float(dead.float().mean()),
                "lr": lr,
            }
            if len(fvus) > 1:
                out["prefix_fvu"] = [float(f) for f in parts[1 : 1 + len(fvus)]]
            if self.batch_topk and self.threshold is not None:
                out["threshold"] = self.threshold / self.target_scale
                out["l0_inference"] = float((full_pre > self.threshold).sum()) / n
        return out

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def calibrated_threshold(self, x: Tensor, chunk: int = 2048) -> float:
        """The threshold (training scale) that keeps exactly ``k`` latents per token on average over
        the raw inputs ``x``: the ``(k N + 1)``-th largest activation. Only values above half the
        running estimate are gathered, chunk by chunk, so memory stays small for wide dictionaries.
        """
        p, m = self.params, self.config.top_k * x.shape[0]
        for floor in ((self.threshold or 0.0) * 0.5, 0.0):
            kept = [
                v[v > floor]
                for v in (
                    (x[i : i + chunk] * self.input_scale @ p["W_enc"] + p["b_enc"]).reshape(-1)
                    for i in range(0, x.shape[0], chunk)
                )
            ]
            values = torch.cat(kept)
            if values.numel() > m:
                return float(values.topk(m + 1, sorted=True).values[-1])
        return 0.0  # fewer than k * N positive activations: keep every positive one

    @torch.no_grad()
    def final_transcoder(self, info: dict[str, Any], recent_x: Tensor | None = None) -> Transcoder:
        """The trained transcoder as its inference class, reading raw activations.

        Folding the training scales (``s_x``, ``s_y``) in: ``W_enc * s_x / s_y``, ``b_enc / s_y``,
        ``threshold / s_y``, ``b_dec / s_y``. Pre-activations shrink by ``1 / s_y``, so the same
        latents are selected and the decoder rows stay unit vectors.
        """
        with averaged_weights(self.optimizer):
            return self._final_transcoder(info, recent_x)

    def _final_transcoder(self, info: dict[str, Any], recent_x: Tensor | None) -> Transcoder:
        c, p = self.config, self.params
        s_x, s_y = self.input_scale, self.target_scale
        weights = tuple(
            w.detach().clone() for w in (p["W_enc"] * (s_x / s_y), p["b_enc"] / s_y, p["W_dec"], p["b_dec"] / s_y)
        )
        training = info.setdefault("training", {})
        training.update(input_scale=s_x, target_scale=s_y)
        common: dict[str, Any] = {"input_site": self.input_site, "output_site": self.output_site, "info": info}
        if c.architecture == "topk":
            return TopKTranscoder(*weights, k=c.top_k, **common)
        threshold = self.threshold or 0.0
        if recent_x is not None and recent_x.shape[0] > 0:
            threshold = self.calibrated_threshold(recent_x)
        training.update(
            inference_threshold=threshold / s_y,
            threshold_ema=None if self.threshold is None else self.threshold / s_y,
            calibration_tokens=0 if recent_x is None else int(recent_x.shape[0]),
        )
        if c.architecture == "batchtopk":
            return BatchTopKTranscoder(*weights, k=c.top_k, threshold=threshold / s_y, **common)
        return MatryoshkaTranscoder(
            *weights, k=c.top_k, threshold=threshold / s_y, prefix_ends=self.prefix_ends, **common
        )

    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        tensors = {f"params.{k}": v.detach() for k, v in self.params.items()}
        opt_state = self.optimizer.state
        for k, v in self.params.items():
            for key in _ADAM_KEYS:
                if v in opt_state and key in opt_state[v]:
                    value = opt_state[v][key]
                    tensors[f"adam.{k}.{key}"] = value if isinstance(value, Tensor) else torch.tensor(float(value))
        tensors.update(optimizer_state_tensors(self.optimizer, self.params))
        tensors["tokens_since_fired"] = self.tokens_since_fired
        meta = {
            "threshold": self.threshold,
            "last_kept": self.last_kept,
            "steps_done": self.steps_done,
            "input_scale": self.input_scale,
            "target_scale": self.target_scale,
        }
        return meta, tensors

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(tensors[f"params.{k}"])
        for k, v in self.params.items():
            if f"adam.{k}.exp_avg" in tensors:
                self.optimizer.state[v] = {
                    key: tensors[f"adam.{k}.{key}"].to(v.device if key != "step" else "cpu") for key in _ADAM_KEYS
                }
        load_optimizer_state(self.optimizer, self.params, tensors)
        self.tokens_since_fired.copy_(tensors["tokens_since_fired"])
        self.threshold, self.last_kept = meta["threshold"], meta["last_kept"]
        self.steps_done = int(meta["steps_done"])
        self.input_scale, self.target_scale = float(meta["input_scale"]), float(meta["target_scale"])


def _rows(sel: Selection, lo: int, hi: int) -> Selection:
    """The entries of rows ``[lo, hi)`` of a selection (sorted by token), renumbered from 0."""
    a, b = (int(i) for i in torch.searchsorted(sel.tokens, torch.tensor([lo, hi], device=sel.tokens.device)))
    return Selection(sel.tokens[a:b] - lo, sel.latents[a:b], sel.values[a:b], hi - lo)


class Diverged(UserError):
    """A non-finite loss or weight: the settings (learning rate, data) make training blow up."""


def unit_rows(w: Tensor) -> Tensor:
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


class RecentRows:
    """The most recent ``capacity`` training inputs (a ring buffer), for threshold calibration."""

    def __init__(self, capacity: int, dim: int, device: torch.device | str) -> None:
        self.x = torch.empty(capacity, dim, device=device)
        self.pos = 0
        self.count = 0

    def add(self, x: Tensor) -> None:
        cap = self.x.shape[0]
        x = x[-cap:]
        idx = (self.pos + torch.arange(x.shape[0], device=self.x.device)) % cap
        self.x[idx] = x
        self.pos = (self.pos + x.shape[0]) % cap
        self.count = min(cap, self.count + x.shape[0])

    def rows(self) -> Tensor:
        return self.x[: self.count]

    def state(self) -> tuple[dict[str, int], dict[str, Tensor]]:
        return {"pos": self.pos, "count": self.count}, {"recent.x": self.rows()}

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        self.pos, self.count = int(meta["pos"]), int(meta["count"])
        self.x[: self.count] = tensors["recent.x"].to(self.x.device)


# ============================================================================ the loop
@dataclass
class TrainResult:
    """What a finished run produced."""

    name: str
    output_dir: Path
    """The final transcoder (native format) lives here, with metrics.jsonl and train_config.json."""
    transcoder: Transcoder
    """The final transcoder, as saved."""
    final_metrics: dict[str, Any]
    """The last step's metrics."""
    timing: dict[str, float] = field(default_factory=dict)
    """Seconds in the language model (incl. tokenizing), in transcoder steps, and in all."""


def train(
    configs: TrainConfig | list[TrainConfig],
    *,
    names: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    lm: LanguageModel | None = None,
    log: Callable[[str], None] | None = None,
) -> list[TrainResult]:
    """Train one transcoder per config, side by side on the same activations (one buffer, one
    language-model pass); each writes to its own ``output_dir``.

    Configs trained together must agree on every setting in ``DATA_FIELDS``. With ``resume`` each
    run continues from the resume state in its ``output_dir``; ``overwrite`` replaces earlier runs.
    """
    config_list = [configs] if isinstance(configs, TrainConfig) else list(configs)
    distributed.init_from_env()  # torchrun: join the group
    rank0 = distributed.is_rank0()
    say = (log or (lambda msg: print(msg, file=sys.stderr))) if rank0 else (lambda msg: None)
    with contextlib.ExitStack() as locks:
        for c in config_list if rank0 else []:  # only rank 0 writes
            locks.enter_context(directory_lock(c.output_dir, what="run folder"))
        new_dirs = [Path(c.output_dir) for c in config_list if rank0 and not Path(c.output_dir).exists()]
        try:
            run = _Run.open(configs, names, resume=resume, overwrite=overwrite, lm=lm, say=say)
            return _loop(run)
        except Diverged:
            raise  # the last good checkpoint stays, as the message says
        except BaseException:
            _remove_unresumable(new_dirs, say)
            raise


def _remove_unresumable(dirs: list[Path], say: Callable[[str], None]) -> None:
    """A run that failed leaves nothing that would block the next one: a folder it created is removed
    unless it holds a resume state (then ``--resume`` continues it)."""
    for d in dirs:
        if d.is_dir() and not resume_state.resume_dir(d).is_dir():
            shutil.rmtree(d, ignore_errors=True)
            say(f"removed {d}: the run failed before saving anything it could resume from")


def _loop(run: _Run) -> list[TrainResult]:
    """Train every transcoder of ``run`` to the end, logging and checkpointing on the way."""
    c0, total = run.configs[0], run.total_steps
    bar = progress_bar(
        total=total, initial=run.start_step, desc="training", unit="step", disable=not (c0.progress and run.rank0)
    )
    last: dict[str, dict[str, Any]] = {}
    try:
        for step in range(run.start_step, total):
            x, y = run.buffer.next_batch(c0.batch_size)
            run.recent.add(x)
            started = time.perf_counter()
            for t in run.trainers:
                c = t.config
                lr = lr_at(
                    step, lr=c.lr, min_lr=c.min_lr, warmup_steps=c.warmup_steps, total_steps=total, decay=c.decay
                )
                try:
                    last[t.name] = t.step(x, y, lr, run.shard)
                except Diverged as exc:
                    raise run.diverged(t, step + 1, str(exc)) from None
            _sync(run.device)
            run.timing["transcoder_seconds"] += time.perf_counter() - started
            done = step + 1
            if done % max(c0.log_every, 1) == 0 or done == total:
                run.log_metrics(done, last)
            bar.update(1)
            bar.set_postfix_str(" | ".join(_postfix(n, m) for n, m in last.items()), refresh=False)
            if c0.checkpoint_every and done % c0.checkpoint_every == 0 and done < total:
                run.checkpoint(done, last)
        bar.close()
        transcoders = run.checkpoint(total, last, final=True)
    finally:
        bar.close()
        run.close()
    return [
        TrainResult(t.name, d, tc, last.get(t.name, {}), dict(run.timing))
        for t, d, tc in zip(run.trainers, run.dirs, transcoders)
    ]


class _Run:
    """Everything a training run holds besides the loop itself: the buffer, the trainers, the
    output directories, timings, and how to log, checkpoint and resume."""

    def __init__(
        self, configs: list[TrainConfig], names: list[str], lm: LanguageModel, say: Callable[[str], None]
    ) -> None:
        self.configs, self.names, self.lm, self.say = configs, names, lm, say
        c0 = configs[0]
        self.rank0, self.world_size = distributed.is_rank0(), distributed.world_size()
        rows = c0.batch_size // self.world_size
        self.shard = (distributed.rank() * rows, (distributed.rank() + 1) * rows) if self.world_size > 1 else None
        self.dirs = [Path(c.output_dir) for c in configs]
        self.device = lm.device
        self.in_name, self.out_name = default_sites(c0)
        input_site, output_site = resolve_site(lm, self.in_name), resolve_site(lm, self.out_name)
        widths = site_widths(lm, [input_site, output_site])
        d_in, d_out = widths[input_site.name], widths[output_site.name]
        source = resolve_text_source(
            c0.dataset,
            text_field=c0.text_field,
            split=c0.dataset_split,
            dataset_config=c0.dataset_config,
            trust_remote_code=c0.trust_remote_code,
        )
        self.total_steps = math.ceil(c0.token_budget / c0.batch_size)
        self.buffer = ActivationBuffer(
            lm,
            input_site,
            output_site,
            source,
            seq_len=c0.seq_len,
            lm_batch_size=c0.lm_batch_size,
            capacity=c0.buffer_tokens,
            seed=c0.seed,
            d_in=d_in,
            d_out=d_out,
            tokens_to_serve=self.total_steps * c0.batch_size,
            show_progress=c0.progress and self.rank0,
            log=say,
            max_batches=math.ceil(c0.dataset_tokens / (c0.lm_batch_size * c0.seq_len)) if c0.dataset_tokens else None,
        )
        self.trainers = [
            TranscoderTrainer(
                c, d_in=d_in, d_out=d_out, input_site=self.in_name, output_site=self.out_name, device=lm.device, name=n
            )
            for c, n in zip(configs, names)
        ]
        self.recent = RecentRows(CALIBRATION_TOKENS, d_in, lm.device)
        self.timing = {"lm_seconds": 0.0, "transcoder_seconds": 0.0, "total_seconds": 0.0}
        self.start_step = 0
        self._clock_start = time.perf_counter()
        self._seconds_before = 0.0  # wall time before a resume
        self.writers: list[_MetricsWriter] = []
        self.wandb_run: Any = None
        self.last_checkpoint = 0
        """The step of the newest checkpoint on disk (0: none yet)."""

    @classmethod
    def open(
        cls,
        configs: TrainConfig | list[TrainConfig],
        names: list[str] | None,
        *,
        resume: bool,
        overwrite: bool,
        lm: LanguageModel | None,
        say: Callable[[str], None],
    ) -> _Run:
        """Check the configs and directories, load the model, then start fresh or resume."""
        configs = [configs] if isinstance(configs, TrainConfig) else list(configs)
        names = names or [Path(c.output_dir).name or f"transcoder{i}" for i, c in enumerate(configs)]
        _check_together(configs)
        dirs = [Path(c.output_dir) for c in configs]
        if len({str(d.resolve()) for d in dirs}) != len(dirs):
            raise UserError("transcoders trained side by side need different output directories")
        world = distributed.world_size()
        if configs[0].batch_size % world:
            raise UserError(f"--batch_tokens {configs[0].batch_size}: must be a multiple of the {world} processes")
        saved = []
        for c, d in zip(configs, dirs):
            if resume:
                if distributed.is_rank0():
                    resume_state.recover(d)  # a save interrupted by a crash (rank 0 holds the folder's lock)
                distributed.barrier()
                meta, tensors = resume_state.load_state(d)
                check_resume_config(meta["config"], c, d)
                saved.append((meta, tensors))
            else:
                _check_output_dir(d, overwrite)
        c0 = configs[0]
        if any(c.wandb for c in configs):
            _import_wandb()
        if lm is None:
            say(f"loading language model {c0.model.name} ...")
            lm = load_language_model(
                c0.model.name,
                device=distributed.rank_device(c0.device),
                dtype=c0.dtype,
                trust_remote_code=c0.trust_remote_code,
            )
        run = cls(configs, names, lm, say)
        if resume:
            run._resume(saved)
        else:
            run._start()
        run.writers = [
            _MetricsWriter(d / METRICS_FILE, keep_until=run.start_step if resume else None)
            for d in (run.dirs if run.rank0 else [])
        ]
        if any(c.wandb for c in configs) and run.rank0:
            run.wandb_run = _import_wandb().init(
                project=c0.wandb_project,
                name="+".join(names),
                config={n: config_dict(c) for n, c in zip(names, configs)},
            )
        return run

    def _start(self) -> None:
        c0 = self.configs[0]
        self.say(
            f"training {', '.join(f'{n} ({c.architecture})' for n, c in zip(self.names, self.configs))}: "
            f"{self.in_name} -> {self.out_name} of {self.lm.name}, {self.total_steps:,} steps of "
            f"{c0.batch_size:,} tokens"
        )
        self.buffer.start()  # the model, the sites and the data have all worked before anything is deleted
        x0, y0 = self.buffer.first_rows()
        for t in self.trainers:
            t.init_from_data(x0, y0)
        for c, d in zip(self.configs, self.dirs) if self.rank0 else []:
            _clear_run_dir(d)
            d.mkdir(parents=True, exist_ok=True)
            (d / RUN_MARKER).write_text("a transcoderbench training run (--overwrite may replace it)\n")
            (d / CONFIG_FILE).write_text(json.dumps(config_dict(c), indent=2) + "\n", encoding="utf-8")
        distributed.barrier()

    def _resume(self, saved: list[tuple[dict[str, Any], dict[str, Tensor]]]) -> None:
        meta0, tensors0 = saved[0]
        self.start_step = int(meta0["step"])
        if self.start_step >= self.total_steps:
            raise UserError(
                f"--resume: the run in {self.dirs[0]} already finished ({self.start_step} of {self.total_steps} steps)"
            )
        self.say(f"resuming from step {self.start_step} of {self.total_steps}")
        self.last_checkpoint = self.start_step
        self.buffer.load_state(meta0["buffer"], tensors0)
        self.recent.load_state(meta0["recent"], tensors0)
        for t, (meta, tensors) in zip(self.trainers, saved):
            t.load_state(meta["trainer"], {k.removeprefix("trainer."): v for k, v in tensors.items()})
        self.timing = {k: float(meta0["timing"].get(k, 0.0)) for k in self.timing}
        self.buffer.lm_seconds, self._seconds_before = self.timing["lm_seconds"], self.timing["total_seconds"]

    def _clock(self) -> None:
        self.timing["lm_seconds"] = self.buffer.lm_seconds
        self.timing["total_seconds"] = self._seconds_before + time.perf_counter() - self._clock_start

    def log_metrics(self, step: int, last: dict[str, dict[str, Any]]) -> None:
        self._clock()
        batch = self.configs[0].batch_size
        for t, w in zip(self.trainers, self.writers):
            w.write(
                {
                    "step": step,
                    "tokens": step * batch,
                    **last[t.name],
                    "epoch": self.buffer.epoch + 1,
                    "world_size": self.world_size,
                    **{k: round(v, 3) for k, v in self.timing.items()},
                }
            )
        if self.wandb_run is not None:
            self.wandb_run.log(
                {f"{n}/{k}": v for n, m in last.items() for k, v in m.items() if isinstance(v, (int, float))}, step=step
            )

    def info(self, t: TranscoderTrainer, step: int, last: dict[str, Any]) -> dict[str, Any]:
        """``transcoder.info`` for a checkpoint: the model and layer ``evaluate`` needs, and the training record."""
        given = t.config.model.name
        local = Path(given).expanduser()
        return {
            "model_name": os.path.abspath(local) if local.exists() else self.lm.name,  # evaluates from any cwd
            "model_given": given,
            "layer": layer_of(t.config),
            "training": {
                **config_dict(t.config),
                "group_sizes_resolved": t.sizes,
                "steps": step,
                "total_steps": self.total_steps,
                "tokens_trained": step * t.config.batch_size,
                "world_size": self.world_size,
                "last_step_metrics": last,
                "timing": dict(self.timing),
                "buffer": {
                    "in_memory": self.buffer.in_memory,
                    "epochs_started": self.buffer.epoch + 1,
                    "lm_tokens_read": self.buffer.tokens_read,
                },
            },
        }

    def checkpoint(self, step: int, last: dict[str, dict[str, Any]], final: bool = False) -> list[Transcoder]:
        """Save every transcoder; a periodic checkpoint also saves the resume state, the final one
        puts the transcoder at the top of its run directory and drops the resume state."""
        self._clock()
        buf_meta, buf_tensors = ({}, {}) if final else self.buffer.state()
        recent_meta, recent_tensors = self.recent.state()
        for t in self.trainers:
            if not all(bool(torch.isfinite(p).all()) for p in t.params.values()):
                raise self.diverged(t, step, "a weight is not finite")
        spread = [_rank_spread(t) for t in self.trainers] if self.world_size > 1 else None
        saved = []
        for t, c, d in zip(self.trainers, self.configs, self.dirs):
            info = self.info(t, step, last.get(t.name, {}))
            if spread is not None:  # 0.0: every rank holds the same weights (checked, not assumed)
                info["training"]["max_weight_difference_between_ranks"] = spread[self.trainers.index(t)]
            tc = t.final_transcoder(info, self.recent.rows())
            if final and self.rank0:
                _save_top_level(tc, d)
                resume_state.remove_state(d)
            elif self.rank0:
                save_native(tc, d / CHECKPOINTS_DIR / f"step_{step:07d}")
                t_meta, t_tensors = t.state()
                meta = {
                    "step": step,
                    "total_steps": self.total_steps,
                    "config": config_dict(c),
                    "buffer": buf_meta,
                    "recent": recent_meta,
                    "trainer": t_meta,
                    "timing": dict(self.timing),
                    "world_size": self.world_size,
                }
                tensors = {**buf_tensors, **recent_tensors, **{f"trainer.{k}": v for k, v in t_tensors.items()}}
                resume_state.save_state(d, meta, tensors)
            saved.append(tc)
        distributed.barrier()
        self.last_checkpoint = step
        return saved

    def diverged(self, t: TranscoderTrainer, step: int, what: str) -> Diverged:
        """The one-line error for a run that blew up, naming what to change and what was kept."""
        d = self.dirs[self.trainers.index(t)]
        kept = (
            f"the last good checkpoint (step {self.last_checkpoint}) is kept in {d / CHECKPOINTS_DIR} and "
            f"{resume_state.resume_dir(d)}"
            if self.last_checkpoint
            else "no checkpoint had been saved yet"
        )
        return Diverged(
            f"training {t.name} diverged at step {step}: {what}. Lower --lr (now {t.config.lr:g}) or check that "
            f"{self.out_name} varies from token to token (a constant target cannot be learned); {kept}"
        )

    def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


# ============================================================================ helpers
def _rank_spread(t: TranscoderTrainer) -> float:
    """The largest difference between any rank's weights and rank 0's (collective: every rank calls it)."""
    worst = torch.zeros((), device=t.params["W_dec"].device)
    for v in t.params.values():
        ref = v.detach().clone()
        dist.broadcast(ref, 0)
        worst = torch.maximum(worst, (v.detach() - ref).abs().max())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def _postfix(name: str, m: dict[str, Any]) -> str:
    l0 = f"L0 {m['l0']:.0f}" + (f"/{m['l0_inference']:.0f}" if "l0_inference" in m else "")
    return f"{name}: loss {m['loss']:.3f} fvu {m['fvu']:.3f} {l0} dead {100 * m['dead_fraction']:.1f}%"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_together(configs: list[TrainConfig]) -> None:
    if not configs:
        raise ValueError("train needs at least one config")
    first = config_dict(configs[0])
    for c in configs[1:]:
        values = config_dict(c)
        for name in DATA_FIELDS:
            if values[name] != first[name]:
                raise UserError(
                    f"transcoders trained side by side must share {name} ({first[name]!r} vs {values[name]!r})"
                )


def check_resume_config(saved: dict[str, Any], given: TrainConfig, directory: Path) -> None:
    """A resumed run must compute what the interrupted one would have: only the settings in
    ``RESUME_MUTABLE`` (where and how it reports) may change."""
    was = config_dict(make_config(saved, f"{directory}/resume/state.json"))
    now = config_dict(given)
    for key in FLAT_KEYS:
        if key not in RESUME_MUTABLE and was[key] != now[key]:
            raise UserError(
                f"{flag_of(key)}: the run in {directory} was started with {was[key]!r}, "
                f"not {now[key]!r}; --resume continues a run with its saved settings"
            )


def _is_run_dir(d: Path) -> bool:
    return (d / RUN_MARKER).is_file() or (d / CONFIG_FILE).is_file() or (d / METRICS_FILE).is_file()


def _owned(name: str) -> bool:
    """Whether a run folder entry is one this tool writes (and so may delete on --overwrite)."""
    return name in OWNED_NAMES or name.startswith(resume_state.TMP_PREFIX)


def _check_output_dir(d: Path, overwrite: bool) -> None:
    """Refuse a folder a fresh run may not use; with --overwrite, one whose files are not all ours.
    Deletes nothing: :func:`_clear_run_dir` does, once the model and data have worked."""
    if d.exists() and not d.is_dir():
        raise UserError(f"--output_dir {d}: exists and is a file; choose a directory")
    if not d.is_dir() or not any(d.iterdir()):
        return
    if not _is_run_dir(d):
        raise UserError(f"--output_dir {d}: exists and does not hold a training run; choose a new or empty directory")
    if not overwrite:
        raise UserError(
            f"--output_dir {d}: already holds a training run; pass --resume to continue it or "
            "--overwrite to start again"
        )
    if str(d) in ("", ".") or d.resolve() == Path.cwd().resolve():
        raise UserError(f"--output_dir {d}: --overwrite never clears the current directory; give the run's folder")
    if not (d / RUN_MARKER).is_file():
        raise UserError(
            f"--output_dir {d}: --overwrite replaces only folders this tool marked as runs ({RUN_MARKER}); "
            "delete it yourself or choose another directory"
        )
    foreign = sorted(p.name for p in d.iterdir() if not _owned(p.name))
    if foreign:
        raise UserError(
            f"--output_dir {d}: --overwrite deletes only files this tool wrote, and the folder also holds "
            f"{foreign[0]!r}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "") + "; move them away "
            "or choose another directory"
        )


def _clear_run_dir(d: Path) -> None:
    """Delete what an earlier run wrote in ``d`` (only entries :func:`_check_output_dir` let through)."""
    if not d.is_dir():
        return
    for p in d.iterdir():
        if _owned(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def _save_top_level(tc: Transcoder, d: Path) -> None:
    """Put the native files at the top of the run directory, next to metrics.jsonl and the rest
    (``save_native`` writes a whole directory, so it writes a staging one that is moved in)."""
    staging = d / ".final-staging"
    shutil.rmtree(staging, ignore_errors=True)
    save_native(tc, staging)
    for name in ("model.safetensors", "config.json"):
        (staging / name).replace(d / name)
    shutil.rmtree(staging, ignore_errors=True)


class _MetricsWriter:
    """metrics.jsonl: one JSON object per logged step. On resume, lines after the checkpoint are
    dropped (those steps are about to be trained again)."""

    def __init__(self, path: Path, keep_until: int | None) -> None:
        kept = []
        if keep_until is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= keep_until:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise UserError("--wandb needs the wandb package: `pip install wandb` (or drop --wandb)") from None
    return wandb
