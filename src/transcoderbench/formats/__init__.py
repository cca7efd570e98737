"""Read and write transcoder checkpoints; every reader returns a :class:`Transcoder` and nothing else.

``load_transcoder(spec)`` accepts a file, a directory or a Hugging Face hub id and detects the
format from the registry (:mod:`transcoderbench.formats.registry`): native, the seed's legacy
directories, SAELens, sparsify, circuit-tracer, Gemma Scope 1 and 2. Weights come back as
float32; ``transcoder.info`` records the format, the source, the model, the layer, the training
settings when known, and ``notes``: plain sentences saying what was inferred.
``export(transcoders, format, directory)`` writes any of them in a writable format.
"""

from __future__ import annotations

from pathlib import Path

from transcoderbench.errors import UserError
from transcoderbench.formats import circuit_tracer, gemma_scope, legacy, native, saelens, sparsify
from transcoderbench.formats.export import export, writable_formats
from transcoderbench.formats.hub import download_hub_file, list_hub_files, parse_hub_id, revision_of
from transcoderbench.formats.native import save_native
from transcoderbench.formats.registry import REGISTRY, Entry, Select, expected_layouts, register
from transcoderbench.formats.saelens import export_saelens
from transcoderbench.io import one_line, printable
from transcoderbench.transcoders import Transcoder

# Detection order: the first entry whose detect() accepts a path wins.
for _entry in (
    native.ENTRY,
    saelens.ENTRY,
    sparsify.ENTRY,
    circuit_tracer.ENTRY,
    legacy.ENTRY,
    gemma_scope.GS1_ENTRY,
    gemma_scope.GS2_ENTRY,
):
    if _entry.name not in REGISTRY:
        register(_entry)

FORMATS = (*REGISTRY, "hub")
# A file named like one of these stands for the directory that holds it.
_COMPANIONS = ("config.json", "cfg.json", "config.yaml", "model.safetensors")

__all__ = [
    "FORMATS",
    "REGISTRY",
    "Select",
    "detect_format",
    "export",
    "export_saelens",
    "load_transcoder",
    "save_native",
    "writable_formats",
]


def detect_format(spec: str) -> str:
    """The registry name of the format of ``spec`` (e.g. ``"native"``), or ``"hub"`` for a hub id."""
    path = Path(spec).expanduser()
    if path.exists():
        return _detect_local(path).name
    if parse_hub_id(spec):
        return "hub"
    raise UserError(
        f"{spec}: no such file or directory; give a checkpoint directory, a weights file, or a Hugging Face repo id"
    )


def _detect_local(path: Path) -> Entry:
    for entry in REGISTRY.values():
        if entry.detect(path):
            return entry
    if path.is_file():
        if path.name in _COMPANIONS:
            return _detect_local(path.parent)
        raise UserError(f"{path}: not a file transcoderbench reads; {expected_layouts()}")
    try:
        present = sorted(p.name for p in path.iterdir())
    except OSError as exc:
        raise UserError(f"{path}: cannot list the directory ({exc.strerror}); check its permissions") from exc
    shown = ", ".join(present[:8]) + (" ..." if len(present) > 8 else "") if present else "nothing"
    raise UserError(f"{path}: not a transcoder checkpoint (it holds {shown}); {expected_layouts()}")


#: What a reader raises on config values of unforeseen types or shapes (``{"k": [1]}``, deep nesting).
_MALFORMED = (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError, OverflowError, OSError)


def load_transcoder(
    spec: str,
    *,
    layer: int | None = None,
    width: str | None = None,
    l0: int | str | None = None,
    device: str = "cpu",
) -> Transcoder:
    """Load the transcoder ``spec`` names (a file, a directory or a hub id), float32 on ``device``.

    ``layer``, ``width`` and ``l0`` (config ``select.*``) choose within multi-transcoder sources
    (Gemma Scope snapshots and repos, sparsify runs, circuit-tracer sets; the default L0 is the
    lowest). For a single checkpoint ``layer`` must match the checkpoint's own layer, and fills in
    the layer when the config names bare sites. Gemma Scope 2 names its L0 variants
    ``small``/``medium``/``big``, so ``l0`` may be a string.
    """
    select = Select(layer=layer, width=width, l0=l0)
    path = Path(spec).expanduser()
    try:
        if path.exists():
            entry = _detect_local(path)
            tc = entry.load(path, select=select, device=device)
        else:
            if not parse_hub_id(spec):
                detect_format(spec)  # raises the "no such file" error
            entry, tc = _load_hub(spec, select, device)
    except UserError:
        raise
    except _MALFORMED as exc:  # a config value of a type no reader check foresaw: still the file's fault
        raise UserError(
            f"{printable(spec)}: a malformed checkpoint ({type(exc).__name__}: {one_line(exc)}); re-export or re-download it"
        ) from None
    if not entry.selects:
        ignored = [name for name, v in (("select.width", width), ("select.l0", l0)) if v is not None]
        if ignored:
            tc.info["notes"].append(
                f"{' and '.join(ignored)} choose Gemma Scope variants; ignored for this {entry.name} checkpoint"
            )
    _check_layer(tc, layer, spec)
    return tc


def _check_layer(tc: Transcoder, layer: int | None, spec: str) -> None:
    own = tc.info.get("layer")
    if own is not None and (isinstance(own, bool) or not isinstance(own, int)):
        try:
            own = int(own)
        except (TypeError, ValueError):
            raise UserError(f"{printable(spec)}: its layer is {own!r}, not a whole number; fix its config") from None
    if layer is not None and own is not None and int(own) != int(layer):
        raise UserError(
            f"{spec}: is a layer-{own} transcoder but select.layer is {layer}; leave select.layer unset or set it to {own}"
        )


def _load_hub(spec: str, select: Select, device: str) -> tuple[Entry, Transcoder]:
    """Resolve inside the repo's file list, then download only the files the chosen format needs."""
    parsed = parse_hub_id(spec)
    assert parsed is not None
    repo, revision, sub = parsed
    files, cached, notes = list_hub_files(spec, repo, revision)
    revision = revision or cached
    if sub:
        if sub in files and not sub.endswith(".npz"):  # a file: use its folder (a .npz is read itself)
            sub = sub.rsplit("/", 1)[0] if "/" in sub else ""
        elif sub not in files and not any(f.startswith(sub + "/") for f in files):
            raise UserError(f"{spec}: {repo} has no file or folder {sub!r}; check the path after the repo id")
    for entry in REGISTRY.values():
        choice = entry.hub_files(files, sub, repo=repo, select=select)
        if choice is None:
            continue
        local = [download_hub_file(spec, repo, f, revision) for f in choice.files][-1]
        tc = entry.load(local, select=select, device=device, repo=repo, notes=notes + choice.notes)
        tc.info["source"] = f"{repo}:{choice.where}"
        tc.info["revision"] = revision_of(local) or revision
        tc.info["local_path"] = str(local)
        return entry, tc
    raise UserError(f"{spec}: {repo} holds no transcoder layout transcoderbench reads; {expected_layouts()}")
