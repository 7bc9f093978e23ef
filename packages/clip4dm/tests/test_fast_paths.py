"""Each faster path of the detector gives the same outputs as the plain one (issue 16).

Text trimming (the text tower stops after the batch's last end-of-text token), capture objects
built once per detector, the image tower beside the text tower on a CPU at batch 1, and the
optional ``torch.compile`` path.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from clip4dm import CLIP4DM, Detection
from clip4dm.detector import PARALLEL_TOWERS_MAX_BATCH, TEXT_WIDTH_STEP
from vl_core.capture import Capture
from vl_core.clip import ClipBackbone
from vl_core.factory import load_clip
from vl_core.gradients import PartialAutograd, batched_grad, partial_autograd
from vl_core.testing import intra_op_threads

CAPTIONS = [
    "a red cup of coke on a wooden table.",
    "two dogs",
    "a café with 3 chairs and " + " ".join(["a big blue chair"] * 4),  # past one width step
    'a man in a T-shirt says "don\'t"...',
]


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in CAPTIONS]


def _hf(tiny_hf_dir: Path, dtype: torch.dtype = torch.float32) -> ClipBackbone:
    return load_clip(f"hf:{tiny_hf_dir}", device="cpu", dtype=dtype)


def _record_widths(backbone: ClipBackbone, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Column counts of the ids each `encode_text` call receives."""
    widths: list[int] = []
    original = backbone.encode_text

    def recording(ids: Tensor) -> Tensor:
        widths.append(int(ids.shape[1]))
        return original(ids)

    monkeypatch.setattr(backbone, "encode_text", recording)
    return widths


