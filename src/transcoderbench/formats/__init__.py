"""Read and write transcoder checkpoints; every reader returns a :class:`Transcoder` and nothing else.

``load_transcoder(spec)`` accepts a file, a directory or a Hugging Face hub id and detects the
format: native, the seed's legacy directories, Gemma Scope 1 and 2, SAELens. Weights come back as
float32; ``transcoder.info`` records the format, the source, the model, the layer, the training
settings when known, and ``notes``: plain sentences saying what was inferred.
"""

from __future__ import annotations

from pathlib import Path

from transcoderbench.errors import UserError
from transcoderbench.formats.common import (
    download_hub_file,
    list_hub_files,
    parse_hub_id,
    revision_of,
)
from transcoderbench.formats.gemma_scope import (
    GS1_FILE,
    GS2_CONFIG,
    GS2_FILE,
    gs1_model_name,
    hub_kind,
    is_gs1_dir,
    is_gs2_dir,
    is_gs2_folder,
    load_gs1_dir,
    load_gs1_file,
    load_gs2_dir,
    load_gs2_folder,
    load_gs_from_hub,
)
from transcoderbench.formats.legacy import DIRECT_FILES, is_legacy_dir, load_legacy
from transcoderbench.formats.native import is_native_dir, load_native, save_native
from transcoderbench.formats.saelens import export_saelens, is_saelens_dir, load_saelens
from transcoderbench.transcoders import Transcoder

FORMATS = ("native", "legacy", "gemma_scope_1", "gemma_scope_2", "saelens", "hub")
_EXPECTED = (
    "expected config.json + model.safetensors (transcoderbench), config.json + sae.pt, checkpoint.pt or "
    "checkpoints/*.pt (seed), cfg.json + sae_weights.safetensors (SAELens), params.npz (Gemma Scope 1), "
    "or config.json + params.safetensors (Gemma Scope 2)"
)

__all__ = ["FORMATS", "detect_format", "export_saelens", "load_transcoder", "save_native"]


def detect_format(spec: str) -> str:
    """``"native" | "legacy" | "gemma_scope_1" | "gemma_scope_2" | "saelens" | "hub"`` for ``spec``."""
    path = Path(spec).expanduser()
    if path.exists():
        return _detect_local(path)
    if parse_hub_id(spec):
        return "hub"
    raise UserError(
        f"{spec}: no such file or directory; give a checkpoint directory, a weights file, or a Hugging Face repo id"
    )


def _detect_local(path: Path) -> str:
    if path.is_file():
        name, suffix = path.name, path.suffix.lower()
        if suffix == ".npz":
            return "gemma_scope_1"
        if name == GS2_FILE:
            return "gemma_scope_2"
        if name == "sae_weights.safetensors":
            return "saelens"
        if suffix in (".pt", ".pth"):
            return "legacy"
        if name in ("model.safetensors", "config.json", "cfg.json"):
            return _detect_local(path.parent)
        raise UserError(f"{path}: not a file transcoderbench reads; {_EXPECTED}")
    if is_native_dir(path):
        return "native"
    if is_saelens_dir(path):
        return "saelens"
    if is_gs2_folder(path):
        return "gemma_scope_2"
    if is_legacy_dir(path):
        return "legacy"
    if is_gs1_dir(path):
        return "gemma_scope_1"
    if is_gs2_dir(path):
        return "gemma_scope_2"
    try:
        present = sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise UserError(f"{path}: cannot list the directory ({exc.strerror}); check its permissions") from exc
    shown = ", ".join(present[:8]) + (" ..." if len(present) > 8 else "") if present else "nothing"
    raise UserError(f"{path}: not a transcoder checkpoint (it holds {shown}); {_EXPECTED}")


