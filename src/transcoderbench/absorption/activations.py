"""Activations at one site, read at each word's token, for every prompt of a set of contexts.

Two ways, same numbers (a test checks them against each other on every model family):

* one word per context (SAEBench's design, the GPU default): whole prompts are batched,
  right-padded, and run with :func:`capture` up to the site;
* several words per context (the CPU default): the shared prefix runs once with a key/value
  cache, stopping after the site's layer, and then all the context's words run as one batch of
  single tokens on top of that cache. A prompt of ~80 tokens then costs ~80/n + 1 token
  positions per word instead of ~80: the difference between minutes and tens of minutes on a
  laptop CPU.

Only layers up to the site run in either way (the forward pass stops right after the site).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from transcoderbench.absorption.prompts import Context
from transcoderbench.lm import (
    LanguageModel,
    Site,
    StopForward,
    capture,
    hooks,
    site_tensor,
    stop_point,
)
from transcoderbench.progress import progress_bar


def collect(
    lm: LanguageModel,
    site: Site,
    contexts: list[Context],
    *,
    batch_size: int,
    show_progress: bool = True,
    desc: str = "absorption prompts",
) -> Tensor:
    """``[n_words, d]`` float32 on CPU: the site's value at each word's token, in context order."""
    n_words = sum(len(c.words) for c in contexts)
    with progress_bar(total=n_words, desc=desc, unit="word", disable=not show_progress) as bar:
        if all(len(c.words) == 1 for c in contexts) or not _cache_supported(lm):
            return _collect_full_prompts(lm, site, contexts, batch_size, bar.update)
        return _collect_shared_prefix(lm, site, contexts, batch_size, bar.update)


def _prompts(contexts: list[Context]) -> list[list[int]]:
    return [[*c.prefix_ids, w.token_id] for c in contexts for w in c.words]


def _collect_full_prompts(
    lm: LanguageModel, site: Site, contexts: list[Context], batch_size: int, advance: Callable[[int], object]
) -> Tensor:
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else lm.bos_token_id
    prompts = _prompts(contexts)
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, prompt in enumerate(batch):  # right padding: earlier positions are unaffected
            ids[row, : len(prompt)] = torch.tensor(prompt)
            mask[row, : len(prompt)] = 1
        acts = capture(lm, ids.to(lm.device), mask.to(lm.device), [site], stop_early=True)[site.name]
        last = torch.tensor([len(p) - 1 for p in batch], device=acts.device)
        out.append(acts[torch.arange(len(batch), device=acts.device), last].float().cpu())
        advance(len(batch))
    return torch.cat(out)


def _cache_keyword(lm: LanguageModel) -> str | None:
    params = inspect.signature(lm.model.forward).parameters
    for name in ("cache", "past_key_values"):  # transformers renamed past_key_values to cache
        if name in params:
            return name
    return None


def _cache_supported(lm: LanguageModel) -> bool:
    return _cache_keyword(lm) is not None and _new_cache(lm) is not None


def _new_cache(lm: LanguageModel):
    try:
        from transformers import DynamicCache
    except ImportError:
        return None
    try:
        return DynamicCache(config=lm.model.config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


def _run_until_site(lm: LanguageModel, site: Site, stop: Site | None, **inputs) -> Tensor:
    store: dict[str, Tensor] = {}
    with torch.no_grad(), hooks(lm, [site], store, stop):
        try:
            lm.model(**inputs)
        except StopForward:
            pass
    if site.name not in store:
        raise RuntimeError(f"site {site.name} did not fire")  # capture() already checked it fires
    return site_tensor(site, store[site.name])


def _collect_shared_prefix(
    lm: LanguageModel, site: Site, contexts: list[Context], batch_size: int, advance: Callable[[int], object]
) -> Tensor:
    keyword = _cache_keyword(lm)
    if keyword is None:  # callers check _cache_supported first
        raise ValueError(f"{lm.name}: its forward takes no KV cache argument")
    stop = stop_point(lm, [site])
    out = []
    for context in contexts:
        prefix = torch.tensor([context.prefix_ids], device=lm.device)
        n_prefix = prefix.shape[1]
        cache = _new_cache(lm)
        _run_until_site(
            lm, site, stop, input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, **{keyword: cache}
        )
        if cache.get_seq_length() != n_prefix:
            # The site comes before any attention layer (e.g. blocks.0.hook_resid_pre): nothing
            # was cached, and whole prompts cost no more than single tokens there.
            out.append(_collect_full_prompts(lm, site, [context], batch_size, lambda _: None))
            advance(len(context.words))
            continue
        for start in range(0, len(context.words), batch_size):
            words = context.words[start : start + batch_size]
            # The word pass appends to the cache: later batches of the same context need a copy.
            batch_cache = cache if start + batch_size >= len(context.words) else copy.deepcopy(cache)
            batch_cache.batch_repeat_interleave(len(words))
            ids = torch.tensor([[w.token_id] for w in words], device=lm.device)
            acts = _run_until_site(
                lm,
                site,
                stop,
                input_ids=ids,
                attention_mask=torch.ones((len(words), n_prefix + 1), dtype=torch.long, device=lm.device),
                position_ids=torch.full((len(words), 1), n_prefix, dtype=torch.long, device=lm.device),
                use_cache=True,
                **{keyword: batch_cache},
            )
            out.append(acts[:, -1].float().cpu())
            advance(len(words))
    return torch.cat(out)
