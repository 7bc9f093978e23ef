"""Gradients w.r.t. captured attention: one batched pass = per-sample autograd = finite differences;
partial autograd = full autograd."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vl_core.capture import Capture
from vl_core.clip import ClipBackbone
from vl_core.gradients import batched_grad, partial_autograd
from vl_core.testing import TINY_HEADS

TEXTS = ("a photo of a cat...", "a red T-shirt on a chair", "don't")
LAST_THREE = (-3, -2, -1)


def attention_gradients(
    clip: ClipBackbone, image_emb: Tensor, ids: Tensor, *, partial: bool = True
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``(scores, attentions, d scores / d attentions)`` for the last three text layers."""
    names = [clip.text_attention_name(layer) for layer in LAST_THREE]
    with Capture(clip.model, attentions=names) as cap:
        if partial:
            with partial_autograd(clip.model, clip.text_layers[-3]):
                scores = clip.cosine(image_emb, clip.encode_text(ids))
                attentions = [cap.attentions[name] for name in names]
                return scores, attentions, batched_grad(scores, attentions)
        scores = clip.cosine(image_emb, clip.encode_text(ids))
        attentions = [cap.attentions[name] for name in names]
        return scores, attentions, batched_grad(scores, attentions)


def test_batched_grad_equals_per_sample_autograd(clip: ClipBackbone, make_pixels: Any) -> None:
    pixels = make_pixels(clip, len(TEXTS))
    ids = clip.tokenize(TEXTS).ids
    with torch.no_grad():
        image_emb = clip.encode_image(pixels)
    _, attentions, grads = attention_gradients(clip, image_emb, ids)
    assert [g.shape for g in grads] == [a.shape for a in attentions]
    assert all(g.shape == (len(TEXTS), TINY_HEADS, 77, 77) for g in grads)
    names = [clip.text_attention_name(layer) for layer in LAST_THREE]
    for b in range(len(TEXTS)):
        with (
            Capture(clip.model, attentions=names) as cap,
            partial_autograd(clip.model, clip.text_layers[-3]),
        ):
            score = clip.cosine(image_emb[b : b + 1], clip.encode_text(ids[b : b + 1]))
            single = torch.autograd.grad(score[0], [cap.attentions[name] for name in names])
        for layer, (batched, alone) in enumerate(zip(grads, single, strict=True)):
            assert alone.shape == (1, TINY_HEADS, 77, 77)
            assert alone.abs().max() > 1e-3, (b, layer)  # a gradient worth comparing
            torch.testing.assert_close(batched[b], alone[0], rtol=0, atol=1e-6)


def test_batched_grad_of_a_hand_made_function() -> None:
    """d/dx_b sum_j w_j x_bj^2 = 2 w x_b, and an unused input gets zeros."""
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]], requires_grad=True)
    unused = torch.ones(3, 4, requires_grad=True)
    w = torch.tensor([0.5, 2.0])
    grads = batched_grad((w * x**2).sum(dim=1), [x, unused])
    assert grads[0].tolist() == [[1.0, 8.0], [3.0, -4.0], [0.5, 0.0]]
    assert torch.equal(grads[1], torch.zeros(3, 4))


def test_batched_grad_checks_shapes() -> None:
    x = torch.ones(3, 2, requires_grad=True)
    with pytest.raises(ValueError, match="vector"):
        batched_grad(x * 2, [x])
    with pytest.raises(ValueError, match=r"inputs\[0\] has batch 3, scores 2"):
        batched_grad(x[:2].sum(dim=1), [x])


# --- finite differences --------------------------------------------------------------------------

WIDTH, HEADS, LENGTH, BATCH = 8, 2, 5, 3


