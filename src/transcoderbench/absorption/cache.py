"""Disk cache of the expensive, transcoder-independent part: words, activations and the probe.

One entry per (model, site, seed, word budget, prompt and probe settings), in a folder named by
the hash of that key: ``key.json`` (the key itself, checked on load), ``words.json`` and
``tensors.safetensors``. Entries are written to a temporary folder and renamed into place, so
a crash never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from transcoderbench.io import sibling_tempdir, swap_in
from transcoderbench.lm import LanguageModel, Site

CACHE_VERSION = 2  # 2: prompts start with a newline; SentencePiece words keep their leading space
_FILES = ("key.json", "words.json", "tensors.safetensors")


def default_cache_dir() -> Path:
    """``$TRANSCODERBENCH_CACHE/absorption`` or ``~/.cache/transcoderbench/absorption``."""
    env = os.environ.get("TRANSCODERBENCH_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "transcoderbench"
    return root / "absorption"


def model_fingerprint(lm: LanguageModel) -> dict[str, Any]:
    """What identifies the model's numbers cheaply: name, source, dtype, config, a weight sample,
    and the tokenizer's vocabulary (the words come from it)."""
    config = lm.model.config.to_json_string(use_diff=False)
    digest = hashlib.sha256(config.encode())
    for _, param in list(lm.model.named_parameters())[:4]:
        digest.update(param.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    vocab = sorted(lm.tokenizer.get_vocab().items(), key=lambda item: item[1])
    digest.update(json.dumps(vocab).encode())
    return {"name": lm.name, "source": lm.source, "dtype": str(lm.dtype), "digest": digest.hexdigest()}


def site_key(site: Site) -> dict[str, Any]:
    """A site by the tensor it reads (two names of the same tensor share a cache entry)."""
    return {"module": site.module_path, "direction": site.direction, "normalize": site.normalize, "eps": site.eps}


def entry_dir(cache_dir: Path, key: dict[str, Any]) -> Path:
    text = json.dumps({"cache_version": CACHE_VERSION, **key}, sort_keys=True)
    return cache_dir / hashlib.sha256(text.encode()).hexdigest()[:20]


def load(cache_dir: Path, key: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """``(words, tensors)`` of the entry for ``key``, or None if absent, incomplete or another key's."""
    folder = entry_dir(cache_dir, key)
    try:
        stored = json.loads((folder / "key.json").read_text())
        if stored != json.loads(json.dumps({"cache_version": CACHE_VERSION, **key}, sort_keys=True)):
            return None
        words = json.loads((folder / "words.json").read_text())
        tensors = load_file(str(folder / "tensors.safetensors"))
    except (OSError, ValueError):
        return None
    return words, tensors


def save(cache_dir: Path, key: dict[str, Any], words: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write the entry for ``key`` atomically; returns its folder."""
    folder = entry_dir(cache_dir, key)
    with sibling_tempdir(folder) as tmp:
        (tmp / "key.json").write_text(json.dumps({"cache_version": CACHE_VERSION, **key}, sort_keys=True, indent=1))
        (tmp / "words.json").write_text(json.dumps(words))
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
        swap_in(tmp, folder, finished_elsewhere=lambda: load(cache_dir, key) is not None)
    return folder
