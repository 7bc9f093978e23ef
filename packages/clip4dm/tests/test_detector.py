"""The fast batched detector against a literal per-pair implementation of the spec (§1)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from clip4dm import CLIP4DM, Detection
from clip4dm._reference import literal_relevance
from clip4dm.alignment import align_words, split_words
from vl_core.clip import ClipBackbone
from vl_core.factory import load_clip

CAPTIONS = [
    "a red cup of coke on a wooden table.",
    "two dogs, one cat and a bird",
    'a man in a T-shirt says "don\'t"...',
    "a café with 3 chairs",
]


def _load(family: str, hf_dir: Path, openclip_dir: Path, dtype: torch.dtype) -> ClipBackbone:
    name = f"hf:{hf_dir}" if family == "hf" else f"openclip:{openclip_dir}"
    return load_clip(name, device="cpu", dtype=dtype)


@pytest.fixture(scope="module", params=["hf", "openclip"])
def backbone(
    request: pytest.FixtureRequest, tiny_hf_dir: Path, tiny_openclip_dir: Path
) -> ClipBackbone:
    return _load(request.param, tiny_hf_dir, tiny_openclip_dir, torch.float32)


# fp64 isolates the algorithm (agreement to 1e-9 of the score scale); fp32 adds only rounding
# from batched kernels (agreement to 1e-5 of the score scale).
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in CAPTIONS]


@pytest.mark.parametrize("family", ["hf", "openclip"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("mode", ["threshold", "most_negative"])
def test_fast_path_equals_literal_spec(
    family: str,
    dtype: torch.dtype,
    mode: Any,
    tiny_hf_dir: Path,
    tiny_openclip_dir: Path,
    images: list[Image.Image],
) -> None:
    backbone = _load(family, tiny_hf_dir, tiny_openclip_dir, dtype)
    if family == "hf" and dtype == torch.float64:
        # The literal reference runs HF's own vision forward, whose eager softmax is float32 even
        # in a float64 model; the fast image path (vl_core._hf_vision) takes it in float64. Here
        # both use the model's forward, so fp64 isolates the algorithm; the fast image path has
        # its own tests (vl-core test_hf_vision.py, test_fast_paths.py).
        backbone.fast_image = False  # type: ignore[attr-defined]
    tol = TOLERANCE[dtype]
    detector = CLIP4DM(backbone, mode=mode, epsilon=0.0, layers=3)
    fast = detector.token_relevance(images, CAPTIONS)
    for b, (image, caption) in enumerate(zip(images, CAPTIONS, strict=True)):
        literal = literal_relevance(backbone, image, detector.template + caption, 3)
        scale = float(literal.abs().max())
        assert scale > 0
        torch.testing.assert_close(
            fast.relevance[b], literal.to(fast.relevance[b].dtype), atol=tol * scale, rtol=0
        )
    # words and selections equal those built from the literal relevance
    results = detector.detect_batch(images, CAPTIONS, batch_size=3)
    for image, caption, result in zip(images, CAPTIONS, results, strict=True):
        literal = literal_relevance(backbone, image, detector.template + caption, 3)
        expected = expected_word_scores(backbone, detector.template, caption, literal)
        assert [w.word for w in result.words] == [w for w, _ in expected]
        np.testing.assert_allclose(
            [w.score for w in result.words], [s for _, s in expected], atol=tol * scale, rtol=0
        )
        chosen = sorted(expected, key=lambda ws: ws[1])
        if mode == "most_negative":
            assert result.misaligned_words == [chosen[0][0]]
        else:
            negatives = {w for w, s in expected if s < 0 and any(ch.isalnum() for ch in w)}
            assert set(result.misaligned_words) == negatives


def expected_word_scores(
    backbone: ClipBackbone, template: str, caption: str, relevance: Tensor
) -> list[tuple[str, float]]:
    full = template + caption
    words = split_words(full)
    ids = backbone.tokenizer.encode(full)
    groups = align_words(backbone.tokenizer, words, ids)
    return [
        (w.text, float(relevance[g.tokens].mean()))
        for w, g in zip(words, groups, strict=True)
        if w.start >= len(template)
    ]


def reference_word_split(
    backbone: ClipBackbone, text: str, relevance: Tensor
) -> list[tuple[str, float]]:
    """The authors' procedure for plain captions: split on spaces with "." and "," apart,
    encode each word alone and walk a cursor through the sentence's tokens."""
    words = text.replace(".", " .").replace(",", " ,").split()
    cursor, out = 0, []
    for word in words:
        n = len(backbone.tokenizer.encode(word))
        out.append((word, float(relevance[cursor : cursor + n].mean())))
        cursor += n
    return out


