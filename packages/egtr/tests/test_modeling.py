"""EGTRForSceneGraphGeneration: captured q/k, heads, frequency bias, save/load, sizes."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from egtr_testing import randomise, tiny_config

from egtr import EGTRConfig, EGTRForSceneGraphGeneration
from egtr.modeling import inverse_sigmoid
from egtr.relation_head import literal_relation_logits


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    pixels = torch.randn(batch, 3, 64, 80)
    mask = torch.ones(batch, 64, 80, dtype=torch.long)
    mask[-1, :, 60:] = 0  # the last image is padded on the right
    return pixels, mask


def test_output_shapes_and_ranges(tiny_model: EGTRForSceneGraphGeneration) -> None:
    pixels, mask = _inputs()
    with torch.no_grad():
        out = tiny_model(pixels, mask)
    assert out.logits.shape == (2, 6, 3)
    assert out.pred_boxes.shape == (2, 6, 4)
    assert out.pred_rel.shape == (2, 6, 6, 4)
    assert out.pred_connectivity.shape == (2, 6, 6)
    for probs in (out.pred_boxes, out.pred_rel, out.pred_connectivity):
        assert probs.min() >= 0
        assert probs.max() <= 1
    torch.testing.assert_close(out.pred_rel, torch.sigmoid(out.rel_logits))


def test_captured_queries_and_keys_equal_literal_recomputation(
    tiny_model: EGTRForSceneGraphGeneration,
) -> None:
    # inputs of each decoder layer's self-attention, recorded independently of the model's capture
    inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def pre_hook(index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            inputs[index] = (hidden.clone(), kwargs["position_embeddings"].clone())

        return hook

    layers = tiny_model.model.decoder.layers
    handles = [
        layer.self_attn.register_forward_pre_hook(pre_hook(i), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    try:
        pixels, mask = _inputs()
        with torch.no_grad():
            out = tiny_model(pixels, mask)
    finally:
        for handle in handles:
            handle.remove()
    assert out.decoder_queries.shape == (2, 2, 6, 64)
    assert out.decoder_keys.shape == (2, 2, 6, 64)
    for index, layer in enumerate(layers):
        hidden, pos = inputs[index]
        attn = layer.self_attn
        with torch.no_grad():
            # Q = q_proj(h + pos), K = k_proj(h + pos): unscaled, heads concatenated
            torch.testing.assert_close(out.decoder_queries[:, index], attn.q_proj(hidden + pos))
            torch.testing.assert_close(out.decoder_keys[:, index], attn.k_proj(hidden + pos))
    # the layers differ, so a capture that mixed layers up would fail above
    assert not torch.allclose(out.decoder_queries[:, 0], out.decoder_queries[:, 1])


def test_forward_leaves_no_hooks(tiny_model: EGTRForSceneGraphGeneration) -> None:
    pixels, mask = _inputs(1)
    with torch.no_grad():
        tiny_model(pixels, mask)
    for module in tiny_model.modules():
        assert not module._forward_hooks


def test_relations_equal_literal_head_plus_frequency_bias(
    tiny_model: EGTRForSceneGraphGeneration,
) -> None:
    # float64 isolates the construction from fp32 rounding (sums are reordered by the factorisation)
    tiny_model = copy.deepcopy(tiny_model).double()
    pixels, mask = _inputs()
    pixels = pixels.double()
    with torch.no_grad():
        out = tiny_model(pixels, mask)
        rel, conn = literal_relation_logits(
            tiny_model.relation_head, out.decoder_queries, out.decoder_keys, out.last_hidden_state
        )
    classes = out.logits.argmax(-1)
    bias = torch.stack(
        [
            torch.stack([tiny_model.triplet_dist[classes[b, i], classes[b, j]] for j in range(6)])
            for b in range(2)
            for i in range(6)
        ]
    ).view(2, 6, 6, 4)
    torch.testing.assert_close(out.rel_logits, rel + bias, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.connectivity_logits, conn, rtol=1e-10, atol=1e-10)


def test_literal_relation_head_switch_gives_the_same_outputs(
    tiny_model: EGTRForSceneGraphGeneration,
) -> None:
    pixels, mask = _inputs()
    with torch.no_grad():
        ours = tiny_model(pixels, mask)
        literal = tiny_model(pixels, mask, relation_head_impl="literal")
    for name in ("rel_logits", "connectivity_logits", "pred_rel", "pred_connectivity"):
        # fp32: the factorised sums are reordered, so agreement is to fp32 rounding of O(1) values
        torch.testing.assert_close(
            getattr(ours, name), getattr(literal, name), rtol=1e-4, atol=1e-4
        )
    torch.testing.assert_close(ours.logits, literal.logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="relation_head_impl"):
        tiny_model(pixels, mask, relation_head_impl="fast")


def test_boxes_follow_reference_points(tiny_model: EGTRForSceneGraphGeneration) -> None:
    pixels, mask = _inputs()
    with torch.no_grad():
        out = tiny_model(pixels, mask)
        det = tiny_model.model(pixel_values=pixels, pixel_mask=mask)
        ref = det.init_reference_points
        delta = tiny_model.bbox_embed(det.last_hidden_state)
    logit_ref = torch.log(ref.clamp(1e-5) / (1 - ref).clamp(1e-5))
    expected = torch.sigmoid(delta + torch.cat([logit_ref, torch.zeros_like(ref)], -1))
    torch.testing.assert_close(out.pred_boxes, expected)
    assert inverse_sigmoid(torch.tensor([0.5])).item() == 0.0


def test_initialisation_follows_deformable_detr() -> None:
    model = EGTRForSceneGraphGeneration(tiny_config())
    prior = -math.log((1 - 0.01) / 0.01)
    torch.testing.assert_close(model.class_embed.bias, torch.full((3,), prior))
    last = model.bbox_embed.layers[-1]
    assert torch.all(last.weight == 0)
    assert last.bias.tolist() == [0.0, 0.0, -2.0, -2.0]
    assert torch.all(model.triplet_dist == 0)
    assert model.triplet_dist.shape == (4, 4, 4)


def test_logit_adjustment_subtracts_tau_log_rel_dist(
    tiny_model: EGTRForSceneGraphGeneration,
) -> None:
    pixels, mask = _inputs(1)
    adjusted = EGTRForSceneGraphGeneration(
        tiny_config(use_logit_adjustment=True, logit_adjustment_tau=0.5)
    ).eval()
    adjusted.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        plain = tiny_model(pixels, mask).rel_logits
        adj = adjusted(pixels, mask).rel_logits
    torch.testing.assert_close(adj, plain - 0.5 * torch.log(tiny_model.rel_dist))


def test_frequency_bias_can_be_switched_off(tiny_model: EGTRForSceneGraphGeneration) -> None:
    pixels, mask = _inputs(1)
    off = EGTRForSceneGraphGeneration(tiny_config(use_freq_bias=False)).eval()
    off.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        with_bias = tiny_model(pixels, mask)
        without = off(pixels, mask)
    bias = tiny_model.frequency_bias(with_bias.logits)
    torch.testing.assert_close(with_bias.rel_logits, without.rel_logits + bias)
    with pytest.raises(ValueError, match="triplet_dist"):
        off.set_frequency_statistics(torch.zeros(2, 2, 2))


def test_save_load_round_trip_gives_identical_outputs(
    tiny_model: EGTRForSceneGraphGeneration, tmp_path: Path
) -> None:
    from egtr.builders import load_pretrained

    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = load_pretrained(tmp_path)
    assert loaded.config.predicate_labels == ["on", "near", "has", "under"]
    assert loaded.config.object_labels == ["cat", "dog", "table"]
    torch.testing.assert_close(loaded.triplet_dist, tiny_model.triplet_dist)
    pixels, mask = _inputs()
    with torch.no_grad():
        a = tiny_model(pixels, mask)
        b = loaded(pixels, mask)
    for name in ("logits", "pred_boxes", "pred_rel", "pred_connectivity"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="object_score"):
        tiny_config(object_score="argmax")
    with pytest.raises(ValueError, match="rel_labels"):
        tiny_config(rel_labels=["on"])
    with pytest.raises(ValueError, match="box refinement"):
        tiny_config(with_box_refine=True)


def test_paper_configurations() -> None:
    vg = EGTRConfig.visual_genome()
    assert (vg.num_object_labels, vg.num_rel_labels, vg.num_queries) == (150, 50, 200)
    assert vg.object_labels[0] == "airplane"
    assert vg.predicate_labels[-1] == "with"
    assert vg.backbone_config.use_pretrained_backbone is False
    oi = EGTRConfig.open_images()
    assert (oi.num_object_labels, oi.num_rel_labels) == (601, 30)


def test_full_visual_genome_model_has_42_50m_parameters() -> None:
    from egtr import egtr_visual_genome

    model = egtr_visual_genome()
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 2) == 41.36
    assert round((params + model.triplet_dist.numel()) / 1e6, 2) == 42.50
    assert model.triplet_dist.shape == (151, 151, 50)


def test_builder_weights_must_be_a_local_model_dir(tmp_path: Path) -> None:
    from egtr import egtr_visual_genome

    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        egtr_visual_genome(weights=tmp_path)


def test_randomise_changes_outputs() -> None:
    # guards the fixtures: a randomised model must not equal a freshly initialised one
    fresh = EGTRForSceneGraphGeneration(tiny_config()).eval()
    other = EGTRForSceneGraphGeneration(tiny_config()).eval()
    randomise(other, seed=3)
    pixels, mask = _inputs(1)
    with torch.no_grad():
        assert not torch.allclose(fresh(pixels, mask).logits, other(pixels, mask).logits)


def test_the_head_width_advice_for_the_cuda_kernel_is_not_shown() -> None:
    import warnings

    # 96 / 4 = 24 channels per head: transformers advises a power of two for the speed of the
    # authors' CUDA kernel, which this model never uses; only that one warning is filtered
    config = tiny_config(d_model=96, encoder_attention_heads=4, decoder_attention_heads=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        EGTRForSceneGraphGeneration(config)
    assert not [w for w in caught if "power of 2" in str(w.message)]
    from transformers.models.deformable_detr.modeling_deformable_detr import (
        DeformableDetrMultiscaleDeformableAttention,
    )

    with pytest.warns(UserWarning, match="power of 2"):  # the filter is local to egtr's model
        DeformableDetrMultiscaleDeformableAttention(config, num_heads=4, n_points=2)


def test_builders_load_strictly_and_check_the_label_space(
    tiny_model: EGTRForSceneGraphGeneration, tmp_path: Path
) -> None:
    from egtr import egtr_visual_genome
    from egtr.builders import ModelDirectoryError

    tiny_model.save_pretrained(tmp_path)
    with pytest.raises(ModelDirectoryError, match="3 objects / 4 predicates, expected 150 / 50"):
        egtr_visual_genome(weights=tmp_path)


def _has_cpp_compiler() -> bool:
    import shutil

    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


@pytest.mark.slow  # compiling takes 20-50 s on 2 CPU cores
@pytest.mark.skipif(not _has_cpp_compiler(), reason="torch.compile on CPU needs a C++ compiler")
def test_compile_for_inference_gives_the_same_outputs(
    tiny_model: EGTRForSceneGraphGeneration,
) -> None:
    compiled = copy.deepcopy(tiny_model)
    compiled.compile_for_inference()
    assert compiled.relation_head._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(tiny_model.state_dict())
    pixels, mask = _inputs()
    with torch.inference_mode():
        expected = tiny_model(pixels, mask)
        out = compiled(pixels, mask)
    for name in ("logits", "pred_boxes", "rel_logits", "connectivity_logits", "pred_rel"):
        torch.testing.assert_close(
            getattr(out, name), getattr(expected, name), rtol=1e-5, atol=1e-5, msg=name
        )


def test_fast_inference_is_on_by_default_and_can_be_switched_off() -> None:
    model = EGTRForSceneGraphGeneration(tiny_config())
    assert model.fast_inference
    model.set_fast_inference(False)
    assert not model.fast_inference
    model.set_fast_inference(True)
    assert model.fast_inference
