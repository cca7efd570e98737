"""EleutherAI sparsify (``eai-sparsify``) checkpoints: one folder per hookpoint, ``cfg.json`` + ``sae.safetensors``.

A sparsify run directory holds one such folder per trained hookpoint (named after it, a module
path under ``model.base_model`` such as ``layers.5.mlp``) and the run's ``config.json``. Each
folder's ``sae.safetensors`` holds ``encoder.weight [d_sae, d_in]``, ``encoder.bias``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, with ``skip_connection``, ``W_skip [d_in, d_in]``
applied as ``x @ W_skip.mT``. Inference is ReLU then each token's top ``k``. A plain SAE reads
the hookpoint's output and subtracts ``b_dec`` from its input first; a ``transcode`` coder reads
the hookpoint module's input and predicts its output, without that subtraction. ``groupmax``
has no counterpart here and is refused. Checked against eai-sparsify 1.3.3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import transcoderbench
from transcoderbench.errors import UserError
from transcoderbench.formats.common import as_bool, as_int, build, check_shapes, require_keys, shape, to_float32
from transcoderbench.formats.registry import Entry, HubChoice, Select, in_prefix
from transcoderbench.io import atomic_directory, load_safetensors, read_json, save_safetensors, write_json
from transcoderbench.lm.sites import layer_of_site
from transcoderbench.transcoders import TopKTranscoder, Transcoder

CFG = "cfg.json"
WEIGHTS = "sae.safetensors"
RUN_CONFIG = "config.json"
_KEYS = {"encoder.weight": "W_enc", "encoder.bias": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"}
# Module-path roots that sparsify's hookpoints leave out (they are relative to model.base_model).
_ROOTS = ("model.language_model.", "model.", "transformer.", "gpt_neox.")


def is_sparsify_folder(directory: Path) -> bool:
    return (directory / CFG).is_file() and (directory / WEIGHTS).is_file()


def hookpoint_folders(directory: Path) -> list[Path]:
    """The folder itself if it is one hookpoint, else its hookpoint subfolders (a run directory)."""
    if is_sparsify_folder(directory):
        return [directory]
    try:
        return sorted(p for p in directory.iterdir() if p.is_dir() and is_sparsify_folder(p))
    except OSError:
        return []


def choose_folder(directory: Path, layer: int | None) -> tuple[Path, list[str]]:
    """One hookpoint folder of a run directory, by ``select.layer`` when there are several."""
    folders = hookpoint_folders(directory)
    if len(folders) == 1:
        return folders[0], []
    names = ", ".join(p.name for p in folders)
    if layer is None:
        raise UserError(f"{directory}: a sparsify run with several hookpoints ({names}); choose one with select.layer")
    matching = [p for p in folders if layer_of_site(p.name) == layer]
    if len(matching) != 1:
        what = "no hookpoint" if not matching else "several hookpoints"
        raise UserError(f"{directory}: {what} for layer {layer} among {names}; point at the hookpoint's folder instead")
    return matching[0], [f"chose hookpoint {matching[0].name} of {len(folders)} in the run (select.layer {layer})"]


def load_sparsify(folder: Path, *, device: str = "cpu", notes: list[str] | None = None) -> Transcoder:
    """One sparsify hookpoint folder as a :class:`TopKTranscoder` with the same outputs."""
    notes = list(notes or [])
    cfg_path, w_path = folder / CFG, folder / WEIGHTS
    cfg = read_json(cfg_path)
    activation = str(cfg.get("activation", "topk")).lower()
    if activation != "topk":
        raise UserError(
            f"{cfg_path}: activation {activation!r} is not supported; transcoderbench reads sparsify topk coders "
            "(groupmax keeps one latent per group, which no architecture here computes)"
        )
    k = as_int(cfg.get("k"), key="k", source=cfg_path)
    d_in = as_int(cfg.get("d_in"), key="d_in", source=cfg_path)
    if k is None:
        raise UserError(f"{cfg_path}: has no k; sparsify topk coders keep k latents per token")
    transcode = as_bool(cfg.get("transcode"), key="transcode", source=cfg_path)
    skip = as_bool(cfg.get("skip_connection"), key="skip_connection", source=cfg_path)

    raw = load_safetensors(w_path)
    needed = list(_KEYS) + (["W_skip"] if skip else [])
    require_keys(raw, needed, w_path, hint="; expected a sparsify sae.safetensors")
    if "W_skip" in raw and not skip:
        raise UserError(f"{w_path}: holds W_skip but {cfg_path} says skip_connection is false")
    tensors, dnotes = to_float32({_KEYS.get(k_, k_): raw[k_] for k_ in needed}, w_path)
    notes += dnotes
    if tensors["W_enc"].ndim != 2:
        raise UserError(f"{w_path}: encoder.weight has shape {shape(tensors['W_enc'])}, expected [d_sae, d_in]")
    tensors["W_enc"] = tensors["W_enc"].T.contiguous()  # sparsify: nn.Linear weight [d_sae, d_in]
    if "W_skip" in tensors:
        tensors["W_skip"] = tensors["W_skip"].T.contiguous()  # sparsify: x @ W_skip.mT
    num_latents = as_int(cfg.get("num_latents"), key="num_latents", source=cfg_path) or None
    check_shapes(tensors, w_path, d_in=d_in, d_sae=num_latents, d_out=d_in)
    if not transcode:
        # (x - b_dec) @ W_enc + b_enc == x @ W_enc + (b_enc - b_dec @ W_enc)
        tensors["b_enc"] = tensors["b_enc"] - tensors["b_dec"] @ tensors["W_enc"]
        notes.append("plain SAE: the input's b_dec subtraction folded into b_enc (b_enc - b_dec @ W_enc)")

    ours: dict[str, Any] = cfg["transcoderbench"] if isinstance(cfg.get("transcoderbench"), dict) else {}
    hookpoint = folder.name
    input_site = ours.get("input_site") or f"{hookpoint}.{'input' if transcode else 'output'}"
    output_site = ours.get("output_site") or f"{hookpoint}.output"
    if not ours:
        mode = "transcode: reads its input, predicts its output" if transcode else "SAE: reads and predicts its output"
        notes.append(f"sites from the hookpoint folder name {hookpoint} ({mode})")
    model_name = ours.get("model_name") or _run_model(folder)
    info: dict[str, Any] = {
        "format": "sparsify",
        "source": str(folder),
        "model_name": model_name,
        "layer": layer_of_site(hookpoint) if not ours else layer_of_site(input_site),
        "notes": notes,
        "training": {
            **{k_: cfg[k_] for k_ in ("activation", "k", "num_latents", "expansion_factor") if k_ in cfg},
            "top_k": k,
        },
    }
    return build(
        TopKTranscoder,
        tensors,
        source=w_path,
        input_site=input_site,
        output_site=output_site,
        info=info,
        device=device,
        k=k,
        prefix_ends=ours.get("prefix_ends"),
    )


def _run_model(folder: Path) -> str | None:
    """The model id from the run's ``config.json`` one level up, when it is there and readable."""
    run_cfg = folder.parent / RUN_CONFIG
    if not run_cfg.is_file():
        return None
    try:
        model = read_json(run_cfg).get("model")
    except UserError:
        return None
    return model if isinstance(model, str) and model else None


