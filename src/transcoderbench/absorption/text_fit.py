"""Text tokens for the transcoder-mode input decoder: one truncated LM pass per probe site, shared by its transcoders.

The input decoder (:mod:`input_decoder`) must learn what each latent adds to the input from data
the scored words are not part of; ordinary text is what the transcoder was made for, and it gives
many rows per latent. Each batch is encoded by every transcoder reading the site and added to its
normal equations, so memory stays one batch plus the ``[d_sae, d_sae]`` sums whatever the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from transcoderbench.absorption.input_decoder import NormalEquations
from transcoderbench.data import TextSource, token_batches
from transcoderbench.lm import LanguageModel, Site, capture
from transcoderbench.progress import progress_bar
from transcoderbench.transcoders import Transcoder

#: Tokens per sequence of the fitting text (BOS included, and not used: it is not a real token).
SEQ_LEN = 128


@torch.no_grad()
def text_equations(
    lm: LanguageModel,
    site: Site,
    transcoders: dict[str, Transcoder],
    source: TextSource,
    *,
    n_tokens: int,
    batch_size: int,
    encode: Callable[[Transcoder, Tensor], tuple[Tensor, Tensor]],
    show_progress: bool = True,
) -> tuple[dict[str, NormalEquations], int]:
    """Each transcoder's normal equations over about ``n_tokens`` kept tokens of ``source`` at ``site``.

    ``encode(tc, x)`` gives ``(latent activations, the input the encoder saw)`` for site values
    ``x``. Returns the equations and the number of tokens read (fewer if the source runs out).
    """
    equations = {name: NormalEquations(tc.d_sae, tc.d_in, device=tc.W_enc.device) for name, tc in transcoders.items()}
    if n_tokens <= 0:
        return equations, 0
    n_batches = math.ceil(n_tokens / (batch_size * (SEQ_LEN - 1)))
    batches = token_batches(source, lm.tokenizer, seq_len=SEQ_LEN, batch_size=batch_size, n_batches=n_batches)
    seen = 0
    with progress_bar(
        total=n_tokens, desc="absorption: input-decoder text", unit="tok", disable=not show_progress
    ) as bar:
        for batch in batches:
            got = capture(lm, batch.input_ids.to(lm.device), batch.attention_mask.to(lm.device), [site])[site.name]
            x = got.reshape(-1, got.shape[-1])[batch.keep.reshape(-1).to(got.device)][: n_tokens - seen]
            for name, tc in transcoders.items():
                equations[name].update(*encode(tc, x))
            seen += x.shape[0]
            bar.update(x.shape[0])
            if seen >= n_tokens:
                break
    return equations, seen
