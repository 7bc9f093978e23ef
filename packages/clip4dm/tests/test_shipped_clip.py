"""The shipped shapes-world CLIP (shared/models/clip-shapes): loads offline through the public
path, localises foils far above chance, and reproduces its recorded metrics (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from clip4dm import CLIP4DM

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "shared" / "models" / "clip-shapes"
WORLD = ROOT / "shared" / "world" / "test-set"
SAMPLES = ROOT / "shared" / "world" / "samples"


def _evaluate_module() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tools.world import evaluate

    return evaluate


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return json.loads((MODEL / "metrics.json").read_text(encoding="utf-8"))


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


def test_foil_subset_far_above_chance(detector: CLIP4DM) -> None:
    """The first 150 test captions: foils localised at over 2.5x chance, and F-CLIPScore ranks
    aligned captions above foils better than a random order (AP = share of aligned captions)."""
    evaluate = _evaluate_module()
    rows = evaluate.load_foil(WORLD, "test")[:150]
    found = detector.detect_batch([r["image"] for r in rows], [r["caption"] for r in rows])
    metrics = evaluate.foil_metrics(rows, found)
    assert metrics["LA"] > 2.5 * metrics["LA_chance"], metrics
    # the CLIP tells colour and shape foils from the original caption (see the model card)
    assert metrics["pairwise_by_kind"]["colour"] > 0.95, metrics
    assert metrics["pairwise_by_kind"]["shape"] > 0.8, metrics
    aligned = sum(not r["foil"] for r in rows) / len(rows)
    assert metrics["AP_F-CLIPScore"] > aligned + 0.05, (metrics, aligned)


@pytest.mark.slow
def test_reproduces_recorded_metrics(recorded: dict[str, Any]) -> None:
    """The full fixed test set, as ``python -m tools.world.evaluate`` computes it."""
    found = _evaluate_module().evaluate(f"hf:{MODEL}", WORLD)
    assert found["hat"]["epsilon"] == pytest.approx(recorded["hat"]["epsilon"])
    for part, tolerance in (("foil", 0.01), ("hat", 0.02)):
        for key in ("LA", "LA_exact", "AP_F-CLIPScore", "AP_CLIPScore"):
            assert found[part][key] == pytest.approx(recorded[part][key], abs=tolerance), (
                part,
                key,
            )
    foil, hat = found["foil"], found["hat"]
    assert foil["LA"] > 2.5 * foil["LA_chance"]
    assert hat["LA"] > 2.5 * hat["LA_chance"]
    # AP of a random ranking = the share of positives (aligned, resp. hallucinated, captions)
    assert foil["AP_F-CLIPScore"] > (foil["captions"] - foil["foils"]) / foil["captions"] + 0.05
    assert hat["AP_F-CLIPScore"] > hat["hallucinated"] / hat["captions"] + 0.2


# -- the training script that made it ------------------------------------------------------------
def _train_module() -> Any:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import importlib

    return importlib.import_module("tools.train_clip")


def test_subset_embedding_matches_the_full_table_and_writes_back() -> None:
    import torch

    train_clip = _train_module()
    full = torch.nn.Embedding(50, 4)
    subset = train_clip.SubsetEmbedding(full, [3, 7, 7, 20])
    ids = torch.tensor([[3, 20, 7]])
    assert torch.equal(subset(ids), full(ids).detach())
    with torch.no_grad():
        subset.weight += 1.0
    with pytest.raises(ValueError, match="outside the training vocabulary"):
        subset(torch.tensor([[4]]))
    before = full.weight.detach().clone()
    table = subset.write_back()
    assert table is full
    assert torch.equal(table.weight[[3, 7, 20]], before[[3, 7, 20]] + 1.0)
    untrained = [i for i in range(50) if i not in (3, 7, 20)]
    assert before[untrained].abs().sum() > 0
    assert not table.weight[untrained].any()  # rows the world never uses are zeroed


@pytest.mark.slow
def test_train_script_resumes_exactly_and_saves_a_loadable_model(tmp_path: Path) -> None:
    """Tiny config: 4 steps straight == 2 steps + resume to 4; the release loads in clip4dm."""
    from safetensors.torch import load_file

    train_clip = _train_module()
    tiny = [
        "--world",
        str(tmp_path / "world"),
        "--train",
        "12",
        "--world-size",
        "64",
        "--batch",
        "4",
        "--image-size",
        "32",
        "--patch",
        "8",
        "--text-width",
        "32",
        "--vision-width",
        "32",
        "--text-layers",
        "3",
        "--vision-layers",
        "1",
        "--heads",
        "2",
        "--embed",
        "16",
        "--threads",
        "1",
        "--no-eval",
        "--log-every",
        "2",
    ]
    straight = tmp_path / "straight"
    assert (
        train_clip.main(
            [
                *tiny,
                "--steps",
                "4",
                "--work",
                str(straight / "work"),
                "--out",
                str(straight / "model"),
            ]
        )
        == 0
    )
    resumed = tmp_path / "resumed"
    common = ["--work", str(resumed / "work"), "--out", str(resumed / "model")]
    assert train_clip.main([*tiny, "--steps", "2", *common]) == 0
    assert train_clip.main([*tiny, "--steps", "4", *common]) == 0
    a = load_file(str(straight / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    detector = CLIP4DM(f"hf:{straight / 'model'}", mode="most_negative", device="cpu")
    image = tmp_path / "world" / "images" / "train_000000.png"
    found = detector.detect(image, "a red circle above a blue square")
    assert [w.word for w in found.words] == ["a", "red", "circle", "above", "a", "blue", "square"]
    card = (straight / "model" / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "--steps 4" in card
