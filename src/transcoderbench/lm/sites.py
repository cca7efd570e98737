"""Named sites -> exact tensors of a Hugging Face model (DESIGN.md section 3).

A site is a module path, a direction (the module's input or output) and an optional gain-free
normalisation. TransformerLens-style names are translated per model family; any
``<module path>.input`` / ``<module path>.output`` works for every model, so an unlisted
architecture still runs by module path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from transcoderbench.errors import UserError
from transcoderbench.lm.loading import LanguageModel

# Per family: (the norm whose input is resid_mid and whose output feeds the MLP,
#              the module whose output is hook_mlp_out), relative to a decoder block.
FAMILY_MODULES: dict[str, tuple[str, str]] = {
    "gemma2": ("pre_feedforward_layernorm", "post_feedforward_layernorm"),
    "gemma3": ("pre_feedforward_layernorm", "post_feedforward_layernorm"),
    "llama": ("post_attention_layernorm", "mlp"),
    "gpt2": ("ln_2", "mlp"),
}
NORM_KIND = {"gemma2": "rms", "gemma3": "rms", "llama": "rms", "gpt2": "layernorm"}

# The order in which a block's children run; lets capture stop right after the last needed one.
BLOCK_CHILD_ORDER: dict[str, tuple[str, ...]] = {
    "gemma2": (
        "input_layernorm",
        "self_attn",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "mlp",
        "post_feedforward_layernorm",
    ),
    "llama": ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"),
    "gpt2": ("ln_1", "attn", "ln_2", "mlp"),
}
BLOCK_CHILD_ORDER["gemma3"] = BLOCK_CHILD_ORDER["gemma2"]

NAMED_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_mlp_in",
    "ln2.hook_normalized",
    "mlp.hook_in",
    "ln2.hook_normalized_times_w",
    "hook_mlp_out",
    "hook_resid_post",
)
_NAMED = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(h) for h in NAMED_HOOKS) + r")$")
_GENERIC = re.compile(r"^(?P<path>[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)\.(?P<direction>input|output)$")
# Roots a module path may be written against; the same string then works for e.g.
# Gemma3ForCausalLM (model.layers...) and Gemma3ForConditionalGeneration (model.language_model.layers...).
_ROOT_PREFIXES = ("model.language_model.", "model.text_model.", "language_model.", "model.", "transformer.")


@dataclass(frozen=True)
class Site:
    """Where a tensor is read: ``module_path``'s input (forward pre-hook) or output (forward hook)."""

    name: str
    """The name as the user gave it; capture results are keyed by it."""
    module_path: str
    """Path relative to ``lm.model``, usable with ``lm.model.get_submodule``."""
    direction: str
    """``"input"``: first positional argument of forward; ``"output"``: output (element 0 of a tuple)."""
    layer: int | None
    """Index of the decoder block the module lives in (None outside the blocks)."""
    normalize: str | None = None
    """None, ``"rms"`` or ``"layernorm"``: gain-free normalisation applied by :func:`site_tensor`."""
    eps: float | None = None
    """eps of the norm module whose input is normalised."""
    weight: torch.Tensor | None = field(default=None, compare=False, repr=False)
    """``normalize="layernorm_weight"`` only: the norm's gain, applied without its bias."""


def valid_forms(lm: LanguageModel) -> str:
    last = lm.n_layers - 1
    example = f"{_example_module(lm, 0)}.output" if lm.layer_paths else "<module path>.output"
    named = ", ".join(f"blocks.L.{h}" for h in NAMED_HOOKS)
    return f"{named} (L = 0..{last}), or <module path>.input / <module path>.output (e.g. {example})"


def _example_module(lm: LanguageModel, layer: int) -> str:
    """A real module path in block ``layer`` for error messages: its MLP if it has one."""
    block = lm.layer_paths[layer]
    try:
        lm.model.get_submodule(f"{block}.mlp")
        return f"{block}.mlp"
    except AttributeError:
        return block


def resolve_site(lm: LanguageModel, name: str) -> Site:
    """Translate a site name into a :class:`Site` of ``lm``; mistakes raise a one-line UserError."""
    text = name.strip()
    named = _NAMED.match(text)
    if named:
        return _resolve_named(lm, text, int(named.group(1)), named.group(2))
    generic = _GENERIC.match(text)
    if generic:
        module_path = _find_module_path(lm, generic.group("path"))
        if module_path is None:
            raise UserError(
                f"site {name!r}: {lm.name} has no module {generic.group('path')!r}; valid forms: {valid_forms(lm)}"
            )
        return Site(text, module_path, generic.group("direction"), layer_of(lm, module_path))
    raise UserError(f"site {name!r}: unknown site; valid forms: {valid_forms(lm)}")


def _resolve_named(lm: LanguageModel, name: str, layer: int, hook: str) -> Site:
    if layer >= lm.n_layers:
        raise UserError(
            f"site {name!r}: layer {layer} is out of range, {lm.name} has {lm.n_layers} layers (0..{lm.n_layers - 1})"
        )
    if lm.family not in FAMILY_MODULES:
        raise UserError(
            f"site {name!r}: blocks.L.* names are not mapped for {lm.name} (model type {lm.model_type or lm.family}); "
            f"use a module path such as '{_example_module(lm, layer)}.output' or '<module path>.input'"
        )
    block = lm.layer_paths[layer]
    pre_norm, mlp_out = FAMILY_MODULES[lm.family]
    if hook == "hook_resid_pre":
        return Site(name, block, "input", layer)
    if hook in ("hook_resid_mid", "hook_mlp_in"):
        return Site(name, f"{block}.{pre_norm}", "input", layer)
    if hook == "ln2.hook_normalized":
        norm_path = f"{block}.{pre_norm}"
        return Site(name, norm_path, "input", layer, NORM_KIND[lm.family], _norm_eps(lm, norm_path))
    if hook == "mlp.hook_in":
        return Site(name, f"{block}.{pre_norm}", "output", layer)
    if hook == "ln2.hook_normalized_times_w":
        return _normalized_times_w(lm, name, f"{block}.{pre_norm}", layer)
    if hook == "hook_mlp_out":
        return Site(name, f"{block}.{mlp_out}", "output", layer)
    if hook == "hook_resid_post":
        return Site(name, block, "output", layer)
    raise AssertionError(f"unhandled hook {hook}")  # _NAMED only matches NAMED_HOOKS


