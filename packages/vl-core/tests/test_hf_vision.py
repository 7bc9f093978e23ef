"""The fast pooled image features of an HF CLIP (``vl_core._hf_vision``) equal the model's own
forward: the last layer for the class token only, fused attention (issue 16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from vl_core import _hf_vision
from vl_core._hf_vision import fast_path_applies, pooled_image_features
from vl_core.clip import ClipBackbone
from vl_core.factory import load_clip


def _plain(vision: Any, pixels: Tensor) -> Tensor:
    """The model's own forward."""
    return vision(pixel_values=pixels).pooler_output  # type: ignore[no-any-return]


def _literal(vision: Any, pixels: Tensor) -> Tensor:
    """CLIP's vision tower written out in the model's dtype: every token of every layer, eager
    attention, then the class token. (The model's own eager attention takes its softmax in
    float32 even for a float64 model, so it is a float32-accurate reference only.)"""
    hidden = vision.pre_layrnorm(vision.embeddings(pixels))
    for layer in vision.encoder.layers:
        attention, states = layer.self_attn, layer.layer_norm1(hidden)
        batch, length, width = states.shape
        heads = attention.num_heads
        q, k, v = (
            proj(states).view(batch, length, heads, width // heads).transpose(1, 2)
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
        )
        weights = torch.softmax(q @ k.transpose(-1, -2) * attention.scale, dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, length, width)
        hidden = hidden + attention.out_proj(mixed)
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    return vision.post_layernorm(hidden[:, 0])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"]
)
def test_fast_pooled_features_equal_the_literal_tower(
    hf_dir: Path, make_pixels: Any, dtype: torch.dtype, tol: float
) -> None:
    backbone = load_clip(f"hf:{hf_dir}", device="cpu", dtype=dtype)
    vision: Any = backbone.model.vision_model
    pixels = make_pixels(backbone, 3)
    assert fast_path_applies(vision)
    with torch.no_grad():
        fast, literal = pooled_image_features(vision, pixels), _literal(vision, pixels)
        plain = _plain(vision, pixels)
    assert fast.shape == literal.shape == plain.shape
    scale = float(literal.abs().max())
    torch.testing.assert_close(fast, literal, rtol=tol, atol=tol * scale)
    # the model's own forward agrees to float32 accuracy (its softmax runs in float32)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5 * scale)
    # and through the backbone: the fast embedding against the plain one
    with torch.no_grad():
        on = backbone.encode_image(pixels)
        backbone.fast_image = False  # type: ignore[attr-defined]
        off = backbone.encode_image(pixels)
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-5 * float(off.abs().max()))


def test_the_plain_switch_runs_the_models_own_forward(
    hf_clip: ClipBackbone, make_pixels: Any
) -> None:
    model: Any = hf_clip.model
    pixels = make_pixels(hf_clip, 2)
    hf_clip.fast_image = False  # type: ignore[attr-defined]
    try:
        with torch.no_grad():
            own = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
            assert torch.equal(hf_clip.encode_image(pixels), own)
    finally:
        hf_clip.fast_image = True  # type: ignore[attr-defined]


