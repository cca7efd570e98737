"""Training Matryoshka BatchTopK, BatchTopK and TopK transcoders (``transcoderbench train``)."""

from transcoderbench.train.config import TrainConfig, make_config, parse_group_sizes
from transcoderbench.train.trainer import TrainResult, TranscoderTrainer, train

__all__ = ["TrainConfig", "TrainResult", "TranscoderTrainer", "make_config", "parse_group_sizes", "train"]
