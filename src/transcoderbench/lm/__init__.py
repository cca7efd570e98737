"""Language models: load one, name its sites, capture them in one (early-stopped) forward pass."""

from transcoderbench.lm.capture import StopForward, capture, hooks, site_widths, stop_point
from transcoderbench.lm.loading import (
    BUILTIN_MODEL,
    LanguageModel,
    load_language_model,
    parse_dtype,
    resolve_model_name,
)
from transcoderbench.lm.sites import Site, resolve_site, site_tensor

__all__ = [
    "BUILTIN_MODEL",
    "LanguageModel",
    "Site",
    "StopForward",
    "capture",
    "hooks",
    "load_language_model",
    "parse_dtype",
    "resolve_model_name",
    "resolve_site",
    "site_tensor",
    "site_widths",
    "stop_point",
]
