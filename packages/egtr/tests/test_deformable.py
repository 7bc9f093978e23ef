"""egtr.deformable: the fast inference path equals transformers' DeformableDetrModel."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from egtr_testing import randomise, tiny_config
from transformers import DeformableDetrModel
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrFrozenBatchNorm2d,
    MultiScaleDeformableAttention,
)

from egtr import EGTRConfig, EGTRForSceneGraphGeneration
from egtr.deformable import (
    fast_inference_installed,
    install_fast_inference,
    multi_scale_deformable_attention,
    remove_fast_inference,
)

DETECTOR_OUTPUTS = (
    "encoder_last_hidden_state",
    "last_hidden_state",
    "intermediate_hidden_states",
    "intermediate_reference_points",
)
EGTR_OUTPUTS = ("logits", "pred_boxes", "rel_logits", "connectivity_logits", "decoder_queries")


def _random_frozen_batch_norms(model: torch.nn.Module, seed: int = 5) -> None:
    """Give every frozen batch norm its own scale and shift (randomise() only touches parameters;
    the norms' statistics are buffers), of the size trained ResNets have: scales around 1, so
    activations keep their size through the layers and float32 rounding stays comparable."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DeformableDetrFrozenBatchNorm2d):
                n = module.weight.shape[0]
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)


@pytest.fixture(scope="module")
def model() -> EGTRForSceneGraphGeneration:
    torch.manual_seed(0)
    model = EGTRForSceneGraphGeneration(tiny_config()).eval()
    randomise(model, seed=2)
    _random_frozen_batch_norms(model)
    return model


def _plain_detector(model: EGTRForSceneGraphGeneration) -> DeformableDetrModel:
    """transformers' own DeformableDetrModel with the same configuration and weights."""
    detector = DeformableDetrModel(model.config).eval()
    missing, unexpected = detector.load_state_dict(model.model.state_dict(), strict=True)
    assert not missing
    assert not unexpected
    return detector


