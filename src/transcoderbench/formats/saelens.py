"""SAELens directories: ``cfg.json`` + ``sae_weights.safetensors`` (SAELens 6 layout).

Import reads SAELens's inference architectures whose math our classes reproduce exactly:
``jumprelu``, ``standard`` and ``topk`` SAEs (output site = input site), and the
``jumprelu_transcoder``, ``jumprelu_skip_transcoder``, ``transcoder`` and ``skip_transcoder``
classes (input ``metadata.hook_name``, output ``metadata.hook_name_out``). SAELens stores
``W_skip`` as ``[d_out, d_in]`` and applies ``x @ W_skip.T``; ours is ``[d_in, d_out]``.

Export writes what ``SAE.load_from_disk`` reads (checked against SAELens 6.54): JumpReLU,
BatchTopK and Matryoshka transcoders as ``jumprelu_transcoder`` (``jumprelu_skip_transcoder``
with a skip; ``jumprelu`` when input and output site are the same), a BatchTopK scalar threshold
as a constant per-latent threshold (as SAELens itself saves BatchTopK SAEs), TopK SAEs as
``topk``. The exact architecture, prefixes and sites go to ``metadata["transcoderbench"]`` so
our import rebuilds the original object. What SAELens cannot express is refused, not approximated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

import transcoderbench
from transcoderbench.errors import UserError
from transcoderbench.formats.common import (
    as_bool,
    as_int,
    build,
    check_shapes,
    parse_value,
    require_keys,
    shape,
    to_float32,
)
from transcoderbench.formats.registry import Entry, HubChoice, Select, in_prefix, one_transcoder
from transcoderbench.io import atomic_directory, load_safetensors, read_json, save_safetensors, write_json
from transcoderbench.lm.sites import layer_of_site
from transcoderbench.transcoders import (
    ARCHITECTURES,
    BatchTopKTranscoder,
    JumpReLUTranscoder,
    TopKTranscoder,
    Transcoder,
)

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
# The SAELens config layout we write; SAELens treats configs without a version >= 6 as old ones
# and would drop the metadata block.
SAELENS_CFG_VERSION = "6.0.0"
_JUMPRELU = {"jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder"}
_RELU = {"standard", "transcoder", "skip_transcoder"}
_TRANSCODERS = {"jumprelu_transcoder", "jumprelu_skip_transcoder", "transcoder", "skip_transcoder"}
_SKIP = {"jumprelu_skip_transcoder", "skip_transcoder"}
SUPPORTED = sorted(_JUMPRELU | _RELU | {"topk"})


def is_saelens_dir(directory: Path) -> bool:
    return (directory / CFG).is_file() and (directory / WEIGHTS).is_file()


def _normalize_mode(value: Any) -> str:
    if value is None or value is False:
        return "none"
    if value is True:  # SAELens < 6 wrote a bool
        return "expected_average_only_in"
    return str(value)


def _version_below_6(cfg: dict[str, Any], meta: dict[str, Any]) -> bool:
    """SAELens' own rule: no ``sae_lens_version`` (top level or metadata), or one below 6, is a pre-6.0 config."""
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if not version:
        return True
    m = re.match(r"\s*(\d+)", str(version))
    return m is None or int(m.group(1)) < 6


