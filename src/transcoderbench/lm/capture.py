"""One forward pass that records named sites and stops once the deepest needed tensor exists.

Hook registration (:func:`hooks`) is generic: each site gets a hook that stores its tensor, and
stopping is one extra hook at a chosen point. Deciding *where* to stop (:func:`stop_point`) is
separate, so splicing (replacing an output) or resuming from a layer can reuse both pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from transcoderbench.errors import UserError
from transcoderbench.lm.loading import LanguageModel
from transcoderbench.lm.sites import BLOCK_CHILD_ORDER, Site, site_tensor

# Keyword names under which a module may receive its main input instead of positionally.
_INPUT_KWARGS = ("hidden_states", "input", "x", "inputs_embeds", "input_ids")


class StopForward(Exception):
    """Raised by a hook once every needed tensor is stored; caught by :func:`capture`."""


def output_tensor(output: Any) -> Tensor:
    """A module's main output: the tensor itself, or element 0 of a tuple/list/ModelOutput."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if hasattr(output, "to_tuple"):
        return output_tensor(output.to_tuple())
    raise TypeError(f"module output of type {type(output).__name__} holds no tensor to capture")


def input_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """A module's main input: its first positional argument, else a known keyword."""
    if args and isinstance(args[0], Tensor):
        return args[0]
    for key in _INPUT_KWARGS:
        if isinstance(kwargs.get(key), Tensor):
            return kwargs[key]
    raise TypeError("module was called without a tensor as its first argument")


def _store(store: dict[str, Tensor], site: Site, tensor: Tensor) -> None:
    if site.name in store:
        raise UserError(
            f"site {site.name!r}: module {site.module_path} ran more than once in one forward pass, "
            "so the site is ambiguous; choose another module"
        )
    store[site.name] = tensor.detach().clone()


def _capture_hook(site: Site, store: dict[str, Tensor]) -> Callable[..., None]:
    if site.direction == "input":

        def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            _store(store, site, input_tensor(args, kwargs))

        return pre_hook

    def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
        _store(store, site, output_tensor(output))

    return hook


def _stop_hook(*_: Any) -> None:
    raise StopForward


def _attach(module: torch.nn.Module, direction: str, fn: Callable[..., Any]):
    if direction == "input":
        return module.register_forward_pre_hook(fn, with_kwargs=True)
    if direction == "output":
        return module.register_forward_hook(fn)
    raise ValueError(f"direction must be 'input' or 'output', not {direction!r}")


@contextmanager
def hooks(lm: LanguageModel, sites: list[Site], store: dict[str, Tensor], stop_after: Site | None) -> Iterator[None]:
    """Register capture hooks for ``sites`` (writing ``store[site.name]``) and, if ``stop_after``
    is given, a hook that raises :class:`StopForward` right after that point's tensor exists
    (before the module runs for an input site, after it for an output site).

    ``store`` must start without these names. Hooks are removed on exit, even on error.
    """
    handles = []
    try:
        for site in sites:
            module = lm.model.get_submodule(site.module_path)
            handles.append(_attach(module, site.direction, _capture_hook(site, store)))
        if stop_after is not None:  # registered last: runs after the capture hooks on its module
            module = lm.model.get_submodule(stop_after.module_path)
            handles.append(_attach(module, stop_after.direction, _stop_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _order_key(lm: LanguageModel, site: Site) -> tuple[int, int, int] | None:
    """When ``site`` fires relative to other sites, or None when that is unknown.

    The key is (layer, rank of the block child, 0 child input / 1 inside the child / 2 child
    output). Order among points inside one child is unknown; :func:`stop_point` handles ties.
    """
    if site.layer is None:
        embeddings = lm.model.get_input_embeddings()
        if embeddings is not None and lm.model.get_submodule(site.module_path) is embeddings:
            return (-1, 0, 0 if site.direction == "input" else 2)
        return None
    block = lm.layer_paths[site.layer]
    if site.module_path == block:
        return (site.layer, -1, 0) if site.direction == "input" else (site.layer, 1_000_000, 2)
    child, _, nested = site.module_path[len(block) + 1 :].partition(".")
    order = BLOCK_CHILD_ORDER.get(lm.family, ())
    if child not in order:
        return None
    return (site.layer, order.index(child), 1 if nested else 0 if site.direction == "input" else 2)


def stop_point(lm: LanguageModel, sites: list[Site]) -> Site | None:
    """The point after which no requested site can fire, or None (run the whole forward).

    Exact when the last site is a known child of a block (or the block itself); if the order
    inside the last needed child (or block) is unknown, stop after that child (or block) instead.
    """
    keyed = []
    for site in sites:
        key = _order_key(lm, site)
        if key is None:
            if site.layer is None:
                return None  # outside the blocks and not the embeddings: order unknown
            block = lm.layer_paths[site.layer]
            keyed.append(((site.layer, 999_999, 2), Site("<stop>", block, "output", site.layer)))
        else:
            keyed.append((key, site))
    if not keyed:
        return None
    last_key = max(key for key, _ in keyed)
    last = {(s.module_path, s.direction): s for key, s in keyed if key == last_key}
    if len(last) == 1:
        return next(iter(last.values()))
    # Several points inside the same child, order unknown: stop after the child itself.
    layer, rank, _ = last_key
    block = lm.layer_paths[layer]
    child = BLOCK_CHILD_ORDER[lm.family][rank]
    return Site("<stop>", f"{block}.{child}", "output", layer)


def capture(
    lm: LanguageModel,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    sites: list[Site],
    *,
    stop_early: bool = True,
) -> dict[str, Tensor]:
    """Run one forward pass and return every site's tensor (float32, ``site_tensor`` applied).

    With ``stop_early`` the pass ends right after the last needed tensor is captured.
    Raises if any site did not fire, so results are never silently partial.
    """
    unique: dict[str, Site] = {}
    for site in sites:
        if unique.setdefault(site.name, site) != site:
            raise ValueError(f"two different sites share the name {site.name!r}")
    if not unique:
        raise ValueError("capture needs at least one site")
    chosen = list(unique.values())
    stop_after = stop_point(lm, chosen) if stop_early else None
    store: dict[str, Tensor] = {}
    stopped = False
    with torch.no_grad(), hooks(lm, chosen, store, stop_after):
        try:
            lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            stopped = True
    missing = [site.name for site in chosen if site.name not in store]
    if missing and stopped:  # the stop point was wrong: a bug here, not the user's doing
        raise RuntimeError(f"sites {missing} were not reached before the forward pass stopped at {stop_after}")
    if missing:
        raise UserError(
            f"site {missing[0]!r}: its module did not run in a text-only forward pass of {lm.name}; "
            "choose a module on the text path"
        )
    return {site.name: site_tensor(site, store[site.name]) for site in chosen}


def site_widths(lm: LanguageModel, sites: list[Site]) -> dict[str, int]:
    """Each site's width, read from a two-token (BOS, BOS) probe forward that stops early.

    Cheap enough to run before any long pass, so a width mismatch fails in a second.
    """
    probe = torch.tensor([[lm.bos_token_id, lm.bos_token_id]], device=lm.device)
    return {name: t.shape[-1] for name, t in capture(lm, probe, None, sites, stop_early=True).items()}
