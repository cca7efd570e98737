"""What every checkpoint reader shares once the files are read: config values and building the object.

Config values may be the seed's ``str()`` of Python values; :func:`parse_value` undoes that
without evaluating anything. :func:`build` checks shapes and finiteness, so every reader hands
back a validated float32 :class:`Transcoder` and nothing else.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from transcoderbench.errors import UserError
from transcoderbench.io import one_line
from transcoderbench.transcoders import Transcoder

WEIGHT_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")
_MAX_LITERAL_CHARS = 10_000


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
        if isinstance(v, np.ndarray) and v.dtype.kind not in "fiub":
            raise UserError(f"{source}: array {k!r} holds {v.dtype} values, expected floating point numbers")
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
    if 0 in shape(W_enc) or 0 in shape(W_dec):
        raise UserError(
            f"{source}: W_enc {shape(W_enc)} and W_dec {shape(W_dec)} have a zero size; nothing to evaluate"
        )
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
        if declared is not None and declared < 1:
            raise UserError(f"{source}: the config says {name}={declared}; it must be at least 1")
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
        raise UserError(f"device {device!r} is not a torch device: use cpu, cuda or cuda:N") from exc
    try:
        return tc.to(dev)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(
            f"device {device}: cannot place the transcoder there ({one_line(exc)}); use device cpu"
        ) from exc
