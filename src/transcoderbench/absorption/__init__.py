"""First-letter feature absorption (SAEBench's method from "A is for Absorption"), done right for transcoders.

``run_absorption(lm, transcoders, options)`` returns one JSON-ready result per transcoder; see
docs/absorption.md for the method, the transcoder adaptation and the output fields.
``paired_difference(a, b)`` compares two results (paired bootstrap over words, a winner only when
the interval excludes 0) and ``comparability_problems(a, b)`` says when they cannot be compared.
"""

from transcoderbench.absorption.options import AbsorptionOptions
from transcoderbench.absorption.run import run_absorption
from transcoderbench.absorption.uncertainty import comparability_problems, headline_intervals, paired_difference

__all__ = ["AbsorptionOptions", "comparability_problems", "headline_intervals", "paired_difference", "run_absorption"]
