"""Directories that appear whole or not at all: build next to the target, then swap in by rename.

Checkpoints, the converted-model cache and the absorption cache are all written this way, so an
interrupted run never leaves a half-written directory where a reader would take it for complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def sibling_tempdir(target: Path) -> Iterator[Path]:
    """An empty directory beside ``target`` (same filesystem, so a rename is atomic); removed on exit
    unless it was swapped in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def swap_in(tmp: Path, target: Path, *, finished_elsewhere: Callable[[], bool] = lambda: False) -> None:
    """Replace ``target`` (if any) by the finished directory ``tmp``.

    If the final rename fails because another process put a complete ``target`` there first
    (``finished_elsewhere()`` says so), theirs is kept; otherwise the error propagates.
    """
    if target.exists():
        stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex[:8]}")
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not finished_elsewhere():
            raise
