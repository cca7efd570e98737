"""The native format: ``config.json`` (everything but tensors) + ``model.safetensors``.

It round-trips every architecture in :data:`ARCHITECTURES` exactly: tensors bit for bit,
sites, prefixes, input standardisation, the affine skip, hyperparameters and ``info``.
Rebuilding relies on one convention every architecture follows: its constructor accepts the
keys of its ``hyperparameters()`` and of its ``extra_tensors()`` as keyword arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import transcoderbench
from transcoderbench.errors import UserError
from transcoderbench.formats.common import WEIGHT_KEYS, as_bool, as_int, build, check_shapes, require_keys, to_float32
from transcoderbench.formats.registry import Entry, HubChoice, Select, in_prefix, one_transcoder
from transcoderbench.io import atomic_directory, json_ready, load_safetensors, read_json, save_safetensors, write_json
from transcoderbench.lm.sites import layer_of_site
from transcoderbench.transcoders import ARCHITECTURES, Transcoder

FORMAT_NAME = "transcoderbench"
FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
# Provenance keys a load sets afresh; an earlier origin is kept under "converted_from".
_PROVENANCE = ("format", "source")


#: Arguments ``build`` and the constructors take themselves; a hyperparameter may not reuse them.
_RESERVED = frozenset(
    {*WEIGHT_KEYS, "W_skip", "input_site", "output_site", "info", "device", "source", "cls", "t"}
    | {"prefix_ends", "input_unit_norm", "constant_norm_rescale"}
)


def _mapping(cfg: dict[str, Any], key: str, cfg_path: Path) -> dict[str, Any]:
    """``cfg[key]`` as a JSON object (absent or null: empty), else a one-line error."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{cfg_path}: {key} is a {type(value).__name__}, expected a JSON object {{...}}")
    return value


def is_native_dir(directory: Path) -> bool:
    """``config.json`` + ``model.safetensors``; :func:`load_native` then checks the config is ours
    (so a broken config.json is reported as such, not as an unknown directory)."""
    return (directory / CONFIG).is_file() and (directory / WEIGHTS).is_file()


def _holds_native(directory: Path) -> bool:
    """Only an earlier transcoderbench checkpoint may be replaced (never, say, an HF model dir)."""
    try:
        return is_native_dir(directory) and read_json(directory / CONFIG).get("format") == FORMAT_NAME
    except UserError:
        return False


def save_native(transcoder: Transcoder, directory: str | Path, *, extra_config: dict | None = None) -> Path:
    """Write ``transcoder`` to ``directory`` atomically; returns the directory.

    ``extra_config`` (e.g. the training run's settings) is stored under ``"extra"`` and comes
    back as ``info["extra"]``.
    """
    import safetensors

    directory = Path(directory)
    tensors = transcoder.tensors()
    info = json_ready(transcoder.info)
    config: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **transcoder.describe(),
        "hyperparameters": transcoder.hyperparameters(),
        "model_name": transcoder.info.get("model_name"),
        "layer": transcoder.info.get("layer", layer_of_site(transcoder.input_site)),
        "training": transcoder.info.get("training"),
        "info": info,
        "tensor_dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in tensors.items()},
        "versions": {
            "transcoderbench": transcoderbench.__version__,
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
        },
    }
    if extra_config is not None:
        config["extra"] = extra_config
    with atomic_directory(directory, replaceable=_holds_native, kind="transcoderbench") as tmp:
        save_safetensors(tmp / WEIGHTS, tensors)
        write_json(tmp / CONFIG, config)
    return directory


