"""Splicing a reconstruction into the model and finishing the forward pass cheaply.

The clean pass records what every later decoder block was called with (its positional and
keyword arguments: masks, rotary embeddings, ...) and stops at the input of the final norm.
A spliced variant then starts from the clean output of the splice layer with the site's value
replaced, and replays only the remaining blocks with the recorded arguments; several variants
run together as one larger batch. The head (final norm, unembedding, Gemma's logit
soft-capping) is rebuilt from the model's modules and checked against the model's own logits
once; where any of this does not hold, the caller falls back to a full forward with a hook.

Splicing ``hook_mlp_out`` (or ``hook_resid_post``) is the same as adding ``y_hat - y`` to the
block's output, because every supported block ends with ``resid_mid + mlp_out``; this is what
lets a variant skip every layer up to and including the splice layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from transcoderbench.lm.capture import StopForward, hooks, input_tensor, output_tensor
from transcoderbench.lm.loading import LanguageModel
from transcoderbench.lm.sites import Site, resolve_site, site_tensor

# Where the final norm lives, relative to the *ForCausalLM object, per layout.
_FINAL_NORM_PATHS = ("model.norm", "model.language_model.norm", "transformer.ln_f", "model.decoder.final_layer_norm")


@dataclass
class Head:
    """Final norm + unembedding (+ soft-capping): final hidden rows -> logits."""

    norm: torch.nn.Module
    norm_path: str
    unembed: torch.nn.Module
    softcap: float | None

    def __call__(self, hidden: Tensor) -> Tensor:
        logits = self.unembed(self.norm(hidden)).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def find_head(lm: LanguageModel) -> Head | None:
    """The model's head if it can be rebuilt and reproduces the model's own logits, else None."""
    unembed = lm.model.get_output_embeddings()
    if unembed is None:
        return None
    for path in _FINAL_NORM_PATHS:
        try:
            norm = lm.model.get_submodule(path)
        except AttributeError:
            continue
        config = getattr(lm.model.config, "text_config", None) or lm.model.config
        cap = getattr(config, "final_logit_softcapping", None)
        candidates = (
            [Head(norm, path, unembed, cap), Head(norm, path, unembed, None)]
            if cap
            else [Head(norm, path, unembed, None)]
        )
        ids = torch.tensor([[lm.bos_token_id, 5, 7, 11]], device=lm.device)
        # The model soft-caps in its own dtype, the head in fp32: bf16/fp16 logits agree to a few ulps only.
        tol = max(1e-4, 4 * torch.finfo(lm.dtype).eps) if lm.dtype.is_floating_point else 1e-4
        final = _final_hidden_probe(lm, ids, path)
        with torch.no_grad():
            reference = lm.model(input_ids=ids, use_cache=False).logits.float()
            for head in candidates:
                if final is not None and torch.allclose(head(final), reference, rtol=tol, atol=tol):
                    return head
        return None
    return None


def _final_hidden_probe(lm: LanguageModel, ids: Tensor, norm_path: str) -> Tensor | None:
    site = Site("<final-norm-input>", norm_path, "input", None)
    store: dict[str, Tensor] = {}
    with torch.no_grad(), hooks(lm, [site], store, stop_after=site):
        try:
            lm.model(input_ids=ids, use_cache=False)
        except StopForward:
            pass
    return store.get(site.name)


def additive_layer(lm: LanguageModel, site: Site) -> int | None:
    """Layer L when replacing ``site`` by ``y_hat`` equals adding ``y_hat - y`` to block L's output.

    True for the MLP output (every supported block ends with ``resid_mid + mlp_out``) and for the
    block output itself, whatever name the site was given by.
    """
    if site.layer is None or site.normalize is not None:
        return None
    for name in (f"blocks.{site.layer}.hook_mlp_out", f"blocks.{site.layer}.hook_resid_post"):
        try:
            known = resolve_site(lm, name)
        except Exception:  # unknown family: no named sites, so no shortcut
            return None
        if (known.module_path, known.direction) == (site.module_path, site.direction):
            return site.layer
    return None


@dataclass
class CleanForward:
    """What one clean pass leaves behind for its spliced variants."""

    sites: dict[str, Tensor]
    """Requested sites, float32 with gain-free normalisation applied (as ``capture`` returns)."""
    block_outputs: dict[int, Tensor]
    """Output of each splice layer, in the model's dtype."""
    block_calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]]
    """Arguments (after the hidden state) and keyword arguments each later block was called with."""
    final_hidden: Tensor
    """Input of the final norm, ``[B, T, d]``."""

    @property
    def batch_size(self) -> int:
        return self.final_hidden.shape[0]


