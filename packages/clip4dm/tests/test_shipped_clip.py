"""The shipped shapes-world CLIP (shared/models/clip-shapes): loads offline through the public
path and localises foils far above chance through ``clip4dm eval``. (Its recorded metrics and the
script that trained it are tested with the tools, in tools/tests.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip4dm import CLIP4DM
from clip4dm.eval import EvalConfig, run_eval

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "shared" / "models" / "clip-shapes"
WORLD = ROOT / "shared" / "world" / "test-set"
SAMPLES = ROOT / "shared" / "world" / "samples"


@pytest.fixture(scope="module")
def detector() -> CLIP4DM:
    return CLIP4DM(f"hf:{MODEL}", mode="most_negative", device="cpu")


def test_ships_save_pretrained_files_and_a_card() -> None:
    names = {p.name for p in MODEL.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
        "MODEL_CARD.md",
        "metrics.json",
    } <= names
    assert sum(p.stat().st_size for p in MODEL.iterdir()) < 30 * 2**20
    card = (MODEL / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "python tools/train_clip.py" in card
    assert "## Metrics" in card


def test_loads_offline_as_a_real_clip_with_clip_bpe(detector: CLIP4DM) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    backbone = detector.backbone
    assert backbone.family == "hf"
    assert backbone.num_text_layers >= detector.layers
    config = backbone.model.config  # type: ignore[attr-defined]
    assert config.text_config.vocab_size == 49408
    assert backbone.context_length == 77
    text = "a small red circle to the left of a blue square"
    ids = backbone.tokenizer.encode(text)
    assert ids == SimpleTokenizer().encode(text)


def test_localises_foils_on_the_shipped_samples(detector: CLIP4DM) -> None:
    """Sample pairs (the demo's): the lowest word of most foil captions is the foil word."""
    rows = [json.loads(line) for line in (SAMPLES / "pairs" / "test.jsonl").open()]
    images = [str((SAMPLES / "pairs" / r["image"]).resolve()) for r in rows]
    found = detector.detect_batch(images, [r["text"] for r in rows])
    foils = [(r, d) for r, d in zip(rows, found, strict=True) if r["foil_word"]]
    hits = [d.misaligned[0].word == r["foil_word"] for r, d in foils]
    chance = sum(1 / len(d.words) for _, d in foils)
    assert sum(hits) >= 2 * chance, (hits, chance)
    original = {
        r["image"]: d.clip_score for r, d in zip(rows, found, strict=True) if not r["foil_word"]
    }
    absent = {
        "red",
        "green",
        "blue",
        "yellow",
        "purple",
        "pink",
        "circle",
        "square",
        "triangle",
        "star",
        "cross",
    }
    for r, d in foils:  # a colour or shape foil names something absent: CLIPScore drops
        if r["foil_word"] in absent:
            assert d.clip_score < original[r["image"]], r["id"]
    for r, d in zip(rows, found, strict=True):  # CLIPScore = 2.5 * max(cos, 0)
        assert 0.0 <= d.clip_score <= 2.5, r["id"]


def test_foil_subset_far_above_chance(detector: CLIP4DM, tmp_path: Path) -> None:
    """The first 150 test captions through ``clip4dm eval foil``: foils localised at over 2.5x
    chance, the CLIP tells colour and shape foils from the original caption (pairwise, see the
    model card), and F-CLIPScore ranks aligned captions above foils better than a random order
    (AP = share of aligned captions)."""
    config = EvalConfig(
        benchmark="foil",
        data=str(WORLD / "foil" / "test.json"),
        images=str(WORLD / "images"),
        out=str(tmp_path / "foil"),
        model=f"hf:{MODEL}",
        device="cpu",
        limit=150,
        use_references=False,
    )
    summary = run_eval(config, progress=False, detector=detector)
    assert summary is not None
    result = summary.result
    assert result["counts"] == {"samples": 150, "scored": 150, "errors": 0, "missing": 0}
    metrics, groups = result["metrics"], result["groups"]
    assert metrics["LA"] > 2.5 * metrics["LA_chance"], metrics
    assert metrics["LA_exact"] == metrics["LA"]  # the foil word never occurs twice in a caption
    assert groups["colour"]["pairwise"] > 0.95, groups
    assert groups["shape"]["pairwise"] > 0.8, groups
    aligned = metrics["aligned"] / metrics["samples"]
    assert metrics["AP"]["F-CLIPScore"] > aligned + 0.05, (metrics, aligned)
