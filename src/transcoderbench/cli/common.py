"""What several commands share: output folders, ``NAME=SPEC`` transcoders, and writing + printing outputs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from transcoderbench.distributed import destroy, init_from_env, is_rank0
from transcoderbench.errors import UserError
from transcoderbench.evaluate import EvaluationResult
from transcoderbench.evaluate.checkpoint import STATE_DIR
from transcoderbench.io import check_output_folder, directory_lock, printable, recover_outputs, write_files
from transcoderbench.report.comparison import comparison_record, comparison_summary
from transcoderbench.report.html import add_report

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")


def default_eval_dir(checkpoint: str) -> Path:
    """``PATH/interpretability_eval`` for a local checkpoint (the seed's default), else under the cwd."""
    path = Path(checkpoint)
    if path.is_dir():
        return path / "interpretability_eval"
    if path.is_file():
        return path.parent / "interpretability_eval"
    return Path("interpretability_eval") / re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint)


#: Output-folder locks this process holds; released when the command ends (``cli.main``).
HELD = contextlib.ExitStack()
_claimed: set[Path] = set()


def check_output_dir(path: Path, flag: str = "--output_dir") -> Path:
    """Claim an output folder before the long pass: refuse an unwritable one, and lock it so a second
    run writing there gets a one-line error now rather than a mix of two runs' files later. Under
    torchrun only rank 0 (``RANK`` is set before the process group starts) writes, so only it locks."""
    path = check_output_folder(path, flag)
    return claim_output_dir(path) if os.environ.get("RANK", "0") == "0" else path


def claim_output_dir(path: Path) -> Path:
    """Lock ``path`` for the rest of the command (once per process); finish or clean what a killed
    earlier run left there. Creates nothing but the hidden lock file, removed again at exit."""
    key = Path(path).expanduser().absolute()
    if key not in _claimed:
        HELD.enter_context(directory_lock(key))
        _claimed.add(key)
        if key.is_dir():
            recover_outputs(key)
    return path


def release_output_dirs() -> None:
    """Release every output-folder lock this process holds."""
    HELD.close()
    _claimed.clear()


#: Longest transcoder name: ``NAME_metrics.json`` must stay a valid file name (255 bytes) everywhere.
MAX_NAME = 100


def check_name(name: str, flag: str = "--name") -> str:
    """A transcoder name becomes file names and plot labels: letters, digits, ``. _ -`` only (no ``$``
    math text, no path separators), at most :data:`MAX_NAME` characters, and not ``.``/``..``.
    Every command checks names this way, before anything runs."""
    if not NAME_PATTERN.fullmatch(name) or name in (".", "..") or len(name) > MAX_NAME:
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise UserError(
            f"{flag} {shown!r}: a transcoder name must be 1-{MAX_NAME} letters, digits, . _ - (it names files)"
        )
    return name


def named_specs(pairs: Sequence[tuple[str, str, str]], items: Sequence[str] | None) -> dict[str, str]:
    """``name -> spec`` from fixed ``(name, spec, flag)`` pairs plus ``--transcoder NAME=SPEC`` items.

    Names must be distinct and made of letters, digits, ``.``, ``_`` and ``-`` (they become file names).
    """
    all_pairs = list(pairs)
    for item in items or []:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise UserError(f"--transcoder {item!r}: expected NAME=SPEC with NAME made of letters, digits, . _ -")
        all_pairs.append((name, spec, "--transcoder"))
    specs: dict[str, str] = {}
    for name, spec, flag in all_pairs:
        check_name(name, flag)
        if name in specs:
            raise UserError(f"{flag}: the name {name!r} is used twice; give each transcoder its own name")
        specs[name] = spec
    return specs


def comparison_files(result: EvaluationResult) -> dict[str, Any]:
    """The files of a comparison: ``NAME_metrics.json`` per transcoder, comparison.json, summary.txt."""
    files: dict[str, Any] = {f"{name}_metrics.json": {"meta": result.meta, **m} for name, m in result.metrics.items()}
    files["comparison.json"] = comparison_record(result.meta, result.metrics)
    files["summary.txt"] = comparison_summary(result.meta, result.metrics)
    return files


def write_outputs(
    out_dir: Path,
    files: dict[str, Any],
    result: EvaluationResult | None = None,
    *,
    comparison: dict[str, Any] | None = None,
    show: bool = True,
) -> list[Path]:
    """Add report.html (when ``result`` is given), write every file atomically, and print where they went."""
    if result is not None:
        files = add_report(files, result.meta, result.metrics, comparison)
    claim_output_dir(out_dir)
    paths = write_files(out_dir, files)
    if show:
        print_outputs(paths)
    return paths


def print_outputs(paths: Sequence[Path]) -> None:
    print("wrote:")
    for p in paths:
        print(f"  {printable(p)}")


@contextlib.contextmanager
def output_session(out_dir: Path) -> Iterator[bool]:
    """Join the torchrun process group (if any); rank 0 locks ``out_dir``. Yields whether this process writes.

    Only rank 0 writes outputs; the others compute their share and leave.
    """
    init_from_env()
    try:
        if is_rank0():
            claim_output_dir(out_dir)
            yield True
        else:
            yield False
    finally:
        destroy()


def state_dir(out_dir: Path) -> Path:
    """Where ``--checkpoint_every`` saves the pass and ``--resume`` finds it."""
    return out_dir / STATE_DIR


def remove_state(out_dir: Path) -> None:
    """The run completed and its outputs are written: its saved state is no longer needed."""
    shutil.rmtree(state_dir(out_dir), ignore_errors=True)
