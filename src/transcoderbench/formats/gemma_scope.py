"""Google's Gemma Scope transcoders, from a file, a local snapshot, or a hub id.

* Gemma Scope 1 (``google/gemma-scope-2b-pt-transcoders``): ``layer_L/width_W/average_l0_X/
  params.npz`` with ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_enc``, ``b_dec``,
  ``threshold [d_sae]``. Reads ``blocks.L.ln2.hook_normalized`` (RMS-normalised, no gain) and
  predicts ``blocks.L.hook_mlp_out``.
* Gemma Scope 2 (``google/gemma-scope-2-{270m,1b,4b,12b,27b}-{pt,it}``): folders
  ``<category>/layer_L_width_W_l0_{small,medium,big}[_affine]/`` holding ``config.json``
  (``hf_hook_point_in``, ``hf_hook_point_out``, ``width``, ``l0``, ``model_name``,
  ``architecture: jump_relu``, ``affine_connection``, ``type``) and ``params.safetensors``
  (``w_enc [d_in, d_sae]``, ``w_dec [d_sae, d_out]``, ``b_enc``, ``b_dec``, ``threshold``, and
  ``affine_skip_connection [d_in, d_out]`` used as ``y += x @ A``, as in Google's tutorial).
  The sites are the config's HF module paths, e.g. ``model.layers.5.pre_feedforward_layernorm.output``.

From a hub id only the one chosen file (Gemma Scope 1) or folder's two files (Gemma Scope 2)
is downloaded; the repositories are tens of gigabytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from transcoderbench.errors import UserError
from transcoderbench.formats.common import as_bool, as_int, build, check_shapes, require_keys, to_float32
from transcoderbench.formats.registry import Entry, HubChoice, Select, in_prefix
from transcoderbench.io import load_npz, load_safetensors, read_json
from transcoderbench.lm.sites import layer_of_site
from transcoderbench.transcoders import JumpReLUTranscoder, Transcoder

GS1_REPO = "google/gemma-scope-2b-pt-transcoders"
GS1_MODEL = "google/gemma-2-2b"
GS1_FILE = "params.npz"
GS2_CONFIG, GS2_FILE = "config.json", "params.safetensors"
_GS1_PATH = re.compile(r"(?:^|/)layer_(?P<layer>\d+)/width_(?P<width>[^/]+)/average_l0_(?P<l0>\d+)/params\.npz$")
_GS2_PATH = re.compile(
    r"(?:^|/)(?P<cat>[^/]+)/layer_(?P<layer>\d+)_width_(?P<width>[^_/]+)_l0_(?P<l0>[^_/]+?)(?P<affine>_affine)?"
    r"/params\.safetensors$"
)
_GS1_REPO = re.compile(r"^google/gemma-scope-(?P<size>\w+?)-(?P<variant>pt|it)-transcoders$")
_GS2_REPO = re.compile(r"^google/gemma-scope-2-(?P<size>[\w.]+?)-(?P<variant>pt|it)$")
GS2_L0_ORDER = ("small", "medium", "big")
_GS1_KEYS = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}
_GS2_KEYS = {**_GS1_KEYS, "affine_skip_connection": "W_skip"}


# ----------------------------------------------------------------------------- choosing
@dataclass(frozen=True)
class Candidate:
    """One weights file in a Gemma Scope layout, described by its path."""

    path: str
    layer: int
    width: str
    l0: int | str
    folder: str = ""  # Gemma Scope 2: "<category>/<folder name>", the unit users point at
    variant: str = ""  # Gemma Scope 2: the category, plus "+affine" for affine-skip folders


def width_value(label: str | int) -> int | None:
    """``"16k"`` -> 16384, ``"65k"`` -> 65536, ``"1m"`` -> 1048576, ``"16384"`` -> 16384.

    Gemma Scope's labels round powers of two to thousands (65k = 2**16), so a ``k``/``m`` label
    means the power of two nearest to it. None if ``label`` is not a width.
    """
    m = re.fullmatch(r"(?:width_)?(\d+)([km]?)", str(label).strip().lower())
    if not m:
        return None
    n = int(m.group(1))
    if not m.group(2):
        return n
    approx = n * (1000 if m.group(2) == "k" else 1_000_000)
    return min((2**e for e in range(1, 40)), key=lambda p: abs(p - approx))


def gs1_candidate(path: str) -> Candidate | None:
    m = _GS1_PATH.search(path)
    if not m:
        return None
    return Candidate(path, int(m.group("layer")), m.group("width"), int(m.group("l0")))


def gs2_candidate(path: str) -> Candidate | None:
    m = _GS2_PATH.search(path)
    if not m:
        return None
    name = f"layer_{m.group('layer')}_width_{m.group('width')}_l0_{m.group('l0')}{m.group('affine') or ''}"
    variant = m.group("cat") + ("+affine" if m.group("affine") else "")
    return Candidate(path, int(m.group("layer")), m.group("width"), m.group("l0"), f"{m.group('cat')}/{name}", variant)


def _l0_key(value: int | str) -> tuple[int, Any]:
    if isinstance(value, int):
        return (0, value)
    return (GS2_L0_ORDER.index(value), value) if value in GS2_L0_ORDER else (len(GS2_L0_ORDER), value)


def choose(
    cands: list[Candidate],
    *,
    layer: int | None,
    width: str | None,
    l0: int | str | None,
    where: str,
    gs2: bool,
) -> tuple[Candidate, list[str]]:
    """Pick one candidate by layer, width and L0; list the choices when the pick is ambiguous."""
    notes: list[str] = []
    if not cands:
        raise UserError(f"{where}: holds no Gemma Scope transcoder files; point at the transcoders' directory or repo")
    layers = sorted({c.layer for c in cands})
    if layer is not None:
        cands = [c for c in cands if c.layer == layer]
        if not cands:
            raise UserError(f"{where}: no transcoder for layer {layer}; available layers: {_listing(layers)}")
    elif len(layers) > 1:
        raise UserError(
            f"{where}: holds transcoders for several layers ({_listing(layers)}); choose one with select.layer"
        )
    chosen_layer = cands[0].layer

    widths = sorted({c.width for c in cands}, key=lambda w: (width_value(w) or 0, w))
    if width is not None:
        want = width_value(width)
        cands = [c for c in cands if want is not None and width_value(c.width) == want]
        if not cands:
            raise UserError(
                f"{where}: no width {width!r} for layer {chosen_layer}; available widths: {', '.join(widths)} (select.width)"
            )
    elif len(widths) > 1:
        raise UserError(
            f"{where}: layer {chosen_layer} has several widths ({', '.join(widths)}); choose one with select.width"
        )

    if gs2:
        if len({c.variant for c in cands}) > 1:
            names = sorted({c.folder for c in cands})
            raise UserError(
                f"{where}: several Gemma Scope 2 variants match ({', '.join(names)}); "
                "pass the folder as <repo or directory>/<category>/<folder>"
            )

    l0s = sorted({c.l0 for c in cands}, key=_l0_key)
    if l0 is not None:
        want_l0: int | str = l0
        if gs2:
            if isinstance(l0, int) or str(l0).isdigit():
                raise UserError(
                    f"{where}: Gemma Scope 2 names its L0 variants {', '.join(map(str, l0s))}; set select.l0 to one of them"
                )
            want_l0 = str(l0).strip().lower()
        else:
            try:
                want_l0 = int(str(l0).strip())
            except ValueError:
                raise UserError(f"select.l0 {l0!r}: Gemma Scope 1 L0 variants are numbers: {_listing(l0s)}") from None
        cands = [c for c in cands if c.l0 == want_l0]
        if not cands:
            raise UserError(
                f"{where}: no L0 variant {l0!r} for layer {chosen_layer}; available: {_listing(l0s)} (select.l0)"
            )
    elif len(l0s) > 1:
        cands = [c for c in cands if c.l0 == l0s[0]]
        notes.append(f"chose L0 variant {l0s[0]}, the lowest of {_listing(l0s)} (set select.l0 to choose another)")
    if len(cands) > 1:  # same layer/width/L0 reachable twice, e.g. two categories in a snapshot
        raise UserError(f"{where}: several files match ({', '.join(c.path for c in cands)}); pass one file or folder")
    return cands[0], notes


def _listing(values: list[Any]) -> str:
    return ", ".join(map(str, values))


def relu_first(threshold: Tensor, notes: list[str]) -> Tensor:
    """Google's reference computes ``relu(pre) * (pre > threshold)``; with thresholds raised to 0,
    our ``pre * (pre > threshold)`` is exactly that."""
    if (threshold < 0).any():
        notes.append(
            f"{int((threshold < 0).sum())} negative thresholds raised to 0: Google's reference computes "
            "relu(pre) * (pre > threshold)"
        )
        return threshold.clamp(min=0)
    return threshold


# ------------------------------------------------------------------------ Gemma Scope 1
def gs1_model_name(repo: str | None) -> str:
    m = _GS1_REPO.match(repo or "")
    if m:
        return f"google/gemma-2-{m.group('size')}" + ("-it" if m.group("variant") == "it" else "")
    return GS1_MODEL


def load_gs1_file(
    path: Path,
    *,
    layer: int | None,
    device: str = "cpu",
    notes: list[str] | None = None,
    source: str | None = None,
    model_name: str | None = None,
) -> Transcoder:
    """One ``params.npz``; the layer comes from its path (``layer_L/...``) or ``layer``."""
    notes = list(notes or [])
    arrays = load_npz(path)
    named = {_GS1_KEYS.get(k.lower(), k): v for k, v in arrays.items()}
    require_keys(
        named, ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"], path, hint="; is this a Gemma Scope params.npz?"
    )
    extra = sorted(k for k in named if k not in _GS1_KEYS.values())
    if extra:
        notes.append(f"ignored arrays: {', '.join(extra)}")
    tensors, dnotes = to_float32({k: named[k] for k in _GS1_KEYS.values()}, path)
    notes += dnotes
    check_shapes(tensors, path, threshold="vector")

    posix = path.absolute().as_posix()
    m = re.search(r"(?:^|/)layer_(\d+)(?:/|$)", posix)
    path_layer = int(m.group(1)) if m else None
    if path_layer is not None and layer is not None and path_layer != layer:
        raise UserError(f"{path}: is the layer-{path_layer} transcoder but select.layer is {layer}; pick one")
    the_layer = path_layer if path_layer is not None else layer
    if the_layer is None:
        raise UserError(f"{path}: its path names no layer (layer_L/...); set select.layer")
    if path_layer is None:
        notes.append(f"layer {the_layer} taken from select.layer (the file's path names none)")
    width = re.search(r"(?:^|/)width_([^/]+)/", posix)
    l0 = re.search(r"(?:^|/)average_l0_(\d+)/", posix)
    training: dict[str, Any] = {"d_sae": int(tensors["W_enc"].shape[1])}
    if width:
        training["width"] = width.group(1)
    if l0:
        training["average_l0"] = int(l0.group(1))
    if model_name is None:
        model_name = GS1_MODEL
        notes.append(f"model_name {GS1_MODEL} assumed: Gemma Scope 1 transcoders are trained on it")
    threshold = relu_first(tensors.pop("threshold"), notes)
    info = {
        "format": "gemma_scope_1",
        "source": source or str(path),
        "model_name": model_name,
        "layer": the_layer,
        "notes": notes,
        "training": training,
    }
    return build(
        JumpReLUTranscoder,
        tensors,
        source=path,
        input_site=f"blocks.{the_layer}.ln2.hook_normalized",
        output_site=f"blocks.{the_layer}.hook_mlp_out",
        info=info,
        device=device,
        threshold=threshold,
    )


def _local_files(directory: Path, name: str, depth: int) -> list[Path]:
    found: list[Path] = []
    for d in range(depth + 1):
        found.extend(directory.glob("/".join(["*"] * d + [name])))
    return sorted(found)


def is_gs1_dir(directory: Path) -> bool:
    return bool(_local_files(directory, GS1_FILE, 3))


def load_gs1_dir(
    directory: Path, *, layer: int | None, width: str | None, l0: int | str | None, device: str = "cpu"
) -> Transcoder:
    """A local snapshot laid out like the repo (or any level of it, or a folder with params.npz)."""
    files = _local_files(directory, GS1_FILE, 3)
    if len(files) == 1 and files[0].parent == directory:
        return load_gs1_file(files[0], layer=layer, device=device)
    cands = [c for c in (gs1_candidate(p.absolute().as_posix()) for p in files) if c]
    chosen, notes = choose(cands, layer=layer, width=width, l0=l0, where=str(directory), gs2=False)
    return load_gs1_file(Path(chosen.path), layer=layer, device=device, notes=notes)


# ------------------------------------------------------------------------ Gemma Scope 2
def gs2_model_name(repo: str | None) -> str | None:
    m = _GS2_REPO.match(repo or "")
    return f"google/gemma-3-{m.group('size')}-{m.group('variant')}" if m else None


def normalize_gs2_model_name(name: Any, notes: list[str]) -> str | None:
    """Gemma Scope 2 configs' ``model_name`` as a Hugging Face id, exactly as SAELens normalises it.

    ``gemma-v3-1b-pt`` -> ``google/gemma-3-1b-pt``; ``gemma-v3-270m-pt`` -> ``google/gemma-3-270m``
    (that model's repo has no ``-pt`` suffix).
    """
    if not isinstance(name, str) or not name:
        return None
    new = name if "google" in name else "google/" + name
    new = new.replace("-v3", "-3")
    if "270m" in new:
        new = new.replace("-pt", "")
    if new != name:
        notes.append(f"model_name {name!r} read as {new!r} (normalised as SAELens does)")
    return new


def is_gs2_folder(directory: Path) -> bool:
    return (directory / GS2_CONFIG).is_file() and (directory / GS2_FILE).is_file()


def load_gs2_folder(
    folder: Path,
    *,
    device: str = "cpu",
    notes: list[str] | None = None,
    source: str | None = None,
    repo: str | None = None,
) -> Transcoder:
    """One Gemma Scope 2 folder: ``config.json`` + ``params.safetensors``."""
    notes = list(notes or [])
    cfg_path, w_path = folder / GS2_CONFIG, folder / GS2_FILE
    cfg = read_json(cfg_path)
    kind = str(cfg.get("type", "transcoder")).lower()
    if kind in ("clt", "crosscoder"):
        raise UserError(
            f"{cfg_path}: a Gemma Scope 2 {kind} reads or writes several layers; choose a single-layer transcoder"
        )
    arch = str(cfg.get("architecture", "jump_relu")).lower()
    if arch not in ("jump_relu", "jumprelu"):
        raise UserError(f"{cfg_path}: architecture {arch!r} is not supported; Gemma Scope 2 transcoders are jump_relu")
    hook_in = cfg.get("hf_hook_point_in")
    if not isinstance(hook_in, str) or not hook_in:
        raise UserError(f"{cfg_path}: has no hf_hook_point_in; it must name the module the transcoder reads")
    hook_out = cfg.get("hf_hook_point_out")
    if not isinstance(hook_out, str) or not hook_out:
        if kind == "transcoder":
            raise UserError(
                f"{cfg_path}: a transcoder config without hf_hook_point_out; it must name the module it predicts"
            )
        hook_out = hook_in
        notes.append(f"no hf_hook_point_out ({kind}): output site = input site {hook_in}")
    notes.append(f"sites from config.json: hf_hook_point_in {hook_in} -> hf_hook_point_out {hook_out}")

    raw = load_safetensors(w_path)
    named = {_GS2_KEYS.get(k.lower(), k): v for k, v in raw.items()}
    require_keys(
        named,
        ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"],
        w_path,
        hint="; is this a Gemma Scope 2 params.safetensors?",
    )
    affine = as_bool(cfg.get("affine_connection"), key="affine_connection", source=cfg_path)
    if affine and "W_skip" not in named:
        raise UserError(f"{w_path}: config.json says affine_connection but there is no affine_skip_connection tensor")
    if "W_skip" in named and not affine:
        notes.append("affine_skip_connection present though config.json does not say affine_connection; it is used")
    extra = sorted(k for k in named if k not in _GS2_KEYS.values())
    if extra:
        notes.append(f"ignored tensors: {', '.join(extra)}")
    tensors, dnotes = to_float32({k: v for k, v in named.items() if k in _GS2_KEYS.values()}, w_path)
    notes += dnotes
    check_shapes(tensors, w_path, d_sae=as_int(cfg.get("width"), key="width", source=cfg_path), threshold="vector")

    model_name = normalize_gs2_model_name(cfg.get("model_name"), notes) or gs2_model_name(repo)
    layer = layer_of_site(hook_in)
    if layer is None:
        m = re.search(r"layer_(\d+)", folder.as_posix())
        layer = int(m.group(1)) if m else None
    training = {k: cfg[k] for k in ("width", "l0", "type", "affine_connection", "architecture") if k in cfg}
    threshold = relu_first(tensors.pop("threshold"), notes)
    info = {
        "format": "gemma_scope_2",
        "source": source or str(folder),
        "model_name": model_name,
        "layer": layer,
        "notes": notes,
        "training": training,
    }
    return build(
        JumpReLUTranscoder,
        tensors,
        source=w_path,
        input_site=hook_in,
        output_site=hook_out,
        info=info,
        device=device,
        threshold=threshold,
    )


def is_gs2_dir(directory: Path) -> bool:
    return is_gs2_folder(directory) or any(
        gs2_candidate(p.absolute().as_posix()) for p in _local_files(directory, GS2_FILE, 2)
    )


def load_gs2_dir(
    directory: Path, *, layer: int | None, width: str | None, l0: int | str | None, device: str = "cpu"
) -> Transcoder:
    """A Gemma Scope 2 folder, category directory or snapshot root (transcoder categories only)."""
    if is_gs2_folder(directory):
        return load_gs2_folder(directory, device=device)
    cands = []
    for p in _local_files(directory, GS2_FILE, 2):
        c = gs2_candidate(p.absolute().as_posix())
        at_root = len(p.relative_to(directory).parts) == 3  # <category>/<folder>/params.safetensors
        if c and (not at_root or c.variant.startswith("transcoder")):  # from the root: transcoders only
            cands.append(c)
    chosen, notes = choose(cands, layer=layer, width=width, l0=l0, where=str(directory), gs2=True)
    return load_gs2_folder(Path(chosen.path).parent, device=device, notes=notes)


# ------------------------------------------------------------------ registry entries
def _gs1_detect(path: Path) -> bool:
    return path.suffix.lower() == ".npz" if path.is_file() else is_gs1_dir(path)


def _gs1_load(path: Path, *, select: Select, device: str, repo: str | None, notes: list[str]) -> Transcoder:
    if path.is_file():
        model_name = gs1_model_name(repo) if repo else None
        return load_gs1_file(path, layer=select.layer, device=device, notes=notes, model_name=model_name)
    tc = load_gs1_dir(path, layer=select.layer, width=select.width, l0=select.l0, device=device)
    tc.info["notes"] = notes + tc.info["notes"]
    return tc


def _gs1_hub(files: list[str], sub: str, *, repo: str, select: Select) -> HubChoice | None:
    if sub.endswith(".npz") and sub in files:
        return HubChoice([sub], sub)
    direct = in_prefix(files, sub, (GS1_FILE,))
    if direct:
        return HubChoice(direct, direct[0])
    inside = [f for f in files if not sub or f.startswith(sub + "/")]
    cands = [c for c in map(gs1_candidate, inside) if c]
    if not (_GS1_REPO.match(repo) or cands):
        return None
    where = f"{repo}/{sub}" if sub else repo
    chosen, notes = choose(cands, layer=select.layer, width=select.width, l0=select.l0, where=where, gs2=False)
    return HubChoice([chosen.path], chosen.path, notes)


def _gs2_detect(path: Path) -> bool:
    return path.name == GS2_FILE if path.is_file() else is_gs2_dir(path)


def _gs2_load(path: Path, *, select: Select, device: str, repo: str | None, notes: list[str]) -> Transcoder:
    target = path.parent if path.is_file() else path
    if repo is not None or is_gs2_folder(target):
        return load_gs2_folder(target, device=device, notes=notes, repo=repo)
    tc = load_gs2_dir(target, layer=select.layer, width=select.width, l0=select.l0, device=device)
    tc.info["notes"] = notes + tc.info["notes"]
    return tc


def _gs2_hub(files: list[str], sub: str, *, repo: str, select: Select) -> HubChoice | None:
    direct = in_prefix(files, sub, (GS2_CONFIG, GS2_FILE))
    if direct:
        return HubChoice(direct, sub or ".")
    inside = [f for f in files if not sub or f.startswith(sub + "/")]
    cands = [c for c in map(gs2_candidate, inside) if c]
    if not (_GS2_REPO.match(repo) or cands):
        return None
    if not sub:
        cands = [c for c in cands if c.folder.split("/")[0].startswith("transcoder")]
    where = f"{repo}/{sub}" if sub else repo
    chosen, notes = choose(cands, layer=select.layer, width=select.width, l0=select.l0, where=where, gs2=True)
    folder = chosen.path.rsplit("/", 1)[0]
    return HubChoice([f"{folder}/{GS2_CONFIG}", f"{folder}/{GS2_FILE}"], folder, notes)


GS1_ENTRY = Entry("gemma_scope_1", "params.npz (Gemma Scope 1)", _gs1_detect, _gs1_load, _gs1_hub, selects=True)
GS2_ENTRY = Entry(
    "gemma_scope_2", "config.json + params.safetensors (Gemma Scope 2)", _gs2_detect, _gs2_load, _gs2_hub, selects=True
)
