"""Hugging Face hub access for checkpoints: id parsing, listing a repo, one-file downloads, offline cache.

Only the files a chosen checkpoint needs are downloaded (Gemma Scope repos are tens of
gigabytes). Offline (``HF_HUB_OFFLINE``) or when the Hub is unreachable, the local cache is used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from transcoderbench.errors import UserError
from transcoderbench.io import one_line

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