def pre_6_0_config(cfg: dict[str, Any], cfg_path: Path, notes: list[str]) -> dict[str, Any]:
    """A SAELens < 6.0 config in the 6.0 layout, as SAELens' ``handle_pre_6_0_config`` translates it.

    ``hook_point`` -> ``hook_name``, ``activation_fn_str`` -> ``activation_fn``, missing
    ``apply_b_dec_to_input`` means true, and an ``activation_fn`` of ``topk`` with
    ``activation_fn_kwargs.k`` is a TopK SAE. Any other non-ReLU activation is refused.
    """
    renames = {
        "hook_point": "hook_name",
        "hook_point_head_index": "hook_head_index",
        "activation_fn_str": "activation_fn",
    }
    new = {renames.get(k, k): v for k, v in cfg.items()}
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("architecture", "standard")
    if new.get("architecture") is None:
        new["architecture"] = "standard"
    act = str(new.get("activation_fn") or "relu").lower()
    kwargs: dict[str, Any] = new["activation_fn_kwargs"] if isinstance(new.get("activation_fn_kwargs"), dict) else {}
    if act == "topk" and new["architecture"] in ("standard", "topk"):
        if kwargs.get("k") is None and new.get("k") is None:
            raise UserError(f"{cfg_path}: activation_fn topk without activation_fn_kwargs.k; add k to the config")
        new["architecture"] = "topk"
        new["k"] = kwargs.get("k", new.get("k"))
        notes.append(f"SAELens < 6.0 config: activation_fn topk with k={new['k']} read as a TopK SAE")
    elif act != "relu":
        raise UserError(
            f"{cfg_path}: activation_fn {act!r} is not supported (SAELens < 6.0 configs: relu, or topk with "
            "activation_fn_kwargs.k)"
        )
    if any(k in cfg for k in renames) or "sae_lens_version" not in cfg:
        notes.append("read as a SAELens < 6.0 config (hook_point -> hook_name, activation_fn_str -> activation_fn)")
    return new


def _hooks(
    cfg: dict[str, Any], get: Any, ours: dict[str, Any], is_tc: bool, cfg_path: Path, notes: list[str]
) -> tuple[str, str]:
    """Input and output sites; an exact HF module path (``hf_hook_name``) wins over a TransformerLens name."""
    hook_in = ours.get("input_site") or _exact_or_tl(
        get("hf_hook_name"), get("hook_name"), "hf_hook_name", "hook_name", notes
    )
    if not hook_in:
        raise UserError(f"{cfg_path}: names no hook (metadata.hook_name); it must say which activations the SAE reads")
    if not is_tc:
        return str(hook_in), str(ours.get("output_site") or hook_in)
    hook_out = ours.get("output_site") or _exact_or_tl(
        get("hf_hook_name_out"), get("hook_name_out"), "hf_hook_name_out", "hook_name_out", notes
    )
    if not hook_out:
        raise UserError(
            f"{cfg_path}: a {cfg.get('architecture')} with no metadata.hook_name_out; it must name the site it predicts"
        )
    return str(hook_in), str(hook_out)


def _exact_or_tl(hf: Any, tl: Any, hf_key: str, tl_key: str, notes: list[str]) -> Any:
    if hf and tl and str(hf) != str(tl):
        notes.append(
            f"{hf_key} {hf} and {tl_key} {tl} both given: read at {hf} (the exact Hugging Face module path); "
            f"{tl} is a different tensor in some models (e.g. Gemma 3: before vs after the pre-MLP norm)"
        )
        return f"{hf}.output" if not str(hf).endswith((".input", ".output")) else hf
    if hf and not tl:
        return f"{hf}.output" if not str(hf).endswith((".input", ".output")) else hf
    return tl


_WRITTEN_SITES = re.compile(r"hook_(resid_pre|resid_mid|resid_post|mlp_in|mlp_out|attn_out)$")


def _refuse_centred_writing(kwargs: Any, sites: tuple[str, str], cfg_path: Path) -> None:
    """TransformerLens' ``center_writing_weights`` mean-centres every token of the residual stream and
    of mlp_out/attn_out; the plain Hugging Face model here does not, so such an SAE would be read at
    a different tensor. Refused rather than approximated."""
    if not isinstance(kwargs, dict) or not kwargs.get("center_writing_weights"):
        return
    bad = [s for s in sites if _WRITTEN_SITES.search(s)]
    if bad:
        raise UserError(
            f"{cfg_path}: model_from_pretrained_kwargs.center_writing_weights is true, so {bad[0]} was read from "
            "TransformerLens' mean-centred residual stream, which the Hugging Face model does not compute; "
            "transcoderbench refuses it rather than report numbers at a different tensor"
        )


