"""Shared fixtures: tiny real models, built once per session. Tests never touch the network."""

from __future__ import annotations

import os

# Before transformers/huggingface_hub are imported: they read these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tiny_models import make_tiny_model_dir  # noqa: E402
from transcoderbench.lm import LanguageModel, load_language_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model_dir(family)`` -> a saved HF model directory, built once per family."""
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = make_tiny_model_dir(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir: Callable[[str], Path]) -> Callable[[str], LanguageModel]:
    """``tiny_lm(family)`` -> the tiny model loaded in float32 on CPU, shared by the session.

    Tests must not modify it (hooks are always removed by the code under test).
    """
    loaded: dict[str, LanguageModel] = {}

    def get(family: str) -> LanguageModel:
        if family not in loaded:
            loaded[family] = load_language_model(str(tiny_model_dir(family)))
        return loaded[family]

    return get


#: Modules that run whole commands (subprocesses, torchrun, training, spliced passes, a browser) end
#: to end. ``make test`` runs everything; ``make test-fast`` (``-m "not slow and not integration"``)
#: skips these and keeps the unit tier under a minute on 2 cores.
INTEGRATION_MODULES = {
    "test_absorption_lm",
    "test_benchmarks",
    "test_cli",
    "test_cli_export",
    "test_demo",
    "test_distributed_eval",
    "test_downstream",
    "test_fuzz_configs",
    "test_hardening",
    "test_latents_pages",
    "test_lm_loading",
    "test_report_chromium",
    "test_report_compare",
    "test_resume_eval",
    "test_results",
    "test_train",
    "test_train_distributed",
    "test_train_safety",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__ in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
