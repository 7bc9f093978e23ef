"""``egtr eval`` end to end on a tiny model: predictions.jsonl, result.json, --fps, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sgg_data_testing import write_tiny_oi, write_tiny_vg

from egtr import EGTRPredictor
from egtr.data import VisualGenomeDataset, predicate_statistics
from egtr.evaluation import GroundTruth, PredictedTriplets, SGGEvaluator
from egtr.evaluation.cli import add_eval_parser
from vl_core.cli import Parser

pytest.importorskip("pycocotools")


def _eval(argv: list[str]) -> int:
    parser = Parser(prog="egtr")
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    return int(args.func(args))


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("egtr eval: error: "), err
    assert err.count("\n") == 1, err
    return err


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
            "--batch-size",  # as the predictor (the default batches pad the images)
            "1",
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
    # the graph-constrained ceiling is printed right after each R@K, and only for that section
    keys = list(headline)
    assert keys[keys.index("R@20") + 1] == "R@20_ceiling"
    assert headline["R@20_ceiling"] == sgdet["R@20_ceiling"]
    assert 0 < sgdet["R@20_ceiling"] <= 1
    assert "ng_R@20_ceiling" not in headline
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
    assert first["image_size"] == [80, 60]  # (width, height), as SceneGraph.image_size
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
    assert _eval([*args, "--data", str(root)]) == 2
    assert "5 predicates but the model 3 / 4" in _one_line_error(capsys)
    assert _eval([*args, "--data", str(tmp_path / "nothing")]) == 2
    assert "neither a Visual Genome folder" in _one_line_error(capsys)
    assert _eval(["--model", str(tmp_path), "--data", str(root), "--quiet"]) == 2
    assert "not an EGTR model directory" in _one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vg"]  # nothing written


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


def _broken_copy(model_dir: Path, target: Path, missing: str) -> Path:
    """A copy of a model directory whose weights file lacks the tensor ``missing``."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, target)
    state = load_file(target / "model.safetensors")
    del state[missing]
    save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_eval_opens_the_model_strictly(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model directory with a deleted weight is refused in one line (exit 2) as by
    ``egtr predict``; it used to be evaluated with that weight randomly initialised."""
    root = write_tiny_vg(tmp_path / "vg")
    broken = _broken_copy(tiny_model_dir, tmp_path / "broken", "class_embed.bias")
    out = tmp_path / "out"
    argv = ["--model", str(broken), "--data", str(root), "--out", str(out), "--device", "cpu"]
    assert _eval([*argv, "--quiet"]) == 2
    assert "missing 1: class_embed.bias" in _one_line_error(capsys)
    assert not out.exists()


def test_eval_validates_arguments_first(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", str(tiny_model_dir), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    for flag, value in (
        ("--batch-size", "0"),
        ("--workers", "-1"),
        ("--top-k", "0"),
        ("--tau", "nan"),
        ("--device", "gpu"),
    ):
        with pytest.raises(SystemExit) as exited:
            _eval([*argv, flag, value])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("egtr eval: error: argument "), err
        assert flag in err
    assert not (tmp_path / "o").exists()


def test_eval_quiet_prints_nothing_but_results(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_vg(tmp_path / "vg")
    argv = ["--model", str(tiny_model_dir), "--data", str(root), "--device", "cpu"]
    assert _eval([*argv, "--out", str(tmp_path / "a"), "--quiet", "--no-detection-ap"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""
    assert json.loads(quiet.out)["images"] == 3
    # the deprecated spellings still work, with one warning line each
    old = ["--num-workers", "0", "--image-dir", str(root / "images"), "--no-detection-ap"]
    assert _eval([*argv, "--out", str(tmp_path / "b"), "--quiet", *old]) == 0
    err = capsys.readouterr().err
    assert "--num-workers is deprecated" in err
    assert "--image-dir is deprecated" in err
    assert "use --images-root" in err


def test_eval_output_folder_rules(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Never write over a result the command did not write, or one of other settings, unless
    --overwrite; a rerun of the same settings replaces its own result."""
    root = write_tiny_vg(tmp_path / "vg")
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text('{"mine": true}\n')
    argv = ["--model", str(tiny_model_dir), "--data", str(root), "--out", str(out)]
    argv += ["--device", "cpu", "--quiet", "--no-detection-ap"]
    assert _eval(argv) == 2
    assert "not written by egtr eval" in _one_line_error(capsys)
    assert json.loads((out / "result.json").read_text()) == {"mine": True}
    assert not (out / "predictions.jsonl").exists()

    assert _eval([*argv, "--overwrite"]) == 0
    first = json.loads((out / "result.json").read_text())
    assert first["images"] == 3
    assert (out / "run.json").is_file()
    capsys.readouterr()
    assert _eval(argv) == 0  # the same inputs and settings: replaced
    capsys.readouterr()
    assert _eval([*argv, "--top-k", "5"]) == 2
    assert "settings.top_k: 100 -> 5" in _one_line_error(capsys)
    assert json.loads((out / "result.json").read_text())["settings"]["top_k"] == 100
    assert _eval([*argv, "--top-k", "5", "--no-predictions", "--overwrite"]) == 0
    assert json.loads((out / "result.json").read_text())["settings"]["top_k"] == 5
    assert not (out / "predictions.jsonl").exists()  # not left from the other settings
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_unreadable_image_is_an_error_row(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad image becomes an error row naming it; the run carries on and exits with 1."""
    root = write_tiny_vg(tmp_path / "vg")
    (root / "images" / "32.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--data", str(root), "--out", str(out)]
    argv += ["--device", "cpu", "--quiet", "--no-detection-ap", "--batch-size", "2"]
    assert _eval(argv) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["images"] == 2
    assert (
        captured.err
        == "egtr eval: 1 image(s) could not be read (error rows, left out of the metrics)\n"
    )
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["image_id"] for row in rows] == [31, 32, 33]
    assert rows[1]["file_name"] == "32.png"
    assert "32.png" in rows[1]["error"]
    assert "error" not in rows[0]
    result = json.loads((out / "result.json").read_text())
    assert (result["images"], result["errors"]) == (2, 1)
    assert result["failed"] == [rows[1]]


def test_interrupted_eval_resumes_to_the_same_result(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C keeps the predictions written so far; the same command resumes, recomputes the
    interrupted batch whole (same padding) and ends with the files of an uninterrupted run."""
    from egtr.evaluation import runner

    root = write_tiny_vg(tmp_path / "vg")
    argv = ["--model", str(tiny_model_dir), "--data", str(root), "--device", "cpu"]
    argv += ["--quiet", "--no-detection-ap"]
    assert _eval([*argv, "--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()
    out = tmp_path / "out"
    argv += ["--out", str(out)]
    calls = []
    real = runner.boxes_to_pixels

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "boxes_to_pixels", interrupted)
    assert _eval(argv) == 130
    err = capsys.readouterr().err
    assert "egtr eval: interrupted" in err
    assert "resume with: egtr eval --model" in err
    kept = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in kept] == [31]
    assert not (out / "result.json").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(runner, "boxes_to_pixels", real)
    assert _eval([arg for arg in argv if arg != "--quiet"]) == 0  # the same command resumes
    err = capsys.readouterr().err
    assert "egtr eval: resumed: 1 of 3 images were already in predictions.jsonl" in err
    whole = tmp_path / "whole"
    assert (out / "predictions.jsonl").read_bytes() == (whole / "predictions.jsonl").read_bytes()
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"] == json.loads((whole / "result.json").read_text())["metrics"]
    assert result["run"] == {"processes": 1, "computed": 2, "reused": 1}
    assert result["settings"]["batch_size"] == 8  # the CPU default: one batch of 3 images


def _outputs(seed: int, queries: int = 6, classes: int = 3, predicates: int = 4) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return {
        "logits": torch.randn(queries, classes, generator=generator),
        "pred_boxes": torch.rand(queries, 4, generator=generator) * 0.5 + 0.25,
        "pred_rel": torch.rand(queries, queries, predicates, generator=generator),
        "pred_connectivity": torch.rand(queries, queries, generator=generator),
    }


@pytest.mark.parametrize("kind", ["vg", "oi"])
def test_prediction_rows_give_back_exactly_what_the_metrics_use(kind: str) -> None:
    """The metrics are computed from predictions.jsonl: its rows must hold the float32 values
    bit for bit (the rows once rounded scores to 6 digits and boxes to 0.01 pixel)."""
    import numpy as np

    from egtr.evaluation.runner import ImagePredictions

    for seed in range(3):
        found = ImagePredictions.from_outputs(
            _outputs(seed), 83, 61, kind=kind, object_score="softmax", top_k=7, detections=True
        )
        row = json.loads(json.dumps(found.to_row(5, "5.jpg", (83, 61))))
        back = ImagePredictions.from_row(row)
        assert back.to_row(5, "5.jpg", (83, 61)) == row
        pairs = [(found.graph, back.graph), (found.free, back.free)]
        if kind == "oi":
            assert found.candidates is not None
            assert back.candidates is not None
            pairs.append((found.candidates, back.candidates))
        else:
            assert back.candidates is None
        for want, got in pairs:
            for name in ("subjects", "objects", "predicates", "scores"):
                assert np.array_equal(getattr(want, name), getattr(got, name)), name
            assert got.scores.dtype == want.scores.dtype == np.float64
            used = np.concatenate([want.subjects, want.objects])
            assert np.array_equal(want.boxes[used], got.boxes[used])
            assert np.array_equal(want.labels[used], got.labels[used])
        assert found.detections is not None
        assert back.detections is not None
        for want_part, got_part in zip(found.detections, back.detections, strict=True):
            assert want_part.dtype == got_part.dtype
            assert np.array_equal(want_part, got_part)
        assert len(found.detections[0]) == (6 if kind == "oi" else 6 * 3)


def test_default_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from egtr.evaluation.runner import default_batch_size

    assert default_batch_size(torch.device("cpu"), torch.float32) == 8
    free = {"bytes": 20 << 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free["bytes"], 80 << 30))
    cuda = torch.device("cuda", 0)
    assert default_batch_size(cuda, torch.float32) == 10  # half of 20 GiB at 1 GiB an image
    assert default_batch_size(cuda, torch.bfloat16) == 20
    assert default_batch_size(cuda, torch.float32, 600, 1000) == 17  # 10 / 0.5627
    free["bytes"] = 100 << 30
    assert default_batch_size(cuda, torch.bfloat16) == 32  # 100, capped
    free["bytes"] = 1 << 30
    assert default_batch_size(cuda, torch.float32) == 1


def test_a_resumed_run_keeps_its_batch_size_and_retries_error_rows(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_tiny_vg(tmp_path / "vg")
    image = root / "images" / "32.png"
    good = image.read_bytes()
    image.write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model_dir), "--data", str(root), "--out", str(out)]
    argv += ["--device", "cpu", "--quiet", "--no-detection-ap"]
    assert _eval([*argv, "--batch-size", "2"]) == 1
    assert json.loads((out / "result.json").read_text())["failed"][0]["id"] == 32
    capsys.readouterr()
    image.write_bytes(good)
    assert _eval(argv) == 0  # no --batch-size: the recorded 2, not the default
    capsys.readouterr()
    result = json.loads((out / "result.json").read_text())
    assert (result["images"], result["errors"], result["settings"]["batch_size"]) == (3, 0, 2)
    assert result["run"] == {"processes": 1, "computed": 1, "reused": 2}
    assert _eval([*argv, "--batch-size", "3"]) == 2
    assert "settings.batch_size: 2 -> 3" in _one_line_error(capsys)


