"""Atomic output writing: every file appears whole or not at all."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def json_ready(value: Any) -> Any:
    """Make ``value`` strict JSON: NaN/Inf become null, tuples lists, tensors/numpy scalars numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist"):
        return json_ready(value.tolist())
    return value


def write_files(directory: str | Path, files: dict[str, str | dict[str, Any]]) -> list[Path]:
    """Write ``name -> text or JSON dict`` into ``directory``, each file atomically.

    Everything is serialised before the first file is written, so a failure while rendering
    leaves no partial set behind; each file is written to a temporary name and renamed.
    """
    rendered = {
        name: content if isinstance(content, str) else json.dumps(json_ready(content), indent=2, allow_nan=False) + "\n"
        for name, content in files.items()
    }
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered.items():
        target = out_dir / name
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
