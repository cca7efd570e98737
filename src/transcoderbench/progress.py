"""Progress bars on stderr (tqdm), off automatically when not on a terminal unless forced."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(*, total: int | None, desc: str, unit: str, disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar writing to stderr, so stdout stays clean for the paths of the outputs."""
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True, **kwargs)
