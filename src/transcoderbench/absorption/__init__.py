"""First-letter feature absorption (SAEBench's method from "A is for Absorption"), done right for transcoders.

``run_absorption(lm, transcoders, options)`` returns one JSON-ready result per transcoder; see
docs/absorption.md for the method, the transcoder adaptation and the output fields.
"""

from transcoderbench.absorption.options import AbsorptionOptions
from transcoderbench.absorption.run import run_absorption

__all__ = ["AbsorptionOptions", "run_absorption"]
