"""Helpers every checkpoint reader shares: safe file loading, config parsing, site names,
building a validated transcoder, atomic directory writes, and Hugging Face hub access.

Readers never run code from a file: ``torch.load(weights_only=True)``, ``np.load(allow_pickle=
False)``, safetensors, and JSON only. Every problem with a user's file becomes a one-line
:class:`UserError` that names the file and says what to do.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from transcoderbench.atomic import sibling_tempdir, swap_in
from transcoderbench.errors import UserError
from transcoderbench.transcoders import Transcoder

WEIGHT_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")
_LFS_MAGIC = b"version https://git-lfs"
_MAX_LITERAL_CHARS = 10_000


def one_line(text: object, limit: int = 300) -> str:
    """Squash an exception message to one short line (UserError messages are one line)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


# ------------------------------------------------------------------------ reading files
def check_readable(path: Path, what: str = "file") -> None:
    """A clear error for a missing, non-regular or unreadable file, and for Git LFS pointers."""
    if not path.exists():
        raise UserError(f"{path}: no such {what}; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a {what}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_LFS_MAGIC))
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({one_line(exc.strerror or exc)}); check its permissions") from exc
    if head == _LFS_MAGIC:
        raise UserError(
            f"{path}: is a Git LFS pointer, not the weights; fetch the real file (git lfs pull), "
            "or pass the Hugging Face hub id so transcoderbench downloads it"
        )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a parse error names the file, line and column."""
    check_readable(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: is not UTF-8 text; it must be a JSON file") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({one_line(exc.strerror or exc)})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); fix the file or re-save it"
        ) from exc
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold a JSON object (a {{...}} mapping), found {type(data).__name__}")
    return data


def load_safetensors(path: Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file on CPU (the format cannot carry code)."""
    from safetensors.torch import load_file

    check_readable(path)
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError subclasses
        raise UserError(
            f"{path}: not a readable safetensors file ({one_line(exc)}); re-download or re-export it"
        ) from exc


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of a ``.npz`` archive, refusing pickled object arrays."""
    check_readable(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"{path}: not a readable .npz archive ({one_line(exc)}); re-download it") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: holds a single array, expected a .npz archive of named arrays (W_enc, W_dec, ...)")
    out: dict[str, np.ndarray] = {}
    with archive:
        for key in archive.files:
            try:
                out[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise UserError(
                        f"{path}: refused: array {key!r} holds pickled Python objects, which could run code; "
                        "use a .npz of plain numeric arrays"
                    ) from exc
                raise UserError(f"{path}: cannot read array {key!r} ({one_line(exc)})") from exc
            except Exception as exc:
                raise UserError(f"{path}: cannot read array {key!r} ({one_line(exc)}); re-download it") from exc
    return out


def load_torch_file(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects."""
    check_readable(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise UserError(
                f"{path}: refused: it holds pickled Python objects besides tensors, which could run code "
                "when loaded; re-save it with torch.save(model.state_dict(), path)"
            ) from exc
        raise UserError(f"{path}: not a PyTorch checkpoint ({one_line(exc)})") from exc
    except Exception as exc:
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint ({one_line(exc)}); re-save or re-download it"
        ) from exc


# ----------------------------------------------------------------------- config values
def parse_value(value: Any) -> Any:
    """Undo the seed's ``str()`` of config values: ``"[1152, 2304]"``, ``"1/32"``, ``"True"``, ``"3e-4"``.

    Only Python literals (``ast.literal_eval``) and fractions are parsed; anything else, e.g.
    ``"torch.bfloat16"`` or ``"gemma-2-2b"``, stays the string it was. Nothing is evaluated.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text or len(text) > _MAX_LITERAL_CHARS:
        return value
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if re.fullmatch(r"[+-]?\d+\s*/\s*\d+", text):
        try:
            return float(Fraction(text.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            return value
    return value


def as_int(value: Any, *, key: str, source: Path | str) -> int | None:
    """An integer config value (``16384``, ``"16384"``, ``16384.0``) or None when absent."""
    value = parse_value(value)
    if value is None:
        return None
    if isinstance(value, bool):
        raise UserError(f"{source}: {key} is {value!r}, expected an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise UserError(f"{source}: {key} is {value!r}, expected an integer")


def as_bool(value: Any, *, key: str, source: Path | str) -> bool:
    """A boolean config value (``true``, ``"True"``, ``1``); absent means False."""
    value = parse_value(value)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    raise UserError(f"{source}: {key} is {value!r}, expected true or false")


def json_safe(value: Any) -> Any:
    """A JSON-serialisable copy of ``value`` (tuples become lists, unknown objects strings)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


# --------------------------------------------------------------------------- site names
_LAYERED = re.compile(r"(?:^|\.)(?:blocks|layers|h)\.(\d+)(?:\.|$)")
_GLOBAL_TL_HOOKS = {"hook_embed", "hook_pos_embed", "hook_tokens", "ln_final.hook_normalized", "ln_final.hook_scale"}


def layer_of_site(site: str) -> int | None:
    """The layer index in ``blocks.L.…`` or ``model.layers.L.…`` site names."""
    m = _LAYERED.search(site)
    return int(m.group(1)) if m else None


def canonical_site(name: str, layer: int | None, *, key: str, source: Path | str) -> tuple[str, str | None]:
    """A TransformerLens-style site name for a config hook, and a note when it was inferred.

    Full names (``blocks.17.hook_mlp_out``, ``model.layers.5.pre_feedforward_layernorm.output``)
    are kept as written. Bare site names (``mlp_in``, ``hook_mlp_out``, ``ln2.hook_normalized``)
    need the layer and become ``blocks.L.hook_mlp_in`` etc.
    """
    name = str(name).strip()
    if not name:
        raise UserError(f"{source}: {key} is empty; it must name a hook such as blocks.17.hook_mlp_in")
    if name.startswith("blocks.") or name in _GLOBAL_TL_HOOKS:
        return name, None
    if name.endswith((".input", ".output")):
        return name, None  # an HF module path site, e.g. model.layers.5.pre_feedforward_layernorm.output
    if layer is None:
        raise UserError(f"{source}: {key} {name!r} names no layer and the config has none; pass --layer")
    bare = name[len("hook_") :] if name.startswith("hook_") else name
    site = f"blocks.{layer}.{bare}" if "." in bare else f"blocks.{layer}.hook_{bare}"
    return site, f"config hook `{name}` ({key}) read as {site}"


# -------------------------------------------------------------------- building the object
def shape(t: Tensor | np.ndarray) -> list[int]:
    return [int(s) for s in t.shape]


def require_keys(
    tensors: Mapping[str, Any], needed: list[str] | tuple[str, ...], source: Path | str, hint: str = ""
) -> None:
    """UserError listing which weights are missing and which were found."""
    missing = [k for k in needed if k not in tensors]
    if missing:
        found = ", ".join(sorted(map(str, tensors))) or "nothing"
        raise UserError(f"{source}: missing weights {', '.join(missing)} (found: {found}){hint}")


def to_float32(tensors: Mapping[str, Any], source: Path | str) -> tuple[dict[str, Tensor], list[str]]:
    """Float32 CPU copies of every floating tensor, and a note naming any other stored dtype."""
    out: dict[str, Tensor] = {}
    dtypes: set[str] = set()
    for k, v in tensors.items():
        t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
        if not isinstance(t, Tensor):
            raise UserError(f"{source}: entry {k!r} is a {type(v).__name__}, expected a tensor")
        if not t.is_floating_point():
            raise UserError(f"{source}: weight {k!r} has dtype {t.dtype}, expected floating point")
        if t.dtype != torch.float32:
            dtypes.add(str(t.dtype).replace("torch.", ""))
        out[k] = t.detach().to("cpu", torch.float32)
    notes = [f"weights stored as {', '.join(sorted(dtypes))}; converted to float32"] if dtypes else []
    return out, notes


def check_shapes(
    t: Mapping[str, Tensor],
    source: Path | str,
    *,
    d_in: int | None = None,
    d_sae: int | None = None,
    d_out: int | None = None,
    threshold: str | None = None,
) -> None:
    """Weights must agree with each other and with the config's sizes; say exactly how not.

    ``threshold`` is ``"scalar"``, ``"vector"`` or None (no threshold expected).
    """
    W_enc, W_dec = t["W_enc"], t["W_dec"]
    if W_enc.ndim != 2 or W_dec.ndim != 2:
        raise UserError(f"{source}: W_enc {shape(W_enc)} and W_dec {shape(W_dec)} must both be matrices")
    n_in, n_sae = shape(W_enc)
    if W_dec.shape[0] != n_sae:
        raise UserError(
            f"{source}: W_enc is {shape(W_enc)} ([d_in, d_sae]) but W_dec is {shape(W_dec)}, expected [{n_sae}, d_out]; "
            "the file is inconsistent (re-export it)"
        )
    n_out = int(W_dec.shape[1])
    expect = {"b_enc": [n_sae], "b_dec": [n_out]}
    if "W_skip" in t:
        expect["W_skip"] = [n_in, n_out]
    if threshold == "vector":
        expect["threshold"] = [n_sae]
    for k, want in expect.items():
        if shape(t[k]) != want:
            raise UserError(
                f"{source}: {k} has shape {shape(t[k])}, expected {want} to match W_enc {shape(W_enc)} and W_dec {shape(W_dec)}"
            )
    if threshold == "scalar" and t["threshold"].numel() != 1:
        raise UserError(f"{source}: threshold has shape {shape(t['threshold'])}, expected a single number")
    for name, declared, actual in (("d_in", d_in, n_in), ("d_sae", d_sae, n_sae), ("d_out", d_out, n_out)):
        if declared is not None and declared != actual:
            raise UserError(
                f"{source}: the config says {name}={declared} but the weights have {name}={actual} "
                f"(W_enc {shape(W_enc)}, W_dec {shape(W_dec)}); the config and weights do not belong together"
            )


def build(
    cls: type[Transcoder],
    t: Mapping[str, Tensor],
    *,
    source: Path | str,
    input_site: str,
    output_site: str,
    info: dict[str, Any],
    device: str = "cpu",
    **kwargs: Any,
) -> Transcoder:
    """Construct, refuse NaN/Inf weights, and move to ``device`` (weights stay float32)."""
    try:
        tc = cls(
            t["W_enc"],
            t["b_enc"],
            t["W_dec"],
            t["b_dec"],
            input_site=input_site,
            output_site=output_site,
            W_skip=t.get("W_skip"),
            info=info,
            **kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise UserError(f"{source}: {one_line(exc)}") from exc
    bad = tc.nonfinite_tensors()
    if bad:
        raise UserError(
            f"{source}: weights {', '.join(bad)} contain NaN or Inf; retrain, re-download or pick another checkpoint"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"--device {device!r} is not a torch device: use cpu, cuda or cuda:N") from exc
    try:
        return tc.to(dev)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(
            f"--device {device}: cannot place the transcoder there ({one_line(exc)}); use --device cpu"
        ) from exc


# ------------------------------------------------------------------ atomic directory write
@contextlib.contextmanager
def atomic_directory(target: Path, *, replaceable: Callable[[Path], bool], kind: str) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``target`` in one rename.

    A failure leaves ``target`` as it was. An existing non-empty ``target`` is replaced only
    when ``replaceable(target)`` says it holds an earlier checkpoint of the same ``kind``, so a
    typo can never wipe an unrelated directory.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: exists and is a file; give a directory path for the {kind} checkpoint")
    if target.is_dir() and any(target.iterdir()) and not replaceable(target):
        raise UserError(f"{target}: exists and does not hold a {kind} checkpoint; choose a new or empty directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{target}: cannot create the directory ({one_line(exc.strerror or exc)})") from exc
    if not os.access(target.parent, os.W_OK):
        raise UserError(f"{target}: {target.parent} is not writable; choose another output directory")
    with sibling_tempdir(target) as tmp:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; give it normal permissions
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        swap_in(tmp, target)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")


def save_safetensors(path: Path, tensors: Mapping[str, Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


# ------------------------------------------------------------------------ Hugging Face hub
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<rev>[\w.-]+))?(?:/(?P<sub>.+?))?/?$")


def parse_hub_id(spec: str) -> tuple[str, str | None, str] | None:
    """``owner/name[@revision][/sub/path]`` -> (repo, revision, subpath), or None if not that shape."""
    if spec.startswith((".", "/", "~")) or "\\" in spec or "//" in spec:
        return None
    m = _HUB_ID.match(spec)
    if not m:
        return None
    return m.group("repo"), m.group("rev"), (m.group("sub") or "").strip("/")


def hub_cache_dir() -> Path:
    """The hub cache, read from the environment now (huggingface_hub reads it once at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set now (or was set when huggingface_hub was imported)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(constants.HF_HUB_OFFLINE)


def revision_of(path: str | Path) -> str | None:
    """The commit hash of a file inside a hub cache snapshot, if it is one."""
    m = re.search(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)", str(path))
    return m.group(1) if m else None


def list_hub_files(spec: str, repo: str, revision: str | None) -> tuple[list[str], str | None, list[str]]:
    """The repo's file paths (online, else from the local cache), its cached commit, and notes."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    notes: list[str] = []
    cache = hub_cache_dir()
    if not hub_offline():
        try:
            return sorted(HfApi().list_repo_files(repo, revision=revision)), None, notes
        except GatedRepoError as exc:
            raise UserError(
                f"{spec}: {repo} is gated; accept its license on huggingface.co and log in (hf auth login)"
            ) from exc
        except RevisionNotFoundError as exc:
            raise UserError(f"{spec}: {repo} has no revision {revision!r}; check the @revision") from exc
        except RepositoryNotFoundError as exc:
            raise UserError(
                f"{spec}: no such file or directory, and no Hugging Face repo {repo}; check the path or the repo id"
            ) from exc
        except Exception as exc:  # network down, proxy, DNS: fall back to the cache
            notes.append(f"could not reach the Hugging Face Hub ({one_line(exc, 120)}); used the local cache")
    else:
        notes.append("offline (HF_HUB_OFFLINE): choices are limited to files in the local Hugging Face cache")
    try:
        # local_files_only: this only resolves the cached snapshot folder; it downloads nothing.
        folder = Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=True))
    except Exception as exc:
        raise UserError(
            f"{spec}: no such file or directory, and {repo} is not in the Hugging Face cache at {cache} "
            "(offline or the Hub is unreachable); check the path, or connect once to download it"
        ) from exc
    files = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()  # is_file follows blob symlinks
    )
    return files, folder.name, notes


def download_hub_file(spec: str, repo: str, filename: str, revision: str | None) -> Path:
    """One file from the hub (or the local cache when offline); never the whole repo."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    try:
        return Path(
            hf_hub_download(repo, filename, revision=revision, cache_dir=hub_cache_dir(), local_files_only=offline)
        )
    except LocalEntryNotFoundError as exc:
        raise UserError(
            f"{spec}: {repo}/{filename} is not in the local Hugging Face cache and the Hub cannot be used "
            "(offline or unreachable); connect once to download it"
        ) from exc
    except GatedRepoError as exc:
        raise UserError(
            f"{spec}: {repo} is gated; accept its license on huggingface.co and log in (hf auth login)"
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise UserError(f"{spec}: {repo} has no file {filename} ({one_line(exc, 120)})") from exc
    except Exception as exc:
        raise UserError(
            f"{spec}: could not download {repo}/{filename} ({one_line(exc, 160)}); retry or download it manually"
        ) from exc
