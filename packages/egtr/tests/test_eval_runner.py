"""``egtr eval`` end to end on a tiny model: predictions.jsonl, result.json, --fps, errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from sgg_data_testing import write_tiny_oi, write_tiny_vg

from egtr import EGTRPredictor
from egtr.data import VisualGenomeDataset, predicate_statistics
from egtr.evaluation import GroundTruth, PredictedTriplets, SGGEvaluator
from egtr.evaluation.cli import add_eval_parser

pytest.importorskip("pycocotools")


def _eval(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="egtr")
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    return int(args.func(args))


def _vg_with_model_relations(root: Path, predictor: EGTRPredictor) -> dict[int, Any]:
    """Tiny VG whose test GT relations are the model's own top-3 triplets (so some are hit)."""
    write_tiny_vg(root)
    coco = json.loads((root / "test.json").read_text())
    rel = json.loads((root / "rel.json").read_text())
    graphs = {}
    annotations = [a for a in coco["annotations"] if a["image_id"] == 33]
    for image in coco["images"]:
        if image["id"] == 33:
            continue
        graph = predictor.predict(root / "images" / image["file_name"])[0]
        graphs[image["id"]] = graph
        for obj in graph.objects:
            x1, y1, x2, y2 = obj.box
            annotations.append(
                {
                    "id": len(annotations) + 100,
                    "image_id": image["id"],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "category_id": obj.label + 1,
                }
            )
        rel["test"][str(image["id"])] = [
            [r.subject, r.object, r.predicate + 1] for r in graph.relations[:3]
        ]
    coco["annotations"] = annotations
    (root / "test.json").write_text(json.dumps(coco))
    (root / "rel.json").write_text(json.dumps(rel))
    return graphs