def test_plain_captions_match_the_reference_word_split(
    backbone: ClipBackbone, images: list[Image.Image]
) -> None:
    detector = CLIP4DM(backbone)
    plain = ["a dog, a cat and a bird on the grass.", "three red apples"]
    results = detector.detect_batch(images[:2], plain)
    relevance = detector.token_relevance(images[:2], plain).relevance
    for caption, result, rel in zip(plain, results, relevance, strict=True):
        reference = reference_word_split(backbone, detector.template + caption, rel)[3:]
        assert [w.word for w in result.words] == [w for w, _ in reference]
        assert [w.score for w in result.words] == pytest.approx([s for _, s in reference])


def test_batch_equals_single_whatever_size_and_order(
    backbone: ClipBackbone, images: list[Image.Image]
) -> None:
    detector = CLIP4DM(backbone, mode="threshold")
    singles = [detector.detect(i, c) for i, c in zip(images, CAPTIONS, strict=True)]
    order = [2, 0, 3, 1]
    for batch_size in (1, 3, 4):
        batched = detector.detect_batch(
            [images[i] for i in order], [CAPTIONS[i] for i in order], batch_size=batch_size
        )
        for j, i in enumerate(order):
            assert_same_detection(batched[j], singles[i])


def assert_same_detection(a: Detection, b: Detection) -> None:
    scale = max(abs(w.score) for w in b.words)
    assert [w.word for w in a.words] == [w.word for w in b.words]
    np.testing.assert_allclose(
        [w.score for w in a.words], [w.score for w in b.words], atol=1e-5 * scale, rtol=0
    )
    assert a.misaligned_words == b.misaligned_words
    assert a.cosine == pytest.approx(b.cosine, abs=1e-6)