def assert_same_outputs(fast: Detection, plain: Detection, rel: float = 1e-5) -> None:
    """Same words and selections; scores and cosine within ``rel`` (relative to the largest
    word score, as word scores straddle zero)."""
    assert [w.word for w in fast.words] == [w.word for w in plain.words]
    assert [(w.start, w.end) for w in fast.words] == [(w.start, w.end) for w in plain.words]
    scale = max(abs(w.score) for w in plain.words)
    np.testing.assert_allclose(
        [w.score for w in fast.words], [w.score for w in plain.words], rtol=rel, atol=rel * scale
    )
    assert fast.misaligned_words == plain.misaligned_words
    assert fast.unscored_words == plain.unscored_words
    assert fast.truncated == plain.truncated
    assert fast.cosine == pytest.approx(plain.cosine, rel=rel)
    assert fast.f_clip_score == pytest.approx(plain.f_clip_score, rel=rel, abs=rel * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_trimmed_text_gives_the_plain_outputs(
    tiny_hf_dir: Path,
    images: list[Image.Image],
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype,
) -> None:
    backbone = _hf(tiny_hf_dir, dtype)
    assert backbone.trims_text_padding
    detector = CLIP4DM(backbone, epsilon=0.0)
    refs = [["a bird", "two cats"], ["a dog"], ["a chair"], ["a man"]]
    widths = _record_widths(backbone, monkeypatch)
    fast = detector.detect_batch(images, CAPTIONS, batch_size=2, references=refs)
    single = [detector.detect(images[1], CAPTIONS[1])]
    trimmed_widths = list(widths)
    widths.clear()
    monkeypatch.setattr(backbone, "trims_text_padding", False)
    plain = detector.detect_batch(images, CAPTIONS, batch_size=2, references=refs)
    plain_single = [detector.detect(images[1], CAPTIONS[1])]
    # the fast path did run narrower: each batch up to its last end-of-text token, rounded up
    # to the step (calls: batch (0, 1), its references, batch (2, 3), ...); the plain path
    # always runs the whole context
    assert set(widths) == {backbone.context_length}

    def expected(texts: list[str]) -> int:
        eot = backbone.tokenizer([detector.template + t for t in texts]).eot
        return -(-(int(eot.max()) + 1) // TEXT_WIDTH_STEP) * TEXT_WIDTH_STEP

    assert trimmed_widths[0] == expected(CAPTIONS[:2])
    assert trimmed_widths[2] == expected(CAPTIONS[2:4])
    assert trimmed_widths[2] > trimmed_widths[0]  # the captions were chosen to need more steps
    assert max(trimmed_widths) < backbone.context_length
    for a, b in zip([*fast, *single], [*plain, *plain_single], strict=True):
        assert_same_outputs(a, b, rel=1e-5 if dtype == torch.float32 else 1e-9)
    for a, b in zip(fast, plain, strict=True):
        assert a.ref_clip_score is not None
        assert a.ref_clip_score == pytest.approx(b.ref_clip_score, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_fast_image_path_gives_the_plain_outputs(
    tiny_hf_dir: Path, images: list[Image.Image], dtype: torch.dtype
) -> None:
    # vl_core._hf_vision: the last vision layer for the class token only, fused attention
    backbone = _hf(tiny_hf_dir, dtype)
    assert backbone.fast_image  # type: ignore[attr-defined]
    detector = CLIP4DM(backbone, epsilon=0.0)
    fast = [
        *detector.detect_batch(images, CAPTIONS, batch_size=2),
        detector.detect(images[0], "two dogs"),
    ]
    backbone.fast_image = False  # type: ignore[attr-defined]
    plain = [
        *detector.detect_batch(images, CAPTIONS, batch_size=2),
        detector.detect(images[0], "two dogs"),
    ]
    for a, b in zip(fast, plain, strict=True):
        # fp64 too only to 1e-6: the plain path's eager softmax runs in float32 (HF)
        assert_same_outputs(a, b, rel=1e-5 if dtype == torch.float32 else 1e-6)


def test_trimmed_relevance_equals_the_plain_relevance(
    tiny_hf_dir: Path, images: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = _hf(tiny_hf_dir, torch.float64)
    detector = CLIP4DM(backbone, layers=3)
    fast = detector.token_relevance(images, CAPTIONS)
    monkeypatch.setattr(backbone, "trims_text_padding", False)
    plain = detector.token_relevance(images, CAPTIONS)
    assert torch.equal(fast.tokens.ids, plain.tokens.ids)  # the full ids are still reported
    for a, b in zip(fast.relevance, plain.relevance, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9 * float(b.abs().max()))
    torch.testing.assert_close(fast.cosine, plain.cosine, rtol=1e-9, atol=0)


def test_a_caption_cut_at_the_context_runs_at_full_width(
    tiny_hf_dir: Path, images: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = _hf(tiny_hf_dir)
    widths = _record_widths(backbone, monkeypatch)
    long = " ".join(f"word{i}" for i in range(60))
    result = CLIP4DM(backbone).detect(images[0], long)
    assert result.truncated
    assert widths == [backbone.context_length]


def test_openclip_text_is_not_trimmed(
    tiny_openclip_dir: Path, images: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    # open_clip's CLIP.encode_text adds its whole positional table: it needs the full context
    backbone = load_clip(f"openclip:{tiny_openclip_dir}", device="cpu", dtype=torch.float32)
    assert not backbone.trims_text_padding
    widths = _record_widths(backbone, monkeypatch)
    CLIP4DM(backbone).detect(images[0], CAPTIONS[1])
    assert widths == [backbone.context_length]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("family", ["hf", "openclip"])
def test_capture_built_once_leaves_the_model_clean_between_calls(
    family: str,
    tiny_hf_dir: Path,
    tiny_openclip_dir: Path,
    images: list[Image.Image],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"hf:{tiny_hf_dir}" if family == "hf" else f"openclip:{tiny_openclip_dir}"
    backbone = load_clip(name, device="cpu", dtype=torch.float32)
    model = backbone.model
    keys = list(model.state_dict())
    hooks = _hooks(model)
    built: list[int] = []
    original_init = Capture.__init__

    def counting_init(self: Capture, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(Capture, "__init__", counting_init)
    detector = CLIP4DM(backbone)
    first = detector.detect(images[0], CAPTIONS[0])
    for image, caption in zip(images, CAPTIONS, strict=True):
        detector.detect(image, caption)
        # between calls: no hook left, no module swapped, no tensor kept, no gradient flag on
        assert _hooks(model) == hooks
        assert list(model.state_dict()) == keys
        assert not detector._capture.attentions
        assert not any(p.requires_grad for p in model.parameters())
    assert built == [1]  # one Capture for the detector, not one per call
    again = detector.detect(images[0], CAPTIONS[0])
    assert again == first  # reuse carries no state from call to call


def test_an_error_inside_a_call_leaves_the_detector_usable(
    tiny_hf_dir: Path, images: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = _hf(tiny_hf_dir)
    detector = CLIP4DM(backbone)
    expected = detector.detect(images[0], CAPTIONS[0])
    hooks = _hooks(backbone.model)
    grad_mode = torch.is_grad_enabled()

    def broken(image_emb: Tensor, text_emb: Tensor) -> Tensor:
        raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(backbone, "cosine", broken)
        with pytest.raises(RuntimeError, match="boom"):
            detector.detect(images[0], CAPTIONS[0])
    assert _hooks(backbone.model) == hooks
    assert torch.is_grad_enabled() == grad_mode
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert detector.detect(images[0], CAPTIONS[0]) == expected


def _input_grad(model: nn.Sequential, x: Tensor) -> Tensor:
    """Per-sample gradient of the model's output w.r.t. the input of ``model[1]``."""
    captured: list[Tensor] = []
    handle = model[1].register_forward_hook(lambda m, a, o: captured.append(a[0]))
    out = model(x).squeeze(1)
    handle.remove()
    (grad,) = batched_grad(out, captured)
    return grad


def test_partial_autograd_object_is_reusable_and_restores_flags() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    model[0].weight.requires_grad_(True)
    model[2].bias.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(3, 4)
    reusable = PartialAutograd(model, model[1])
    grads = []
    for _ in range(2):
        with torch.no_grad():
            with reusable:
                assert torch.is_grad_enabled()
                assert not any(p.requires_grad for p in model.parameters())
                grads.append(_input_grad(model, x))
            assert not torch.is_grad_enabled()  # the outer no_grad is back
        assert [p.requires_grad for p in model.parameters()] == flags
        assert model[1]._forward_pre_hooks == {}
    with partial_autograd(model, model[1]):
        expected = _input_grad(model, x)
    torch.testing.assert_close(grads[0], expected, rtol=0, atol=0)
    torch.testing.assert_close(grads[1], expected, rtol=0, atol=0)
    with reusable, pytest.raises(RuntimeError, match="already active"):
        reusable.__enter__()
    assert [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.slow  # torch.compile takes 20-70 s on two CPU cores
def test_compiled_detector_gives_the_plain_outputs(
    tiny_hf_dir: Path, images: list[Image.Image]
) -> None:
    backbone = _hf(tiny_hf_dir)
    plain = CLIP4DM(backbone, epsilon=0.0)
    compiled = CLIP4DM(backbone, epsilon=0.0, compile=True)
    assert compiled.compiled
    assert not plain.compiled
    assert compiled._image_encoder is not backbone.encode_image  # the compiled one
    expected = plain.detect_batch(images[:3], CAPTIONS[:3])
    got = compiled.detect_batch(images[:3], CAPTIONS[:3])  # one shape: compiles once
    for a, b in zip(got, expected, strict=True):
        assert_same_outputs(a, b, rel=1e-5)


def _record_image_threads(detector: CLIP4DM, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each `_encode_images` call runs on."""
    names: list[str] = []
    original = detector._encode_images

    def recording(images: Any) -> Tensor:
        names.append(threading.current_thread().name)
        return original(images)

    monkeypatch.setattr(detector, "_encode_images", recording)
    return names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_parallel_towers_give_the_plain_outputs(
    tiny_hf_dir: Path,
    images: list[Image.Image],
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype,
) -> None:
    backbone = _hf(tiny_hf_dir, dtype)
    with intra_op_threads(2):
        side_by_side = CLIP4DM(backbone, epsilon=0.0)  # parallel_towers=None: at batch 1 on a CPU
        plain = CLIP4DM(backbone, epsilon=0.0, parallel_towers=False)
        ran_on = _record_image_threads(side_by_side, monkeypatch)
        fast = [
            side_by_side.detect(image, text) for image, text in zip(images, CAPTIONS, strict=True)
        ]
        assert all(name.startswith("vl-core-alongside") for name in ran_on)
        assert len(ran_on) == len(CAPTIONS)
        assert torch.get_num_threads() == 2  # the caller's threads are back after each call
        slow = [plain.detect(image, text) for image, text in zip(images, CAPTIONS, strict=True)]
    for a, b in zip(fast, slow, strict=True):
        assert_same_outputs(a, b, rel=1e-5 if dtype == torch.float32 else 1e-9)


def test_parallel_towers_only_where_they_pay(
    tiny_hf_dir: Path, images: list[Image.Image], monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = _hf(tiny_hf_dir)
    here = threading.current_thread().name
    with intra_op_threads(2):
        # larger batches run the towers one after the other (unless asked for) ...
        batch = PARALLEL_TOWERS_MAX_BATCH + 1
        auto = CLIP4DM(backbone)
        names = _record_image_threads(auto, monkeypatch)
        auto.detect_batch(images[:batch], CAPTIONS[:batch], batch_size=batch)
        assert names == [here]
        forced = CLIP4DM(backbone, parallel_towers=True)
        names = _record_image_threads(forced, monkeypatch)
        forced.detect_batch(images[:batch], CAPTIONS[:batch], batch_size=batch)
        assert names[0].startswith("vl-core-alongside")
        # ... as does a detector told not to, and any detector on one thread
        off = CLIP4DM(backbone, parallel_towers=False)
        names = _record_image_threads(off, monkeypatch)
        off.detect(images[0], CAPTIONS[0])
        assert names == [here]
    with intra_op_threads(1):
        names = _record_image_threads(forced, monkeypatch)
        forced.detect(images[0], CAPTIONS[0])
        assert names == [here]
