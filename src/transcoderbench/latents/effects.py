"""Output-side direct effect of each latent: its decoder row through the final norm and unembedding.

This is a logit-lens view (labelled so on the page): it ignores every layer after the transcoder's
output site, so it shows what the latent writes *directly* towards the vocabulary, not its total effect.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transcoderbench.lm import LanguageModel
from transcoderbench.lm.splice import find_head

LABEL = "logit lens (direct effect)"


@torch.no_grad()
def direct_effects(lm: LanguageModel, W_dec: Tensor, ids: Tensor, top: int = 10, block: int = 512) -> dict | None:
    """Top promoted and suppressed token ids (and logits) for the decoder rows ``ids``, blockwise.

    Returns ``None`` when the model's head cannot be rebuilt (then the page says so).
    """
    head = find_head(lm)
    if head is None:
        return None
    weight = next(head.unembed.parameters())
    out: dict[str, list[Tensor]] = {"up_ids": [], "up_val": [], "down_ids": [], "down_val": []}
    for start in range(0, len(ids), block):
        rows = W_dec[ids[start : start + block].to(W_dec.device)].to(device=weight.device, dtype=weight.dtype)
        logits = head.unembed(head.norm(rows)).float()
        logits = logits - logits.mean(dim=1, keepdim=True)
        k = min(top, logits.shape[1])
        up, down = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
        out["up_ids"].append(up.indices.cpu())
        out["up_val"].append(up.values.cpu())
        out["down_ids"].append(down.indices.cpu())
        out["down_val"].append(down.values.cpu())
    return {k: torch.cat(v) for k, v in out.items()}
