"""Evaluation: typed runs (``runs``), the streaming pass (``engine``), the splice stage (``splice``), the API (``api``).

Imports run one way: ``runs`` <- ``engine``, ``splice`` <- ``api``.
"""

from transcoderbench.evaluate.api import (
    EvaluationResult,
    choose_model,
    evaluate_transcoders,
    load_transcoders,
    package_versions,
    transcoder_metrics,
)
from transcoderbench.evaluate.engine import evaluate_batch, prepare_runs, run_pass
from transcoderbench.evaluate.runs import AccumulatorFactory, BatchStage, PassStats, TranscoderRun
from transcoderbench.evaluate.splice import SplicePlan, plan_downstream

__all__ = [
    "AccumulatorFactory",
    "BatchStage",
    "EvaluationResult",
    "PassStats",
    "SplicePlan",
    "TranscoderRun",
    "choose_model",
    "evaluate_batch",
    "evaluate_transcoders",
    "load_transcoders",
    "package_versions",
    "plan_downstream",
    "prepare_runs",
    "run_pass",
    "transcoder_metrics",
]
