"""Token sources (built-in corpus, .txt/.jsonl files, hub datasets), packed batches and masks."""

from transcoderbench.data.batching import (
    TokenBatch,
    bos_token_id,
    count_available_sequences,
    keep_mask,
    separator_token_id,
    special_token_ids,
    token_batches,
    token_stream,
)
from transcoderbench.data.builtin_corpus import builtin_texts
from transcoderbench.data.sources import TextSource, resolve_text_source, text_source_of

__all__ = [
    "TextSource",
    "TokenBatch",
    "bos_token_id",
    "builtin_texts",
    "count_available_sequences",
    "keep_mask",
    "resolve_text_source",
    "text_source_of",
    "separator_token_id",
    "special_token_ids",
    "token_batches",
    "token_stream",
]
