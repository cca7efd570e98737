"""Write transcoders in another tool's format: ``export(transcoders, format, directory)``.

What the target format cannot express is refused with a :class:`UserError` before anything is
written, never approximated. circuit-tracer and sparsify hold several transcoders in one
directory (one per layer / per hookpoint); native and SAELens hold one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transcoderbench.errors import UserError
from transcoderbench.formats.registry import REGISTRY
from transcoderbench.transcoders import Transcoder

_ALIASES = {
    "circuit-tracer": "circuit_tracer",
    "sae_lens": "saelens",
    "sae-lens": "saelens",
    "transcoderbench": "native",
}


def writable_formats() -> tuple[str, ...]:
    return tuple(name for name, entry in REGISTRY.items() if entry.writable)


def export(
    transcoders: Transcoder | Sequence[Transcoder],
    format: str,
    directory: str | Path,
    *,
    model_name: str | None = None,
) -> Path:
    """Write ``transcoders`` to ``directory`` in ``format`` (see :func:`writable_formats`); returns the directory.

    ``model_name`` fills circuit-tracer's required ``model_name`` when the transcoders do not name one.
    """
    entry = REGISTRY.get(_ALIASES.get(format, format))
    if entry is None or not entry.writable:
        raise UserError(f"format {format!r}: transcoderbench writes {', '.join(writable_formats())}")
    items = [transcoders] if isinstance(transcoders, Transcoder) else list(transcoders)
    if not items:
        raise UserError("nothing to export: give at least one transcoder")
    options = {"model_name": model_name} if model_name is not None else {}
    return entry.save(items, Path(directory), **options)
