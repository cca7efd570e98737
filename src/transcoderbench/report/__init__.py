"""Outputs a researcher reads: metrics JSON, plain-language summaries, suggestions, comparisons."""
