"""Training: one transcoder's step (:class:`TranscoderTrainer`) and the one training loop (:func:`train`).

A step, as the best public implementations do it (Bussmann et al.'s BatchTopK and Matryoshka
code, EleutherAI's sparsify):

1. ``pre = x @ W_enc + b_enc``; the active latents are the top ``k * N`` of ``relu(pre)`` over
   the whole batch (BatchTopK; TopK: each token's own top ``k``), kept sparse.
2. Reconstruction loss: the fraction of variance unexplained (FVU) of every nested prefix,
   *averaged* over the prefixes. Averaging rather than summing keeps the loss on the scale of
   one FVU whatever the number of groups, so the learning rate and ``aux_penalty`` mean the
   same thing for Matryoshka and plain BatchTopK (with Adam a constant factor on the whole
   loss would change nothing else). Equal weights, as Bussmann et al. use: every prefix must
   reconstruct on its own, which is what makes the early latents general.
3. Auxiliary loss (``aux_penalty`` x): dead latents' top ``top_k_aux`` pre-activations predict
   the residual ``y - y_hat``; see :func:`objective.aux_loss`.
4. Adam with warmup and decay (or, with ``optimizer=signum``, schedule-free SignSGD at a constant
   rate: :mod:`train.optim`); before the update the gradient component parallel to each decoder
   row is removed, after it every decoder row is renormalised to unit norm.
5. Bookkeeping: tokens since each latent last fired (dead latents), and for BatchTopK the
   inference threshold.

Inference threshold: at inference a BatchTopK transcoder keeps ``relu(pre) > threshold``. Each
step the smallest activation BatchTopK kept is the batch's ``(k N)``-th largest value, so a
threshold at that value gives ``k`` active latents per token on average *on that batch*. During
training a moving average of it (Bussmann et al.'s estimator, over the last ~5% of the steps) is
logged with the inference L0 it gives. The *saved* threshold is calibrated on the final weights
instead: over the last ``CALIBRATION_TOKENS`` training tokens it is the value that keeps exactly
``k`` latents per token on average, i.e. what BatchTopK would keep on one batch that large. A
moving average lags behind weights that are still changing (a short run remembers its first
batches); the calibration does not. Both are saved in ``info["training"]``.

Scale: inputs and targets are multiplied by constants measured on the first buffer (``E ||x||^2
= d_in``; centred targets of unit variance per dimension), so the learning rate and the
initialisation mean the same at every site of every model. The constants are folded into the
saved weights, which read raw activations.

Initialisation: decoder rows are random unit vectors; the encoder is the decoder transposed when
``d_in == d_out`` (Gao et al.); otherwise its columns are independent random unit vectors (a
transcoder's input and output spaces differ, so a transposed decoder would mean nothing there;
unit columns give pre-activations of the same size as in the square case). ``b_enc = 0``;
``b_dec`` is the mean target of the first buffer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from transcoderbench.data import resolve_text_source
from transcoderbench.errors import UserError
from transcoderbench.formats import save_native
from transcoderbench.lm import LanguageModel, load_language_model, resolve_site, site_widths
from transcoderbench.progress import progress_bar
from transcoderbench.train import state as resume_state
from transcoderbench.train.buffer import ActivationBuffer
from transcoderbench.train.config import (
    DATA_FIELDS,
    RESUME_MUTABLE,
    TrainConfig,
    config_dict,
    default_sites,
    group_sizes,
    layer_of,
    make_config,
)
from transcoderbench.train.objective import (
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
        """
        self.input_scale = float(math.sqrt(x.shape[1] / x.pow(2).sum(dim=1).mean().clamp_min(1e-30)))
        centred = y - y.mean(dim=0)
        self.target_scale = float(math.sqrt(y.shape[1] / centred.pow(2).sum(dim=1).mean().clamp_min(1e-30)))
        with torch.no_grad():
            self.params["b_dec"].copy_(y.mean(dim=0) * self.target_scale)

    def step(self, x: Tensor, y: Tensor, lr: float) -> dict[str, Any]:
        """One optimisation step on raw ``x [N, d_in]``, ``y [N, d_out]``; returns the step's metrics."""
        c, p = self.config, self.params
        x, y = x * self.input_scale, y * self.target_scale
        with torch.no_grad():
            pre = x @ p["W_enc"] + p["b_enc"]
        if self.batch_topk:
            sel = select_batch_topk(pre, c.top_k, None if self.last_kept is None else SEARCH_MARGIN * self.last_kept)
        else:
            sel = select_topk(pre, c.top_k)
        sel = with_encoder_grad(sel, x, p["W_enc"], p["b_enc"])
        denominator = total_variance(y)
        fvus, residual = prefix_losses(sel, y, p["W_dec"], p["b_dec"], self.prefix_ends, denominator)
        loss = torch.stack(fvus).mean()
        dead = self.tokens_since_fired >= c.dead_window
        aux = None
        if c.aux_penalty > 0:
            aux = aux_loss(pre, dead, residual, x, p["W_enc"], p["b_enc"], p["W_dec"], c.top_k_aux, denominator)
        if aux is not None:
            loss = loss + c.aux_penalty * aux

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W_dec = p["W_dec"]
            W_dec.grad -= (W_dec.grad * W_dec).sum(dim=1, keepdim=True) * W_dec  # keep rows on the unit sphere
            lr = step_lr(c, self.steps_done, lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            W_dec.copy_(unit_rows(W_dec))

            n = x.shape[0]
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
            out = {
                "loss": float(loss),
                "fvu": float(fvus[-1]),
                "aux_loss": None if aux is None else float(aux),
                "l0": sel.latents.numel() / n,
                "dead_fraction": float(dead.float().mean()),
                "lr": lr,
            }
            if len(fvus) > 1:
                out["prefix_fvu"] = [float(f) for f in fvus]
            if self.batch_topk and self.threshold is not None:
                out["threshold"] = self.threshold / self.target_scale
                out["l0_inference"] = float((pre > self.threshold).sum()) / n
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
    say = log or (lambda msg: print(msg, file=sys.stderr))
    run = _Run.open(configs, names, resume=resume, overwrite=overwrite, lm=lm, say=say)
    c0, total = run.configs[0], run.total_steps
    bar = progress_bar(total=total, initial=run.start_step, desc="training", unit="step", disable=not c0.progress)
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
                last[t.name] = t.step(x, y, lr)
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
            show_progress=c0.progress,
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
        saved = []
        for c, d in zip(configs, dirs):
            if resume:
                meta, tensors = resume_state.load_state(d)
                check_resume_config(meta["config"], c, d)
                saved.append((meta, tensors))
            else:
                _prepare_output_dir(d, overwrite)
        c0 = configs[0]
        if any(c.wandb for c in configs):
            _import_wandb()
        if lm is None:
            say(f"loading language model {c0.model} ...")
            lm = load_language_model(c0.model, device=c0.device, dtype=c0.dtype, trust_remote_code=c0.trust_remote_code)
        run = cls(configs, names, lm, say)
        if resume:
            run._resume(saved)
        else:
            run._start()
        run.writers = [
            _MetricsWriter(d / METRICS_FILE, keep_until=run.start_step if resume else None) for d in run.dirs
        ]
        if any(c.wandb for c in configs):
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
        self.buffer.start()
        x0, y0 = self.buffer.first_rows()
        for t in self.trainers:
            t.init_from_data(x0, y0)
        for c, d in zip(self.configs, self.dirs):
            d.mkdir(parents=True, exist_ok=True)
            (d / CONFIG_FILE).write_text(json.dumps(config_dict(c), indent=2) + "\n", encoding="utf-8")

    def _resume(self, saved: list[tuple[dict[str, Any], dict[str, Tensor]]]) -> None:
        meta0, tensors0 = saved[0]
        self.start_step = int(meta0["step"])
        if self.start_step >= self.total_steps:
            raise UserError(
                f"--resume: the run in {self.dirs[0]} already finished ({self.start_step} of {self.total_steps} steps)"
            )
        self.say(f"resuming from step {self.start_step} of {self.total_steps}")
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
                    **{k: round(v, 3) for k, v in self.timing.items()},
                }
            )
        if self.wandb_run is not None:
            self.wandb_run.log(
                {f"{n}/{k}": v for n, m in last.items() for k, v in m.items() if isinstance(v, (int, float))}, step=step
            )

    def info(self, t: TranscoderTrainer, step: int, last: dict[str, Any]) -> dict[str, Any]:
        """``transcoder.info`` for a checkpoint: the model and layer ``evaluate`` needs, and the training record."""
        return {
            "model_name": self.lm.name,
            "layer": layer_of(t.config),
            "training": {
                **config_dict(t.config),
                "group_sizes_resolved": t.sizes,
                "steps": step,
                "total_steps": self.total_steps,
                "tokens_trained": step * t.config.batch_size,
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
        saved = []
        for t, c, d in zip(self.trainers, self.configs, self.dirs):
            tc = t.final_transcoder(self.info(t, step, last.get(t.name, {})), self.recent.rows())
            if final:
                _save_top_level(tc, d)
                shutil.rmtree(resume_state.resume_dir(d), ignore_errors=True)
            else:
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
                }
                tensors = {**buf_tensors, **recent_tensors, **{f"trainer.{k}": v for k, v in t_tensors.items()}}
                resume_state.save_state(d, meta, tensors)
            saved.append(tc)
        return saved

    def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


# ============================================================================ helpers
def _postfix(name: str, m: dict[str, Any]) -> str:
    l0 = f"L0 {m['l0']:.0f}" + (f"/{m['l0_inference']:.0f}" if "l0_inference" in m else "")
    return f"{name}: loss {m['loss']:.3f} fvu {m['fvu']:.3f} {l0} dead {100 * m['dead_fraction']:.1f}%"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_together(configs: list[TrainConfig]) -> None:
    if not configs:
        raise ValueError("train needs at least one config")
    for c in configs[1:]:
        for name in DATA_FIELDS:
            if getattr(c, name) != getattr(configs[0], name):
                raise UserError(
                    f"transcoders trained side by side must share {name} "
                    f"({getattr(configs[0], name)!r} vs {getattr(c, name)!r})"
                )


def check_resume_config(saved: dict[str, Any], given: TrainConfig, directory: Path) -> None:
    """A resumed run must compute what the interrupted one would have: only the settings in
    ``RESUME_MUTABLE`` (where and how it reports) may change."""
    saved_config = make_config(saved, f"{directory}/resume/state.json")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in RESUME_MUTABLE and getattr(saved_config, f.name) != getattr(given, f.name):
            raise UserError(
                f"--{f.name}: the run in {directory} was started with {getattr(saved_config, f.name)!r}, "
                f"not {getattr(given, f.name)!r}; --resume continues a run with its saved settings"
            )


def _is_run_dir(d: Path) -> bool:
    return (d / CONFIG_FILE).is_file() or (d / METRICS_FILE).is_file()


def _prepare_output_dir(d: Path, overwrite: bool) -> None:
    if d.exists() and not d.is_dir():
        raise UserError(f"--output_dir {d}: exists and is a file; choose a directory")
    if d.is_dir() and any(d.iterdir()):
        if not _is_run_dir(d):
            raise UserError(
                f"--output_dir {d}: exists and does not hold a training run; choose a new or empty directory"
            )
        if not overwrite:
            raise UserError(
                f"--output_dir {d}: already holds a training run; pass --resume to continue it or "
                "--overwrite to start again"
            )
        shutil.rmtree(d)


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
