"""Fuzz the checkpoint configs from their real schemas: every malformed config is one line, exit 2, no output.

The schemas are real files written by the real writers: a native ``config.json`` (``save_native``), a
SAELens ``cfg.json`` (``export_saelens``) and the seed's ``config.json``. Each case mutates one field
(deleted, or given a value of another type, an absurd number, control characters, deep nesting) or the
whole file. The bulk goes through the library (``load_transcoder``) and the CLI's own error formatting,
which keeps the test fast; a handful go through the real CLI as subprocesses. The seed is fixed.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from test_cli import assert_user_error, run_cli
from test_formats_legacy import SEED_CONFIG, write_seed_dir
from test_formats_native import make
from transcoderbench.cli import error_line
from transcoderbench.errors import UserError
from transcoderbench.formats import export_saelens, load_transcoder, save_native

SEED = 20261206
CASES_PER_SCHEMA = 120
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
VALUES: list[Any] = [
    None,
    "abc",
    "",
    -1,
    0,
    1,
    10**30,
    1e308,
    -0.5,
    True,
    [],
    {},
    [1, "x"],
    {"a": {"b": []}},
    "line\nbreak\x1b[31m",
    "x" * 5000,
    "[" * 50,
    "1/0",
]


def schemas(root: Path) -> dict[str, tuple[Path, str]]:
    """``name -> (checkpoint folder, config file name)``, written by the real writers."""
    native = save_native(make("matryoshka_batchtopk", skip=True, prefixes=[8, 20, 48]), root / "native")
    saelens = export_saelens(make("jumprelu"), root / "saelens")
    seed = write_seed_dir(root / "seed", "sae.pt")
    return {"native": (native, "config.json"), "saelens": (saelens, "cfg.json"), "seed": (seed, "config.json")}


def paths_of(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path inside a JSON value."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        out.append((*prefix, key))
        out += paths_of(child, (*prefix, key))
    return out


def mutate(cfg: dict, rng: random.Random) -> tuple[str, str]:
    """One malformed config as ``(description, file text)``."""
    roll = rng.random()
    if roll < 0.06:
        return "deep nesting", '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    if roll < 0.09:
        return "not an object", json.dumps(rng.choice([[cfg], "cfg", 3, None]))
    if roll < 0.12:
        text = json.dumps(cfg)
        return "truncated", text[: rng.randrange(1, len(text))]
    cfg = json.loads(json.dumps(cfg))
    path = rng.choice(paths_of(cfg))
    parent = cfg
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.15 and isinstance(parent, dict):
        del parent[path[-1]]
        return f"del {path}", json.dumps(cfg)
    value = rng.choice(VALUES)
    parent[path[-1]] = value
    return f"{path} = {value!r:.40}", json.dumps(cfg)


def generate(root: Path) -> list[tuple[str, Path]]:
    """Malformed checkpoint folders (weights shared, config mutated), deterministic for SEED."""
    rng = random.Random(SEED)
    cases = []
    for name, (folder, cfg_name) in schemas(root).items():
        cfg = json.loads((folder / cfg_name).read_text())
        for i in range(CASES_PER_SCHEMA):
            what, text = mutate(cfg, rng)
            case = root / f"{name}-{i}"
            shutil.copytree(folder, case)
            (case / cfg_name).write_text(text)
            cases.append((f"{name}: {what}", case))
    return cases


def outcome(case: Path) -> str | None:
    """None when the checkpoint loads and runs; else the CLI's error line. Anything else fails the test."""
    try:
        tc = load_transcoder(str(case))
    except UserError as exc:
        return error_line(exc, {"select.layer": "--layer"})
    x = torch.randn(5, tc.d_in, generator=torch.Generator().manual_seed(0))
    out = tc(x)
    assert all(torch.isfinite(t).all() for t in (out if isinstance(out, tuple) else (out,)))  # loads, so runs
    return None


def test_malformed_configs_are_one_line_errors(tmp_path):
    refused = 0
    cases = generate(tmp_path)
    for what, case in cases:
        try:
            line = outcome(case)
        except Exception as exc:  # the failure report names the mutation
            raise AssertionError(f"{what}: {type(exc).__name__}: {exc}"[:500]) from exc
        if line is not None:
            refused += 1
            assert "\n" not in line and not CONTROL.search(line), (what, line)
            assert line.startswith("error: ") and len(line) < 1500, (what, line)
    assert refused > len(cases) // 3  # the generator really produces malformed configs


@pytest.mark.parametrize("schema", ["native", "saelens", "seed"])
def test_malformed_configs_through_the_cli(tmp_path, schema):
    """One refused case per schema through the real CLI: exit 2, one line, no output folder."""
    rng = random.Random(SEED)
    folder, cfg_name = schemas(tmp_path / "src")[schema]
    cfg = json.loads((folder / cfg_name).read_text())
    for i in range(50):
        what, text = mutate(cfg, rng)
        case = tmp_path / f"case-{i}"
        shutil.copytree(folder, case)
        (case / cfg_name).write_text(text)
        if outcome(case) is not None:
            break
    else:
        pytest.fail("no refused case generated")
    out = tmp_path / "out"
    proc = run_cli("evaluate", "--checkpoint", str(case), "--model", "unused", "--output_dir", str(out))
    assert_user_error(proc, r".")
    assert not out.exists() and not list(tmp_path.glob(".out*")), what


def test_seed_config_is_the_real_schema():
    assert {"sae_type", "dict_size", "source_hook_point"} <= set(SEED_CONFIG)