def load_native(directory: Path, *, device: str = "cpu") -> Transcoder:
    """Rebuild the exact transcoder :func:`save_native` wrote."""
    cfg_path, w_path = directory / CONFIG, directory / WEIGHTS
    cfg = read_json(cfg_path)
    if cfg.get("format") != FORMAT_NAME:
        raise UserError(f'{cfg_path}: not a transcoderbench config (no "format": "{FORMAT_NAME}")')
    version = as_int(cfg.get("format_version", 1), key="format_version", source=cfg_path)
    if version is None or version > FORMAT_VERSION:
        raise UserError(f"{cfg_path}: format_version {version} is newer than this transcoderbench reads; upgrade it")
    arch = cfg.get("architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise UserError(
            f"{cfg_path}: unknown architecture {arch!r}; expected one of {', '.join(sorted(ARCHITECTURES))}"
        )
    for key in ("input_site", "output_site"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise UserError(f"{cfg_path}: {key} is missing; it must name the transcoder's site")
    raw = load_safetensors(w_path)
    affine = as_bool(cfg.get("affine_skip"), key="affine_skip", source=cfg_path)
    require_keys(raw, list(WEIGHT_KEYS) + (["W_skip"] if affine else []), w_path)
    if "W_skip" in raw and not affine:
        raise UserError(
            f"{w_path}: holds W_skip but {cfg_path} says affine_skip is false; the files do not belong together"
        )
    tensors, notes = to_float32(raw, w_path)
    extra = {k: v for k, v in tensors.items() if k not in (*WEIGHT_KEYS, "W_skip")}
    check_shapes(
        tensors,
        w_path,
        d_in=as_int(cfg.get("d_in"), key="d_in", source=cfg_path),
        d_sae=as_int(cfg.get("d_sae"), key="d_sae", source=cfg_path),
        d_out=as_int(cfg.get("d_out"), key="d_out", source=cfg_path),
    )
    hyper = dict(_mapping(cfg, "hyperparameters", cfg_path))
    hyper.update(extra)  # the tensor is the exact value (e.g. BatchTopK's scalar threshold)
    clash = sorted(set(hyper) & _RESERVED)
    if clash:
        raise UserError(
            f"{cfg_path}: hyperparameters or extra tensors named {', '.join(clash)} collide with the transcoder's "
            "own arguments; the checkpoint is not one transcoderbench wrote"
        )
    for key in ("layer", "format_version"):
        as_int(cfg.get(key), key=key, source=cfg_path)

    info: dict[str, Any] = dict(_mapping(cfg, "info", cfg_path))
    as_int(info.get("layer"), key="info.layer", source=cfg_path)
    if not isinstance(info.get("notes") or [], list):
        raise UserError(f"{cfg_path}: info.notes is {type(info['notes']).__name__}, expected a list of strings")
    earlier = {k: info[k] for k in _PROVENANCE if k in info and info[k] != "native"}
    if earlier:
        info["converted_from"] = earlier
    info["format"] = "native"
    info["source"] = str(directory)
    for key in ("model_name", "layer", "training"):
        if info.get(key) is None and cfg.get(key) is not None:
            info[key] = cfg[key]
    if info.get("layer") is None:
        info["layer"] = layer_of_site(cfg["input_site"])
    if "extra" in cfg:
        info["extra"] = cfg["extra"]
    info["notes"] = list(info.get("notes") or []) + notes
    return build(
        ARCHITECTURES[arch],
        tensors,
        source=w_path,
        input_site=cfg["input_site"],
        output_site=cfg["output_site"],
        info=info,
        device=device,
        prefix_ends=cfg.get("prefix_ends"),
        input_unit_norm=as_bool(cfg.get("input_unit_norm"), key="input_unit_norm", source=cfg_path),
        constant_norm_rescale=as_bool(cfg.get("constant_norm_rescale"), key="constant_norm_rescale", source=cfg_path),
        **hyper,
    )


def _detect(path: Path) -> bool:
    return is_native_dir(path.parent if path.is_file() and path.name == WEIGHTS else path)


def _load(path: Path, *, select: Select, device: str, repo: str | None, notes: list[str]) -> Transcoder:
    tc = load_native(path.parent if path.is_file() else path, device=device)
    tc.info["notes"] = notes + tc.info["notes"]
    return tc


def _hub(files: list[str], sub: str, *, repo: str, select: Select) -> HubChoice | None:
    needed = in_prefix(files, sub, (CONFIG, WEIGHTS))
    return HubChoice(needed, sub or ".") if needed else None


def _save(transcoders: list[Transcoder], directory: Path, **options: Any) -> Path:
    return save_native(one_transcoder(transcoders, "native", **options), directory)


ENTRY = Entry(
    "native",
    "config.json + model.safetensors (transcoderbench)",
    _detect,
    _load,
    _hub,
    _save,
)