def _normalized_times_w(lm: LanguageModel, name: str, norm_path: str, layer: int) -> Site:
    """TransformerLens' ``ln2.hook_normalized * ln2.w``: the gained norm output without any bias.

    RMS norms have no bias, so it is the norm's output; for LayerNorm (GPT-2) the bias is left out.
    """
    if NORM_KIND[lm.family] == "rms":
        return Site(name, norm_path, "output", layer)
    module = lm.model.get_submodule(norm_path)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise UserError(f"site {name!r}: {norm_path} of {lm.name} has no weight; use blocks.L.ln2.hook_normalized")
    return Site(name, norm_path, "input", layer, "layernorm_weight", _norm_eps(lm, norm_path), weight.detach())


def _norm_eps(lm: LanguageModel, path: str) -> float:
    module = lm.model.get_submodule(path)
    for attr in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise UserError(f"module {path} of {lm.name} has no eps attribute; use its .input or .output site instead")


def _find_module_path(lm: LanguageModel, path: str) -> str | None:
    """Resolve ``path`` against ``lm.model``, then against the usual roots of a text decoder."""
    parts = lm.layer_paths[0].split(".") if lm.layer_paths else []
    stack_root = ".".join(parts[:-2]) + "." if len(parts) > 2 else ""
    tails = [path] + [path[len(p) :] for p in _ROOT_PREFIXES if path.startswith(p)]
    candidates = [path]
    for tail in tails:
        candidates += [prefix + tail for prefix in (stack_root, *_ROOT_PREFIXES, "")]
    for candidate in dict.fromkeys(candidates):
        if not candidate:
            continue
        try:
            lm.model.get_submodule(candidate)
        except AttributeError:
            continue
        return candidate
    return None


def layer_of(lm: LanguageModel, module_path: str) -> int | None:
    """Index of the decoder block containing ``module_path`` (the block itself included)."""
    for index, block in enumerate(lm.layer_paths):
        if module_path == block or module_path.startswith(block + "."):
            return index
    return None


def site_tensor(site: Site, captured: torch.Tensor) -> torch.Tensor:
    """The site's value in float32: the captured tensor, normalised without gain if the site says so.

    Matches the model's own norm computation (in float32), minus the gain (and GPT-2's bias).
    """
    x = captured.float()
    if site.normalize is None:
        return x
    if site.eps is None:
        raise ValueError(f"site {site.name}: normalize={site.normalize!r} needs eps")
    if site.normalize == "rms":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + site.eps)
    if site.normalize == "layernorm":
        return F.layer_norm(x, (x.shape[-1],), eps=site.eps)
    if site.normalize == "layernorm_weight" and site.weight is not None:
        return F.layer_norm(x, (x.shape[-1],), weight=site.weight.to(x.device, torch.float32), eps=site.eps)
    raise ValueError(f"site {site.name}: unknown normalize {site.normalize!r}")


# ----------------------------------------------------------------- site names in configs
_LAYERED = re.compile(r"(?:^|\.)(?:blocks|layers|h)\.(\d+)(?:\.|$)")
_GLOBAL_TL_HOOKS = {"hook_embed", "hook_pos_embed", "hook_tokens", "ln_final.hook_normalized", "ln_final.hook_scale"}


def layer_of_site(site: str) -> int | None:
    """The layer index in ``blocks.L.…`` or ``model.layers.L.…`` site names (no model needed)."""
    m = _LAYERED.search(site)
    return int(m.group(1)) if m else None


def canonical_site(name: str, layer: int | None, *, key: str, source: Path | str) -> tuple[str, str | None]:
    """A TransformerLens-style site name for a config hook, and a note when it was inferred.

    Full names (``blocks.17.hook_mlp_out``, ``model.layers.5.pre_feedforward_layernorm.output``)
    are kept as written. Bare site names (``mlp_in``, ``hook_mlp_out``, ``ln2.hook_normalized``)
    need the layer and become ``blocks.L.hook_mlp_in`` etc.
    """
    name = str(name).strip()
    if not name:
        raise UserError(f"{source}: {key} is empty; it must name a hook such as blocks.17.hook_mlp_in")
    if name.startswith("blocks.") or name in _GLOBAL_TL_HOOKS:
        return name, None
    if name.endswith((".input", ".output")):
        return name, None  # an HF module path site, e.g. model.layers.5.pre_feedforward_layernorm.output
    if layer is None:
        raise UserError(
            f"{source}: {key} {name!r} names no layer and the config has none; add layer to the config or set select.layer"
        )
    bare = name[len("hook_") :] if name.startswith("hook_") else name
    site = f"blocks.{layer}.{bare}" if "." in bare else f"blocks.{layer}.hook_{bare}"
    return site, f"config hook `{name}` ({key}) read as {site}"