def load_saelens(directory: Path, *, device: str = "cpu") -> Transcoder:
    """A SAELens SAE or transcoder directory as one of our transcoders (same outputs)."""
    cfg_path, w_path = directory / CFG, directory / WEIGHTS
    cfg = read_json(cfg_path)
    meta: dict[str, Any] = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    notes: list[str] = []
    if _version_below_6(cfg, meta):
        cfg = pre_6_0_config(cfg, cfg_path, notes)

    def get(key: str) -> Any:
        return meta[key] if meta.get(key) is not None else cfg.get(key)

    arch = str(cfg.get("architecture") or "standard")
    if arch not in SUPPORTED:
        raise UserError(
            f"{cfg_path}: SAELens architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED)}"
        )
    is_tc = arch in _TRANSCODERS
    ours: dict[str, Any] = meta["transcoderbench"] if isinstance(meta.get("transcoderbench"), dict) else {}

    hook_in, hook_out = _hooks(cfg, get, ours, is_tc, cfg_path, notes)
    _refuse_centred_writing(get("model_from_pretrained_kwargs"), (hook_in, hook_out), cfg_path)
    if str(cfg.get("reshape_activations") or "none") != "none":
        raise UserError(
            f"{cfg_path}: reshape_activations {cfg['reshape_activations']!r} (attention-head SAEs) is not supported"
        )

    raw = load_safetensors(w_path)
    needed = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if arch in _JUMPRELU else [])
    needed += ["W_skip"] if arch in _SKIP else []
    require_keys(raw, needed, w_path, hint=f"; expected the weights of a SAELens {arch}")
    for key in ("scaling_factor", "finetuning_scaling_factor"):
        if key in raw:
            if not torch.all(raw[key] == 1):
                raise UserError(f"{w_path}: has a {key} other than 1, which this reader does not apply; fold it first")
            notes.append(f"{key} of ones ignored")
    extra = sorted(k for k in raw if k not in needed and k not in ("scaling_factor", "finetuning_scaling_factor"))
    if extra:
        notes.append(f"ignored tensors: {', '.join(extra)}")
    tensors, dnotes = to_float32({k: raw[k] for k in needed}, w_path)
    notes += dnotes
    if "W_skip" in tensors:
        w_skip, W_dec, W_enc = tensors["W_skip"], tensors["W_dec"], tensors["W_enc"]
        if W_enc.ndim == 2 and W_dec.ndim == 2 and shape(w_skip) != [W_dec.shape[1], W_enc.shape[0]]:
            raise UserError(
                f"{w_path}: W_skip has shape {shape(w_skip)}, expected [d_out, d_in] = [{W_dec.shape[1]}, {W_enc.shape[0]}]"
            )
        tensors["W_skip"] = w_skip.T.contiguous()  # SAELens applies x @ W_skip.T
    d_in = as_int(cfg.get("d_in"), key="d_in", source=cfg_path)
    check_shapes(
        tensors,
        w_path,
        d_in=d_in,
        d_sae=as_int(cfg.get("d_sae"), key="d_sae", source=cfg_path),
        d_out=as_int(cfg.get("d_out"), key="d_out", source=cfg_path) if is_tc else d_in,
        threshold="vector" if arch in _JUMPRELU else None,
    )

    apply_b_dec = as_bool(cfg.get("apply_b_dec_to_input", True), key="apply_b_dec_to_input", source=cfg_path)
    if apply_b_dec and not is_tc:
        # (x - b_dec) @ W_enc + b_enc == x @ W_enc + (b_enc - b_dec @ W_enc)
        tensors["b_enc"] = tensors["b_enc"] - tensors["b_dec"] @ tensors["W_enc"]
        notes.append("apply_b_dec_to_input folded into b_enc (b_enc - b_dec @ W_enc)")
    elif apply_b_dec:
        notes.append(
            "apply_b_dec_to_input true ignored: SAELens itself rejects it for transcoders (b_dec lives at the output "
            "site), so no SAELens transcoder ever subtracted it"
        )
    mode = _normalize_mode(cfg.get("normalize_activations"))
    if mode not in ("none", "layer_norm", "constant_norm_rescale"):
        raise UserError(
            f"{cfg_path}: normalize_activations {mode!r} needs a dataset scaling factor this reader does not apply"
        )
    if mode != "none" and is_tc:
        raise UserError(
            f"{cfg_path}: a SAELens transcoder with normalize_activations {mode} rescales its input without "
            "undoing it on the output, which transcoderbench does not model"
        )
    unit_norm = mode == "layer_norm"
    if unit_norm:
        notes.append("normalize_activations layer_norm read as input_unit_norm (standardise x, undo on the output)")
    if mode == "constant_norm_rescale":
        notes.append(
            "normalize_activations constant_norm_rescale: x * sqrt(d_in) / ||x|| per token, undone on the output"
        )

    model_name = ours.get("model_name") or get("model_name")
    training: dict[str, Any] = dict(ours.get("training") or {}) or {
        k: cfg[k] for k in ("architecture", "k", "d_sae", "dtype") if k in cfg
    }
    info = {
        "format": "saelens",
        "source": str(directory),
        "model_name": model_name,
        "layer": layer_of_site(str(hook_in)),
        "notes": notes,
        "training": training,
    }
    common: dict[str, Any] = dict(
        source=w_path,
        input_site=str(hook_in),
        output_site=str(hook_out),
        info=info,
        device=device,
        input_unit_norm=unit_norm,
        constant_norm_rescale=mode == "constant_norm_rescale",
    )

    if arch == "topk":
        k = as_int(cfg.get("k"), key="k", source=cfg_path)
        if k is None:
            raise UserError(f"{cfg_path}: a topk SAE without k; add k to the config")
        training.setdefault("top_k", k)  # the name the evaluation summary compares L0 with
        if as_bool(cfg.get("rescale_acts_by_decoder_norm"), key="rescale_acts_by_decoder_norm", source=cfg_path):
            norms = tensors["W_dec"].norm(dim=-1)
            tensors["W_enc"] = tensors["W_enc"] * norms
            tensors["b_enc"] = tensors["b_enc"] * norms
            tensors["W_dec"] = tensors["W_dec"] / norms[:, None]
            notes.append(
                "rescale_acts_by_decoder_norm folded into the weights (W_enc, b_enc times, W_dec divided by decoder norms)"
            )
        return build(TopKTranscoder, tensors, k=k, prefix_ends=ours.get("prefix_ends"), **common)

    if arch in _RELU:
        threshold = torch.zeros(tensors["W_enc"].shape[1])
        notes.append(f"SAELens {arch} (ReLU) read as JumpReLU with threshold 0, the same function")
    else:
        threshold = tensors.pop("threshold")
        if (threshold < 0).any():
            notes.append("negative thresholds raised to 0: SAELens applies ReLU before the threshold mask")
            threshold = threshold.clamp(min=0)

    wanted = ours.get("architecture")
    if wanted in ("batchtopk", "matryoshka_batchtopk") and "threshold" in ours:
        value = parse_value(ours["threshold"])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(
                f"{cfg_path}: metadata.transcoderbench.threshold is {value!r}, expected a number; fix or remove it"
            )
        scalar = torch.tensor(float(value), dtype=torch.float32)
        if torch.equal(threshold, scalar.clamp(min=0).expand_as(threshold)):
            return build(
                ARCHITECTURES[wanted],
                tensors,
                threshold=scalar,
                k=ours.get("k"),
                prefix_ends=ours.get("prefix_ends"),
                **common,
            )
        notes.append("metadata.transcoderbench ignored: the thresholds no longer match the exported scalar")
    return build(JumpReLUTranscoder, tensors, threshold=threshold, prefix_ends=ours.get("prefix_ends"), **common)