def clean_forward(
    lm: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    sites: list[Site],
    splice_layers: set[int],
    head: Head,
) -> CleanForward:
    """One full pass (stopping before the head) recording sites, splice-layer outputs and block calls."""
    store: dict[str, Tensor] = {}
    outputs: dict[int, Tensor] = {}
    calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    final: dict[str, Tensor] = {}
    first = min(splice_layers) if splice_layers else lm.n_layers
    handles = []

    def record_call(layer: int) -> Callable[..., None]:
        def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            calls[layer] = (tuple(args[1:]), dict(kwargs))

        return pre_hook

    def record_output(layer: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            outputs[layer] = output_tensor(output).detach()

        return hook

    def stop_at_head(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        final["h"] = input_tensor(args, kwargs).detach()
        raise StopForward

    try:
        for layer in range(first + 1, lm.n_layers):
            handles.append(lm.layers[layer].register_forward_pre_hook(record_call(layer), with_kwargs=True))
        for layer in splice_layers:
            handles.append(lm.layers[layer].register_forward_hook(record_output(layer)))
        handles.append(head.norm.register_forward_pre_hook(stop_at_head, with_kwargs=True))
        with torch.no_grad(), hooks(lm, sites, store, stop_after=None):
            try:
                lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    if "h" not in final:
        raise RuntimeError(f"the final norm {head.norm_path} did not run in the clean pass")
    return CleanForward(
        sites={s.name: site_tensor(s, store[s.name]) for s in sites},
        block_outputs=outputs,
        block_calls=calls,
        final_hidden=final["h"],
    )


def _repeat_batch(obj: Any, copies: int, batch: int) -> Any:
    """Repeat every batch-shaped tensor (ndim >= 2, leading dim == batch) ``copies`` times along dim 0."""
    if copies == 1:
        return obj
    if isinstance(obj, Tensor):
        return torch.cat([obj] * copies) if obj.ndim >= 2 and obj.shape[0] == batch else obj
    if isinstance(obj, tuple):
        return tuple(_repeat_batch(o, copies, batch) for o in obj)
    if isinstance(obj, list):
        return [_repeat_batch(o, copies, batch) for o in obj]
    if isinstance(obj, dict):
        return {k: _repeat_batch(v, copies, batch) for k, v in obj.items()}
    return obj


@torch.no_grad()
def resume(lm: LanguageModel, clean: CleanForward, layer: int, hidden: Tensor) -> Tensor:
    """Run blocks ``layer+1 ..`` on ``hidden`` (``[V*B, T, d]``: V variants stacked) -> final hidden."""
    copies = hidden.shape[0] // clean.batch_size
    for later in range(layer + 1, lm.n_layers):
        args, kwargs = clean.block_calls[later]
        out = lm.layers[later](
            hidden, *_repeat_batch(args, copies, clean.batch_size), **_repeat_batch(kwargs, copies, clean.batch_size)
        )
        hidden = output_tensor(out)
    return hidden


@torch.no_grad()
def spliced_forward(
    lm: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    site: Site,
    replacement: Tensor,
    head: Head | None,
) -> Tensor:
    """Full forward with ``site``'s output replaced by ``replacement`` (the general, slower path).

    Returns the final hidden state when the head is known, else the model's logits.
    """
    module = lm.model.get_submodule(site.module_path)
    final: dict[str, Tensor] = {}

    def replace(mod: torch.nn.Module, args: tuple, output: Any) -> Any:
        new = replacement.to(output_tensor(output).dtype)
        if isinstance(output, Tensor):
            return new
        return (new, *output[1:])

    def stop_at_head(mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        final["h"] = input_tensor(args, kwargs).detach()
        raise StopForward

    handles = [module.register_forward_hook(replace)]
    if head is not None:
        handles.append(head.norm.register_forward_pre_hook(stop_at_head, with_kwargs=True))
    try:
        try:
            logits = lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        except StopForward:
            return final["h"]
    finally:
        for h in handles:
            h.remove()
    return logits.float()
