"""Documents -> fixed-length token sequences -> batches, with the mask of tokens that count.

The stream: every document is tokenized *without* special tokens, documents are joined into
one stream with EOS between them, and the stream is cut into consecutive pieces of
``seq_len - 1`` tokens, each prefixed with BOS, so every sequence is exactly ``seq_len`` long
and starts the way the model saw text in training. No padding is ever needed: ``attention_mask``
is all ones (kept so the engine has one code path for padded and packed inputs). As in most
SAE/transcoder tooling, a sequence may span a document boundary (attention crosses the EOS).

Sharding for data parallel: sequence ``i`` of the stream goes to rank ``i % world_size``. The
stream is consumed in *global batches* of ``batch_size * world_size`` consecutive sequences,
and each rank takes its ``batch_size`` of them, so every rank yields the same number of
batches (collective ops stay in step) and ranks together cover exactly the sequences that one
process with ``batch_size * world_size`` would see.

The final incomplete piece of the stream (shorter than ``seq_len - 1`` tokens) and the final
incomplete global batch are dropped, so every batch is exactly ``[batch_size, seq_len]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import torch
from torch import Tensor

from transcoderbench.data.sources import TextSource
from transcoderbench.errors import UserError

#: Documents tokenized per tokenizer call: large enough for the fast tokenizer's batching,
#: small enough that stopping after ``n_batches`` wastes little work on a streaming dataset.
DOCS_PER_CHUNK = 64


@dataclass
class TokenBatch:
    """One batch of packed sequences, on CPU (the engine moves it)."""

    input_ids: Tensor
    """``[B, T]`` int64; position 0 is BOS."""
    attention_mask: Tensor
    """``[B, T]`` int64; 1 = real token (always 1 for packed sequences)."""
    keep: Tensor
    """``[B, T]`` bool; False at BOS, EOS and PAD ids and where attention_mask is 0. Metrics
    use only kept positions: BOS activations have huge norms and would dominate every average."""
    seq_index: Tensor
    """``[B]`` int64; each sequence's index in the global stream (before sharding), so
    per-sequence statistics (bootstrap intervals) line up across ranks and runs."""


def special_token_ids(tokenizer) -> set[int]:
    """The BOS, EOS and PAD ids the tokenizer has (they may coincide: SmolLM2 pad == eos)."""
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return {int(i) for i in ids if i is not None}


def bos_token_id(tokenizer) -> int:
    """The id put at position 0: BOS, or EOS for tokenizers without a BOS token.

    Models without a BOS token (e.g. Qwen2) are commonly fed their end-of-text token as a
    sequence start; it is excluded from metrics either way.
    """
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise UserError(
        f"the model's tokenizer ({type(tokenizer).__name__}) has neither a BOS nor an EOS token, "
        "so sequences cannot be started or documents separated; use a model whose tokenizer has one"
    )


def separator_token_id(tokenizer) -> int:
    """The id placed between documents: EOS, or BOS when the tokenizer has no EOS."""
    for tid in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if tid is not None:
            return int(tid)
    return bos_token_id(tokenizer)  # raises the UserError


def keep_mask(input_ids: Tensor, attention_mask: Tensor, special_ids: set[int]) -> Tensor:
    """True where a position counts for metrics: a real token that is not BOS/EOS/PAD."""
    special = torch.tensor(sorted(special_ids), dtype=input_ids.dtype)
    return (attention_mask != 0) & ~torch.isin(input_ids, special)


def _check_sizes(seq_len: int, batch_size: int, n_batches: int | None, rank: int, world_size: int) -> None:
    if seq_len < 2:
        raise UserError(f"`data.seq_len` {seq_len}: must be at least 2 (BOS plus one text token)")
    if batch_size < 1:
        raise UserError(f"`data.batch_size` {batch_size}: must be at least 1")
    if n_batches is not None and n_batches < 0:
        raise UserError(f"`data.batches` {n_batches}: must be 0 or more")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")


def token_stream(source: TextSource, tokenizer, *, add_eos_between_documents: bool = True) -> Iterator[list[int]]:
    """The tokenized stream, as lists of ids (one per document, EOS first from the second on).

    Tokenizes lazily, :data:`DOCS_PER_CHUNK` documents per call. Documents that tokenize to
    nothing are skipped (no separator for them).
    """
    sep = [separator_token_id(tokenizer)] if add_eos_between_documents else []
    first = True
    docs = source.texts()
    while chunk := list(islice(docs, DOCS_PER_CHUNK)):
        encoded = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            if not ids:
                continue
            yield ids if first else sep + list(ids)
            first = False


def _pieces(source: TextSource, tokenizer, length: int, add_eos_between_documents: bool) -> Iterator[list[int]]:
    """Consecutive pieces of exactly ``length`` stream tokens; the short tail is dropped."""
    buf: list[int] = []
    start = 0
    for ids in token_stream(source, tokenizer, add_eos_between_documents=add_eos_between_documents):
        buf.extend(ids)
        while len(buf) - start >= length:
            yield buf[start : start + length]
            start += length
        del buf[:start]  # memory stays bounded by one document plus one piece
        start = 0


def token_batches(
    source: TextSource,
    tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    n_batches: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    add_eos_between_documents: bool = True,
) -> Iterator[TokenBatch]:
    """Batches of ``batch_size`` packed sequences of ``seq_len`` tokens for this rank.

    ``n_batches`` counts this rank's batches (``None``: until the source is exhausted). If the
    source runs out first, iteration just stops; the caller reports the real count. If the
    source cannot fill even one global batch, that is a :class:`UserError` (a silent run over
    zero tokens would be worse). Deterministic: same source, tokenizer and sizes -> same
    batches. See the module docstring for how the stream is cut and sharded.
    """
    _check_sizes(seq_len, batch_size, n_batches, rank, world_size)
    if n_batches == 0:
        return
    bos = bos_token_id(tokenizer)
    special = special_token_ids(tokenizer)
    group = batch_size * world_size
    pieces = _pieces(source, tokenizer, seq_len - 1, add_eos_between_documents)
    produced = 0
    next_global = 0  # index of the first sequence of the current global batch
    while True:
        window = list(islice(pieces, group))
        if len(window) < group:
            if produced == 0:
                tokens = next_global * (seq_len - 1) + sum(map(len, window))
                raise UserError(
                    f"`data.dataset` {source.name}: too little text for one batch (at least "
                    f"{group * (seq_len - 1)} tokens needed for {group} sequences of {seq_len}, "
                    f"got about {tokens}); use more text or a smaller `data.batch_size`/`data.seq_len`"
                )
            return
        mine = window[rank::world_size]
        input_ids = torch.tensor([[bos, *piece] for piece in mine], dtype=torch.int64)
        attention_mask = torch.ones_like(input_ids)
        yield TokenBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            keep=keep_mask(input_ids, attention_mask, special),
            seq_index=torch.arange(next_global + rank, next_global + group, world_size, dtype=torch.int64),
        )
        produced += 1
        next_global += group
        if n_batches is not None and produced >= n_batches:
            return


def count_available_sequences(
    source: TextSource, tokenizer, *, seq_len: int, add_eos_between_documents: bool = True
) -> int:
    """How many full ``seq_len`` sequences the whole source makes (before batching/sharding).

    Tokenizes the entire source: cheap for the built-in corpus and local files, not for a
    streaming hub dataset (don't call it there).
    """
    if seq_len < 2:
        raise UserError(f"`data.seq_len` {seq_len}: must be at least 2 (BOS plus one text token)")
    stream = token_stream(source, tokenizer, add_eos_between_documents=add_eos_between_documents)
    total = sum(len(ids) for ids in stream)
    return total // (seq_len - 1)


def shard_batches(
    batches: Iterable[TokenBatch], rank: int = 0, world_size: int = 1, start: int = 0
) -> Iterator[TokenBatch]:
    """Whole batches for one data-parallel rank: global batch ``i`` goes to rank ``i % world_size``.

    ``batches`` is the one-process stream (``token_batches`` with ``world_size=1``), so every batch
    is exactly the batch one process would see, whatever the number of ranks: metrics defined per
    batch (the legacy explained variance) do not change with it either. Ranks may get one batch
    fewer than others (collectives run only once the pass is over). ``start`` skips the first
    ``start`` global batches (resuming a saved pass); skipped batches are tokenized but not used.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    for i, tb in enumerate(batches):
        if i >= start and i % world_size == rank:
            yield tb
