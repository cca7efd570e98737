"""circuit-tracer transcoder sets: ``config.yaml`` + one safetensors file per layer.

``config.yaml`` names ``model_name``, ``model_kind: transcoder_set``, ``feature_input_hook`` and
``feature_output_hook`` (TransformerLens hook names without the layer, e.g. ``hook_resid_mid``
and ``hook_mlp_out``) and ``transcoders``, the per-layer files in layer order (local paths or
``hf://owner/repo/file?revision=R``). Each file holds ``W_enc [d_sae, d_model]``, ``b_enc``,
``W_dec [d_sae, d_model]`` (older releases: ``[d_model, d_sae]``; the shape decides), ``b_dec``,
optionally ``W_skip [d_model, d_model]`` applied as ``x @ W_skip.T`` and
``activation_function.threshold [d_sae]`` (JumpReLU ``x * (x > threshold)``; without it, ReLU).
circuit-tracer needs a transcoder for every layer 0..L, so export takes one per layer and writes
one set. Checked against circuit-tracer 0.5.0, whose loader reads ReLU and JumpReLU files only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import torch
import yaml

import transcoderbench
from transcoderbench.errors import UserError
from transcoderbench.formats.common import build, check_shapes, require_keys, shape, to_float32
from transcoderbench.formats.hub import download_hub_file
from transcoderbench.formats.registry import Entry, HubChoice, Select, in_prefix
from transcoderbench.io import (
    atomic_directory,
    check_readable,
    json_ready,
    load_safetensors,
    one_line,
    save_safetensors,
)
from transcoderbench.transcoders import ARCHITECTURES, BatchTopKTranscoder, JumpReLUTranscoder, Transcoder

CONFIG = "config.yaml"
THRESHOLD = "activation_function.threshold"
_TL_SITE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def read_config(path: Path) -> dict[str, Any]:
    """``config.yaml`` as a mapping (``yaml.safe_load``: plain data only)."""
    check_readable(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid YAML ({one_line(exc, 160)}); fix the file") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold a YAML mapping (model_name, transcoders, ...)")
    return data


def is_ct_dir(directory: Path) -> bool:
    if not (directory / CONFIG).is_file():
        return False
    try:
        cfg = read_config(directory / CONFIG)
    except UserError:
        return False
    return isinstance(cfg.get("transcoders"), list) and "feature_input_hook" in cfg


def _layer_file(entry: Any, directory: Path, cfg_path: Path) -> Path:
    text = str(entry)
    if text.startswith("hf://"):
        uri = urlparse(text)
        owner_repo, _, file_path = uri.path.lstrip("/").partition("/")
        if not file_path:
            raise UserError(f"{cfg_path}: transcoder entry {text!r} is not hf://owner/repo/file")
        repo = f"{uri.netloc}/{owner_repo}"
        revision = parse_qs(uri.query).get("revision", [None])[0]
        return download_hub_file(text, repo, file_path, revision)
    path = Path(text).expanduser()
    return path if path.is_absolute() else directory / path


def load_ct(directory: Path, *, layer: int | None, device: str = "cpu", notes: list[str] | None = None) -> Transcoder:
    """The layer ``layer`` transcoder of a circuit-tracer set (the only one when the set has one layer)."""
    notes = list(notes or [])
    cfg_path = directory / CONFIG
    cfg = read_config(cfg_path)
    kind = cfg.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise UserError(f"{cfg_path}: model_kind {kind!r} is not supported; transcoderbench reads transcoder_set")
    files = cfg.get("transcoders")
    if not isinstance(files, list) or not files:
        raise UserError(f"{cfg_path}: transcoders must list the per-layer files")
    if layer is None and len(files) > 1:
        raise UserError(
            f"{cfg_path}: a set of {len(files)} per-layer transcoders (layers 0..{len(files) - 1}); choose one with select.layer"
        )
    layer = 0 if layer is None else layer
    if not 0 <= layer < len(files):
        raise UserError(f"{cfg_path}: has layers 0..{len(files) - 1}, not {layer} (select.layer)")
    w_path = _layer_file(files[layer], directory, cfg_path)
    raw = load_safetensors(w_path)
    require_keys(raw, ["W_enc", "b_enc", "W_dec", "b_dec"], w_path, hint="; expected a circuit-tracer transcoder file")
    if "log_thresholds" in raw:
        raise UserError(f"{w_path}: log_thresholds are not supported (circuit-tracer itself refuses them)")
    keep = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip", THRESHOLD) if k in raw]
    tensors, dnotes = to_float32({k: raw[k] for k in keep}, w_path)
    notes += dnotes
    _orient(tensors, w_path, notes)
    if "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"].T.contiguous()  # circuit-tracer: x @ W_skip.T
    threshold = tensors.pop(THRESHOLD, None)
    check_shapes(tensors, w_path)
    if threshold is None:
        threshold = torch.zeros(tensors["W_enc"].shape[1])
        notes.append("no activation_function.threshold: ReLU, read as JumpReLU with threshold 0 (the same function)")
    ours: dict[str, Any] = cfg["transcoderbench"] if isinstance(cfg.get("transcoderbench"), dict) else {}
    per_layer = (ours.get("layers") or {}).get(str(layer), {}) if isinstance(ours.get("layers"), dict) else {}
    input_site = per_layer.get("input_site") or f"blocks.{layer}.{cfg['feature_input_hook']}"
    output_site = per_layer.get("output_site") or f"blocks.{layer}.{cfg.get('feature_output_hook', 'hook_mlp_out')}"
    info: dict[str, Any] = {
        "format": "circuit_tracer",
        "source": f"{directory} (layer {layer})",
        "model_name": cfg.get("model_name"),
        "layer": layer,
        "notes": notes,
        "training": per_layer.get("training") or {"d_sae": int(tensors["W_enc"].shape[1])},
    }
    common: dict[str, Any] = dict(
        source=w_path, input_site=input_site, output_site=output_site, info=info, device=device
    )
    arch = per_layer.get("architecture")
    if arch in ("batchtopk", "matryoshka_batchtopk") and "threshold" in per_layer:
        scalar = float(per_layer["threshold"])
        if torch.equal(threshold, torch.full_like(threshold, max(scalar, 0.0))):
            return build(
                ARCHITECTURES[arch],
                tensors,
                threshold=scalar,
                k=per_layer.get("k"),
                prefix_ends=per_layer.get("prefix_ends"),
                **common,
            )
        notes.append("transcoderbench metadata ignored: the thresholds no longer match the exported scalar")
    return build(JumpReLUTranscoder, tensors, threshold=threshold, prefix_ends=per_layer.get("prefix_ends"), **common)


def _orient(t: dict[str, torch.Tensor], w_path: Path, notes: list[str]) -> None:
    """Weights to our ``x @ W`` layout; ``W_dec`` is ``[d_sae, d_model]`` or (older) ``[d_model, d_sae]``."""
    W_enc, W_dec = t["W_enc"], t["W_dec"]
    if W_enc.ndim != 2 or W_dec.ndim != 2:
        raise UserError(f"{w_path}: W_enc {shape(W_enc)} and W_dec {shape(W_dec)} must both be matrices")
    d_sae, d_model = shape(t["b_enc"])[0], shape(t["b_dec"])[0]
    if shape(W_enc) != [d_sae, d_model]:
        raise UserError(f"{w_path}: W_enc has shape {shape(W_enc)}, expected [d_sae, d_model] = [{d_sae}, {d_model}]")
    t["W_enc"] = W_enc.T.contiguous()
    if shape(W_dec) == [d_model, d_sae] and d_model != d_sae:
        t["W_dec"] = W_dec.T.contiguous()
        notes.append("W_dec stored as [d_model, d_sae] (older circuit-tracer files); transposed")
    elif shape(W_dec) != [d_sae, d_model]:
        raise UserError(
            f"{w_path}: W_dec has shape {shape(W_dec)}, expected [{d_sae}, {d_model}] or [{d_model}, {d_sae}]"
        )


# ------------------------------------------------------------------------------ writing
def _hook(site: str, what: str) -> tuple[int, str]:
    m = _TL_SITE.match(site)
    if not m:
        raise UserError(
            f"{what} {site}: circuit-tracer names hooks as TransformerLens hooks without the layer "
            "(blocks.L.<hook>), so a module-path site cannot be expressed"
        )
    return int(m.group(1)), m.group(2)


def check_ct(transcoders: list[Transcoder]) -> tuple[str, str, dict[int, Transcoder]]:
    """(input hook, output hook, layer -> transcoder), or a UserError naming what circuit-tracer cannot express."""
    by_layer: dict[int, Transcoder] = {}
    hooks_in, hooks_out = set(), set()
    for tc in transcoders:
        if not isinstance(tc, (JumpReLUTranscoder, BatchTopKTranscoder)):
            raise UserError(
                f"architecture {tc.architecture!r}: circuit-tracer's loader reads ReLU and JumpReLU transcoders only "
                "(per-token TopK has no counterpart there)"
            )
        if tc.input_unit_norm or tc.constant_norm_rescale:
            raise UserError("circuit-tracer has no input standardisation; input_unit_norm cannot be expressed")
        if tc.d_in != tc.d_out:
            raise UserError(
                f"circuit-tracer transcoders map d_model -> d_model, but this one maps {tc.d_in} -> {tc.d_out}"
            )
        layer, hook_in = _hook(tc.input_site, "input site")
        out_layer, hook_out = _hook(tc.output_site, "output site")
        if out_layer != layer:
            raise UserError(f"sites {tc.input_site} -> {tc.output_site}: circuit-tracer transcoders stay in one layer")
        if layer in by_layer:
            raise UserError(f"two transcoders for layer {layer}; give one checkpoint per layer")
        by_layer[layer] = tc
        hooks_in.add(hook_in)
        hooks_out.add(hook_out)
    if len(hooks_in) > 1 or len(hooks_out) > 1:
        raise UserError(
            f"circuit-tracer sets share one input and one output hook; got {sorted(hooks_in)} -> {sorted(hooks_out)}"
        )
    missing = sorted(set(range(max(by_layer) + 1)) - set(by_layer))
    if missing:
        raise UserError(
            f"circuit-tracer needs a transcoder for every layer 0..{max(by_layer)}; missing layers "
            f"{', '.join(map(str, missing))} (give one checkpoint per layer)"
        )
    if len({tc.d_sae for tc in by_layer.values()}) > 1:
        raise UserError("circuit-tracer sets need the same d_sae in every layer")
    return hooks_in.pop(), hooks_out.pop(), by_layer


def export_ct(transcoders: list[Transcoder], directory: str | Path, *, model_name: str | None = None) -> Path:
    """Write one circuit-tracer set from one transcoder per layer, atomically."""
    directory = Path(directory)
    hook_in, hook_out, by_layer = check_ct(transcoders)
    models = {tc.info.get("model_name") for tc in by_layer.values()} - {None}
    model_name = model_name or (models.pop() if len(models) == 1 else None)
    if model_name is None:
        raise UserError(
            "circuit-tracer's config.yaml needs model_name; the transcoders name none or several (pass model_name)"
        )
    layers_meta: dict[str, Any] = {}
    with atomic_directory(directory, replaceable=is_ct_dir, kind="circuit-tracer") as tmp:
        files = []
        for layer in sorted(by_layer):
            tc = by_layer[layer]
            name = f"layer_{layer}.safetensors"
            save_safetensors(tmp / name, _layer_tensors(tc))
            files.append(name)
            layers_meta[str(layer)] = {
                "architecture": tc.architecture,
                "input_site": tc.input_site,
                "output_site": tc.output_site,
                "prefix_ends": list(tc.prefix_ends),
                "training": tc.info.get("training"),
                **tc.hyperparameters(),
            }
        cfg = {
            "model_name": model_name,
            "model_kind": "transcoder_set",
            "scan": f"transcoderbench-{model_name}",
            "feature_input_hook": hook_in,
            "feature_output_hook": hook_out,
            "transcoders": files,
            "transcoderbench": {"exported_by": f"transcoderbench {transcoderbench.__version__}", "layers": layers_meta},
        }
        (tmp / CONFIG).write_text(yaml.safe_dump(json_ready(cfg), sort_keys=False), encoding="utf-8")
    return directory


def _layer_tensors(tc: Transcoder) -> dict[str, torch.Tensor]:
    f32 = {k: v.detach().to("cpu", torch.float32) for k, v in tc.tensors().items()}
    out = {"W_enc": f32["W_enc"].T.contiguous(), "b_enc": f32["b_enc"], "W_dec": f32["W_dec"], "b_dec": f32["b_dec"]}
    if isinstance(tc, JumpReLUTranscoder):
        out[THRESHOLD] = f32["threshold"]  # both compute pre * (pre > threshold)
    else:
        # BatchTopK: relu(pre) * (relu(pre) > t) == pre * (pre > max(t, 0))
        out[THRESHOLD] = torch.full((tc.d_sae,), max(float(f32["threshold"]), 0.0))
    if tc.W_skip is not None:
        out["W_skip"] = f32["W_skip"].T.contiguous()
    return out


# --------------------------------------------------------------------------- registry
def _detect(path: Path) -> bool:
    if path.is_file():
        return path.name == CONFIG and is_ct_dir(path.parent)
    return is_ct_dir(path)


def _load(path: Path, *, select: Select, device: str, repo: str | None, notes: list[str]) -> Transcoder:
    return load_ct(path.parent if path.is_file() else path, layer=select.layer, device=device, notes=notes)


def _hub(files: list[str], sub: str, *, repo: str, select: Select) -> HubChoice | None:
    """``config.yaml`` and, when ``select.layer`` is given, that layer's conventional ``layer_L.safetensors``."""
    needed = in_prefix(files, sub, (CONFIG,))
    if not needed:
        return None
    layer_file = in_prefix(files, sub, (f"layer_{select.layer}.safetensors",)) if select.layer is not None else None
    return HubChoice((layer_file or []) + needed, sub or ".")


def _save(transcoders: list[Transcoder], directory: Path, **options: Any) -> Path:
    return export_ct(transcoders, directory, **options)


ENTRY = Entry(
    "circuit_tracer",
    "config.yaml + layer_L.safetensors (circuit-tracer)",
    _detect,
    _load,
    _hub,
    _save,
    selects=False,
)