def test_fast_path_gradients_equal_the_models(hf_dir: Path, make_pixels: Any) -> None:
    backbone = load_clip(f"hf:{hf_dir}", device="cpu", dtype=torch.float64)
    vision: Any = backbone.model.vision_model
    grads = []
    for run in (pooled_image_features, _literal):
        pixels = make_pixels(backbone, 2).requires_grad_(True)
        run(vision, pixels).square().sum().backward()  # type: ignore[no-untyped-call]
        grads.append(pixels.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_a_hook_on_the_tower_falls_back_to_the_models_forward(
    hf_clip: ClipBackbone, make_pixels: Any
) -> None:
    vision: Any = hf_clip.model.vision_model
    seen: list[Tensor] = []
    last = vision.encoder.layers[-1]
    handle = last.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        assert not fast_path_applies(vision)
        with torch.no_grad():
            hf_clip.encode_image(make_pixels(hf_clip, 1))
    finally:
        handle.remove()
    assert len(seen) == 1  # the hook saw the last layer run: the model's own forward ran
    assert fast_path_applies(vision)


def test_attention_dropout_in_training_mode_falls_back(hf_dir: Path) -> None:
    backbone = load_clip(f"hf:{hf_dir}", device="cpu", dtype=torch.float32)
    vision: Any = backbone.model.vision_model
    for layer in vision.encoder.layers:
        layer.self_attn.dropout = 0.1
    assert fast_path_applies(vision)  # eval mode: dropout is off either way
    vision.train()
    assert not fast_path_applies(vision)


def test_another_layout_falls_back(hf_clip: ClipBackbone, monkeypatch: pytest.MonkeyPatch) -> None:
    vision: Any = hf_clip.model.vision_model
    monkeypatch.delattr(vision.encoder.layers[0].self_attn, "q_proj")
    assert not fast_path_applies(vision)
    assert _hf_vision.__all__ == ["fast_path_applies", "pooled_image_features"]


def test_patch_embedding_by_matrix_product_equals_the_convolution(
    hf_dir: Path, make_pixels: Any
) -> None:
    backbone = load_clip(f"hf:{hf_dir}", device="cpu", dtype=torch.float64)
    embeddings: Any = backbone.model.vision_model.embeddings
    pixels = make_pixels(backbone, 3)
    with torch.no_grad():
        fast, own = _hf_vision._embed(embeddings, pixels), embeddings(pixels)
    assert fast.shape == own.shape
    torch.testing.assert_close(fast, own, rtol=1e-12, atol=1e-12)


def test_patch_embedding_of_another_size_runs_the_modules_forward(
    hf_clip: ClipBackbone, make_pixels: Any
) -> None:
    embeddings: Any = hf_clip.model.vision_model.embeddings
    pixels = make_pixels(hf_clip, 1)
    bigger = torch.nn.functional.pad(pixels, (0, 4, 0, 4))
    # the module's own error (no interpolation asked for), not a shape error of the fast path
    with pytest.raises(ValueError, match="doesn't match model"):
        _hf_vision._embed(embeddings, bigger)


def test_quick_gelu_in_place_is_bit_identical_and_keeps_gradients(
    hf_clip: ClipBackbone,
) -> None:
    mlp: Any = hf_clip.model.vision_model.encoder.layers[0].mlp
    assert type(mlp.activation_fn).__name__ == "QuickGELUActivation"
    states = torch.randn(2, 5, mlp.fc1.in_features, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(_hf_vision._mlp(mlp, states), mlp(states))
    # with autograd recording, the buffer is left alone and the gradient is the module's
    grads = []
    for run in (_hf_vision._mlp, lambda m, x: m(x)):
        leaf = states.clone().requires_grad_(True)
        run(mlp, leaf).square().sum().backward()
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


def test_another_activation_runs_the_mlps_forward(hf_clip: ClipBackbone) -> None:
    mlp: Any = hf_clip.model.vision_model.encoder.layers[0].mlp
    states = torch.randn(1, 3, mlp.fc1.in_features, generator=torch.Generator().manual_seed(4))
    original = mlp.activation_fn
    mlp.activation_fn = torch.nn.GELU()
    try:
        with torch.no_grad():
            assert torch.equal(_hf_vision._mlp(mlp, states), mlp(states))
            expected = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(states)))
            assert torch.equal(_hf_vision._mlp(mlp, states), expected)
    finally:
        mlp.activation_fn = original


def test_run_beside_other_work_the_tower_takes_the_freed_threads(
    hf_clip: ClipBackbone, make_pixels: Any
) -> None:
    # vl_core.overlap: once the caller waits, the layer loop's checkpoint widens the helper
    from threading import Event, Timer

    from vl_core.overlap import alongside
    from vl_core.testing import intra_op_threads

    vision: Any = hf_clip.model.vision_model
    pixels = make_pixels(hf_clip, 1)
    go = Event()

    def work() -> tuple[Tensor, int, int]:
        start = torch.get_num_threads()
        go.wait(30)
        with torch.no_grad():
            pooled = pooled_image_features(vision, pixels)
        return pooled, start, torch.get_num_threads()

    with intra_op_threads(3), alongside(work, threads=(2, 1)) as job:
        Timer(0.05, go.set).start()  # the caller waits first, then the tower starts
        pooled, start, end = job.result()
    assert (start, end) == (2, 3)
    with torch.no_grad():
        torch.testing.assert_close(pooled, pooled_image_features(vision, pixels))
