"""Real, tiny Hugging Face model directories (config + safetensors + tokenizer) for tests.

Norm weights and biases are randomised so that a site computed "without gain" cannot pass a
test by accident (fresh Llama norms have gain 1, fresh Gemma norms have gain 1 + 0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3Config,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PreTrainedModel,
    SiglipVisionConfig,
)

from tiny_tokenizer import VOCAB_SIZE, make_tiny_tokenizer

FAMILIES = ("gemma2", "gemma3", "llama", "gpt2")
N_LAYERS = 3
HIDDEN = 32
_SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _gemma_text_kwargs() -> dict:
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=4,  # shorter than test sequences, so sliding layers really slide
        layer_types=["sliding_attention", "full_attention", "sliding_attention"][:N_LAYERS],
        max_position_embeddings=128,
        **_SPECIAL,
    )


def make_config(family: str):
    """The config of a tiny model of ``family``; besides FAMILIES: ``gemma3-multimodal`` (Gemma 3
    with a vision tower, text layers under ``model.language_model``) and ``opt`` (no site table)."""
    if family == "gemma2":
        return Gemma2Config(**_gemma_text_kwargs(), attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    if family == "gemma3":
        return Gemma3TextConfig(**_gemma_text_kwargs())
    if family == "gemma3-multimodal":
        vision = SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        )
        return Gemma3Config(
            text_config=Gemma3TextConfig(**_gemma_text_kwargs()).to_dict(),
            vision_config=vision.to_dict(),
            mm_tokens_per_image=4,
            image_token_index=VOCAB_SIZE - 1,
            boi_token_index=VOCAB_SIZE - 2,
            eoi_token_index=VOCAB_SIZE - 3,
            **_SPECIAL,
        )
    if family == "llama":
        return LlamaConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=HIDDEN,
            intermediate_size=3 * HIDDEN,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rms_norm_eps=1e-5,
            **_SPECIAL,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_embd=HIDDEN,
            n_layer=N_LAYERS,
            n_head=4,
            n_positions=128,
            bos_token_id=1,
            eos_token_id=2,
        )
    if family == "opt":  # an architecture without a site table: only module-path sites apply
        return OPTConfig(
            vocab_size=VOCAB_SIZE,
            hidden_size=HIDDEN,
            word_embed_proj_dim=HIDDEN,
            ffn_dim=2 * HIDDEN,
            num_hidden_layers=N_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=128,
            **_SPECIAL,
        )
    raise ValueError(f"unknown tiny family {family!r}")


def make_tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised model with random (nonzero, non-unit) norm gains and biases."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_config(family), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if "norm" not in leaf and not leaf.startswith("ln_"):
                continue
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                base = 0.0 if family.startswith("gemma") else 1.0  # Gemma's gain is (1 + w)
                weight.copy_(base + 0.5 * torch.randn(weight.shape, generator=generator))
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.copy_(0.3 * torch.randn(bias.shape, generator=generator))
    return model.eval()


def tiny_input_ids(batch: int = 2, seq: int = 12, seed: int = 0) -> torch.Tensor:
    """Token ids starting with BOS (1), the rest ordinary tokens of the tiny vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB_SIZE - 12, (batch, seq), generator=generator)
    ids[:, 0] = 1
    return ids


def make_tiny_model_dir(family: str, path: Path, seed: int = 0) -> Path:
    """Write a loadable HF model directory (config, safetensors weights, tokenizer) to ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    make_tiny_model(family, seed).save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    return path


def _permute_for_gguf(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf reorders Q/K rows for its rotary layout; transformers undoes it."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def make_tiny_gguf(path: Path, seed: int = 0) -> PreTrainedModel:
    """Write a tiny Llama (tied embeddings, like SmolLM2) as an F32 GGUF file; return the HF original.

    Laid out like llama.cpp's converter writes it (tensor names, Q/K permutation, byte-level BPE
    tokenizer metadata), so the file goes through transformers' real GGUF reader.
    """
    import json

    import gguf

    config = make_config("llama")
    config.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.5 * torch.randn(param.shape, generator=generator))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    tok = json.loads(make_tiny_tokenizer().backend_tokenizer.to_str())
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda item: item[1])
    special = {entry["content"] for entry in tok["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if token in special else 1 for token, _ in vocab])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)

    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    state = model.state_dict()
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    for layer in range(config.num_hidden_layers):
        for hf_name, gguf_name in names.items():
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if hf_name == "self_attn.q_proj":
                weight = _permute_for_gguf(weight, config.num_attention_heads)
            elif hf_name == "self_attn.k_proj":
                weight = _permute_for_gguf(weight, config.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{gguf_name}.weight", weight.contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
