"""The shipped shapes-world EGTR (shared/models/egtr-shapes): loads offline through the public path
(EGTRPredictor, ``egtr predict``) and boxes the shapes of the sample images. (Its recorded test-set
metrics, measured by tools/train_egtr.py, are reproduced in tools/tests/test_train_egtr.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from egtr import EGTRConfig, EGTRPredictor, SceneGraph
from egtr.cli import main as egtr_main

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "shared" / "models" / "egtr-shapes"
TEST_SET = ROOT / "shared" / "world" / "test-set"
SAMPLES = ROOT / "shared" / "world" / "samples"
SHAPES = ["circle", "square", "triangle", "star", "cross"]


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MODEL / "metrics.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def predictor() -> EGTRPredictor:
    return EGTRPredictor(MODEL, device="cpu", dtype="float32")


def _sample_scene(index: int) -> tuple[list[tuple[str, list[float]]], set[tuple[int, int, str]]]:
    """Sample image ``index``'s shapes ``(name, [x1, y1, x2, y2])`` and relations
    ``(subject, object, predicate)`` (indices into the shapes)."""
    rows = (SAMPLES / "scenes" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    scene = json.loads(rows[index])
    shapes = [
        (
            s["shape"],
            [s["bbox"][0], s["bbox"][1], s["bbox"][0] + s["bbox"][2], s["bbox"][1] + s["bbox"][3]],
        )
        for s in scene["shapes"]
    ]
    return shapes, {(int(i), int(j), str(p)) for i, j, p in scene["relations"]}


def _iou(a: list[float], b: tuple[float, float, float, float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _matches(graph: SceneGraph, shape: str | None, box: list[float]) -> set[int]:
    """Indices of the graph's objects at ``box`` (IoU >= 0.5) named ``shape`` (any if None)."""
    return {
        k
        for k, o in enumerate(graph.objects)
        if shape in (None, o.label_name) and _iou(box, o.box) >= 0.5
    }


def test_ships_save_pretrained_files_and_a_card(recorded: dict[str, Any]) -> None:
    names = {p.name for p in MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "MODEL_CARD.md", "metrics.json"} <= names
    assert sum(p.stat().st_size for p in MODEL.iterdir()) < 10 * 2**20
    card = (MODEL / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "python tools/train_egtr.py" in card
    assert "egtr train --config tools/configs/egtr_shapes_detector.yaml" in card
    assert {"shipped", "stage_a", "random_init"} <= set(recorded["models"])
    config = EGTRConfig.from_pretrained(MODEL)
    assert config.object_labels == SHAPES
    rel = json.loads((TEST_SET / "vg" / "rel.json").read_text(encoding="utf-8"))
    assert config.predicate_labels == rel["rel_categories"][1:]


def test_predicts_the_sample_shapes_offline(predictor: EGTRPredictor) -> None:
    """Two sample images (256 px, the model was trained at 128 px) through the predictor."""
    images = [SAMPLES / "images" / f"test_00000{i}.png" for i in (0, 1)]
    graphs = predictor.predict(images)
    assert len(graphs) == 2
    predicates = set(predictor.model.config.predicate_labels)
    for index, graph in enumerate(graphs):
        assert graph.image_size == (256, 256)
        assert graph.relations, "no relation predicted"
        assert {r.predicate_name for r in graph.relations} <= predicates
        assert [r.score for r in graph.relations] == sorted(
            (r.score for r in graph.relations), reverse=True
        )
        shapes, _ = _sample_scene(index)
        # every shape is boxed (IoU >= 0.5) and named right
        named = [_matches(graph, shape, box) for shape, box in shapes]
        assert all(named), (index, shapes, graph.objects)


#: The demo's relation threshold (tools/demo.py): relations scoring below it are not listed.
DEMO_RELATION_THRESHOLD = 0.1


def test_one_box_per_shape_on_every_sample_image_at_the_demos_threshold() -> None:
    """What a newcomer sees in ``nox -s demo``: on each of the six sample images, exactly one
    object per drawn shape, named right, and most listed relations true of the drawing."""
    predictor = EGTRPredictor(
        MODEL, device="cpu", dtype="float32", relation_threshold=DEMO_RELATION_THRESHOLD
    )
    images = sorted((SAMPLES / "images").glob("*.png"))
    assert len(images) == 6
    true = listed = 0
    for index, graph in enumerate(predictor.predict(images)):
        shapes, relations = _sample_scene(index)
        assert len(graph.objects) == len(shapes), (index, shapes, graph.objects)
        found = {}
        for j, (shape, box) in enumerate(shapes):
            (k,) = _matches(graph, shape, box)  # exactly one object for each shape
            found[k] = j
        assert len(found) == len(shapes)  # and no object stands for two shapes
        for r in graph.relations:
            listed += 1
            true += (found[r.subject], found[r.object], r.predicate_name) in relations
    assert listed >= 12
    assert true >= 0.8 * listed, (true, listed)


def test_egtr_predict_cli_writes_json_and_drawings(tmp_path: Path) -> None:
    image = SAMPLES / "images" / "test_000002.png"
    out = tmp_path / "graphs.jsonl"
    status = egtr_main(
        [
            "predict",
            str(image),
            "--model",
            str(MODEL),
            "--out",
            str(out),
            "--draw",
            str(tmp_path / "draw"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert status == 0
    graph = SceneGraph.from_dict(json.loads(out.read_text(encoding="utf-8")))
    assert graph.relations
    drawing = tmp_path / "draw" / "test_000002.graph.png"  # never the input's own name
    assert drawing.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
