"""Capture: outputs unchanged, attention equal to a literal recomputation, exact restoration."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from vl_core.capture import Capture, CaptureError, ProbedMultiheadAttention
from vl_core.clip import ClipBackbone
from vl_core.testing import TINY_HEADS, TINY_LAYERS, TINY_WIDTH

ALL_LAYERS = range(TINY_LAYERS)


def all_attention_names(clip: ClipBackbone) -> list[str]:
    return [clip.text_attention_name(layer) for layer in ALL_LAYERS]


def literal_attention(x: Tensor, w_q: Tensor, b_q: Tensor, w_k: Tensor, b_k: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d) + causal mask) per head, written out: ``[batch, heads, L, L]``."""
    _, length, width = x.shape
    head_dim = width // TINY_HEADS
    q = x @ w_q.T + b_q
    k = x @ w_k.T + b_k
    causal = torch.full((length, length), float("-inf")).triu(1)
    per_head = []
    for h in range(TINY_HEADS):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(head_dim) + causal
        exp = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
        per_head.append(exp / exp.sum(dim=-1, keepdim=True))
    return torch.stack(per_head, dim=1)


def attention_input_norm(clip: ClipBackbone, layer: int) -> nn.Module:
    """The layer norm whose output is the attention's input in pre-norm CLIP blocks."""
    block: Any = clip.text_layers[layer]
    return block.layer_norm1 if clip.family == "hf" else block.ln_1  # type: ignore[no-any-return]


def qk_weights(clip: ClipBackbone, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    block: Any = clip.text_layers[layer]
    if clip.family == "hf":
        attn = block.self_attn
        return attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias
    w_q, w_k, _ = block.attn.in_proj_weight.chunk(3)
    b_q, b_k, _ = block.attn.in_proj_bias.chunk(3)
    return w_q, b_q, w_k, b_k


def hooks_everywhere(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._forward_hooks_with_kwargs)
        for m in model.modules()
    )


# --- outputs unchanged -------------------------------------------------------------------------


def test_capturing_attention_does_not_change_outputs(
    clip: ClipBackbone, texts: tuple[str, ...]
) -> None:
    ids = clip.tokenize([*texts, "word " * 90]).ids
    with torch.no_grad():
        reference = clip.encode_text(ids)
        with Capture(clip.model, attentions=all_attention_names(clip)) as cap:
            captured = clip.encode_text(ids)
    assert len(cap.attentions) == TINY_LAYERS
    # exactly: HF returns its own weights; open_clip's probe returns the original module's value
    assert torch.equal(captured, reference)


def test_capturing_attention_with_grad_does_not_change_outputs(
    clip: ClipBackbone, texts: tuple[str, ...]
) -> None:
    ids = clip.tokenize(texts).ids
    with torch.no_grad():
        reference = clip.encode_text(ids)
    names = all_attention_names(clip)[-2:]
    with torch.enable_grad(), Capture(clip.model, attentions=names) as cap:
        captured = clip.encode_text(ids)
    assert torch.equal(captured, reference)
    for name in names:  # recorded as they were computed, not detached
        assert cap.attentions[name].shape == (len(texts), TINY_HEADS, 77, 77)


# --- attention equals a literal recomputation ----------------------------------------------------


def test_captured_attention_equals_literal_recomputation(
    clip: ClipBackbone, texts: tuple[str, ...]
) -> None:
    ids = clip.tokenize(texts).ids
    norm_inputs: dict[int, Tensor] = {}
    handles = [
        attention_input_norm(clip, layer).register_forward_hook(
            lambda module, args, output, layer=layer: norm_inputs.__setitem__(layer, output)
        )
        for layer in ALL_LAYERS
    ]
    try:
        with torch.no_grad(), Capture(clip.model, attentions=all_attention_names(clip)) as cap:
            clip.encode_text(ids)
    finally:
        for handle in handles:
            handle.remove()
    for layer in ALL_LAYERS:
        probs = cap.attentions[clip.text_attention_name(layer)]
        expected = literal_attention(norm_inputs[layer], *qk_weights(clip, layer))
        assert probs.shape == (len(texts), TINY_HEADS, 77, 77)
        torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
        assert torch.all(probs.triu(1) == 0)  # causal
        torch.testing.assert_close(probs.sum(-1), torch.ones(len(texts), TINY_HEADS, 77))
        assert probs[:, :, 1:].max() < 0.999  # non-trivial beyond the first query (forced 1)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask_kind", ["float", "bool", "padding", "none"])