def load_transcoder(
    spec: str,
    *,
    layer: int | None = None,
    width: str | None = None,
    l0: int | str | None = None,
    device: str = "cpu",
) -> Transcoder:
    """Load the transcoder ``spec`` names (a file, a directory or a hub id), float32 on ``device``.

    ``layer``, ``width`` and ``l0`` choose within multi-transcoder sources (Gemma Scope
    snapshots and repos; the default L0 is the lowest). For a single checkpoint ``layer`` must
    match the checkpoint's own layer, and fills in the layer when the config names bare sites.
    Gemma Scope 2 names its L0 variants ``small``/``medium``/``big``, so ``l0`` may be a string.
    """
    fmt = detect_format(spec)
    path = Path(spec).expanduser()
    if fmt == "hub":
        tc = _load_hub(spec, layer=layer, width=width, l0=l0, device=device)
    elif fmt == "gemma_scope_1":
        if path.is_file():
            tc = load_gs1_file(path, layer=layer, device=device)
        else:
            tc = load_gs1_dir(path, layer=layer, width=width, l0=l0, device=device)
    elif fmt == "gemma_scope_2":
        target = path.parent if path.is_file() else path
        tc = load_gs2_dir(target, layer=layer, width=width, l0=l0, device=device)
    else:
        directory = path.parent if path.is_file() and fmt != "legacy" else path
        if fmt == "native":
            tc = load_native(directory, device=device)
        elif fmt == "saelens":
            tc = load_saelens(directory, device=device)
        else:
            tc = load_legacy(path, layer=layer, device=device)
        ignored = [flag for flag, v in (("--width", width), ("--l0", l0)) if v is not None]
        if ignored:
            tc.info["notes"].append(
                f"{' and '.join(ignored)} choose Gemma Scope variants; ignored for this {fmt} checkpoint"
            )
    _check_layer(tc, layer, spec)
    return tc


def _check_layer(tc: Transcoder, layer: int | None, spec: str) -> None:
    own = tc.info.get("layer")
    if layer is not None and own is not None and int(own) != int(layer):
        raise UserError(
            f"{spec}: is a layer-{own} transcoder but --layer {layer} was given; drop --layer or pass --layer {own}"
        )


def _load_hub(spec: str, *, layer: int | None, width: str | None, l0: int | str | None, device: str) -> Transcoder:
    """Resolve inside the repo's file list, then download only the files the choice needs."""
    parsed = parse_hub_id(spec)
    assert parsed is not None
    repo, revision, sub = parsed
    files, cached, notes = list_hub_files(spec, repo, revision)
    revision = revision or cached
    if sub:
        if sub in files:  # a file: use its folder (or the file itself for a .npz)
            if sub.endswith(".npz"):
                local = download_hub_file(spec, repo, sub, revision)
                tc = load_gs1_file(
                    local,
                    layer=layer,
                    device=device,
                    notes=notes,
                    source=f"{repo}:{sub}",
                    model_name=gs1_model_name(repo),
                )
                return _hub_provenance(tc, local, revision)
            sub = sub.rsplit("/", 1)[0] if "/" in sub else ""
        inside = [f for f in files if not sub or f.startswith(sub + "/")]
        if not inside:
            raise UserError(f"{spec}: {repo} has no file or folder {sub!r}; check the path after the repo id")
    else:
        inside = files
    prefix = f"{sub}/" if sub else ""
    layouts = (
        ("native", ("config.json", "model.safetensors")),
        ("saelens", ("cfg.json", "sae_weights.safetensors")),
        ("gemma_scope_2", (GS2_CONFIG, GS2_FILE)),
        ("gemma_scope_1", (GS1_FILE,)),
        *(("legacy", ("config.json", name)) for name in DIRECT_FILES),
    )
    for fmt, needed in layouts:
        if all(prefix + n in files for n in needed):
            local = [download_hub_file(spec, repo, prefix + n, revision) for n in needed][-1]
            source = f"{repo}:{sub or '.'}"
            if fmt == "native":
                tc = load_native(local.parent, device=device)
            elif fmt == "saelens":
                tc = load_saelens(local.parent, device=device)
            elif fmt == "gemma_scope_2":
                tc = load_gs2_folder(local.parent, device=device, notes=notes, source=source, repo=repo)
            elif fmt == "gemma_scope_1":
                tc = load_gs1_file(
                    local,
                    layer=layer,
                    device=device,
                    notes=notes,
                    source=f"{repo}:{prefix}{GS1_FILE}",
                    model_name=gs1_model_name(repo),
                )
            else:
                tc = load_legacy(local, layer=layer, device=device)
            if fmt in ("native", "saelens", "legacy"):
                tc.info["notes"] = notes + tc.info["notes"]
                tc.info["source"] = source
            return _hub_provenance(tc, local, revision)
    kind = hub_kind(repo, inside)
    if kind is None:
        raise UserError(f"{spec}: {repo} holds no transcoder layout transcoderbench reads; {_EXPECTED}")
    return load_gs_from_hub(
        spec, repo, revision, sub, inside, kind, layer=layer, width=width, l0=l0, device=device, notes=notes
    )


def _hub_provenance(tc: Transcoder, local: Path, revision: str | None) -> Transcoder:
    tc.info["revision"] = revision_of(local) or revision
    tc.info["local_path"] = str(local)
    return tc
