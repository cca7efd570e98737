"""Outputs a researcher reads: summaries, suggestions, comparisons and report.html.

Every module here reads typed records (``transcoderbench.results``) parsed from the metrics JSON,
never the dicts by string path; the evaluation keeps writing JSON-ready dicts.
"""
