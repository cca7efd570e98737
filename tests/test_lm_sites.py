"""Sites and capture on real tiny models, checked against hand-written math and the model's own outputs.

References are computed in float64 numpy straight from the modules' weights (not by calling the
modules), so a site that reads the wrong tensor, keeps a gain, or drops a bias cannot pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import FAMILIES, make_tiny_model, tiny_input_ids
from tiny_tokenizer import make_tiny_tokenizer
from transcoderbench.errors import UserError
from transcoderbench.lm import capture, hooks, load_language_model, resolve_site, site_tensor, stop_point

LAYER = 1
NAMED = [
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_mlp_in",
    "ln2.hook_normalized",
    "mlp.hook_in",
    "hook_mlp_out",
    "hook_resid_post",
]
# The gained pre-MLP norm output in Hugging Face module-path form (what Gemma Scope 2 configs write).
HF_GAINED = {
    "gemma2": "model.layers.{L}.pre_feedforward_layernorm.output",
    "gemma3": "model.layers.{L}.pre_feedforward_layernorm.output",
    "llama": "model.layers.{L}.post_attention_layernorm.output",
    "gpt2": "transformer.h.{L}.ln_2.output",
}
ATTENTION = {"gemma2": "self_attn", "gemma3": "self_attn", "llama": "self_attn", "gpt2": "attn"}


# ----------------------------------------------------------------------------- float64 references


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def rms_normalize(x: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)


def layer_normalize(x: np.ndarray, eps: float) -> np.ndarray:
    centred = x - x.mean(-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def ref_normalized(lm, layer: int, resid_mid: np.ndarray) -> np.ndarray:
    config = lm.model.config.get_text_config()
    if lm.family == "gpt2":
        return layer_normalize(resid_mid, config.layer_norm_epsilon)
    return rms_normalize(resid_mid, config.rms_norm_eps)


def ref_gained(lm, layer: int, normalized: np.ndarray) -> np.ndarray:
    block = lm.layers[layer]
    if lm.family in ("gemma2", "gemma3"):
        return normalized * (1.0 + np64(block.pre_feedforward_layernorm.weight))
    if lm.family == "llama":
        return normalized * np64(block.post_attention_layernorm.weight)
    return normalized * np64(block.ln_2.weight) + np64(block.ln_2.bias)


def ref_mlp(lm, layer: int, gained: np.ndarray) -> np.ndarray:
    """The MLP module's output, from its weights."""
    mlp = lm.layers[layer].mlp
    if lm.family == "gpt2":  # Conv1D: x @ W + b
        hidden = gelu_tanh(gained @ np64(mlp.c_fc.weight) + np64(mlp.c_fc.bias))
        return hidden @ np64(mlp.c_proj.weight) + np64(mlp.c_proj.bias)
    act = silu if lm.family == "llama" else gelu_tanh
    gate = gained @ np64(mlp.gate_proj.weight).T
    up = gained @ np64(mlp.up_proj.weight).T
    return (act(gate) * up) @ np64(mlp.down_proj.weight).T


def ref_mlp_out(lm, layer: int, gained: np.ndarray) -> np.ndarray:
    """``hook_mlp_out``: the MLP output, then (Gemma) the post-MLP norm with its (1 + w) gain."""
    out = ref_mlp(lm, layer, gained)
    if lm.family in ("gemma2", "gemma3"):
        post = lm.layers[layer].post_feedforward_layernorm
        eps = lm.model.config.get_text_config().rms_norm_eps
        out = rms_normalize(out, eps) * (1.0 + np64(post.weight))
    return out