# ------------------------------------------------------------------------------ writing
def hookpoint_of(tc: Transcoder) -> tuple[str, bool]:
    """(hookpoint, transcode) for ``tc``'s sites, or a UserError saying why sparsify cannot express them."""
    inp, out = tc.input_site, tc.output_site
    if inp == out and inp.endswith(".output"):
        path, transcode = inp[: -len(".output")], False
    elif inp.endswith(".input") and out.endswith(".output") and inp[: -len(".input")] == out[: -len(".output")]:
        path, transcode = inp[: -len(".input")], True
    else:
        raise UserError(
            f"sites {inp} -> {out}: sparsify names one module (hookpoint) per coder and reads its input and predicts "
            "its output (transcode), or reads and predicts its output (SAE); give module-path sites such as "
            "model.layers.5.mlp.input -> model.layers.5.mlp.output"
        )
    for root in _ROOTS:
        if path.startswith(root):
            path = path[len(root) :]
            break
    return path, transcode


def check_sparsify(tc: Transcoder) -> None:
    """Refuse what sparsify cannot express (it runs per-token TopK with d_out = d_in and no input scaling)."""
    if not isinstance(tc, TopKTranscoder):
        raise UserError(
            f"architecture {tc.architecture!r}: sparsify runs per-token TopK only (a BatchTopK or JumpReLU "
            "threshold has no sparsify counterpart); export to native, saelens or circuit_tracer instead"
        )
    if tc.input_unit_norm or tc.constant_norm_rescale:
        raise UserError("sparsify has no input standardisation; this transcoder's input_unit_norm cannot be expressed")
    if tc.d_in != tc.d_out:
        raise UserError(f"sparsify coders have d_out = d_in, but this transcoder maps {tc.d_in} -> {tc.d_out}")
    hookpoint_of(tc)