def _inputs(batch: int = 2, height: int = 64, width: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    pixels = torch.randn(batch, 3, height, width, generator=gen)
    mask = torch.ones(batch, height, width, dtype=torch.long)
    mask[-1, :, width * 3 // 4 :] = 0  # the last image is padded on the right
    mask[-1, height * 7 // 8 :, :] = 0  # and at the bottom
    return pixels, mask


@contextmanager
def _grid_sample_calls() -> Iterator[list[int]]:
    """Count calls of grid_sample (transformers' sampling) while the context is open."""
    calls: list[int] = []
    original = F.grid_sample

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    F.grid_sample = counting
    try:
        yield calls
    finally:
        F.grid_sample = original


# --- the sampling function ---------------------------------------------------------------------


def _sampling_case(
    dtype: torch.dtype, shapes: list[tuple[int, int]], batch: int = 2, queries: int = 37
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    heads, channels, points = 3, 5, 4
    length = sum(h * w for h, w in shapes)
    value = torch.randn(batch, length, heads, channels, generator=gen, dtype=dtype)
    # well outside [0, 1] too: those samples read zeros, partly or wholly
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=gen) * 1.6 - 0.3
    locations[0, 0, 0, :, 0] = 0.0  # exact borders and pixel centres
    locations[0, 0, 0, :, 1] = 1.0
    for level, (h, w) in enumerate(shapes):
        locations[0, 1, :, level, :, 0] = (torch.arange(points) % w + 0.5) / w
        locations[0, 1, :, level, :, 1] = 0.5 / h
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=gen)
    return value, locations.to(dtype), weights.to(dtype)


def _transformers_sampling(
    value: torch.Tensor,
    shapes: list[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    spatial = torch.tensor(shapes)
    starts = torch.cat([spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]])
    result: torch.Tensor = MultiScaleDeformableAttention()(
        value, spatial, shapes, starts, locations, weights, 64
    )
    return result


@pytest.mark.parametrize(
    "shapes", [[(6, 7), (3, 4), (2, 2), (1, 1)], [(5, 9)], [(1, 6), (4, 1)]], ids=str
)
def test_sampling_equals_transformers_grid_sample_in_float64(shapes: list[tuple[int, int]]) -> None:
    value, locations, weights = _sampling_case(torch.float64, shapes)
    expected = _transformers_sampling(value, shapes, locations, weights)
    ours = multi_scale_deformable_attention(value, shapes, locations, weights)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)


def test_sampling_equals_transformers_in_float32_and_reads_zeros_outside() -> None:
    shapes = [(6, 7), (3, 4)]
    value, locations, weights = _sampling_case(torch.float32, shapes)
    expected = _transformers_sampling(value, shapes, locations, weights)
    ours = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    outside = locations.clone()
    outside[..., 0] = -0.5  # every sample more than one pixel left of every map
    assert torch.all(multi_scale_deformable_attention(value, shapes, outside, weights) == 0)


def test_sampling_rejects_shapes_that_do_not_fit() -> None:
    shapes = [(6, 7), (3, 4)]
    value, locations, weights = _sampling_case(torch.float32, shapes)
    with pytest.raises(ValueError, match="spatial_shapes"):
        multi_scale_deformable_attention(value, [(6, 7), (3, 5)], locations, weights)
    with pytest.raises(ValueError, match="levels"):
        multi_scale_deformable_attention(value, [(6, 7), (3, 4), (0, 0)], locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        multi_scale_deformable_attention(value, shapes, locations, weights[..., :2])
    with pytest.raises(ValueError, match="sampling_locations"):
        multi_scale_deformable_attention(value, shapes, locations[..., :1], weights)


def test_sampling_a_nan_location_gives_nan_not_an_invalid_read() -> None:
    shapes = [(6, 7), (3, 4)]
    value, locations, weights = _sampling_case(torch.float32, shapes)
    locations[0, 0, 0, 1, 2, 0] = float("nan")
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    channels = value.shape[-1]
    assert out[0, 0, :channels].isnan().all()  # query 0, head 0: as grid_sample, NaN
    assert torch.isfinite(out[0, 0, channels:]).all()  # other heads and queries are untouched
    assert torch.isfinite(out[1]).all()


# --- the detector and the whole model ---------------------------------------------------------


def test_fast_detector_equals_transformers_deformable_detr_model(
    model: EGTRForSceneGraphGeneration,
) -> None:
    assert model.fast_inference
    plain = _plain_detector(model)
    pixels, mask = _inputs()
    with torch.inference_mode():
        with _grid_sample_calls() as fast_calls:
            fast = model.model(pixel_values=pixels, pixel_mask=mask)
        with _grid_sample_calls() as plain_calls:
            expected = plain(pixel_values=pixels, pixel_mask=mask)
    assert not fast_calls  # the fast path really ran (and transformers' did in the plain model)
    assert plain_calls
    for name in DETECTOR_OUTPUTS:
        torch.testing.assert_close(
            getattr(fast, name), getattr(expected, name), rtol=1e-5, atol=1e-5, msg=name
        )


def test_fast_detector_with_a_timm_resnet_equals_transformers() -> None:
    # the paper's backbone kind (timm ResNet, frozen batch norms folded), small sizes
    config = EGTRConfig.visual_genome(
        backbone="resnet18",
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=5,
    )
    torch.manual_seed(0)
    model = EGTRForSceneGraphGeneration(config).eval()
    _random_frozen_batch_norms(model)
    folded = [m for m in model.modules() if type(m).__name__ == "_FoldedFrozenBatchNorm2d"]
    norms = [m for m in model.modules() if isinstance(m, DeformableDetrFrozenBatchNorm2d)]
    assert len(folded) == len(norms) == 20  # every batch norm of the ResNet-18
    plain = _plain_detector(model)
    pixels, mask = _inputs(batch=1, height=96, width=128)
    with torch.inference_mode():
        fast = model.model(pixel_values=pixels, pixel_mask=mask)
        expected = plain(pixel_values=pixels, pixel_mask=mask)
    for name in DETECTOR_OUTPUTS:
        # within 1e-5 of the output's scale: the 20 folded batch norms change the rounding of
        # every convolution, and how much depends on the CPU's kernels (1.7e-5 absolute on values
        # up to 3.5 on an AVX2-only machine)
        want = getattr(expected, name)
        scale = max(1.0, float(want.abs().max()))
        torch.testing.assert_close(
            getattr(fast, name), want, rtol=1e-5, atol=1e-5 * scale, msg=name
        )


def test_fast_and_plain_egtr_give_the_same_outputs(model: EGTRForSceneGraphGeneration) -> None:
    plain_model = copy.deepcopy(model)
    plain_model.set_fast_inference(False)
    assert not plain_model.fast_inference
    assert model.fast_inference
    pixels, mask = _inputs()
    with torch.inference_mode():
        fast = model(pixels, mask)
        plain = plain_model(pixels, mask)
    for name in EGTR_OUTPUTS:
        torch.testing.assert_close(
            getattr(fast, name), getattr(plain, name), rtol=1e-5, atol=1e-5, msg=name
        )


def test_fast_path_in_float64_equals_plain_to_rounding(model: EGTRForSceneGraphGeneration) -> None:
    # float64 shrinks the rounding differences: a slightly wrong formula would still show
    fast_model = copy.deepcopy(model).double()
    plain_model = copy.deepcopy(fast_model)
    plain_model.set_fast_inference(False)
    pixels, mask = _inputs()
    with torch.inference_mode():
        fast = fast_model(pixels.double(), mask)
        plain = plain_model(pixels.double(), mask)
    for name in EGTR_OUTPUTS:
        torch.testing.assert_close(
            getattr(fast, name), getattr(plain, name), rtol=1e-10, atol=1e-10, msg=name
        )


def test_switching_keeps_parameters_buffers_and_keys(model: EGTRForSceneGraphGeneration) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    other = copy.deepcopy(model)
    other.set_fast_inference(False)
    assert list(other.state_dict()) == list(state)
    other.set_fast_inference(True)
    other.set_fast_inference(True)  # idempotent
    assert list(other.state_dict()) == list(state)
    for key, value in other.state_dict().items():
        assert torch.equal(value, state[key]), key  # nothing folded into the stored weights
    names = [type(m).__name__ for m in other.modules()]
    assert names.count("_FastDeformableAttention") == 3  # 1 encoder + 2 decoder layers
    other.set_fast_inference(False)
    assert not any(
        name.startswith(("_Fast", "_Folded", "_InPlace"))
        for name in (type(m).__name__ for m in other.modules())
    )


def test_fast_path_survives_save_and_load(
    model: EGTRForSceneGraphGeneration, tmp_path: Any
) -> None:
    from egtr.builders import load_pretrained

    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert loaded.fast_inference
    plain = copy.deepcopy(loaded)
    plain.set_fast_inference(False)
    pixels, mask = _inputs(1)
    with torch.inference_mode():
        a, b, c = model(pixels, mask), loaded(pixels, mask), plain(pixels, mask)
    # not bit for bit: the loaded weights lie in the mapped safetensors file, not aligned to 64
    # bytes, and the CPU's matrix kernels may round differently for unaligned operands
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.pred_boxes, c.pred_boxes, rtol=1e-5, atol=1e-5)


def test_training_mode_runs_transformers_code() -> None:
    torch.manual_seed(0)
    fast = EGTRForSceneGraphGeneration(tiny_config(dropout=0.0)).train()
    randomise(fast, seed=4)
    _random_frozen_batch_norms(fast)
    plain = copy.deepcopy(fast)
    plain.set_fast_inference(False)
    pixels, mask = _inputs()
    with _grid_sample_calls() as calls:
        out = fast(pixels, mask)
    assert calls  # transformers' sampling ran
    expected = plain(pixels, mask)
    for name in EGTR_OUTPUTS:  # the very same computation: bit for bit
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=0, atol=0)
    out.rel_logits.sum().backward()
    assert fast.model.encoder.layers[0].self_attn.sampling_offsets.weight.grad is not None


def test_standalone_install_on_a_transformers_detector(model: EGTRForSceneGraphGeneration) -> None:
    detector = _plain_detector(model)
    pixels, mask = _inputs(1)
    with torch.inference_mode():
        expected = detector(pixel_values=pixels, pixel_mask=mask).last_hidden_state
        install_fast_inference(detector)
        assert fast_inference_installed(detector)
        fast = detector(pixel_values=pixels, pixel_mask=mask).last_hidden_state
        remove_fast_inference(detector)
        assert not fast_inference_installed(detector)
        again = detector(pixel_values=pixels, pixel_mask=mask).last_hidden_state
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, expected, rtol=0, atol=0)


def test_eval_mode_with_autograd_runs_transformers_code(model: EGTRForSceneGraphGeneration) -> None:
    # gradients through an eval-mode model (e.g. saliency) are exactly transformers'
    plain = copy.deepcopy(model)
    plain.set_fast_inference(False)
    pixels, mask = _inputs(1)
    pixels.requires_grad_(True)
    with _grid_sample_calls() as calls:
        out = model(pixels, mask)
    assert calls
    expected = plain(pixels, mask)
    torch.testing.assert_close(out.rel_logits, expected.rel_logits, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(out.pred_boxes.sum(), pixels)
    assert grad.abs().sum() > 0