class ToyTower(nn.Module):
    """Two pre-norm causal self-attention blocks, as open_clip's text tower, pooled at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(WIDTH) for _ in range(2))
        self.attns = nn.ModuleList(
            nn.MultiheadAttention(WIDTH, HEADS, batch_first=True) for _ in range(2)
        )
        mask = torch.full((LENGTH, LENGTH), float("-inf")).triu(1)
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        for norm, attn in zip(self.norms, self.attns, strict=True):
            h = norm(x)
            x = x + attn(h, h, h, need_weights=False, attn_mask=self.mask)[0]
        return x[:, -1]


def literal_tower(tower: ToyTower, x: Tensor, edit: Callable[[int, Tensor], Tensor]) -> Tensor:
    """The same function written from its definition, with the probabilities explicit:
    ``edit(layer, probs)`` may change them before they are applied to the values."""
    head_dim = WIDTH // HEADS
    for layer, (norm, module) in enumerate(zip(tower.norms, tower.attns, strict=True)):
        attn = cast(nn.MultiheadAttention, module)
        h = cast(Tensor, norm(x))
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        q, k, v = (
            (h @ w.T + b).view(BATCH, LENGTH, HEADS, head_dim).transpose(1, 2)
            for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v))
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + cast(Tensor, tower.mask)
        probs = edit(layer, torch.softmax(scores, dim=-1))
        heads = (probs @ v).transpose(1, 2).reshape(BATCH, LENGTH, WIDTH)
        x = x + cast(Tensor, attn.out_proj(heads))
    return x[:, -1]


def test_gradient_matches_central_finite_differences() -> None:
    torch.manual_seed(0)
    tower = ToyTower().double().eval().requires_grad_(False)
    x = torch.randn(BATCH, LENGTH, WIDTH, dtype=torch.float64)
    target = torch.randn(BATCH, WIDTH, dtype=torch.float64)

    def score(pooled: Tensor) -> Tensor:
        return F.cosine_similarity(pooled, target, dim=-1)

    names = ["attns.0", "attns.1"]
    with Capture(tower, attentions=names) as cap, torch.enable_grad():
        pooled = tower(x.requires_grad_(True))
        grads = batched_grad(score(pooled), [cap.attentions[n] for n in names])
    with torch.no_grad():
        # the literal function is the model's function
        x.requires_grad_(False)
        unchanged = literal_tower(tower, x, lambda layer, probs: probs)
        torch.testing.assert_close(unchanged, pooled, rtol=0, atol=1e-12)

    eps = 1e-6
    generator = torch.Generator().manual_seed(1)
    for layer in (0, 1):
        for _ in range(6):
            b, h = (int(torch.randint(n, (1,), generator=generator)) for n in (BATCH, HEADS))
            i, j = (int(torch.randint(LENGTH, (1,), generator=generator)) for _ in range(2))

            def nudge(step: float, at: tuple[int, ...] = (layer, b, h, i, j)) -> Tensor:
                def edit(which: int, probs: Tensor) -> Tensor:
                    if which != at[0]:
                        return probs
                    probs = probs.clone()
                    probs[at[1:]] += step
                    return probs

                with torch.no_grad():
                    return score(literal_tower(tower, x, edit))[at[1]]

            numeric = (nudge(eps) - nudge(-eps)) / (2 * eps)
            analytic = grads[layer][b, h, i, j]
            assert float(analytic) == pytest.approx(float(numeric), abs=1e-8), (layer, b, h, i, j)
    assert all(g.abs().max() > 1e-3 for g in grads)


# --- partial autograd ------------------------------------------------------------------------------


def test_partial_autograd_equals_full_autograd(fresh_clip: ClipBackbone, make_pixels: Any) -> None:
    clip = fresh_clip
    params = list(clip.model.parameters())
    pixels = make_pixels(clip, len(TEXTS))
    ids = clip.tokenize(TEXTS).ids
    with torch.no_grad():
        image_emb = clip.encode_image(pixels)

    # full autograd: every parameter requires grad, the whole graph is recorded
    clip.model.requires_grad_(True)
    _, full_attentions, full = attention_gradients(clip, image_emb, ids, partial=False)
    assert all(a.grad_fn is not None for a in full_attentions)

    # partial: from text_layers[-3] on, activations only; flags restored afterwards
    flags = [i % 2 == 0 for i in range(len(params))]  # a mixed pattern must survive too
    for param, flag in zip(params, flags, strict=True):
        param.requires_grad_(flag)
    _, _, partial = attention_gradients(clip, image_emb, ids, partial=True)
    assert [p.requires_grad for p in params] == flags
    for a, b in zip(partial, full, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert a.abs().max() > 1e-3

    # no graph before the start layer, none through the parameters, even under an outer no_grad
    clip.model.requires_grad_(True)
    names = [clip.text_attention_name(layer) for layer in range(clip.num_text_layers)]
    start = clip.num_text_layers - 3
    with (
        Capture(clip.model, attentions=names) as cap,
        torch.no_grad(),
        partial_autograd(clip.model, clip.text_layers[start]),
    ):
        assert not any(p.requires_grad for p in params)
        text = clip.encode_text(ids)
        torch.autograd.backward([text.sum()])
    assert text.requires_grad
    for layer, name in enumerate(names):
        attention = cap.attentions[name]
        if layer < start:  # ran as a plain forward
            assert attention.grad_fn is None
            assert not attention.requires_grad
        else:
            assert attention.grad_fn is not None
    assert all(p.grad is None for p in params)
    assert all(p.requires_grad for p in params)  # restored


def test_partial_autograd_restores_flags_after_an_exception() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    inside: list[bool] = []

    def run_then_fail() -> None:
        with partial_autograd(model, model[1]):
            inside.extend(p.requires_grad for p in model.parameters())
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_then_fail()
    assert inside == [False] * 4
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]
    assert not model[1]._forward_pre_hooks


def test_partial_autograd_makes_the_start_input_a_leaf() -> None:
    torch.manual_seed(0)
    first, last = nn.Linear(3, 3), nn.Linear(3, 1)
    model = nn.Sequential(first, nn.Tanh(), last)
    seen: list[Tensor] = []
    model[1].register_forward_hook(lambda module, args, output: seen.append(args[0]))
    x = torch.randn(4, 3)
    with partial_autograd(model, model[1]):
        out = model(x).sum()
        leaf = seen[0]
        assert leaf.requires_grad
        assert leaf.grad_fn is None  # nothing before it is recorded
        (grad,) = torch.autograd.grad(out, [leaf])
    with torch.no_grad():
        expected = (1 - torch.tanh(first(x)) ** 2) * last.weight  # d out / d tanh input
    torch.testing.assert_close(grad, expected)
