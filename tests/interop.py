"""``need(module)``: import another tool's package for an interop test, or skip when it is absent.

CI installs the interop packages and sets TRANSCODERBENCH_REQUIRE_INTEROP=1, so a missing
package fails there instead of skipping silently.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def need(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("TRANSCODERBENCH_REQUIRE_INTEROP"):
            pytest.fail(f"TRANSCODERBENCH_REQUIRE_INTEROP is set but {module} does not import ({exc}): make interop")
        pytest.skip(f"{module} is not installed (make test-interop installs it)")