def test_eval_vg_end_to_end(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    predictor = EGTRPredictor(tiny_model_dir, device="cpu")
    root = tmp_path / "vg"
    graphs = _vg_with_model_relations(root, predictor)
    out = tmp_path / "out"
    code = _eval(
        [
            "--model",
            str(tiny_model_dir),
            "--data",
            str(root),
            "--split",
            "test",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    headline = json.loads(capsys.readouterr().out)
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"] == "vg"
    assert result["images"] == 3
    sgdet = result["metrics"]["sgdet"]
    assert headline["R@20"] == sgdet["R@20"]
    assert sgdet["images"] == 2
    assert sgdet["images_without_relations"] == 1
    assert sgdet["R@20"] > 0
    for key in ("R@50", "mR@100", "mR@20_all_predicates", "zR@50"):
        assert key in sgdet
    assert "R@100" in result["metrics"]["sgdet_unconstrained"]
    assert 0 < result["metrics"]["detection"]["AP50"] <= 1
    assert result["settings"]["detections"] == "sigmoid_topk"

    # the same numbers from the public predictor and the evaluator, independently of the runner
    data = VisualGenomeDataset(root, "test")
    seen = predicate_statistics(VisualGenomeDataset(root, "train")).seen_triplets
    evaluator = SGGEvaluator(4, seen_triplets=seen)
    for index, record in enumerate(data.records):
        graph = graphs.get(record.image_id) or predictor.predict(data.image_path(index))[0]
        pred = PredictedTriplets.create(
            [o.box for o in graph.objects],
            [o.label for o in graph.objects],
            [r.subject for r in graph.relations],
            [r.object for r in graph.relations],
            [r.predicate for r in graph.relations],
            [r.score for r in graph.relations],
        )
        evaluator.add(GroundTruth.from_target(data[index][1]), pred)
    expected = evaluator.compute()
    for key, value in expected.items():
        if isinstance(value, float):
            assert sgdet[key] == pytest.approx(value, nan_ok=True), key

    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [line["image_id"] for line in lines] == [31, 32, 33]
    first, graph = lines[0], graphs[31]
    assert first["file_name"] == "31.jpg"
    assert first["orig_size"] == [60, 80]
    assert [t[:3] for t in first["triplets"]] == [
        [graph.objects[r.subject].query, graph.objects[r.object].query, r.predicate]
        for r in graph.relations
    ]
    objects = {row[0]: row for row in first["objects"]}
    for obj in graph.objects:
        assert objects[obj.query][1:5] == pytest.approx(list(obj.box), abs=0.01)
        assert objects[obj.query][5] == obj.label
    assert len(first["detections"]) == 6 * 3  # all N x C sigmoid scores (fewer than 100)


def test_eval_open_images_and_fps(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_oi(tmp_path / "oi")
    out = tmp_path / "out"
    code = _eval(
        [
            "--model",
            str(tiny_model_dir),
            "--data",
            str(root),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
            "--batch-size",
            "2",
            "--no-predictions",
        ]
    )
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["dataset"] == "oi"
    oi = result["metrics"]["open_images"]
    for key in ("microR@50", "wmAP_rel", "wmAP_phr", "score_wtd"):
        assert 0 <= oi[key] <= 1
    assert oi["score_wtd"] == pytest.approx(
        0.2 * oi["microR@50"] + 0.4 * oi["wmAP_rel"] + 0.4 * oi["wmAP_phr"]
    )
    assert oi["gt_relations"] == 3  # t1's repeated triplet counted once, plus the crowded image
    assert "zR@20" not in result["metrics"]["sgdet"]
    assert result["settings"]["detections"] == "per_query"
    assert not (out / "predictions.jsonl").exists()
    capsys.readouterr()

    code = _eval(
        [
            "--model",
            str(tiny_model_dir),
            "--data",
            str(root),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
            "--fps",
            "--limit",
            "2",
            "--warmup",
            "1",
            "--min-size",
            "64",
            "--max-size",
            "96",
        ]
    )
    assert code == 0
    fps = json.loads((out / "fps.json").read_text())
    assert (fps["min_size"], fps["max_size"], fps["batch_size"]) == (64, 96, 1)
    assert fps["images_timed"] == 1
    assert fps["fps"] > 0
    assert json.loads(capsys.readouterr().out)["fps"] == fps["fps"]


def test_eval_reports_mismatches_and_missing_data(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_vg(tmp_path / "vg", images=False)
    rel = json.loads((root / "rel.json").read_text())
    rel["rel_categories"].append("beside")
    (root / "rel.json").write_text(json.dumps(rel))
    args = ["--model", str(tiny_model_dir), "--device", "cpu", "--quiet", "--out", str(tmp_path)]
    assert _eval([*args, "--data", str(root)]) == 1
    assert "5 predicates but the model 3 / 4" in capsys.readouterr().err
    assert _eval([*args, "--data", str(tmp_path / "nothing")]) == 1
    assert "neither a Visual Genome folder" in capsys.readouterr().err
    assert _eval(["--model", str(tmp_path), "--data", str(root), "--quiet"]) == 1
    assert "not an EGTR model directory" in capsys.readouterr().err


def test_fps_defaults_to_the_paper_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    from egtr.evaluation import runner

    calls: list[dict[str, Any]] = []

    def fake(options: runner.EvalOptions, **kwargs: Any) -> dict[str, Any]:
        calls.append({"options": options, **kwargs})
        return {"fps": 1.0}

    monkeypatch.setattr(runner, "measure_fps", fake)
    assert _eval(["--model", "m", "--data", "d", "--fps"]) == 0
    assert (calls[0]["min_size"], calls[0]["max_size"], calls[0]["warmup"]) == (600, 1000, 10)
    assert calls[0]["options"].batch_size == 1


def test_cli_module_is_light_and_exports_resolve() -> None:
    import subprocess
    import sys

    code = "import sys, egtr.evaluation.cli; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)
    import egtr.data
    import egtr.evaluation

    for module in (egtr.data, egtr.evaluation):
        for name in module.__all__:
            assert getattr(module, name) is not None
