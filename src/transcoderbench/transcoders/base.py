"""What every transcoder architecture shares: weights, sites, nested prefixes, and decoding.

An architecture only says how pre-activations become latent activations (``activation``).
Everything else (optional per-token input standardisation, optional affine skip, decoding of
every nested prefix for the cost of one decode) lives here, so formats and metrics can treat
all architectures alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

# Decode by gathering active decoder rows when at most this fraction of latents is active
# (measured on CPU at d_sae 4608: the gather wins well above the densities real transcoders have).
SPARSE_DECODE_MAX_DENSITY = 0.1

# The legacy seed code divides by (std + 1e-5) when standardising inputs; keep it bit-compatible.
STANDARDIZE_EPS = 1e-5


class Transcoder(nn.Module):
    """A sparse dictionary that reads ``input_site`` and predicts ``output_site``.

    Weights follow the ``x @ W`` convention: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``.
    ``prefix_ends`` are the cumulative ends of the nested (Matryoshka) groups; the last one is
    always ``d_sae``. Non-Matryoshka transcoders have the single prefix ``(d_sae,)`` unless the
    caller asks for others.
    """

    architecture: ClassVar[str] = ""

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        *,
        input_site: str,
        output_site: str,
        prefix_ends: list[int] | tuple[int, ...] | None = None,
        input_unit_norm: bool = False,
        constant_norm_rescale: bool = False,
        W_skip: Tensor | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        d_in, d_sae = W_enc.shape
        if W_dec.shape[0] != d_sae:
            raise ValueError(f"W_dec has {W_dec.shape[0]} rows but W_enc has {d_sae} columns")
        d_out = W_dec.shape[1]
        if tuple(b_enc.shape) != (d_sae,) or tuple(b_dec.shape) != (d_out,):
            raise ValueError(
                f"bias shapes b_enc {tuple(b_enc.shape)}, b_dec {tuple(b_dec.shape)} do not match "
                f"W_enc [{d_in}, {d_sae}] and W_dec [{d_sae}, {d_out}]"
            )
        if W_skip is not None and tuple(W_skip.shape) != (d_in, d_out):
            raise ValueError(f"skip connection has shape {tuple(W_skip.shape)}, expected [{d_in}, {d_out}]")
        self.W_enc = nn.Parameter(W_enc.detach().clone())
        self.b_enc = nn.Parameter(b_enc.detach().clone())
        self.W_dec = nn.Parameter(W_dec.detach().clone())
        self.b_dec = nn.Parameter(b_dec.detach().clone())
        self.W_skip = None if W_skip is None else nn.Parameter(W_skip.detach().clone())
        self.input_site = input_site
        self.output_site = output_site
        self.input_unit_norm = bool(input_unit_norm)
        self.constant_norm_rescale = bool(constant_norm_rescale)
        if self.input_unit_norm and self.constant_norm_rescale:
            raise ValueError("input_unit_norm and constant_norm_rescale cannot both be on")
        self.prefix_ends = check_prefix_ends(prefix_ends, d_sae)
        self.info: dict[str, Any] = dict(info or {})

    # ----------------------------------------------------------------- shapes
    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    @property
    def is_matryoshka(self) -> bool:
        return len(self.prefix_ends) > 1

    # ------------------------------------------------------------- the math
    def activation(self, pre: Tensor) -> Tensor:
        """Latent activations from pre-activations ``x @ W_enc + b_enc`` (zeros where inactive)."""
        raise NotImplementedError

    def standardize(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Legacy ``input_unit_norm``: centre and scale each token; returns the stats to undo it.

        SAELens ``constant_norm_rescale`` instead scales each token to norm ``sqrt(d_in)``:
        ``x * sqrt(d_in) / ||x||``, undone by ``y * ||x|| / sqrt(d_in)`` (mean 0, std ``||x||/sqrt(d_in)``).
        """
        if self.constant_norm_rescale:
            scale = x.norm(dim=-1, keepdim=True) / self.d_in**0.5
            return x / scale, (torch.zeros_like(scale), scale)
        if not self.input_unit_norm:
            return x, None
        mean = x.mean(dim=-1, keepdim=True)
        centred = x - mean
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + STANDARDIZE_EPS), (mean, std)

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations ``[N, d_sae]`` for source activations ``x [N, d_in]``."""
        x_in, _ = self.standardize(x)
        return self.activation(x_in @ self.W_enc + self.b_enc)

    def decode_prefixes(
        self, f: Tensor, x: Tensor, prefix_ends: tuple[int, ...] | None = None, active: ActiveLatents | None = None
    ) -> Tensor:
        """Reconstructions from every nested prefix, ``[P, N, d_out]``; the last uses all latents.

        The group decodes are summed cumulatively, so all P reconstructions cost one full decode.
        ``x`` is the source activation, needed to undo input standardisation and for the skip.
        When few latents are active (the usual case) only their decoder rows are read (a gather,
        ``embedding_bag``); ``active`` is ``active_latents(f)`` if the caller already has it.
        """
        ends = self.prefix_ends if prefix_ends is None else check_prefix_ends(prefix_ends, self.d_sae)
        n = f.shape[0]
        if active is None and f.numel():
            active = active_latents(f)  # one pass; a dense f falls back to the dense decode below
        if active is not None and active.rows.numel() <= SPARSE_DECODE_MAX_DENSITY * f.numel():
            y = sparse_prefix_decode(active, self.W_dec, ends, n) + self.b_dec
        else:
            starts = (0,) + ends[:-1]
            parts = torch.stack([f[:, s:e] @ self.W_dec[s:e] for s, e in zip(starts, ends)])
            y = parts.cumsum(dim=0) + self.b_dec
        return self._finish(y, x)

    def decode(self, f: Tensor, x: Tensor) -> Tensor:
        """The full reconstruction ``[N, d_out]``."""
        return self._finish(f @ self.W_dec + self.b_dec, x)

    def _finish(self, y: Tensor, x: Tensor) -> Tensor:
        _, stats = self.standardize(x)
        if stats is not None:
            mean, std = stats
            y = y * std + mean
        if self.W_skip is not None:
            y = y + x @ self.W_skip
        return y

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(y_hat, f)`` for source activations ``x``."""
        f = self.encode(x)
        return self.decode(f, x), f

    # ------------------------------------------------------- serialisation
    def hyperparameters(self) -> dict[str, Any]:
        """Architecture-specific settings that are not tensors (saved in the native config)."""
        return {}

    def extra_tensors(self) -> dict[str, Tensor]:
        """Architecture-specific tensors beyond the four weights (saved in the native file)."""
        return {}

    def tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.W_skip is not None:
            out["W_skip"] = self.W_skip
        out.update(self.extra_tensors())
        return {k: v.detach() for k, v in out.items()}

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: architecture, sites, widths and prefixes."""
        return {
            "architecture": self.architecture,
            "input_site": self.input_site,
            "output_site": self.output_site,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "d_out": self.d_out,
            "prefix_ends": list(self.prefix_ends),
            "input_unit_norm": self.input_unit_norm,
            "affine_skip": self.W_skip is not None,
            **({"constant_norm_rescale": True} if self.constant_norm_rescale else {}),
            **self.hyperparameters(),
        }

    def nonfinite_tensors(self) -> list[str]:
        """Names of weights that contain NaN or Inf (such a checkpoint is refused)."""
        return [k for k, v in self.tensors().items() if v.is_floating_point() and not torch.isfinite(v).all()]


@dataclass
class ActiveLatents:
    """The nonzero latents of ``f [N, d_sae]`` in row-major order: token, latent and value of each."""

    rows: Tensor
    cols: Tensor
    values: Tensor


def active_latents(f: Tensor) -> ActiveLatents:
    """Sparse view of latent activations (one pass over ``f``); decoders and sparsity metrics share it."""
    rows, cols = f.nonzero(as_tuple=True)
    return ActiveLatents(rows=rows, cols=cols, values=f[rows, cols])


def sparse_prefix_decode(active: ActiveLatents, W_dec: Tensor, ends: tuple[int, ...], n: int) -> Tensor:
    """Cumulative per-prefix decodes ``[P, n, d_out]`` (no bias) from the active latents' decoder rows.

    One ``embedding_bag`` sums each (token, group)'s rows weighted by the activations; ``nonzero``'s
    row-major order keeps every bag contiguous. The cumulative sum over groups gives every prefix.
    """
    P = len(ends)
    if P == 1:
        bags = active.rows
    else:
        bags = active.rows * P + torch.searchsorted(torch.tensor(ends, device=W_dec.device), active.cols, right=True)
    offsets = torch.searchsorted(bags, torch.arange(n * P, device=W_dec.device))
    parts = torch.nn.functional.embedding_bag(
        active.cols, W_dec, offsets, mode="sum", per_sample_weights=active.values.to(W_dec.dtype)
    )
    return parts.reshape(n, P, -1).cumsum(dim=1).transpose(0, 1)


def check_prefix_ends(prefix_ends: list[int] | tuple[int, ...] | None, d_sae: int) -> tuple[int, ...]:
    """Validate cumulative prefix ends: strictly increasing, positive, ending at ``d_sae``."""
    if prefix_ends is None or len(prefix_ends) == 0:
        return (d_sae,)
    ends = tuple(int(e) for e in prefix_ends)
    if ends[0] <= 0 or any(b <= a for a, b in zip(ends, ends[1:])) or ends[-1] != d_sae:
        raise ValueError(f"prefix ends {list(ends)} must increase strictly from above 0 to d_sae={d_sae}")
    return ends


def group_sizes_to_ends(sizes: list[int]) -> tuple[int, ...]:
    """``[a, b, c]`` per-group sizes -> cumulative ends ``(a, a+b, a+b+c)``."""
    ends, total = [], 0
    for s in sizes:
        total += int(s)
        ends.append(total)
    return tuple(ends)
