"""SmolLM2 (any Llama-architecture HF folder) as a TransformerLens ``HookedTransformer``, offline.

SAELens and SAEBench run on TransformerLens models, and TransformerLens does not list SmolLM2.
It does know the Llama architecture, so the config is filled in from the HF ``config.json`` the
way TransformerLens fills it for Llama, and the weights go through its own ``convert_llama_weights``,
without any folding or centring (``from_pretrained_no_processing``'s behaviour), so every hook
sees what the HF model computes. ``check_against_hf`` returns the largest logit difference.

Runs in the peer virtual environments (TransformerLens 3.x); imports nothing of transcoderbench.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast


def hooked_model(model_dir: str, device: str = "cpu") -> tuple[HookedTransformer, torch.nn.Module]:
    """The TransformerLens model and the HF model it was converted from."""
    raw = json.loads((Path(model_dir) / "config.json").read_text())
    if raw.get("model_type") != "llama":
        raise SystemExit(f"{model_dir}/config.json: expected a Llama-architecture model, got {raw.get('model_type')}")
    # transformers 5 writes rope_parameters; transformers 4.x (older TransformerLens 3 releases need it)
    # reads only rope_theta and would silently fall back to 10,000, so it is set on the config.
    rope_theta = raw.get("rope_theta") or raw["rope_parameters"]["rope_theta"]
    config = AutoConfig.from_pretrained(model_dir)
    config.rope_theta = rope_theta
    hf = AutoModelForCausalLM.from_pretrained(model_dir, config=config, torch_dtype=torch.float32).eval()
    c = hf.config
    head_dim = c.hidden_size // c.num_attention_heads
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size,
        d_head=head_dim,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=min(c.max_position_embeddings, 2048),
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn=c.hidden_act,
        n_key_value_heads=(c.num_key_value_heads if c.num_key_value_heads != c.num_attention_heads else None),
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=head_dim,
        rotary_base=int(rope_theta),
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        model_name="SmolLM2-135M",
        device=device,
        dtype=torch.float32,
    )
    tokenizer = _tokenizer(Path(model_dir))
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        convert_llama_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    return model.to(device).eval(), hf


def _tokenizer(model_dir: Path) -> PreTrainedTokenizerFast:
    """The fast tokenizer with the folder's special tokens (transformers 5's ``TokenizersBackend``
    class name in ``tokenizer_config.json`` is unknown to transformers 4.x, which older
    TransformerLens 3 releases pin). Saved to a
    temporary folder and read back, because TransformerLens reloads it by ``name_or_path``."""
    special = json.loads((model_dir / "tokenizer_config.json").read_text())
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"), **{k: special[k] for k in names if k in special}
    )
    folder = tempfile.mkdtemp(prefix="smollm2-tokenizer-")
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def check_against_hf(model: HookedTransformer, hf: torch.nn.Module, tokens: torch.Tensor) -> float:
    """Largest absolute logit difference between the converted and the HF model on ``tokens``."""
    return float((model(tokens) - hf(tokens).logits).abs().max())
