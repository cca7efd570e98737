"""The absorption phase's settings now live with every other setting, in ``transcoderbench.config``.

Re-exported here so ``from transcoderbench.absorption.options import AbsorptionOptions`` keeps working.
"""

from transcoderbench.config import (
    CPU_BATCH_SIZE,
    CPU_TEST_WORDS,
    CPU_TRAIN_WORDS,
    CPU_WORDS_PER_CONTEXT,
    GPU_BATCH_SIZE,
    AbsorptionOptions,
)

__all__ = [
    "CPU_BATCH_SIZE",
    "CPU_TEST_WORDS",
    "CPU_TRAIN_WORDS",
    "CPU_WORDS_PER_CONTEXT",
    "GPU_BATCH_SIZE",
    "AbsorptionOptions",
]