def _six_image_vg(root: Path) -> Path:
    """The tiny VG with three more test images (a copy of each, another id and seed)."""
    from sgg_data_testing import write_image

    write_tiny_vg(root)
    coco = json.loads((root / "test.json").read_text())
    rel = json.loads((root / "rel.json").read_text())
    for new_id, old_id in ((34, 31), (35, 32), (36, 33)):
        image = next(i for i in coco["images"] if i["id"] == old_id)
        name = f"{new_id}.jpg"
        write_image(root / "images" / name, image["width"], image["height"], seed=new_id)
        coco["images"].append({**image, "id": new_id, "file_name": name})
        for annotation in [a for a in coco["annotations"] if a["image_id"] == old_id]:
            new_annotation = {**annotation, "id": annotation["id"] + 1000, "image_id": new_id}
            coco["annotations"].append(new_annotation)
        if str(old_id) in rel["test"]:
            rel["test"][str(new_id)] = rel["test"][str(old_id)]
    (root / "test.json").write_text(json.dumps(coco))
    (root / "rel.json").write_text(json.dumps(rel))
    return root


def _torchrun_eval(argv: list[str]) -> subprocess.CompletedProcess[str]:
    import os
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(port), "-m", "egtr", "eval", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_two_processes_write_what_one_writes_also_after_resumes(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``torchrun --nproc-per-node 2 -m egtr eval``: the merged predictions and the metrics are
    a single process's, also when one process resumes what two left (a torn line, a leftover
    part file of another world size) and two resume what one left (interrupted)."""
    from egtr.evaluation import runner

    root = _six_image_vg(tmp_path / "vg")
    (root / "images" / "35.jpg").write_bytes(b"not an image")  # an error row, merged too
    argv = ["--model", str(tiny_model_dir), "--data", str(root), "--device", "cpu"]
    argv += ["--quiet", "--batch-size", "2"]
    one = tmp_path / "one"
    assert _eval([*argv, "--out", str(one)]) == 1
    capsys.readouterr()
    want = (one / "predictions.jsonl").read_bytes()
    rows = want.decode().splitlines()
    assert [json.loads(row)["id"] for row in rows] == [31, 32, 33, 34, 35, 36]
    metrics = json.loads((one / "result.json").read_text())["metrics"]

    two = tmp_path / "two"
    done = _torchrun_eval([*argv, "--out", str(two)])
    assert done.returncode == 1, done.stderr[-3000:]  # 1: an error row (rank 0's status)
    assert json.loads(done.stdout[done.stdout.index("{") :])["images"] == 5
    assert (two / "predictions.jsonl").read_bytes() == want
    result = json.loads((two / "result.json").read_text())
    assert result["metrics"] == metrics
    assert result["run"] == {"processes": 2, "computed": 6, "reused": 0}
    assert not [p.name for p in two.iterdir() if p.name.startswith(".")]

    # killed midway: a torn last line, and the part of a rank of a 3-process run
    (two / "predictions.jsonl").write_text(rows[0] + "\n" + rows[1][:40])
    (two / ".predictions.jsonl.part-2").write_text(rows[3] + "\n" + rows[4] + "\n")
    (two / "result.json").unlink()
    assert _eval([*argv, "--out", str(two)]) == 1
    capsys.readouterr()
    assert (two / "predictions.jsonl").read_bytes() == want
    result = json.loads((two / "result.json").read_text())
    assert result["metrics"] == metrics
    assert result["run"] == {"processes": 1, "computed": 4, "reused": 2}  # 35 retried
    assert not [p.name for p in two.iterdir() if p.name.startswith(".")]

    # one process interrupted at its fourth image, resumed by two
    three = tmp_path / "three"
    calls = []
    real = runner.boxes_to_pixels

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "boxes_to_pixels", interrupted)
    assert _eval([*argv, "--out", str(three)]) == 130
    capsys.readouterr()
    assert len((three / "predictions.jsonl").read_text().splitlines()) == 3
    done = _torchrun_eval([*argv, "--out", str(three)])
    assert done.returncode == 1, done.stderr[-3000:]
    assert (three / "predictions.jsonl").read_bytes() == want
    result = json.loads((three / "result.json").read_text())
    assert result["metrics"] == metrics
    assert result["run"] == {"processes": 2, "computed": 3, "reused": 3}
