"""The seed project's checkpoint directories: ``config.json`` + a PyTorch state dict.

Layouts: ``sae.pt``, ``checkpoint.pt``, or ``checkpoints/final.pt`` / ``checkpoints/step_N.pt``.
The seed wrote its config with ``str()`` on anything that was not a plain JSON value, so lists,
dtypes and fractions arrive as strings (``"[1152, 2304]"``, ``"torch.bfloat16"``, ``"1/32"``).
Its prefix lists were read by guessing from monotonicity, which misread increasing per-group
sizes; here the weight shapes decide, and ``info["notes"]`` says what was inferred.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from transcoderbench.errors import UserError
from transcoderbench.formats.common import (
    WEIGHT_KEYS,
    as_bool,
    as_int,
    build,
    check_shapes,
    parse_value,
    require_keys,
    to_float32,
)
from transcoderbench.formats.registry import Entry, HubChoice, Select, in_prefix
from transcoderbench.io import load_torch_file, read_json
from transcoderbench.lm.sites import canonical_site, layer_of_site
from transcoderbench.transcoders import (
    BatchTopKTranscoder,
    MatryoshkaTranscoder,
    TopKTranscoder,
    Transcoder,
    group_sizes_to_ends,
)

CONFIG = "config.json"
DIRECT_FILES = ("sae.pt", "checkpoint.pt")
NESTED_KEYS = ("model_state_dict", "state_dict", "model", "sae", "transcoder", "sae_state_dict")
PREFIX_KEYS = ("prefix_sizes", "group_sizes")
_STEP = re.compile(r"^step_(\d+)\.pt$")
_STRIP_PREFIXES = ("module.", "_orig_mod.")


def _checkpoint_files(directory: Path) -> list[Path]:
    found = [directory / n for n in DIRECT_FILES if (directory / n).is_file()]
    ckpts = directory / "checkpoints"
    if ckpts.is_dir():
        if (ckpts / "final.pt").is_file():
            found.append(ckpts / "final.pt")
        found.extend(sorted((p for p in ckpts.iterdir() if _STEP.match(p.name)), key=_step_number, reverse=True))
    return found


def _step_number(p: Path) -> int:
    m = _STEP.match(p.name)
    return int(m.group(1)) if m else -1


def is_legacy_dir(directory: Path) -> bool:
    return (directory / CONFIG).is_file() and bool(_checkpoint_files(directory))


def locate(path: Path) -> tuple[Path, Path, list[str]]:
    """(config.json, state-dict file, notes) for a legacy directory or one of its ``.pt`` files."""
    notes: list[str] = []
    if path.is_file():
        for directory in (path.parent, path.parent.parent):
            if (directory / CONFIG).is_file():
                return directory / CONFIG, path, notes
        raise UserError(f"{path}: no config.json next to it or one directory up; the seed saves it beside the weights")
    found = _checkpoint_files(path)
    if not found:
        raise UserError(
            f"{path}: no sae.pt, checkpoint.pt or checkpoints/final.pt|step_N.pt next to config.json; "
            "point at the checkpoint directory the seed wrote"
        )
    chosen = found[0]
    if chosen.parent.name == "checkpoints":
        if chosen.name == "final.pt":
            notes.append("read checkpoints/final.pt (preferred over step_N.pt files)")
        else:
            steps = [p.name for p in found if p.parent.name == "checkpoints"]
            notes.append(
                f"no checkpoints/final.pt: read {chosen.name}, the highest step of {len(steps)} "
                "(pass that .pt file's path to choose another)"
            )
    others = [p.relative_to(path).as_posix() for p in found if p != chosen]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        notes.append(f"read {chosen.relative_to(path).as_posix()}; also present and ignored: {shown}")
    return path / CONFIG, chosen, notes


def extract_state_dict(obj: Any, source: Path) -> tuple[dict[str, Tensor], list[str]]:
    """The tensor dict inside a loaded ``.pt`` (direct or nested), with DDP/compile prefixes removed."""
    notes: list[str] = []
    if not isinstance(obj, dict):
        raise UserError(f"{source}: holds a {type(obj).__name__}, expected a state dict (a dict of tensors)")
    if "W_enc" not in obj and not any(str(k).endswith(".W_enc") for k in obj):
        for key in NESTED_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and any(str(k).endswith("W_enc") for k in inner):
                notes.append(f"state dict read from the {key!r} entry of the checkpoint")
                obj = inner
                break
    for prefix in _STRIP_PREFIXES:
        if obj and all(isinstance(k, str) and k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
            notes.append(f"removed the {prefix!r} prefix from state-dict keys")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}, notes


def interpret_prefixes(values: Any, d_sae: int, key: str, source: Path) -> tuple[tuple[int, ...], str]:
    """Cumulative prefix ends from a per-group or cumulative list, decided by ``d_sae``."""
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UserError(f"{source}: {key} {values!r} is not a list of integers")
    vals = [int(v) for v in values]
    if not vals or min(vals) <= 0:
        raise UserError(f"{source}: {key} {vals} must be positive group sizes or prefix ends")
    per_group = sum(vals) == d_sae
    cumulative = vals[-1] == d_sae and all(b > a for a, b in zip(vals, vals[1:]))
    if len(vals) == 1 and per_group:
        return (d_sae,), f"{key} {vals} is a single group of all d_sae={d_sae} latents"
    if per_group:
        ends = group_sizes_to_ends(vals)
        note = f"{key} {vals} read as per-group sizes because they sum to d_sae={d_sae} (prefix ends {list(ends)})"
        if all(b > a for a, b in zip(vals, vals[1:])):
            note += "; the list increases, which the seed's old loader misread as cumulative ends"
        return ends, note
    if cumulative:
        return tuple(vals), f"{key} {vals} read as cumulative prefix ends because the last equals d_sae={d_sae}"
    raise UserError(
        f"{source}: {key} {vals} neither sums to d_sae={d_sae} (per-group sizes) nor ends at it (cumulative ends); "
        f"fix {key} in the config"
    )


def _sites(cfg: dict[str, Any], layer_arg: int | None, source: Path) -> tuple[str, str, list[str]]:
    notes: list[str] = []
    base = as_int(cfg.get("layer"), key="layer", source=source)
    src_layer = as_int(cfg.get("source_layer"), key="source_layer", source=source)
    tgt_layer = as_int(cfg.get("target_layer"), key="target_layer", source=source)
    fallback = base if base is not None else layer_arg
    src_layer = src_layer if src_layer is not None else fallback
    tgt_layer = tgt_layer if tgt_layer is not None else fallback

    if cfg.get("source_hook_point"):
        inp, key = cfg["source_hook_point"], "source_hook_point"
    elif cfg.get("hook_point"):
        inp, key = cfg["hook_point"], "hook_point"
    elif cfg.get("source_site"):
        inp, key = cfg["source_site"], "source_site"
    elif cfg.get("site"):
        inp, key = cfg["site"], "site"
    else:
        raise UserError(f"{source}: names no input hook (source_hook_point, hook_point or source_site); add it")
    input_site, note = canonical_site(str(inp), src_layer, key=key, source=source)
    notes += [note] if note else []
    input_site, note = seed_input_site(input_site)
    notes += [note] if note else []

    if cfg.get("target_hook_point"):
        out, okey = cfg["target_hook_point"], "target_hook_point"
    elif cfg.get("target_site"):
        out, okey = cfg["target_site"], "target_site"
    elif "transcoder" in str(cfg.get("sae_type", "")).lower():
        raise UserError(f"{source}: a transcoder config with no output hook (target_hook_point or target_site); add it")
    else:
        notes.append(f"no target hook in the config: read as an SAE whose output site is its input site {input_site}")
        return input_site, input_site, notes
    output_site, note = canonical_site(str(out), tgt_layer, key=okey, source=source)
    notes += [note] if note else []
    return input_site, output_site, notes


_SEED_MLP_IN = re.compile(r"^blocks\.(\d+)\.hook_mlp_in$")


def seed_input_site(site: str) -> tuple[str, str | None]:
    """Where a seed checkpoint that names ``blocks.L.hook_mlp_in`` was really trained (DESIGN.md section 3).

    The seed's TransformerLens models ran with ``use_hook_mlp_in`` off, so that hook never fired and
    its activation store fell back to ``ln2.hook_normalized * ln2.w``: the gained pre-MLP norm output
    without any bias, which is ``blocks.L.ln2.hook_normalized_times_w`` here.
    """
    m = _SEED_MLP_IN.match(site)
    if not m:
        return site, None
    new = f"blocks.{m.group(1)}.ln2.hook_normalized_times_w"
    return new, (
        f"input site {site} read as {new} (the gained pre-MLP norm output, without bias): the seed never trained on "
        "hook_mlp_in, whose TransformerLens hook was off; its activation store fell back to ln2.hook_normalized * ln2.w"
    )


def load_legacy(path: Path, *, layer: int | None = None, device: str = "cpu") -> Transcoder:
    """A seed checkpoint directory (or one of its ``.pt`` files) as a transcoder."""
    cfg_path, ckpt, notes = locate(path)
    raw_cfg = read_json(cfg_path)
    cfg = {k: parse_value(v) for k, v in raw_cfg.items()}
    state, more = extract_state_dict(load_torch_file(ckpt), ckpt)
    notes += more

    sae_type = str(cfg.get("sae_type", "")).lower()
    per_token_topk = "threshold" not in state and sae_type in ("topk", "topk-transcoder", "topk_transcoder")
    needed = list(WEIGHT_KEYS) + ([] if per_token_topk else ["threshold"])
    require_keys(state, needed, ckpt, hint="; expected the seed's state dict (W_enc, b_enc, W_dec, b_dec, threshold)")
    ignored = sorted(k for k in state if k not in (*WEIGHT_KEYS, "threshold"))
    if ignored:
        notes.append(f"ignored state-dict entries: {', '.join(ignored)}")
    tensors, dnotes = to_float32({k: state[k] for k in needed}, ckpt)
    notes += dnotes

    d_in = as_int(cfg.get("source_act_size", cfg.get("act_size")), key="source_act_size", source=cfg_path)
    d_out = as_int(cfg.get("target_act_size", cfg.get("act_size")), key="target_act_size", source=cfg_path)
    check_shapes(tensors, ckpt, d_in=d_in, d_out=d_out, threshold=None if per_token_topk else "scalar")
    d_sae = int(tensors["W_enc"].shape[1])
    dict_size = as_int(cfg.get("dict_size"), key="dict_size", source=cfg_path)
    if dict_size is not None and dict_size != d_sae:
        notes.append(
            f"config dict_size {dict_size} disagrees with the weights ({d_sae} latents); the weights decide "
            "(the seed sized its dictionary by the last prefix_sizes value)"
        )

    ends: tuple[int, ...] = (d_sae,)
    for key in PREFIX_KEYS:
        if cfg.get(key) is not None:
            if isinstance(raw_cfg[key], str):
                notes.append(f"config value {key} {raw_cfg[key]!r} was a string; parsed as {cfg[key]!r}")
            ends, note = interpret_prefixes(cfg[key], d_sae, key, cfg_path)
            notes.append(note)
            other = [k for k in PREFIX_KEYS if k != key and cfg.get(k) is not None]
            if other:
                notes.append(f"used {key}; ignored {other[0]}")
            break

    input_site, output_site, snotes = _sites(cfg, layer, cfg_path)
    notes += snotes
    unit_norm = as_bool(cfg.get("input_unit_norm"), key="input_unit_norm", source=cfg_path)
    k = as_int(cfg.get("top_k"), key="top_k", source=cfg_path)

    site_layer = layer_of_site(input_site)
    info: dict[str, Any] = {
        "format": "legacy",
        "source": str(ckpt),
        "model_name": cfg.get("model_name"),
        "layer": site_layer if site_layer is not None else as_int(cfg.get("layer"), key="layer", source=cfg_path),
        "notes": notes,
        "training": cfg,
    }
    common: dict[str, Any] = dict(
        source=ckpt, input_site=input_site, output_site=output_site, info=info, device=device, input_unit_norm=unit_norm
    )
    if per_token_topk:
        if k is None:
            raise UserError(f"{cfg_path}: a TopK checkpoint without top_k; add top_k to the config")
        notes.append(f"no threshold in the state dict and sae_type {sae_type!r}: per-token TopK with k={k}")
        return build(TopKTranscoder, tensors, prefix_ends=ends, k=k, **common)
    cls = MatryoshkaTranscoder if len(ends) > 1 else BatchTopKTranscoder
    threshold = float(tensors.pop("threshold").reshape(()))
    return build(cls, tensors, prefix_ends=ends, threshold=threshold, k=k, **common)


def _detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in (".pt", ".pth")
    return is_legacy_dir(path)


def _load(path: Path, *, select: Select, device: str, repo: str | None, notes: list[str]) -> Transcoder:
    tc = load_legacy(path, layer=select.layer, device=device)
    tc.info["notes"] = notes + tc.info["notes"]
    return tc


def _hub(files: list[str], sub: str, *, repo: str, select: Select) -> HubChoice | None:
    for name in DIRECT_FILES:
        needed = in_prefix(files, sub, (CONFIG, name))
        if needed:
            return HubChoice(needed, sub or ".")
    return None


ENTRY = Entry(
    "legacy",
    "config.json + sae.pt, checkpoint.pt or checkpoints/*.pt (seed)",
    _detect,
    _load,
    _hub,
)