def export_saelens(transcoder: Transcoder, directory: str | Path) -> Path:
    """Write ``transcoder`` as a SAELens directory, atomically; returns the directory."""
    directory = Path(directory)
    tc = transcoder
    same_site = tc.input_site == tc.output_site and tc.d_in == tc.d_out and tc.W_skip is None
    where = f"cannot export to {directory}"

    def refuse(why: str) -> UserError:
        return UserError(f"{where}: {why}; keep it in the native format (save_native) instead")

    if isinstance(tc, TopKTranscoder):
        if not same_site:
            raise refuse(
                "SAELens has no TopK transcoder class (only TopK SAEs whose input and output site are the same)"
            )
        arch = "topk"
    elif isinstance(tc, (JumpReLUTranscoder, BatchTopKTranscoder)):
        arch = (
            "jumprelu"
            if same_site
            else ("jumprelu_skip_transcoder" if tc.W_skip is not None else "jumprelu_transcoder")
        )
    else:
        raise refuse(f"architecture {tc.architecture!r} has no SAELens counterpart")
    if tc.input_unit_norm and not same_site:
        raise refuse(
            "SAELens transcoders standardise the input but never undo it, so input_unit_norm cannot be expressed"
        )
    if tc.constant_norm_rescale and not same_site:
        raise refuse(
            "SAELens transcoders rescale the input but never undo it, so constant_norm_rescale cannot be expressed"
        )

    tensors = {
        k: v.detach().to("cpu", torch.float32)
        for k, v in tc.tensors().items()
        if k in ("W_enc", "b_enc", "W_dec", "b_dec")
    }
    if isinstance(tc, JumpReLUTranscoder):
        if (tc.threshold < 0).any():
            raise refuse("it has negative JumpReLU thresholds, which SAELens's ReLU-then-mask cannot reproduce")
        tensors["threshold"] = tc.threshold.detach().to("cpu", torch.float32)
    elif isinstance(tc, BatchTopKTranscoder):
        tensors["threshold"] = torch.full((tc.d_sae,), float(tc.threshold), dtype=torch.float32)
    if tc.W_skip is not None:
        tensors["W_skip"] = tc.W_skip.detach().to("cpu", torch.float32).T.contiguous()

    ours: dict[str, Any] = {
        "exported_by": f"transcoderbench {transcoderbench.__version__}",
        "architecture": tc.architecture,
        "input_site": tc.input_site,
        "output_site": tc.output_site,
        "prefix_ends": list(tc.prefix_ends),
        "model_name": tc.info.get("model_name"),
        "training": tc.info.get("training"),
        **tc.hyperparameters(),
    }
    if tc.is_matryoshka:
        ours["prefix_note"] = (
            "Matryoshka: latents [0, prefix_ends[i]) reconstruct alone; SAELens sees one BatchTopK/JumpReLU dictionary"
        )
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_CFG_VERSION,
        "sae_lens_training_version": None,
        "model_name": tc.info.get("model_name"),
        "hook_name": tc.input_site,
        "hook_head_index": None,
        "transcoderbench": ours,
    }
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": tc.d_in,
        "d_sae": tc.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": (
            "layer_norm" if tc.input_unit_norm else "constant_norm_rescale" if tc.constant_norm_rescale else "none"
        ),
        "reshape_activations": "none",
        "metadata": metadata,
    }
    if arch == "topk":
        cfg.update(k=tc.k, rescale_acts_by_decoder_norm=False)
    if arch in _TRANSCODERS:
        cfg["d_out"] = tc.d_out
        metadata["hook_name_out"] = tc.output_site
        metadata["hook_head_index_out"] = None
    with atomic_directory(directory, replaceable=is_saelens_dir, kind="SAELens") as tmp:
        save_safetensors(tmp / WEIGHTS, tensors)
        write_json(tmp / CFG, cfg)
    return directory


def _detect(path: Path) -> bool:
    if path.is_file():
        return path.name == WEIGHTS or (path.name == CFG and is_saelens_dir(path.parent))
    return is_saelens_dir(path)


def _load(path: Path, *, select: Select, device: str, repo: str | None, notes: list[str]) -> Transcoder:
    tc = load_saelens(path.parent if path.is_file() else path, device=device)
    tc.info["notes"] = notes + tc.info["notes"]
    return tc


def _hub(files: list[str], sub: str, *, repo: str, select: Select) -> HubChoice | None:
    needed = in_prefix(files, sub, (CFG, WEIGHTS))
    return HubChoice(needed, sub or ".") if needed else None


def _save(transcoders: list[Transcoder], directory: Path, **options: Any) -> Path:
    return export_saelens(one_transcoder(transcoders, "saelens", **options), directory)


ENTRY = Entry("saelens", "cfg.json + sae_weights.safetensors (SAELens)", _detect, _load, _hub, _save)