def test_each_distinct_image_is_encoded_once_per_batch(
    backbone: ClipBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "img.png"
    Image.new("RGB", (30, 30), "blue").save(path)
    other = Image.new("RGB", (30, 30), "green")
    rows: list[int] = []
    original = backbone.encode_image

    def counting(pixels: Tensor) -> Tensor:
        rows.append(pixels.shape[0])
        return original(pixels)

    monkeypatch.setattr(backbone, "encode_image", counting)
    detector = CLIP4DM(backbone)
    results = detector.detect_batch([path, other, str(path), other], ["a", "b", "c", "d"])
    assert rows == [2]
    assert results[0].cosine != results[1].cosine


def test_no_parameter_gradients_and_flags_untouched(
    backbone: ClipBackbone, images: list[Image.Image]
) -> None:
    detector = CLIP4DM(backbone)
    detector.detect(images[0], CAPTIONS[0])
    assert all(p.grad is None and not p.requires_grad for p in backbone.model.parameters())


def test_long_caption_is_truncated_explicitly(
    backbone: ClipBackbone, images: list[Image.Image], caplog: pytest.LogCaptureFixture
) -> None:
    detector = CLIP4DM(backbone)
    caption = " ".join(f"word{i}" for i in range(60))
    with caplog.at_level(logging.WARNING, logger="clip4dm"):
        result = detector.detect_batch([images[0], images[1]], [caption, caption])[0]
    assert result.truncated
    assert result.unscored_words
    assert result.unscored_words[-1] == "word59"
    assert len(result.words) + len(result.unscored_words) == 60
    assert [w.index for w in result.words] == list(range(len(result.words)))
    assert sum("exceed" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_rejected(
    backbone: ClipBackbone, images: list[Image.Image], text: str
) -> None:
    with pytest.raises(ValueError, match="empty"):
        CLIP4DM(backbone).detect(images[0], text)


def test_bad_arguments(backbone: ClipBackbone) -> None:
    with pytest.raises(ValueError, match="layers"):
        CLIP4DM(backbone, layers=backbone.num_text_layers + 1)
    with pytest.raises(ValueError, match="mode"):
        CLIP4DM(backbone, mode="bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        CLIP4DM(backbone).detect_batch([Image.new("RGB", (4, 4))] * 2, ["a"])


def test_ref_clip_score_takes_max_over_all_references(
    backbone: ClipBackbone, images: list[Image.Image]
) -> None:
    detector = CLIP4DM(backbone)
    refs = ["a bird", "a photo of food", "two dogs and a cat"]
    result = detector.detect(images[1], CAPTIONS[1], references=refs)
    with torch.no_grad():
        emb = backbone.encode_text(
            backbone.tokenize([detector.template + t for t in [CAPTIONS[1], *refs]]).ids
        )
    sims = torch.nn.functional.cosine_similarity(emb[:1], emb[1:]).tolist()
    a, b = 2.5 * max(result.cosine, 0), 2.5 * max(max(sims), 0)
    assert result.ref_clip_score == pytest.approx(2 * a * b / (a + b), rel=1e-5)


def test_to_dict_is_json_ready(backbone: ClipBackbone, images: list[Image.Image]) -> None:
    import json

    result = CLIP4DM(backbone).detect(images[0], CAPTIONS[0])
    data = json.loads(json.dumps(result.to_dict()))
    assert data["words"][0]["word"] == "a"
    assert set(data) >= {
        "words",
        "misaligned",
        "negative_sum",
        "clip_score",
        "f_clip_score",
        "truncated",
    }


@pytest.mark.parametrize("template", ["A photo depicts ", ""])
def test_word_spans_are_offsets_in_the_caption_as_given(
    backbone: ClipBackbone, images: list[Image.Image], template: str
) -> None:
    detector = CLIP4DM(backbone, template=template)
    for caption in [*CAPTIONS, '  "spaced"  out…  🐱cat ']:
        result = detector.detect(images[0], caption)
        assert result.words
        for word in result.words:
            assert word.start is not None
            assert word.end is not None
            assert caption[word.start : word.end] == word.word


def test_from_dict_inverts_to_dict(backbone: ClipBackbone, images: list[Image.Image]) -> None:
    import json

    long = " ".join(f"word{i}" for i in range(60))
    detections = [
        CLIP4DM(backbone, mode="threshold", epsilon=0.0).detect(images[0], CAPTIONS[0]),
        CLIP4DM(backbone, mode="most_negative").detect(images[1], CAPTIONS[2]),
        CLIP4DM(backbone).detect(images[2], long, references=["a dog", "two cats"]),
    ]
    assert detections[0].misaligned  # epsilon 0 selects the negative words
    assert detections[2].truncated
    assert detections[2].ref_clip_score is not None
    for detection in detections:
        assert Detection.from_dict(detection.to_dict()) == detection
        as_json = json.loads(json.dumps(detection.to_dict()))
        assert Detection.from_dict({"id": 7, "image": "x.png", **as_json}) == detection


def test_from_dict_rejects_what_is_not_a_detection() -> None:
    good = {
        "caption": "a cat",
        "words": [{"word": "a", "index": 0, "score": 0.1, "start": 0, "end": 1}],
        "misaligned": [],
        "negative_sum": 0.0,
        "cosine": 0.2,
        "clip_score": 0.5,
        "f_clip_score": 0.0,
        "mode": "threshold",
    }
    assert Detection.from_dict(good).words[0].end == 1
    for key, value in [
        ("mode", "bogus"),
        ("cosine", "high"),
        ("cosine", True),
        ("words", "a cat"),
        ("truncated", "yes"),
        ("unscored_words", [1]),
    ]:
        with pytest.raises(ValueError, match=key if key != "words" else "words"):
            Detection.from_dict({**good, key: value})
    with pytest.raises(ValueError, match="caption"):
        Detection.from_dict({k: v for k, v in good.items() if k != "caption"})
    with pytest.raises(ValueError, match="index"):
        Detection.from_dict({**good, "words": [{"word": "a", "score": 0.1}]})
