"""A shuffled buffer of (input, target) activation pairs, refilled from the language model.

Tokens come from :func:`token_batches` (so BOS, EOS and PAD positions are dropped exactly as in
evaluation); each language-model batch runs :func:`capture` with early stopping, so only the
layers up to the deepest needed site are computed.

Two modes, chosen by what the data turn out to be:

- **streaming** (the dataset is larger than the buffer): when fewer than half the buffer's rows
  are left unserved, new batches are read until it is full again and all unserved rows are
  shuffled together, so every training batch mixes text from many places. When the dataset
  runs out it is read again from the start (a new epoch).
- **in memory** (the whole dataset fit in the first fill): the buffer holds every activation of
  the dataset; each epoch serves a fresh permutation of them, and the language model never
  runs again. Small datasets (the built-in corpus) train for many epochs at no extra cost.

Under torchrun (``world_size`` N > 1) rank r runs the language model on batches r, r + N, ...
of the one token stream and the activations are gathered, in stream order, onto every rank: each
rank holds the same buffer as one process would, so a command line trains on the same tokens in
the same order whatever N is, while the language-model work is split N ways.

Memory is bounded by ``capacity x (d_in + d_out)`` float32 values whatever the token budget.
Determinism: the order depends only on the seed and the data; :meth:`state` and
:meth:`load_state` save and restore the exact position (the unserved rows themselves in
streaming mode; in memory mode only the permutation, since re-reading the dataset reproduces
the rows).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from transcoderbench import distributed
from transcoderbench.data import TextSource, TokenBatch, token_batches
from transcoderbench.errors import UserError
from transcoderbench.lm import LanguageModel, Site, capture
from transcoderbench.progress import progress_bar


class ActivationBuffer:
    """Serves shuffled ``(x [B, d_in], y [B, d_out])`` batches of kept tokens."""

    def __init__(
        self,
        lm: LanguageModel,
        input_site: Site,
        output_site: Site,
        source: TextSource,
        *,
        seq_len: int,
        lm_batch_size: int,
        capacity: int,
        seed: int,
        d_in: int,
        d_out: int,
        tokens_to_serve: int | None = None,
        max_batches: int | None = None,
        show_progress: bool = True,
        log: Callable[[str], None] = lambda msg: None,
    ) -> None:
        self.lm, self.source = lm, source
        self.sites = [input_site] if input_site.name == output_site.name else [input_site, output_site]
        self.input_name, self.output_name = input_site.name, output_site.name
        self.seq_len, self.lm_batch_size, self.capacity = seq_len, lm_batch_size, capacity
        self.show_progress, self.log = show_progress, log
        self.device = lm.device
        self.generator = torch.Generator().manual_seed(seed)
        self.x = torch.empty(capacity, d_in, device=self.device)
        self.y = torch.empty(capacity, d_out, device=self.device)
        self.n = 0
        """Unserved rows, ``x[:n]``; batches are taken from the end."""
        self.in_memory = False
        self.total = 0
        """In memory mode: the dataset's number of rows (all of them stay in ``x[:total]``)."""
        self.order: Tensor | None = None
        """In memory mode: ``order[i]`` is the dataset row now stored at position ``i``."""
        self.epoch = 0
        self.batches_read = 0
        """Language-model batches read in the current epoch (the position in the token stream)."""
        self.lm_seconds = 0.0
        self.tokens_read = 0
        self.tokens_to_serve = tokens_to_serve
        """The run's total; the buffer never reads (much) more than it will serve."""
        self.served = 0
        self.max_batches = max_batches
        """Language-model batches per epoch (None: the whole dataset); a cap makes a small dataset."""
        self._stream: Iterator[TokenBatch] | None = None
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self._gathered: list[tuple[Tensor, Tensor] | None] = []
        """Under torchrun: batches gathered from every rank, not yet taken (None: the data ended)."""

    @property
    def still_needed(self) -> int | None:
        return None if self.tokens_to_serve is None else self.tokens_to_serve - self.served

    # ------------------------------------------------------------------ reading
    def _open_stream(self, skip: int = 0) -> None:
        batches = token_batches(
            self.source,
            self.lm.tokenizer,
            seq_len=self.seq_len,
            batch_size=self.lm_batch_size,
            n_batches=self.max_batches,
        )
        self._stream = islice(batches, skip + self.rank, None, self.world)
        self._gathered = []

    def _read_batch(self) -> tuple[Tensor, Tensor] | None:
        """Kept-token activations of the next language-model batch, or None at the end of the data."""
        if self._stream is None:
            self._open_stream()
        start = time.perf_counter()
        if self.world == 1:
            got = self._run_lm(next(self._stream, None))  # type: ignore[arg-type]
        else:
            if not self._gathered:
                self._gathered = self._gather_round()
            got = self._gathered.pop(0)
            if got is None:
                self._gathered = []  # the batches after the end are past it too
        self.lm_seconds += time.perf_counter() - start
        if got is not None:
            self.batches_read += 1
            self.tokens_read += got[0].shape[0]
        return got

    def _run_lm(self, tb: TokenBatch | None) -> tuple[Tensor, Tensor] | None:
        if tb is None:
            return None
        ids = tb.input_ids.to(self.device)
        acts = capture(self.lm, ids, tb.attention_mask.to(self.device), self.sites, stop_early=True)
        keep = tb.keep.to(self.device).reshape(-1)
        x = acts[self.input_name].reshape(-1, acts[self.input_name].shape[-1])[keep]
        y = acts[self.output_name].reshape(-1, acts[self.output_name].shape[-1])[keep]
        return x, y

    def _gather_round(self) -> list[tuple[Tensor, Tensor] | None]:
        """Each rank's next batch (stream positions i..i+N-1), gathered in stream order onto every rank."""
        got = self._run_lm(next(self._stream, None))  # type: ignore[arg-type]
        d_in, d_out = self.x.shape[1], self.y.shape[1]
        x, y = got if got is not None else (self.x.new_zeros(0, d_in), self.y.new_zeros(0, d_out))
        info = torch.tensor([x.shape[0], int(got is not None)], device=self.device)
        infos = [torch.zeros_like(info) for _ in range(self.world)]
        dist.all_gather(infos, info)
        most = max(int(i[0]) for i in infos)
        pad = lambda t: torch.cat([t, t.new_zeros(most - t.shape[0], t.shape[1])])  # noqa: E731
        xs = [torch.empty(most, d_in, device=self.device) for _ in range(self.world)]
        ys = [torch.empty(most, d_out, device=self.device) for _ in range(self.world)]
        dist.all_gather(xs, pad(x).contiguous())
        dist.all_gather(ys, pad(y).contiguous())
        out: list[tuple[Tensor, Tensor] | None] = []
        for info_r, x_r, y_r in zip(infos, xs, ys):
            if not int(info_r[1]):
                out.append(None)
                break
            out.append((x_r[: int(info_r[0])], y_r[: int(info_r[0])]))
        return out

    def _shuffle(self, rows: int) -> None:
        perm = torch.randperm(rows, generator=self.generator).to(self.device)
        self.x[:rows] = self.x[:rows][perm]
        self.y[:rows] = self.y[:rows][perm]
        if self.order is not None:
            self.order = self.order[perm.cpu()]

    def _fill(self, first: bool) -> None:
        """Read until one more language-model batch might not fit (or, on the first fill, the data end)."""
        most = self.lm_batch_size * self.seq_len  # the most rows one language-model batch can add
        needed = self.still_needed
        bar = progress_bar(
            total=self.capacity if needed is None else min(self.capacity, needed),
            desc="reading activations",
            unit="tok",
            disable=not (self.show_progress and first and self.rank == 0),
            leave=False,
            initial=self.n,
        )
        while self.n + most <= self.capacity and (needed is None or self.n < needed):
            got = self._read_batch()
            if got is None:
                if first and self.epoch == 0:
                    if self.n == 0:
                        raise UserError(f"--dataset {self.source.name}: no tokens to train on")
                    self._enter_memory_mode()
                    break
                self.epoch += 1
                self.batches_read = 0
                self._open_stream()
                self.log(f"the dataset ran out; reading it again (epoch {self.epoch + 1})")
                continue
            x, y = got
            self.x[self.n : self.n + x.shape[0]] = x
            self.y[self.n : self.n + y.shape[0]] = y
            self.n += x.shape[0]
            bar.update(x.shape[0])
        bar.close()
        self._shuffle(self.n)

    def _enter_memory_mode(self) -> None:
        self.in_memory = True
        self.total = self.n
        self.order = torch.arange(self.n)
        self._stream = None
        self.log(
            f"the whole dataset ({self.total:,} tokens) fits in the buffer: the language model reads it once and "
            "each epoch reshuffles it"
        )

    # ------------------------------------------------------------------ serving
    def start(self) -> None:
        """The first fill (call once before :meth:`next_batch`; :meth:`load_state` replaces it)."""
        self._fill(first=True)

    def first_rows(self) -> tuple[Tensor, Tensor]:
        """The rows of the first fill (for data-dependent initialisation)."""
        return self.x[: self.n], self.y[: self.n]

    def next_batch(self, batch_size: int) -> tuple[Tensor, Tensor]:
        if self.in_memory:
            if self.total < batch_size:
                raise UserError(
                    f"--batch_tokens {batch_size}: the dataset has only {self.total:,} tokens; use a "
                    "smaller --batch_tokens or more text"
                )
            if self.n < batch_size:  # end of an epoch: the rest (fewer than one batch) is skipped
                self.epoch += 1
                self.n = self.total
                self._shuffle(self.total)
        else:
            needed = self.still_needed
            if self.n < batch_size or (self.n < self.capacity // 2 and (needed is None or self.n < needed)):
                self._fill(first=False)
        self.n -= batch_size
        self.served += batch_size
        return self.x[self.n : self.n + batch_size].clone(), self.y[self.n : self.n + batch_size].clone()

    # ------------------------------------------------------------------ resume
    def state(self) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """JSON-ready position and the tensors needed to continue exactly from here."""
        meta = {
            "in_memory": self.in_memory,
            "n": self.n,
            "total": self.total,
            "epoch": self.epoch,
            "batches_read": self.batches_read,
            "capacity": self.capacity,
            "tokens_read": self.tokens_read,
            "served": self.served,
        }
        tensors = {"buffer.generator": self.generator.get_state()}
        if self.in_memory:
            assert self.order is not None
            tensors["buffer.order"] = self.order
        else:
            tensors["buffer.x"] = self.x[: self.n]
            tensors["buffer.y"] = self.y[: self.n]
        return meta, tensors

    def load_state(self, meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        """Continue from :meth:`state`. In memory mode this re-reads the dataset (same batches, same rows)."""
        if int(meta["capacity"]) != self.capacity:
            raise UserError(
                f"resume: the saved buffer held {meta['capacity']} tokens, not --buffer_tokens {self.capacity}"
            )
        self.served = int(meta["served"])
        if meta["in_memory"]:
            self.served = 0  # the first fill must read the whole dataset again, as it did at the start
            self._fill(first=True)
            self.served = int(meta["served"])
            if not self.in_memory or self.total != int(meta["total"]):
                raise UserError(
                    f"resume: --dataset {self.source.name} no longer gives the {meta['total']:,} tokens the "
                    "run started with; resume with the same data"
                )
            order = tensors["buffer.order"].to(torch.int64)
            # Undo the fresh fill's shuffle, then lay the rows out in the saved order.
            assert self.order is not None
            inverse = torch.empty_like(self.order)
            inverse[self.order] = torch.arange(self.total)
            pos = inverse[order].to(self.device)
            self.x[: self.total] = self.x[: self.total][pos]
            self.y[: self.total] = self.y[: self.total][pos]
            self.order = order.clone()
        else:
            n = int(meta["n"])
            self.x[:n] = tensors["buffer.x"].to(self.device)
            self.y[:n] = tensors["buffer.y"].to(self.device)
            self._open_stream(skip=int(meta["batches_read"]))
        self.n = int(meta["n"])
        self.epoch = int(meta["epoch"])
        self.batches_read = int(meta["batches_read"])
        self.tokens_read = int(meta["tokens_read"])
        self.generator.set_state(tensors["buffer.generator"])