def test_probe_matches_multihead_attention(batch_first: bool, mask_kind: str) -> None:
    """The re-implementation against PyTorch's own need_weights=True path, for every mask kind."""
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(TINY_WIDTH, TINY_HEADS, batch_first=batch_first).eval()
    batch, length = 3, 6
    x = torch.randn(batch, length, TINY_WIDTH)
    if not batch_first:
        x = x.transpose(0, 1)
    causal = torch.ones(length, length, dtype=torch.bool).triu(1)
    kwargs: dict[str, Any] = {}
    if mask_kind == "float":
        kwargs["attn_mask"] = torch.zeros(length, length).masked_fill(causal, float("-inf"))
    elif mask_kind == "bool":
        kwargs["attn_mask"] = causal
    elif mask_kind == "padding":
        kwargs["key_padding_mask"] = torch.zeros(batch, length, dtype=torch.bool)
        kwargs["key_padding_mask"][1, -2:] = True
    probe = ProbedMultiheadAttention(mha)
    with torch.no_grad():
        out, weights = mha(x, x, x, need_weights=True, average_attn_weights=False, **kwargs)
        fast_out, _ = mha(x, x, x, need_weights=False, **kwargs)
        probe_out, probe_weights = probe(x, x, x, average_attn_weights=False, **kwargs)
        literal_out, probs = probe._literal(
            x, x, x, kwargs.get("key_padding_mask"), kwargs.get("attn_mask"), False
        )
    assert probe_weights is not None
    torch.testing.assert_close(probe_weights, weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(probs, weights, rtol=0, atol=1e-6)
    torch.testing.assert_close(literal_out, out, rtol=0, atol=1e-5)
    assert torch.equal(probe_out, fast_out)  # the value handed on is the module's own


# --- restoration ----------------------------------------------------------------------------------


def _snapshot(model: nn.Module) -> list[tuple[str, int]]:
    return [(name, id(module)) for name, module in model.named_modules()]


def test_leaving_the_context_restores_the_model(clip: ClipBackbone) -> None:
    model = clip.model
    before = _snapshot(model)
    assert hooks_everywhere(model) == 0
    names = all_attention_names(clip)
    originals = [model.get_submodule(name) for name in names]
    inner = f"{names[1]}.q_proj" if clip.family == "hf" else f"{names[1]}.out_proj"
    with Capture(model, outputs=[inner, names[0]], attentions=names):
        assert hooks_everywhere(model) > 0
        if clip.family == "openclip":  # swapped for probes sharing the very same module
            for name, original in zip(names, originals, strict=True):
                probe = model.get_submodule(name)
                assert isinstance(probe, ProbedMultiheadAttention)
                assert probe.inner is original
    assert _snapshot(model) == before  # same module objects under the same names
    assert [model.get_submodule(name) for name in names] == originals
    assert hooks_everywhere(model) == 0
    if clip.family == "openclip":
        assert all(type(module) is nn.MultiheadAttention for module in originals)


def test_exception_inside_the_context_restores_the_model(
    clip: ClipBackbone, texts: tuple[str, ...]
) -> None:
    model = clip.model
    before = _snapshot(model)
    ids = clip.tokenize(texts[:2]).ids
    with torch.no_grad():
        reference = clip.encode_text(ids)

    def run_then_fail() -> None:
        with Capture(model, attentions=all_attention_names(clip)), torch.no_grad():
            clip.encode_text(ids)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_then_fail()
    assert _snapshot(model) == before
    assert hooks_everywhere(model) == 0
    with torch.no_grad():
        assert torch.equal(clip.encode_text(ids), reference)


def test_failure_while_entering_restores_the_model(clip: ClipBackbone, hf_dir: Path) -> None:
    model = clip.model
    before = _snapshot(model)
    names = all_attention_names(clip)
    capture = Capture(model, attentions=names)
    original_attach = capture._attach_attention
    calls = 0

    def attach_then_fail(name: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise CaptureError("simulated failure on the third module")
        original_attach(name)

    capture._attach_attention = attach_then_fail  # type: ignore[method-assign]
    with pytest.raises(CaptureError, match="simulated"), capture:
        pass
    assert _snapshot(model) == before
    assert hooks_everywhere(model) == 0


def test_capture_cannot_be_entered_twice(clip: ClipBackbone) -> None:
    capture = Capture(clip.model, attentions=all_attention_names(clip)[:1])
    with capture, pytest.raises(CaptureError, match="already active"), capture:
        pass
    assert hooks_everywhere(clip.model) == 0


# --- output capture -------------------------------------------------------------------------------


def test_output_capture_equals_a_manual_hook(clip: ClipBackbone, texts: tuple[str, ...]) -> None:
    ids = clip.tokenize(texts).ids
    attn = clip.text_attention_name(1)
    inner = f"{attn}.q_proj" if clip.family == "hf" else "transformer.resblocks.1.mlp.c_fc"
    targets = [inner, attn, clip.text_attention_name(2)]
    manual: dict[str, Any] = {}
    modules = dict(clip.model.named_modules())
    handles = [
        modules[name].register_forward_hook(
            lambda module, args, output, name=name: manual.__setitem__(name, output)
        )
        for name in targets
    ]
    try:
        with torch.no_grad():
            clip.encode_text(ids)
    finally:
        for handle in handles:
            handle.remove()
    # attention 2 is also captured: for open_clip its output then comes from the probe
    with (
        torch.no_grad(),
        Capture(clip.model, outputs=targets, attentions=[clip.text_attention_name(2)]) as cap,
    ):
        clip.encode_text(ids)
    assert torch.equal(cap.outputs[inner], manual[inner])
    for name in targets[1:]:  # attention modules return tuples: the first element is kept
        assert isinstance(manual[name], tuple)
        assert torch.equal(cap.outputs[name], manual[name][0])
    cap.clear()
    assert cap.outputs == {}
    assert cap.attentions == {}


# --- errors ----------------------------------------------------------------------------------------


def test_unknown_module_names_raise(clip: ClipBackbone) -> None:
    with pytest.raises(CaptureError, match=r"no\.such\.module"):
        Capture(clip.model, outputs=["no.such.module"])
    with pytest.raises(CaptureError, match=r"layers\.99"):
        Capture(clip.model, attentions=["text_model.encoder.layers.99.self_attn"])
    assert hooks_everywhere(clip.model) == 0


def test_module_without_weights_raises_at_forward(clip: ClipBackbone) -> None:
    block = "text_model.encoder.layers.0.mlp" if clip.family == "hf" else "transformer.resblocks.0"
    with (
        pytest.raises(CaptureError, match="returned no attention weights"),
        Capture(clip.model, attentions=[block]),
        torch.no_grad(),
    ):
        clip.encode_text(clip.tokenize(["a cat"]).ids)
    assert hooks_everywhere(clip.model) == 0


def test_hf_sdpa_model_is_refused(hf_dir: Path) -> None:
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(hf_dir, attn_implementation="sdpa", local_files_only=True)
    name = "text_model.encoder.layers.0.self_attn"
    with pytest.raises(CaptureError, match="eager") as info, Capture(model, attentions=[name]):
        pass
    assert "sdpa" in str(info.value)
    assert hooks_everywhere(model) == 0