def close(actual: torch.Tensor | np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    actual = np64(actual) if isinstance(actual, torch.Tensor) else actual
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def hidden_states(lm, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The model's own per-layer residual stream (index L = input of layer L)."""
    with torch.no_grad():
        return lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states


def capture_names(lm, names, ids=None, *, stop_early=True):
    ids = tiny_input_ids() if ids is None else ids
    return capture(lm, ids, torch.ones_like(ids), [resolve_site(lm, n) for n in names], stop_early=stop_early)


# ----------------------------------------------------------------------------- every site row


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stop_early", [True, False])
def test_every_site_row_matches_hand_computation(tiny_lm, family, stop_early):
    lm = tiny_lm(family)
    ids = tiny_input_ids()
    names = [f"blocks.{LAYER}.{hook}" for hook in NAMED] + [HF_GAINED[family].format(L=LAYER)]
    got = capture_names(lm, names, ids, stop_early=stop_early)
    assert all(t.dtype == torch.float32 and t.shape == (2, 12, lm.d_model) for t in got.values())
    g = {name.removeprefix(f"blocks.{LAYER}."): t for name, t in got.items()}
    hs = hidden_states(lm, ids)

    # resid_pre is the model's own residual stream entering the layer; resid_mid differs from it.
    torch.testing.assert_close(g["hook_resid_pre"], hs[LAYER].float(), rtol=0, atol=0)
    assert torch.equal(g["hook_resid_mid"], g["hook_mlp_in"])
    assert (g["hook_resid_mid"] - g["hook_resid_pre"]).abs().max() > 1e-3

    resid_mid = np64(g["hook_resid_mid"])
    normalized = ref_normalized(lm, LAYER, resid_mid)
    close(g["ln2.hook_normalized"], normalized)
    gained = ref_gained(lm, LAYER, normalized)
    close(g["mlp.hook_in"], gained)
    assert torch.equal(g[HF_GAINED[family].format(L=LAYER)], g["mlp.hook_in"])
    mlp_out = ref_mlp_out(lm, LAYER, gained)
    close(g["hook_mlp_out"], mlp_out, rtol=1e-4)

    # Closing the loop: resid_mid + mlp_out (both from the captured resid_mid, by hand) must be
    # the model's own residual stream after the layer, so resid_mid itself must be right.
    close(g["hook_resid_post"], resid_mid + mlp_out, rtol=1e-4)
    torch.testing.assert_close(g["hook_resid_post"], hs[LAYER + 1].float(), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gemma2", "gemma3", "llama", "gpt2"])
def test_normalized_has_no_gain_and_gained_output_has_it(tiny_lm, family):
    lm = tiny_lm(family)
    got = capture_names(lm, [f"blocks.{LAYER}.ln2.hook_normalized", f"blocks.{LAYER}.mlp.hook_in"])
    normalized, gained = got[f"blocks.{LAYER}.ln2.hook_normalized"], got[f"blocks.{LAYER}.mlp.hook_in"]
    assert (normalized - gained).abs().max() > 0.1  # the two Gemma Scope input conventions differ
    block = lm.layers[LAYER]
    if family in ("gemma2", "gemma3"):
        expected = normalized * (1.0 + block.pre_feedforward_layernorm.weight.float())
    elif family == "llama":
        expected = normalized * block.post_attention_layernorm.weight.float()
    else:
        expected = normalized * block.ln_2.weight.float() + block.ln_2.bias.float()
    torch.testing.assert_close(gained, expected, rtol=1e-5, atol=1e-5)
    # Gain-free means mean square m / (m + eps) (rms norms; m = mean square of the input), or
    # zero mean and variance v / (v + eps) (GPT-2's layer norm; v = variance of the input).
    x = capture_names(lm, [f"blocks.{LAYER}.hook_resid_mid"])[f"blocks.{LAYER}.hook_resid_mid"].double()
    eps = resolve_site(lm, f"blocks.{LAYER}.ln2.hook_normalized").eps
    if family == "gpt2":
        v = x.var(-1, unbiased=False)
        assert normalized.double().mean(-1).abs().max() < 1e-5
        torch.testing.assert_close(normalized.double().var(-1, unbiased=False), v / (v + eps), rtol=1e-5, atol=0)
    else:
        m = x.pow(2).mean(-1)
        torch.testing.assert_close(normalized.double().pow(2).mean(-1), m / (m + eps), rtol=1e-5, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_module_path_sites(tiny_lm, family):
    lm = tiny_lm(family)
    block = lm.layer_paths[LAYER]
    got = capture_names(lm, [f"{block}.mlp.input", f"{block}.mlp.output", f"blocks.{LAYER}.mlp.hook_in"])
    assert torch.equal(got[f"{block}.mlp.input"], got[f"blocks.{LAYER}.mlp.hook_in"])
    close(got[f"{block}.mlp.output"], ref_mlp(lm, LAYER, np64(got[f"{block}.mlp.input"])), rtol=1e-4)
    site = resolve_site(lm, f"{block}.mlp.output")
    assert (site.module_path, site.direction, site.layer, site.normalize) == (f"{block}.mlp", "output", LAYER, None)


def test_short_module_path_resolves_under_model_root(tiny_lm):
    lm = tiny_lm("llama")
    site = resolve_site(lm, "layers.2.mlp.output")
    assert site.module_path == "model.layers.2.mlp" and site.layer == 2
    site = resolve_site(lm, "model.norm.output")
    assert site.module_path == "model.norm" and site.layer is None


def test_gemma_scope_2_paths_work_on_gemma3_with_vision(tiny_model_dir, tmp_path):
    """Gemma Scope 2 writes model.layers.L...; the multimodal class keeps them under model.language_model."""
    mm = load_language_model(str(tiny_model_dir("gemma3-multimodal")))
    assert type(mm.model).__name__ == "Gemma3ForConditionalGeneration"
    assert mm.family == "gemma3" and mm.layer_paths[0] == "model.language_model.layers.0"
    name = f"model.layers.{LAYER}.pre_feedforward_layernorm.output"
    site = resolve_site(mm, name)
    assert site.module_path == f"model.language_model.layers.{LAYER}.pre_feedforward_layernorm"
    assert site.layer == LAYER

    # The same text weights as a Gemma3ForCausalLM: the same names must give the same tensors.
    from transformers import Gemma3ForCausalLM

    text = Gemma3ForCausalLM(mm.model.config.text_config)
    prefix = "model.language_model."
    state = {"model." + k[len(prefix) :]: v for k, v in mm.model.state_dict().items() if k.startswith(prefix)}
    state["lm_head.weight"] = mm.model.lm_head.weight
    text.load_state_dict(state, strict=True)
    text.save_pretrained(tmp_path / "text")
    make_tiny_tokenizer().save_pretrained(tmp_path / "text")
    causal = load_language_model(str(tmp_path / "text"))
    assert causal.layer_paths[0] == "model.layers.0"

    names = [name, f"blocks.{LAYER}.ln2.hook_normalized", f"blocks.{LAYER}.hook_mlp_out"]
    got_mm, got_causal = capture_names(mm, names), capture_names(causal, names)
    for n in names:
        torch.testing.assert_close(got_mm[n], got_causal[n], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- early stop


def _pre_hook_counter(lm, paths):
    """Count entries into modules (forward pre-hooks): 'ran' means the module was entered."""
    counts = dict.fromkeys(paths, 0)
    handles = []
    for path in paths:

        def bump(*_, path=path):
            counts[path] += 1

        handles.append(lm.model.get_submodule(path).register_forward_pre_hook(bump))
    return counts, handles


def _stop_cases(family):
    """(site names, module paths that must not run, module paths that must run), per family."""
    attn = ATTENTION[family]
    head = "lm_head"
    L = lambda i: HF_GAINED[family].split(".{L}")[0] + f".{i}"  # noqa: E731 - block path by index
    return [
        (["blocks.0.hook_resid_mid"], [f"{L(0)}.mlp", L(1), head], [f"{L(0)}.{attn}"]),
        (["blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_in"], [f"{L(0)}.mlp", L(1)], []),
        (["blocks.1.hook_mlp_out", "blocks.0.hook_mlp_in"], [L(2), head], [f"{L(1)}.mlp"]),
        (["blocks.0.hook_resid_mid", "blocks.1.hook_resid_post"], [L(2), head], [f"{L(1)}.mlp"]),
        # An input site: the pass stops in the block's pre-hook, before any of it runs.
        (["blocks.2.hook_resid_pre"], [f"{L(2)}.{attn}", head], [f"{L(1)}.mlp"]),
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_early_stop_matches_full_forward_and_skips_later_modules(tiny_lm, family):
    lm = tiny_lm(family)
    for names, must_not_run, must_run in _stop_cases(family):
        counts, handles = _pre_hook_counter(lm, must_not_run + must_run)
        try:
            early = capture_names(lm, names, stop_early=True)
            assert all(counts[p] == 0 for p in must_not_run), (names, counts)
            assert all(counts[p] == 1 for p in must_run), (names, counts)
            full = capture_names(lm, names, stop_early=False)
            assert all(counts[p] == 1 for p in must_not_run), (names, counts)
        finally:
            for handle in handles:
                handle.remove()
        assert full.keys() == early.keys()
        for n in names:
            assert torch.equal(early[n], full[n]), n


def test_stop_inside_a_child_with_unknown_internal_order(tiny_lm):
    lm = tiny_lm("llama")
    names = ["model.layers.1.mlp.down_proj.input", "model.layers.1.mlp.up_proj.output", "blocks.0.hook_resid_mid"]
    sites = [resolve_site(lm, n) for n in names]
    stop = stop_point(lm, sites)
    assert (stop.module_path, stop.direction) == ("model.layers.1.mlp", "output")
    counts, handles = _pre_hook_counter(lm, ["model.layers.2", "model.layers.1.mlp.down_proj"])
    try:
        early = capture(lm, tiny_input_ids(), None, sites)
        assert counts == {"model.layers.2": 0, "model.layers.1.mlp.down_proj": 1}
    finally:
        for handle in handles:
            handle.remove()
    full = capture(lm, tiny_input_ids(), None, sites, stop_early=False)
    for n in names:
        assert torch.equal(early[n], full[n])
    mlp = lm.layers[1].mlp
    gained = np64(capture_names(lm, ["blocks.1.mlp.hook_in"])["blocks.1.mlp.hook_in"])
    close(early["model.layers.1.mlp.up_proj.output"], gained @ np64(mlp.up_proj.weight).T)
    gate = gained @ np64(mlp.gate_proj.weight).T
    close(early["model.layers.1.mlp.down_proj.input"], silu(gate) * (gained @ np64(mlp.up_proj.weight).T))


def test_sites_outside_the_blocks(tiny_lm):
    lm = tiny_lm("llama")
    ids = tiny_input_ids()
    hs = hidden_states(lm, ids)
    # Embeddings run before every block, so they do not prevent the early stop.
    sites = [resolve_site(lm, n) for n in ("model.embed_tokens.output", "blocks.0.hook_resid_mid")]
    assert stop_point(lm, sites).name == "blocks.0.hook_resid_mid"
    got = capture(lm, ids, None, sites)
    torch.testing.assert_close(got["model.embed_tokens.output"], hs[0], rtol=0, atol=0)
    # The final norm's place in the pass is unknown to the site table: run the whole pass.
    sites = [resolve_site(lm, n) for n in ("model.norm.output", "blocks.0.hook_resid_mid")]
    assert stop_point(lm, sites) is None
    got = capture(lm, ids, None, sites)
    torch.testing.assert_close(got["model.norm.output"], hs[-1], rtol=0, atol=0)


def test_unlisted_architecture_runs_by_module_path(tmp_path):
    path = tmp_path / "opt"
    make_tiny_model("opt").save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    lm = load_language_model(str(path))
    assert lm.family == "other" and lm.layer_paths[1] == "model.decoder.layers.1"
    with pytest.raises(UserError, match=r"not mapped .* 'model\.decoder\.layers\.1\.output'"):
        resolve_site(lm, "blocks.1.hook_mlp_out")
    names = ["model.decoder.layers.1.fc2.output", "model.decoder.layers.0.final_layer_norm.input"]
    sites = [resolve_site(lm, n) for n in names]
    stop = stop_point(lm, sites)  # child order unknown for OPT: stop after the whole block
    assert (stop.module_path, stop.direction) == ("model.decoder.layers.1", "output")
    counts, handles = _pre_hook_counter(lm, ["model.decoder.layers.2"])
    try:
        early = capture(lm, tiny_input_ids(), None, sites)
        assert counts["model.decoder.layers.2"] == 0
    finally:
        handles[0].remove()
    full = capture(lm, tiny_input_ids(), None, sites, stop_early=False)
    for n in names:
        assert torch.equal(early[n], full[n])
    fc2 = lm.model.get_submodule("model.decoder.layers.1.fc2")
    fc1_out = capture(lm, tiny_input_ids(), None, [resolve_site(lm, "model.decoder.layers.1.fc2.input")])
    expected = np64(fc1_out["model.decoder.layers.1.fc2.input"]) @ np64(fc2.weight).T + np64(fc2.bias)
    close(early["model.decoder.layers.1.fc2.output"], expected)


# ----------------------------------------------------------------------------- hooks and errors


def _hook_state(model: torch.nn.Module):
    return {
        name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
        for name, m in model.named_modules()
        if m._forward_hooks or m._forward_pre_hooks
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_no_hooks_remain(tiny_lm, family):
    lm = tiny_lm(family)
    before = _hook_state(lm.model)
    names = [f"blocks.{LAYER}.{hook}" for hook in NAMED]
    capture_names(lm, names, stop_early=True)
    assert _hook_state(lm.model) == before
    capture_names(lm, names, stop_early=False)
    assert _hook_state(lm.model) == before
    # An error inside the forward pass (token id outside the vocabulary).
    bad = tiny_input_ids()
    bad[0, 3] = 10_000
    with pytest.raises((IndexError, RuntimeError)):
        capture_names(lm, names, bad)
    assert _hook_state(lm.model) == before
    # An error in the caller's own code while hooks are registered.
    with pytest.raises(ZeroDivisionError):
        with hooks(lm, [resolve_site(lm, n) for n in names], {}, None):
            assert _hook_state(lm.model) != before
            1 / 0
    assert _hook_state(lm.model) == before


def test_module_that_runs_twice_is_rejected_and_hooks_removed(tiny_lm):
    lm = tiny_lm("gemma3")  # its rotary embedding runs once per attention type
    before = _hook_state(lm.model)
    with pytest.raises(UserError, match="more than once"):
        capture_names(lm, ["model.rotary_emb.output"])
    assert _hook_state(lm.model) == before


def test_module_that_never_runs_is_an_error(tiny_model_dir):
    lm = load_language_model(str(tiny_model_dir("gemma3-multimodal")))
    with pytest.raises(UserError, match="did not run"):
        capture_names(lm, ["model.vision_tower.output", "blocks.0.hook_resid_mid"])


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("blocks.1.hook_foo", "unknown site"),
        ("resid_mid", "unknown site"),
        ("blocks.3.hook_mlp_out", "out of range"),
        ("blocks.99.ln2.hook_normalized", "out of range"),
        ("model.layers.1.nonexistent.output", "no module"),
        ("model.layers.7.mlp.input", "no module"),
        ("model.layers.1.mlp.sideways", "unknown site"),
    ],
)
def test_bad_site_names_are_one_line_user_errors(tiny_lm, name, fragment):
    lm = tiny_lm("llama")
    with pytest.raises(UserError) as info:
        resolve_site(lm, name)
    message = str(info.value)
    assert fragment in message and repr(name) in message and "\n" not in message
    if fragment != "out of range":
        assert "blocks.L.ln2.hook_normalized" in message and ".output" in message  # lists valid forms


def test_site_tensor_formulas_in_reduced_precision():
    """bf16 captures are normalised in float32, as the models' own norms do."""
    from transcoderbench.lm import Site

    x = (torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0)) * 7 + 2).to(torch.bfloat16)
    rms = Site("r", "m", "input", 0, "rms", 1e-6)
    ln = Site("l", "m", "input", 0, "layernorm", 1e-5)
    plain = Site("p", "m", "input", 0)
    x64 = np64(x)
    close(site_tensor(rms, x), rms_normalize(x64, 1e-6), rtol=1e-6)
    close(site_tensor(ln, x), layer_normalize(x64, 1e-5), rtol=1e-5)
    assert site_tensor(plain, x).dtype == torch.float32 and torch.equal(site_tensor(plain, x), x.float())


def test_tiny_models_have_non_trivial_norm_gains():
    """Guard for the tests above: a unit (or 1 + 0) gain would let a gain bug pass."""
    for family in FAMILIES:
        model = make_tiny_model(family)
        for name, param in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                base = 0.0 if family.startswith("gemma") or name.endswith("bias") else 1.0
                assert (param - base).abs().max() > 0.1, (family, name)
