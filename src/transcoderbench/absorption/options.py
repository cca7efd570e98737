"""Settings of the first-letter absorption phase: one dataclass behind the flags and the JSON.

Defaults are SAEBench's (``AbsorptionEvalConfig`` and the absorption calculator), except the
word budgets, the LM batch size and the sharing of in-context examples: those default to
``None`` = "fit the device", i.e. SAEBench's full budget on a GPU and a budget that finishes in
a few minutes on a small CPU machine (see :meth:`AbsorptionOptions.resolved`).

Every field name starts with ``absorption_`` (or ``full_absorption_``) so the flags can sit
next to the evaluation's own (``--batch_size``, ``--device``) on the same command line.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from transcoderbench.errors import UserError
from transcoderbench.options import opt

#: CPU budget. With SAEBench's probe recipe, SmolLM2 at layer 10 needs ~3,000 training words for
#: 21-25 letters to reach test F1 > 0.6 (1,500 give 16-20: too close to the 20 needed); 1,000
#: test words give each scored letter tens of probe-positive words. About 4,000 prompts: 11-12 s
#: measured on a quiet 2-core CPU with shared in-context prefixes (several times longer when busy).
CPU_TRAIN_WORDS = 3000
CPU_TEST_WORDS = 1000
#: Words sharing one draw of in-context examples (their ~80-token prefix runs once): 32 cost ~3.6
#: token positions per word instead of ~82, and give the same probe quality as 16 on SmolLM2.
CPU_WORDS_PER_CONTEXT = 32
CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 64  # SAEBench's batch size for collecting probe activations


@dataclass
class AbsorptionOptions:
    """First-letter absorption (SAEBench's method, adapted to transcoders)"""

    absorption_seed: int = opt(42, "seed for the word split, the in-context examples and probe training")
    absorption_train_words: int | None = opt(
        None,
        "words to train the probes on, from the training split (4/5 of the letter-only vocabulary) "
        "(default: 3000 on CPU, all on GPU)",
    )
    absorption_test_words: int | None = opt(
        None,
        "words to test the probes and measure absorption on, from the test split (the other 1/5) "
        "(default: 1000 on CPU, all on GPU)",
    )
    absorption_words_per_context: int | None = opt(
        None,
        "words that share one set of in-context examples, whose prefix then runs once for all of them "
        "(default: 32 on CPU; 1 on GPU, as in SAEBench, where each word draws its own examples)",
    )
    absorption_batch_size: int | None = opt(
        None, "prompts per language-model forward pass (default: 32 on CPU, 64 on GPU)"
    )
    absorption_icl_examples: int = opt(10, "in-context examples before each word")
    absorption_prompt_template: str = opt(
        "{word} has the first letter:", "prompt template; activations are read at the word's token"
    )
    absorption_max_k: int = opt(10, "largest k tried by k-sparse probing to find each letter's main latents")
    absorption_f1_jump: float = opt(
        0.03, "k-sparse probing adds a latent only while test F1 improves by more than this"
    )
    absorption_min_probe_f1: float = opt(
        0.6, "a letter is scored only if the ground-truth probe's test F1 exceeds this"
    )
    absorption_min_letters: int = opt(
        20, "fewest scored letters for a headline number; with fewer, the output says why instead"
    )
    absorption_cos_threshold: float = opt(
        0.1, "absorption fraction: a latent can absorb only if its row's cosine with the probe is at least this"
    )
    full_absorption_cos_threshold: float = opt(
        0.025, "full absorption: the top-projecting latent's row must have at least this cosine with the probe"
    )
    absorption_proportion_threshold: float = opt(
        0.4, "absorbing latents must carry at least this fraction of the word's probe projection"
    )
    absorption_max_absorbers: int = opt(3, "most latents that together absorb one word (absorption fraction)")
    absorption_probe_epochs: int = opt(50, "epochs of ground-truth probe training")
    absorption_probe_lr: float = opt(0.01, "ground-truth probe learning rate (Adam, decaying to 1e-5)")
    absorption_probe_batch_size: int = opt(64, "ground-truth probe batch size")
    absorption_probe_weight_decay: float = opt(1e-4, "ground-truth probe weight decay")
    absorption_sparse_l1: float = opt(0.01, "L1 penalty of the latent probe that ranks latents for k-sparse probing")
    absorption_sparse_epochs: int = opt(50, "epochs of the L1 latent probe")
    absorption_sparse_batch_size: int = opt(4096, "batch size of the L1 latent probe")
    absorption_cache: bool = opt(True, "reuse cached probes and activations (--no-absorption-cache recomputes them)")
    absorption_cache_dir: str | None = opt(
        None, "cache folder (default: $TRANSCODERBENCH_CACHE/absorption or ~/.cache/transcoderbench/absorption)"
    )
    absorption_input_decoder_ridge: float = opt(1e-4, "transcoders: ridge of the fitted input decoder, per latent")
    absorption_bootstrap_resamples: int = opt(1000, "bootstrap resamples of the words for intervals; 0: none")
    absorption_bootstrap_seed: int = opt(0, "seed of the bootstrap over words")

    def resolved(self, device_type: str) -> AbsorptionOptions:
        """A copy with every ``None`` budget filled for ``device_type`` ("cpu", "cuda", ...), checked."""
        gpu = device_type != "cpu"
        filled = dataclasses.replace(
            self,
            absorption_train_words=self.absorption_train_words
            if self.absorption_train_words is not None
            else (0 if gpu else CPU_TRAIN_WORDS),
            absorption_test_words=self.absorption_test_words
            if self.absorption_test_words is not None
            else (0 if gpu else CPU_TEST_WORDS),
            absorption_words_per_context=self.absorption_words_per_context
            if self.absorption_words_per_context is not None
            else (1 if gpu else CPU_WORDS_PER_CONTEXT),
            absorption_batch_size=self.absorption_batch_size
            if self.absorption_batch_size is not None
            else (GPU_BATCH_SIZE if gpu else CPU_BATCH_SIZE),
        )
        filled.check()
        return filled

    def check(self) -> None:
        """Refuse settings that cannot work, naming the flag."""
        positive = {
            "absorption_words_per_context": self.absorption_words_per_context,
            "absorption_batch_size": self.absorption_batch_size,
            "absorption_icl_examples": self.absorption_icl_examples,
            "absorption_max_k": self.absorption_max_k,
            "absorption_min_letters": self.absorption_min_letters,
            "absorption_max_absorbers": self.absorption_max_absorbers,
            "absorption_probe_epochs": self.absorption_probe_epochs,
            "absorption_probe_batch_size": self.absorption_probe_batch_size,
            "absorption_sparse_epochs": self.absorption_sparse_epochs,
            "absorption_sparse_batch_size": self.absorption_sparse_batch_size,
        }
        for name, value in positive.items():
            if value is not None and value < 1:
                raise UserError(f"--{name.replace('_', '-')} {value}: must be at least 1")
        for name in ("absorption_train_words", "absorption_test_words"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise UserError(f"--{name.replace('_', '-')} {value}: must be 0 (all words) or more")
        if self.absorption_prompt_template.count("{word}") != 1:
            raise UserError(
                f"--absorption-prompt-template {self.absorption_prompt_template!r}: must contain {{word}} exactly once"
            )
        if "\n" in self.absorption_prompt_template:
            raise UserError("--absorption-prompt-template: must be one line (examples are separated by newlines)")
        if self.absorption_probe_lr <= 0:
            raise UserError(f"--absorption-probe-lr {self.absorption_probe_lr}: must be positive")
