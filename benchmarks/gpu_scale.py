"""Gemma-2-2B-size timing: compare two layer-17 transcoders on 1M tokens, against the bare forwards.

Builds a randomly initialised Gemma-2-2B from ``benchmarks/configs/gemma-2-2b.json`` (the real
architecture: same arithmetic, so the same timing; no weights, no network): on the meta device,
then materialised with random weights directly on the target device in bf16. Two fp32 transcoders
with 16384 latents read layer 17: a Gemma-Scope-shaped JumpReLU (``blocks.17.ln2.hook_normalized``
-> ``blocks.17.hook_mlp_out``) and a Matryoshka BatchTopK with 5 nested groups (``hook_mlp_in`` ->
``hook_mlp_out``), thresholds set so about ``--l0`` latents fire per token.

Tokens: a word-level tokenizer over made-up words ``w0 w1 ...`` and a text file of random words,
fed through the library's ordinary data path (``data.dataset`` = that file), so every id below
the tokenizer's size is a real token to the model. Absorption is off: it needs a real tokenizer's
vocabulary (words and their first letters).

It runs ``evaluate_transcoders`` (what ``compare`` runs) with downstream metrics and bootstrap on,
then times the floor on ``--floor_batches`` of the same batches: the clean forward to the logits
plus, per spliced variant (each prefix, zero and mean ablation), the blocks after layer 17 and the
head. It prints tokens/s, wall time, peak GPU memory and ours / floor per token.

    python benchmarks/gpu_scale.py --device cuda          # 1M tokens (about 31 x 32 x 1024)
    python benchmarks/gpu_scale.py --tiny                 # tiny Gemma-2 on CPU, seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import Tensor
from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

from transcoderbench.config import BootstrapOptions, DataConfig, DownstreamConfig, EvalConfig
from transcoderbench.data import resolve_text_source, token_batches
from transcoderbench.evaluate import evaluate_transcoders
from transcoderbench.lm import LanguageModel, capture, resolve_site
from transcoderbench.lm.loading import find_decoder_layers
from transcoderbench.lm.splice import clean_forward, find_head, resume
from transcoderbench.transcoders import JumpReLUTranscoder, MatryoshkaTranscoder, Transcoder

CONFIG = Path(__file__).parent / "configs" / "gemma-2-2b.json"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0, 1, 2 as in Gemma's config
TINY = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "query_pre_attn_scalar": 32,
    "vocab_size": 2000,
    "sliding_window": 16,
}


def word_tokenizer(n_words: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``w0 .. w{n-1}`` (ids from 4), with Gemma's special-token ids."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i + len(SPECIALS) for i in range(n_words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def random_text_file(path: Path, n_words: int, vocab_words: int, seed: int = 0) -> None:
    """Documents of 2000 random words, separated by blank lines (the .txt format's documents)."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for start in range(0, n_words, 2000):
            fh.write(" ".join(f"w{rng.randrange(vocab_words)}" for _ in range(min(2000, n_words - start))) + "\n\n")


def random_gemma2(config: Gemma2Config, device: torch.device, dtype: torch.dtype) -> Gemma2ForCausalLM:
    """Built on the meta device, materialised on ``device`` with random weights (no CPU copy).

    Linear and embedding weights ~ N(0, initializer_range); RMSNorm gains 0 (Gemma's ``1 + w``).
    Buffers (embedding scale, rotary frequencies) are computed, so they are copied from a
    one-layer, two-token shell built on CPU.
    """
    with torch.device("meta"):
        model = Gemma2ForCausalLM(config).to(dtype)  # type: ignore[arg-type]
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.zero_()
            else:
                p.normal_(0.0, config.initializer_range, generator=gen)
        shell_config = copy.deepcopy(config)
        shell_config.num_hidden_layers, shell_config.vocab_size = 1, 2
        shell = Gemma2ForCausalLM(shell_config).to(dtype)  # type: ignore[arg-type]
        shell_buffers = dict(shell.named_buffers())
        for name, buf in model.named_buffers():
            key = name if name in shell_buffers else _first_layer(name)
            buf.copy_(shell_buffers[key].to(device))
    model.eval().requires_grad_(False)
    return model


def _first_layer(name: str) -> str:
    parts = name.split(".")
    return ".".join("0" if i > 0 and parts[i - 1] == "layers" else p for i, p in enumerate(parts))


def build_lm(tiny: bool, device: torch.device, dtype: torch.dtype, vocab_words: int) -> LanguageModel:
    raw = json.loads(CONFIG.read_text())
    if tiny:
        raw.update(TINY)
    config = Gemma2Config(**{k: v for k, v in raw.items() if k not in ("architectures", "torch_dtype")})
    config._attn_implementation = "eager"  # sdpa ignores Gemma 2's attention softcapping (as the library loads it)
    model = random_gemma2(config, device, dtype)
    layers, paths = find_decoder_layers(model, "gemma-2-2b-random")
    tokenizer = word_tokenizer(min(vocab_words, config.vocab_size - len(SPECIALS)))
    return LanguageModel(
        model=model,
        tokenizer=tokenizer,
        name="gemma-2-2b (random init)" if not tiny else "tiny gemma-2 (random init)",
        family="gemma2",
        layers=layers,
        layer_paths=paths,
        device=device,
        dtype=dtype,
        source=str(CONFIG),
        model_type="gemma2",
    )


def make_transcoders(lm: LanguageModel, layer: int, width: int, l0: int, calib_ids: Tensor) -> dict[str, Transcoder]:
    """JumpReLU (Gemma Scope shape) and Matryoshka (5 groups), fp32, thresholds for about ``l0`` active latents."""
    d = lm.d_model
    out_site = f"blocks.{layer}.hook_mlp_out"
    specs = {"jumprelu": f"blocks.{layer}.ln2.hook_normalized", "matryoshka": f"blocks.{layer}.hook_mlp_in"}
    sites = [resolve_site(lm, s) for s in specs.values()]
    got = capture(lm, calib_ids, torch.ones_like(calib_ids), sites)
    g = torch.Generator(device=lm.device).manual_seed(0)
    out: dict[str, Transcoder] = {}
    for (name, site), resolved in zip(specs.items(), sites):
        x = got[resolved.name].reshape(-1, d)[:512].float()  # torch.quantile refuses over 2^24 elements
        W_enc = torch.randn(d, width, generator=g, device=lm.device) / x.norm(dim=1).mean()
        W_dec = torch.randn(width, d, generator=g, device=lm.device) * 0.02
        zeros = torch.zeros(width, device=lm.device), torch.zeros(d, device=lm.device)
        pre = x @ W_enc
        common: dict[str, Any] = {"input_site": site, "output_site": out_site}
        if name == "jumprelu":
            thr = torch.quantile(pre, 1 - l0 / width, dim=0).clamp(min=0)
            out[name] = JumpReLUTranscoder(W_enc, zeros[0], W_dec, zeros[1], **common, threshold=thr)
        else:
            ends = [width // 16, width // 8, width // 4, width // 2, width]
            flat = pre.flatten()
            sample = flat[torch.randperm(flat.numel(), generator=g, device=lm.device)[: 1 << 22]]
            thr_mat = float(torch.quantile(sample, 1 - l0 / width))
            out[name] = MatryoshkaTranscoder(
                W_enc, zeros[0], W_dec, zeros[1], **common, prefix_ends=ends, threshold=thr_mat
            )
    return out


@torch.no_grad()
def floor_per_token(lm: LanguageModel, batches: list, layer: int, n_variants: int) -> float:
    """Seconds per token of the bare forwards spliced evaluation needs (see the module docstring)."""
    head = find_head(lm)
    assert head is not None, "the head was not found"
    total, tokens = 0.0, 0
    for tb in batches:
        ids, mask = tb.input_ids.to(lm.device), tb.attention_mask.to(lm.device)
        clean = clean_forward(lm, ids, mask, [], {layer}, head)  # untimed: the later blocks' arguments
        _sync(lm)
        t0 = time.perf_counter()
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
        for _ in range(n_variants):
            h = resume(lm, clean, layer, clean.block_outputs[layer])
            for rows in h.reshape(-1, h.shape[-1]).split(max(1, (1 << 26) // lm.model.config.vocab_size)):
                torch.log_softmax(head(rows).float(), dim=-1)
        _sync(lm)
        total += time.perf_counter() - t0
        tokens += ids.numel()
    return total / tokens


def _sync(lm: LanguageModel) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny Gemma-2 on CPU (seconds): checks the script runs")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--layer", type=int, default=17)
    parser.add_argument("--l0", type=int, default=64)
    parser.add_argument("--floor_batches", type=int, default=3)
    parser.add_argument("--variants_per_pass", type=int, default=None)
    args = parser.parse_args()
    if args.tiny:
        args.device = args.device or "cpu"
        args.tokens, args.batch_size, args.seq_len = 3 * 4 * 32, 4, 32
        args.width, args.layer, args.l0, args.floor_batches = 512, 2, 16, 1
        args.variants_per_pass = args.variants_per_pass or 4  # the stacked-variant path a GPU takes
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_batches = math.ceil(args.tokens / (args.batch_size * args.seq_len))
    t_build = time.perf_counter()
    lm = build_lm(args.tiny, device, torch.bfloat16, vocab_words=50_000)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "random_words.txt"
        random_text_file(text, (n_batches + 2) * args.batch_size * args.seq_len, len(lm.tokenizer) - len(SPECIALS))
        calib = next(token_batches(resolve_text_source(str(text)), lm.tokenizer, seq_len=args.seq_len, batch_size=4))
        tcs = make_transcoders(lm, args.layer, args.width, args.l0, calib.input_ids.to(device))
        build_s = time.perf_counter() - t_build
        config = EvalConfig(
            data=DataConfig(dataset=str(text), batches=n_batches, batch_size=args.batch_size, seq_len=args.seq_len),
            downstream=DownstreamConfig(downstream=True, variants_per_pass=args.variants_per_pass),
            bootstrap=BootstrapOptions(),
            run_absorption=False,
            progress=False,
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(lm)
        start = time.perf_counter()
        result = evaluate_transcoders(tcs, config, lm=lm, log=lambda msg: None)
        _sync(lm)
        wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        floor_batches = list(
            token_batches(
                resolve_text_source(str(text)),
                lm.tokenizer,
                seq_len=args.seq_len,
                batch_size=args.batch_size,
                n_batches=args.floor_batches,
            )
        )
        n_variants = 2 + sum(len(tc.prefix_ends) for tc in tcs.values())  # one output site: one zero, one mean
        floor = floor_per_token(lm, floor_batches, args.layer, n_variants)
    tokens = result.meta["tokens"]["n_positions"]
    print(f"model {lm.name}: {lm.n_layers} layers, d_model {lm.d_model}, bf16 on {device}; built in {build_s:.1f} s")
    print(f"transcoders at layer {args.layer}: {', '.join(f'{n} ({tc.d_sae} latents)' for n, tc in tcs.items())}")
    print(f"compare (downstream + bootstrap, no absorption): {n_batches} batches x {args.batch_size} x {args.seq_len}")
    print(f"  tokens read        {tokens:,}")
    print(f"  wall time          {wall:.2f} s")
    print(f"  tokens/s           {tokens / wall:,.0f}")
    print(f"  peak GPU memory    {peak:.2f} GiB" if device.type == "cuda" else "  peak GPU memory    n/a (CPU)")
    print(f"  floor              {floor * tokens:.2f} s for the same tokens ({n_variants} spliced variants + clean)")
    print(f"  ratio ours / floor {wall / (floor * tokens):.2f}x")
    for name, m in result.metrics.items():
        print(f"  {name}: fvu {m['fvu']:.4f}, L0 {m['mean_l0']:.1f}, delta loss {m['downstream']['delta_loss']:.4f}")


if __name__ == "__main__":
    main()
