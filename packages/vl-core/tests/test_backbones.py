"""Loading through the public factory: every name form, both CLIP families, clear errors."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from vl_core import factory
from vl_core.capture import Capture
from vl_core.clip import ClipBackbone
from vl_core.factory import load_backbone, load_clip, register_backbone, split_name
from vl_core.hub import ModelNotAvailableError
from vl_core.testing import TINY_EMBED, TINY_LAYERS

# --- name forms ------------------------------------------------------------------------------


def _saved_weights(family: str, hf_dir: Path, openclip_dir: Path) -> dict[str, Tensor]:
    if family == "hf":
        return load_file(hf_dir / "model.safetensors")
    return load_file(openclip_dir / "open_clip_model.safetensors")


def _assert_weights_equal(model: nn.Module, saved: dict[str, Tensor]) -> None:
    state = model.state_dict()
    assert set(saved) <= set(state)
    for key, tensor in saved.items():
        assert torch.equal(state[key].to(tensor.dtype), tensor), key


def test_prefixed_directory_names_load_the_saved_weights(
    clip: ClipBackbone, hf_dir: Path, openclip_dir: Path
) -> None:
    """``hf:DIR`` and ``openclip:DIR`` (the session models): the files on disk, not a random init."""
    assert clip.name == str(hf_dir if clip.family == "hf" else openclip_dir)
    assert clip.num_text_layers == TINY_LAYERS
    assert clip.context_length == 77
    _assert_weights_equal(clip.model, _saved_weights(clip.family, hf_dir, openclip_dir))


@pytest.mark.parametrize(
    ("form", "family"),
    [
        ("{hf}", "hf"),
        ("{oc}", "openclip"),
        ("openclip:vlcore-tiny/{oc}/open_clip_model.safetensors", "openclip"),
        ("openclip:vlcore-tiny/{oc}/open_clip_pytorch_model.bin", "openclip"),
    ],
)
def test_other_name_forms_load_the_saved_weights(
    form: str,
    family: str,
    hf_dir: Path,
    openclip_dir: Path,
    hf_clip: ClipBackbone,
    openclip_clip: ClipBackbone,
) -> None:
    backbone = load_clip(form.format(hf=hf_dir, oc=openclip_dir), device="cpu", dtype="float32")
    assert backbone.family == family
    assert backbone.num_text_layers == TINY_LAYERS
    _assert_weights_equal(backbone.model, _saved_weights(family, hf_dir, openclip_dir))
    reference = hf_clip if family == "hf" else openclip_clip
    ids = backbone.tokenize(["a photo of a cat", "don't"]).ids
    with torch.no_grad():
        assert torch.equal(backbone.encode_text(ids), reference.encode_text(ids))


def test_split_name(hf_dir: Path, openclip_dir: Path) -> None:
    assert split_name("hf:openai/clip-vit-base-patch32") == ("hf", "openai/clip-vit-base-patch32")
    assert split_name("openclip:ViT-B-32/openai") == ("openclip", "ViT-B-32/openai")
    assert split_name(str(hf_dir)) == ("hf", str(hf_dir))
    assert split_name(str(openclip_dir)) == ("openclip", str(openclip_dir))


def test_hf_model_runs_eager_attention(hf_clip: ClipBackbone) -> None:
    model: Any = hf_clip.model
    assert model.config._attn_implementation == "eager"
    seen: list[Any] = []
    handle = model.text_model.encoder.layers[0].self_attn.register_forward_hook(
        lambda module, args, output: seen.append(output[1])
    )
    try:
        with torch.no_grad():
            hf_clip.encode_text(hf_clip.tokenize(["a cat"]).ids)
    finally:
        handle.remove()
    assert isinstance(seen[0], Tensor)  # sdpa would return None here
    assert seen[0].shape == (1, 2, 77, 77)


def test_parameters_are_frozen_and_model_in_eval(clip: ClipBackbone) -> None:
    params = list(clip.model.parameters())
    assert params
    assert not any(p.requires_grad for p in params)
    assert not any(m.training for m in clip.model.modules())
    assert all(p.dtype == torch.float32 for p in params)


def test_dtype_is_applied(openclip_dir: Path) -> None:
    backbone = load_clip(f"openclip:{openclip_dir}", device="cpu", dtype=torch.float64)
    assert {p.dtype for p in backbone.model.parameters()} == {torch.float64}
    with torch.no_grad():
        assert backbone.encode_text(backbone.tokenize(["a"]).ids).dtype == torch.float64


def test_text_attention_names_resolve(clip: ClipBackbone) -> None:
    modules = dict(clip.model.named_modules())
    names = [clip.text_attention_name(i) for i in range(clip.num_text_layers)]
    assert len(set(names)) == TINY_LAYERS
    for index, name in enumerate(names):
        assert modules[name] is _attention_of(clip, index)
    assert clip.text_attention_name(-1) == names[-1]


def _attention_of(clip: ClipBackbone, layer: int) -> nn.Module:
    block: Any = clip.text_layers[layer]
    return block.self_attn if clip.family == "hf" else block.attn  # type: ignore[no-any-return]


# --- encoding equals the underlying model's own API -------------------------------------------


def test_encoders_equal_the_models_own_api(clip: ClipBackbone, make_pixels: Any) -> None:
    model: Any = clip.model
    ids = clip.tokenize(["a photo of a cat...", "a red T-shirt", "x"]).ids
    pixels = make_pixels(clip, 3)
    assert pixels.shape == (3, 3, 32, 32)
    with torch.no_grad():
        if clip.family == "hf":
            own_text = _features(model.get_text_features(input_ids=ids))
            own_image = _features(model.get_image_features(pixel_values=pixels))
        else:
            own_text = model.encode_text(ids)
            own_image = model.encode_image(pixels)
        text, image = clip.encode_text(ids), clip.encode_image(pixels)
    assert text.shape == image.shape == (3, TINY_EMBED)
    assert torch.equal(text, own_text)
    if clip.family == "hf":  # the fast image path: exact up to rounding (tests/test_hf_vision.py)
        torch.testing.assert_close(image, own_image, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(image, own_image)


def _features(output: Any) -> Tensor:
    """transformers 5 returns an output object with the projected pooler; 4.x a tensor."""
    return output if isinstance(output, Tensor) else output.pooler_output


def test_text_embedding_is_pooled_at_the_end_of_text_token(clip: ClipBackbone) -> None:
    """Literal pooling: final-norm hidden state at ``TokenBatch.eot``, then the projection."""
    model: Any = clip.model
    batch = clip.tokenize(["a photo of a cat...", "dog", "a " * 80])
    final_norm = "text_model.final_layer_norm" if clip.family == "hf" else "ln_final"
    with torch.no_grad(), Capture(model, outputs=[final_norm]) as cap:
        text = clip.encode_text(batch.ids)
    hidden = cap.outputs[final_norm]
    pooled = torch.stack([hidden[b, int(batch.eot[b])] for b in range(3)])
    if clip.family == "hf":
        expected = model.text_projection(pooled)
    else:
        expected = pooled @ model.text_projection
    torch.testing.assert_close(text, expected, rtol=0, atol=1e-6)


def test_cosine_is_row_wise_normalized_dot(clip: ClipBackbone) -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    expected = [float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(4)]
    result = clip.cosine(a, b)
    assert result.shape == (4,)
    assert result.tolist() == pytest.approx(expected, abs=1e-6)
    assert clip.cosine(a.half(), b.half()).dtype == torch.float32


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "error", "match"),
    [
        ("nope:x", ValueError, "unknown model family 'nope'"),
        ("{missing}", ValueError, "neither family-prefixed nor an existing directory"),
        ("{empty}", ValueError, "neither config.json"),
        ("hf:{missing}", FileNotFoundError, "no such HF model directory"),
        ("hf:{empty}", FileNotFoundError, "has no config.json"),
        ("openclip:{missing}", FileNotFoundError, "no such open_clip model directory"),
        ("openclip:{empty}", FileNotFoundError, "has no open_clip_config.json"),
        ("openclip:vlcore-tiny/{missing}.bin", FileNotFoundError, "checkpoint file not found"),
        ("openclip:vlcore-tiny", ValueError, "needs a pretrained tag or checkpoint"),
        ("openclip:no-such-arch/openai", ValueError, "unknown open_clip architecture"),
    ],
)
def test_bad_names_give_clear_errors(
    form: str, error: type[Exception], match: str, tmp_path: Path, openclip_dir: Path
) -> None:
    (tmp_path / "empty").mkdir()
    name = form.format(missing=tmp_path / "missing", empty=tmp_path / "empty")
    with pytest.raises(error, match=match):
        load_clip(name, device="cpu")


def test_timm_is_not_a_registered_family() -> None:
    with pytest.raises(ValueError, match="unknown model family 'timm'"):
        load_clip("timm:resnet18", device="cpu")


def test_register_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "_REGISTRY", dict(factory._REGISTRY))
    calls: list[tuple[str, torch.device, torch.dtype]] = []

    sentinel = cast(ClipBackbone, object())

    def loader(name: str, device: torch.device, dtype: torch.dtype) -> ClipBackbone:
        calls.append((name, device, dtype))
        return sentinel

    register_backbone("toy", loader)
    assert "toy" in factory.available_families()
    backbone = load_backbone("toy:a/b:c", device="cpu", dtype="fp16")
    assert backbone is sentinel
    assert calls == [("a/b:c", torch.device("cpu"), torch.float16)]
    with pytest.raises(ValueError, match="identifier"):
        register_backbone("not-an-identifier", loader)


# --- offline -----------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[object]:
    """Offline environment set *after* the hub client was imported; records any network attempt."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    # as if the variable had been set after import: the client's own switch still says online
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-home/hub"))
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> Any:
        attempts.append(args[0] if args else kwargs)
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.mark.parametrize("name", ["hf:openai/clip-vit-base-patch32", "openclip:ViT-B-32/openai"])
def test_offline_hub_model_fails_fast_with_clear_error(name: str, no_network: list[object]) -> None:
    import huggingface_hub.constants

    def load() -> object:
        return load_clip(name, device="cpu")

    with pytest.raises(ModelNotAvailableError) as info:
        load()
    error = info.value
    message = str(error)
    expected_name = name
    assert error.name == expected_name
    assert repr(expected_name) in message
    assert "HF_HUB_OFFLINE" in message
    assert "local" in message or "checkpoint=" in message  # how to point at local files
    assert type(error) is ModelNotAvailableError  # the hub client's error is only the cause
    assert error.__cause__ is not None
    assert no_network == []  # failed without trying the network
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False  # client switch restored