def export_sparsify(transcoders: list[Transcoder], directory: str | Path) -> Path:
    """Write ``transcoders`` as one sparsify run directory (one hookpoint folder each), atomically."""
    directory = Path(directory)
    for tc in transcoders:
        check_sparsify(tc)
    names = [hookpoint_of(tc)[0] for tc in transcoders]
    if len(set(names)) != len(names):
        raise UserError(f"several transcoders share a sparsify hookpoint ({', '.join(names)}); export them apart")
    with atomic_directory(directory, replaceable=lambda d: bool(hookpoint_folders(d)), kind="sparsify") as tmp:
        for tc, name in zip(transcoders, names):
            (tmp / name).mkdir()
            _write_folder(tc, tmp / name)
        models = {tc.info.get("model_name") for tc in transcoders} - {None}
        if len(models) == 1:
            write_json(tmp / RUN_CONFIG, {"model": models.pop(), "hookpoints": names})
    return directory


def _write_folder(tc: Transcoder, folder: Path) -> None:
    _, transcode = hookpoint_of(tc)
    f32 = {k: v.detach().to("cpu", torch.float32) for k, v in tc.tensors().items()}
    b_enc = f32["b_enc"] if transcode else f32["b_enc"] + f32["b_dec"] @ f32["W_enc"]  # undone by x - b_dec
    tensors = {
        "encoder.weight": f32["W_enc"].T.contiguous(),
        "encoder.bias": b_enc,
        "W_dec": f32["W_dec"],
        "b_dec": f32["b_dec"],
    }
    if tc.W_skip is not None:
        tensors["W_skip"] = f32["W_skip"].T.contiguous()
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, tc.d_sae // tc.d_in),
        "normalize_decoder": False,
        "num_latents": tc.d_sae,
        "k": tc.hyperparameters()["k"],
        "multi_topk": False,
        "skip_connection": tc.W_skip is not None,
        "transcode": transcode,
        "d_in": tc.d_in,
        "transcoderbench": {
            "exported_by": f"transcoderbench {transcoderbench.__version__}",
            "architecture": tc.architecture,
            "input_site": tc.input_site,
            "output_site": tc.output_site,
            "prefix_ends": list(tc.prefix_ends),
            "model_name": tc.info.get("model_name"),
        },
    }
    save_safetensors(folder / WEIGHTS, tensors)
    write_json(folder / CFG, cfg)


# --------------------------------------------------------------------------- registry
def _detect(path: Path) -> bool:
    if path.is_file():
        return path.name == WEIGHTS and is_sparsify_folder(path.parent)
    return bool(hookpoint_folders(path))


def _load(path: Path, *, select: Select, device: str, repo: str | None, notes: list[str]) -> Transcoder:
    folder, more = choose_folder(path.parent if path.is_file() else path, select.layer)
    return load_sparsify(folder, device=device, notes=notes + more)


def _hub(files: list[str], sub: str, *, repo: str, select: Select) -> HubChoice | None:
    needed = in_prefix(files, sub, (CFG, WEIGHTS))
    return HubChoice(needed, sub or ".") if needed else None


def _save(transcoders: list[Transcoder], directory: Path, **options: Any) -> Path:
    return export_sparsify(transcoders, directory)


ENTRY = Entry("sparsify", "<hookpoint>/cfg.json + sae.safetensors (sparsify)", _detect, _load, _hub, _save)
