"""The egtr command line: arguments, exit codes, one-line errors, results files and resuming."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from egtr_testing import legacy_names, make_image, save_lightning

from egtr.cli import DRAWING_SUFFIX, drawing_paths, main

if TYPE_CHECKING:
    from egtr.preprocessing import BatchInputs
    from egtr.scene_graph import SceneGraph


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _error_line(err: str) -> str:
    """The one ``egtr COMMAND: error:`` line of stderr (asserting there is exactly one line)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert re.match(r"egtr \w+: error: ", lines[0]), err
    return lines[0]


@pytest.fixture
def images(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "a.jpg", tmp_path / "b.png"
    make_image(90, 70, 1).save(first)
    make_image(60, 80, 2).save(second)
    return first, second


# -- help, info -----------------------------------------------------------------------------------


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("predict", "convert", "info", "train", "eval"):
        assert command in out


def test_model_help_names_hub_ids(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("predict", "info"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "hf:ORG/NAME" in capsys.readouterr().out


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from egtr.cli import main\n"
        "for argv in (['--help'], ['predict', '--help'], ['info', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'torch' not in sys.modules, 'torch loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_info_reports_versions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["egtr"] != "not installed"
    assert "torch" in report


def test_info_takes_model_and_keeps_the_positional_for_a_release(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--model", str(tiny_model_dir)]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["objects"], summary["predicates"], summary["queries"]) == (3, 4, 6)
    assert "deprecated" not in captured.err
    assert main(["info", str(tiny_model_dir)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == summary
    assert "positional MODEL is deprecated" in captured.err
    assert "--model" in captured.err


# -- argument validation: nothing is touched ------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--top-k", "-1"], "--top-k"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "two"], "--batch-size"),
        (["--workers", "-1"], "--workers"),
        (["--object-threshold", "high"], "--object-threshold"),
        (["--object-threshold", "nan"], "--object-threshold"),
        (["--relation-threshold", "2"], "--relation-threshold"),
        (["--relation-threshold", "-0.1"], "--relation-threshold"),
        (["--device", "gpu"], "--device"),
        (["--dtype", "fp8"], "--dtype"),
    ],
)
def test_bad_arguments_are_usage_errors_that_touch_nothing(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    named: str,
) -> None:
    keep = tmp_path / "keep.jsonl"
    keep.write_text('{"id": "old", "image": "old.png", "objects": [], "relations": []}\n')
    before = keep.read_bytes()
    argv = ["predict", str(images[0]), "--model", str(tiny_model_dir), "--out", str(keep), *flags]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert named in err
    assert "Traceback" not in err
    assert keep.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "b.png", "keep.jsonl"]


def test_an_out_of_range_relation_threshold_is_a_one_line_usage_error(
    tiny_model_dir: Path, images: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["predict", str(images[0]), "--model", str(tiny_model_dir), "--relation-threshold", "2"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("egtr predict: error: argument --relation-threshold: ")
    assert "expected a score in [0, 1] or 'none', got '2'" in line


def test_an_unavailable_device_is_a_usage_error(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["predict", str(images[0]), "--model", str(tiny_model_dir), "--device", "cuda:1"]
    assert main([*argv, "--out", str(tmp_path / "g.jsonl")]) == 2
    assert "CUDA is not available" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "g.jsonl").exists()


def test_every_dtype_choice_is_one_the_code_accepts() -> None:
    from vl_core.cli import DTYPE_CHOICES
    from vl_core.devices import resolve_dtype

    for name in DTYPE_CHOICES:
        resolve_dtype(name, "cpu")


# -- predict: results file ------------------------------------------------------------------------


def test_predict_writes_rows_error_rows_and_drawings(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = images
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\x00garbage")
    out = tmp_path / "graphs.jsonl"
    argv = [
        "predict",
        str(first),
        str(broken),
        str(second),
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--draw",
        str(tmp_path / "draw"),
        "--top-k",
        "3",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    ]
    assert main(argv) == 1  # one image could not be read: an error row, and exit 1
    err = capsys.readouterr().err
    assert "skipped" in err
    assert "broken.jpg" in err
    assert "1 of 3 images could not be read" in err
    records = _rows(out)
    assert [r["id"] for r in records] == [str(first), str(broken), str(second)]  # input order
    assert [r["image"] for r in records] == [str(first), str(broken), str(second)]
    assert "broken.jpg" in str(records[1]["error"])
    assert "relations" not in records[1]
    good = [records[0], records[2]]
    assert all(len(r["relations"]) == 3 for r in good)  # type: ignore[arg-type]
    assert records[0]["image_size"] == [90, 70]
    assert [r["drawing"] for r in good] == [
        str(tmp_path / "draw" / "a.graph.png"),
        str(tmp_path / "draw" / "b.graph.png"),
    ]
    for record in good:
        assert Path(str(record["drawing"])).read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((tmp_path / "graphs.jsonl.run.json").read_text())
    assert manifest["top_k"] == 3
    assert manifest["dtype"] == "float32"
    assert set(manifest["model_files"]) == {"config.json", "model.safetensors"}


def test_predict_json_to_stdout(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "c.png"
    make_image(64, 64, 3).save(image)
    assert main(["predict", str(image), "--model", str(tiny_model_dir), "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["id"] == data[0]["image"] == str(image)
    assert data[0]["relations"]
    assert len(data[0]["objects"]) == 6  # every query of the tiny model passes the 0.3 default
    argv = ["predict", str(image), "--model", str(tiny_model_dir), "--json", "--quiet"]
    assert main([*argv, "--top-k", "1", "--object-threshold", "none"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert len(record["objects"]) == 2  # only the two objects of the one relation


def test_predict_relation_threshold_keeps_relations_scoring_at_least_it(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "c.png"
    make_image(64, 64, 3).save(image)
    argv = ["predict", str(image), "--model", str(tiny_model_dir), "--json", "--quiet"]
    argv += ["--top-k", "5", "--object-threshold", "none"]
    assert main([*argv, "--relation-threshold", "none"]) == 0
    (full,) = json.loads(capsys.readouterr().out)
    assert main(argv) == 0  # no flag: the same as 'none', every top-k relation
    assert json.loads(capsys.readouterr().out) == [full]
    scores = [r["score"] for r in full["relations"]]
    assert len(scores) == 5
    threshold = (scores[1] + scores[2]) / 2
    assert main([*argv, "--relation-threshold", repr(threshold)]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert [r["score"] for r in record["relations"]] == scores[:2]
    objects = full["objects"]
    kept = [(objects[r["subject"]], objects[r["object"]]) for r in full["relations"][:2]]
    assert [
        (record["objects"][r["subject"]], record["objects"][r["object"]])
        for r in record["relations"]
    ] == kept
    assert len(record["objects"]) == len({o["query"] for pair in kept for o in pair})
    # with --out, the run manifest records it
    out = tmp_path / "graphs.jsonl"
    base = ["predict", str(image), "--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    assert main([*base, "--relation-threshold", "0.25"]) == 0
    manifest = json.loads((tmp_path / "graphs.jsonl.run.json").read_text())
    assert manifest["relation_threshold"] == 0.25
    relations = _rows(out)[0]["relations"]
    assert isinstance(relations, list)
    assert all(r["score"] >= 0.25 for r in relations)


def test_predict_summary_to_stdout(
    tiny_model_dir: Path, images: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["predict", str(images[0]), "--model", str(tiny_model_dir), "--top-k", "2", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{images[0]}: 2 relations\n")
    assert len(out.splitlines()) == 3


def test_predict_reports_missing_and_corrupt_images(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "graphs.jsonl"
    missing = tmp_path / "missing.jpg"
    argv = ["predict", str(missing), str(corrupt), "--model", str(tiny_model_dir)]
    assert main([*argv, "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err
    assert "missing.jpg" in err
    assert "corrupt.png" in err
    assert "2 of 2 images could not be read" in err
    rows = _rows(out)
    assert [r["id"] for r in rows] == [str(missing), str(corrupt)]
    assert all("error" in r for r in rows)


def test_predict_resumes_and_retries_error_rows(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = images
    late = tmp_path / "late.png"
    out = tmp_path / "graphs.jsonl"
    base = ["--model", str(tiny_model_dir), "--out", str(out), "--top-k", "2"]
    assert main(["predict", str(first), str(late), *base]) == 1  # late.png does not exist yet
    rows = _rows(out)
    assert "error" in rows[1]
    make_image(50, 40, 7).save(late)
    capsys.readouterr()
    assert main(["predict", str(first), str(late), str(second), *base]) == 0
    assert "resuming" in capsys.readouterr().err
    rows_after = _rows(out)
    assert rows_after[0] == rows[0]  # kept as it was, not computed again
    assert [r["id"] for r in rows_after] == [str(first), str(late), str(second)]
    assert all("error" not in r for r in rows_after)  # the error row was retried
    # a complete run: nothing to do, nothing rewritten
    before = out.read_bytes()
    assert main(["predict", str(first), str(late), str(second), *base]) == 0
    assert out.read_bytes() == before


def test_predict_repairs_a_torn_last_line(
    tiny_model_dir: Path, images: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = images
    out = tmp_path / "graphs.jsonl"
    base = ["--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    assert main(["predict", str(first), *base]) == 0
    complete = out.read_text()
    with out.open("a") as handle:
        handle.write('{"id": "' + str(second) + '", "image": "')  # interrupted mid-row
    assert main(["predict", str(first), str(second), *base]) == 0
    rows = _rows(out)
    assert out.read_text().startswith(complete)
    assert [r["id"] for r in rows] == [str(first), str(second)]


def test_predict_refuses_a_resume_with_other_settings(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = images
    out = tmp_path / "graphs.jsonl"
    base = ["--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    assert main(["predict", str(first), *base, "--top-k", "3"]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["predict", str(first), str(second), *base, "--top-k", "2"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "top_k: 3 -> 2" in line
    assert "--overwrite" in line
    assert out.read_bytes() == before
    # --overwrite starts over with the new settings
    assert main(["predict", str(first), str(second), *base, "--top-k", "2", "--overwrite"]) == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == [str(first), str(second)]
    assert all(len(r["relations"]) == 2 for r in rows)  # type: ignore[arg-type]


def test_predict_refuses_a_resume_with_another_relation_threshold(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = images
    out = tmp_path / "graphs.jsonl"
    manifest = tmp_path / "graphs.jsonl.run.json"
    base = ["--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    assert main(["predict", str(first), *base]) == 0
    assert json.loads(manifest.read_text())["relation_threshold"] is None
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["predict", str(first), str(second), *base, "--relation-threshold", "0.5"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "relation_threshold: null -> 0.5" in line
    assert "--overwrite" in line
    assert out.read_bytes() == before
    # 'none' is the recorded setting: the resume goes on
    assert main(["predict", str(first), str(second), *base, "--relation-threshold", "none"]) == 0
    assert [r["id"] for r in _rows(out)] == [str(first), str(second)]
    # a manifest written before the flag existed (no key) resumes without it
    recorded = json.loads(manifest.read_text())
    del recorded["relation_threshold"]
    manifest.write_text(json.dumps(recorded))
    assert main(["predict", str(first), str(second), *base]) == 0
    # --overwrite starts over with the new setting
    argv = ["predict", str(first), str(second), *base, "--relation-threshold", "0.5"]
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads(manifest.read_text())["relation_threshold"] == 0.5
    assert main(["predict", str(first), *base, "--relation-threshold", "0.25"]) == 2
    assert "relation_threshold: 0.5 -> 0.25" in _error_line(capsys.readouterr().err)


def test_predict_never_rewrites_a_file_it_did_not_write(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    argv = ["predict", str(images[0]), "--model", str(tiny_model_dir), "--out", str(notes)]
    assert main(argv) == 2
    assert "not a results file" in _error_line(capsys.readouterr().err)
    assert notes.read_text() == "my notes\n"
    assert not (tmp_path / "notes.txt.run.json").exists()
    assert main([*argv, "--overwrite", "--quiet"]) == 0
    assert [r["id"] for r in _rows(notes)] == [str(images[0])]


def test_predict_of_a_missing_image_keeps_the_old_results(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "old.jsonl"
    base = ["--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    assert main(["predict", str(images[0]), *base]) == 0
    (old,) = _rows(out)
    assert main(["predict", str(tmp_path / "missing.png"), *base]) == 1
    rows = _rows(out)
    # not emptied: the rows of this run's inputs come first, in input order, then the others
    assert [r["id"] for r in rows] == [str(tmp_path / "missing.png"), old["id"]]
    assert rows[1] == old
    assert "no such file" in str(rows[0]["error"])


def test_predict_is_interrupted_cleanly_and_resumes(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from egtr.predictor import EGTRPredictor

    first, second = images
    out = tmp_path / "graphs.jsonl"
    argv = ["predict", str(first), str(second), "--model", str(tiny_model_dir), "--out", str(out)]
    real = EGTRPredictor.predict_inputs
    calls = []

    def interrupted(self: EGTRPredictor, batch: BatchInputs) -> list[SceneGraph]:
        calls.append(len(batch.original_sizes))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(EGTRPredictor, "predict_inputs", interrupted)
    assert main([*argv, "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "interrupted" in err
    assert f"resume with: egtr predict {first} {second}" in err
    assert [r["id"] for r in _rows(out)] == [str(first)]  # the complete row is kept
    monkeypatch.setattr(EGTRPredictor, "predict_inputs", real)
    assert main([*argv, "--quiet"]) == 0
    assert [r["id"] for r in _rows(out)] == [str(first), str(second)]


# -- predict: drawings ----------------------------------------------------------------------------


def test_drawing_names_are_unique_per_input(tmp_path: Path) -> None:
    names = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")]
    assert drawing_paths(names, "d") == {
        names[0]: Path("d/a/x.graph.png"),
        names[1]: Path("d/b/x.graph.png"),
    }
    same_stem = [str(tmp_path / "x.png"), str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg")]
    assert [p.name for p in drawing_paths(same_stem, "d").values()] == [
        "x.png" + DRAWING_SUFFIX,
        "x.jpg" + DRAWING_SUFFIX,
        "y" + DRAWING_SUFFIX,
    ]


def test_predict_draws_inputs_of_one_name_to_different_files(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
    make_image(60, 50, 1).save(first)
    make_image(50, 60, 2).save(second)
    out, draw = tmp_path / "g.jsonl", tmp_path / "d"
    argv = ["predict", str(first), str(second), "--model", str(tiny_model_dir), "--quiet"]
    assert main([*argv, "--out", str(out), "--draw", str(draw)]) == 0
    drawings = [Path(str(r["drawing"])) for r in _rows(out)]
    assert drawings == [draw / "a" / "x.graph.png", draw / "b" / "x.graph.png"]
    assert drawings[0].read_bytes() != drawings[1].read_bytes()


def test_predict_never_draws_over_an_input(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "inplace"
    folder.mkdir()
    photo = folder / "photo.png"
    make_image(60, 50, 1).save(photo)
    original = photo.read_bytes()
    argv = ["predict", str(photo), "--model", str(tiny_model_dir), "--quiet"]
    assert main([*argv, "--draw", str(folder)]) == 0
    assert photo.read_bytes() == original
    assert (folder / "photo.graph.png").read_bytes()[:4] == b"\x89PNG"
    # an input whose name is another input's drawing is refused before anything is written
    other = folder / "photo.graph.png"
    make_image(40, 40, 3).save(other)
    before = other.read_bytes()
    argv = ["predict", str(photo), str(other), "--model", str(tiny_model_dir)]
    assert main([*argv, "--draw", str(folder), "--out", str(tmp_path / "g.jsonl")]) == 2
    assert "never writes over its inputs" in _error_line(capsys.readouterr().err)
    assert other.read_bytes() == before
    assert not (tmp_path / "g.jsonl").exists()


def test_predict_does_not_replace_a_file_it_did_not_draw(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    draw = tmp_path / "draw"
    draw.mkdir()
    mine = draw / "a.graph.png"
    mine.write_bytes(b"someone else's file")
    argv = ["predict", str(images[0]), "--model", str(tiny_model_dir), "--draw", str(draw)]
    assert main([*argv, "--quiet"]) == 2
    assert "did not draw" in _error_line(capsys.readouterr().err)
    assert mine.read_bytes() == b"someone else's file"
    assert main([*argv, "--quiet", "--overwrite"]) == 0
    assert mine.read_bytes()[:4] == b"\x89PNG"
    assert main([*argv, "--quiet"]) == 0  # its own drawing may be replaced


# -- models of the wrong kind, broken models ------------------------------------------------------


def _clip_like_dir(tmp_path: Path) -> Path:
    clip = tmp_path / "clip"
    clip.mkdir()
    config = {"model_type": "clip", "text_config": {f"k{i}": i for i in range(2000)}}
    (clip / "config.json").write_text(json.dumps(config))
    (clip / "model.safetensors").write_bytes(b"")
    return clip


@pytest.mark.parametrize("command", ["predict", "info"])
def test_a_model_of_another_kind_is_refused_in_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = _clip_like_dir(tmp_path)
    argv = [command, "--model", str(clip)]
    if command == "predict":
        argv += [str(tmp_path / "x.png"), "--out", str(tmp_path / "g.jsonl")]
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    assert "'clip' model, not an EGTR model" in line
    assert "clip4dm" in line
    assert len(line) < 400
    assert not (tmp_path / "g.jsonl").exists()


def test_predict_reports_a_bad_model_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "x.jpg", "--model", str(tmp_path)]) == 2
    assert "not an EGTR model directory" in _error_line(capsys.readouterr().err)


def test_a_directory_with_a_deleted_weight_is_refused_everywhere(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from safetensors.torch import load_file, save_file

    from egtr import EGTRPredictor

    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["relation_head.gate.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "g.jsonl"
    assert main(["predict", str(images[0]), "--model", str(broken), "--out", str(out)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "missing 1: relation_head.gate.weight" in line
    assert not out.exists()
    assert main(["info", "--model", str(broken)]) == 2
    assert "missing 1: relation_head.gate.weight" in _error_line(capsys.readouterr().err)
    with pytest.raises(ValueError, match=r"missing 1: relation_head\.gate\.weight"):
        EGTRPredictor(broken, device="cpu")


def test_predict_reports_a_corrupt_model_file(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    image = tmp_path / "x.png"
    make_image(40, 40).save(image)
    assert main(["predict", str(image), "--model", str(broken), "--quiet"]) == 2
    assert "cannot read the EGTR model" in _error_line(capsys.readouterr().err)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    from egtr.builders import ModelNotFoundError
    from vl_core.cli import UsageError

    with pytest.raises(UsageError) as exc:
        main(["predict", "x.jpg", "--model", str(tmp_path), "--debug"])
    assert isinstance(exc.value.__cause__, ModelNotFoundError)


# -- quiet ----------------------------------------------------------------------------------------


def test_quiet_prints_nothing_but_results(
    tmp_path: Path, images: tuple[Path, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    from egtr_testing import randomise, tiny_config

    from egtr import EGTRForSceneGraphGeneration

    # 24 channels per attention head: transformers advises a power of two for the authors' CUDA
    # kernel (a UserWarning egtr filters: that kernel is never used)
    config = tiny_config(d_model=96, encoder_attention_heads=4, decoder_attention_heads=4)
    model = EGTRForSceneGraphGeneration(config)
    randomise(model)
    model.save_pretrained(tmp_path / "m")
    capfd.readouterr()
    argv = ["predict", str(images[0]), "--model", str(tmp_path / "m"), "--top-k", "1"]
    out = tmp_path / "g.jsonl"
    assert main([*argv, "--quiet", "--out", str(out)]) == 0
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == ""
    assert main([*argv, "--quiet"]) == 0
    captured = capfd.readouterr()
    assert captured.out.startswith(f"{images[0]}: 1 relations")
    assert captured.err == ""
    assert main(argv) == 0  # without --quiet: progress, but never the head-width advice
    assert "power of 2" not in capfd.readouterr().err


# -- convert --------------------------------------------------------------------------------------


def _legacy_run(tmp_path: Path) -> tuple[Path, Path, Path, int]:
    """A released-style checkpoint, its config.json and categories of a tiny model."""
    from egtr import EGTRForSceneGraphGeneration
    from egtr.convert import legacy_config

    legacy = {
        "model_type": "deformable_detr",
        "backbone": "resnet18",
        "d_model": 64,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "encoder_ffn_dim": 64,
        "decoder_ffn_dim": 64,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_n_points": 1,
        "decoder_n_points": 1,
        "num_queries": 5,
        "num_labels": 3,
        "num_rel_labels": 2,
    }
    model = EGTRForSceneGraphGeneration(legacy_config(legacy))
    ckpt = save_lightning(legacy_names(model.state_dict(), 2), tmp_path / "run.ckpt")
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    categories = tmp_path / "categories_dict.json"
    categories.write_text(json.dumps({"obj": ["a", "b", "c"], "rel": ["on", "by"]}))
    return ckpt, tmp_path / "config.json", categories, sum(p.numel() for p in model.parameters())


def test_convert_then_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, config, categories, params = _legacy_run(tmp_path)
    out = tmp_path / "converted"
    argv = ["convert", "--checkpoint", str(ckpt), "--config", str(config), "--out", str(out)]
    assert main([*argv, "--categories", str(categories)]) == 0
    printed = capsys.readouterr().out
    assert "converted" in printed
    assert f"model card {out / 'README.md'}" in printed
    assert (out / "README.md").read_text().startswith("---\n")
    assert main(["info", "--model", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["objects"] == 3
    assert info["predicates"] == 2
    assert info["backbone"] == "resnet18"
    assert info["parameters"] == params
    assert info["with_frequency_table"] == info["parameters"] + 4 * 4 * 2
    # a second conversion into the same directory needs --overwrite
    assert main([*argv, "--categories", str(categories)]) == 2
    assert "--overwrite" in _error_line(capsys.readouterr().err)
    assert main([*argv, "--categories", str(categories), "--overwrite"]) == 0


def test_convert_names_a_config_that_is_not_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, config, _, _ = _legacy_run(tmp_path)
    config.write_text("not-json")
    argv = ["convert", "--checkpoint", str(ckpt), "--config", str(config)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert f"({config}, line 1 column 1)" in line
    assert not (tmp_path / "o").exists()


def test_convert_reports_a_wrong_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"this is not a checkpoint")
    (tmp_path / "config.json").write_text(json.dumps({"num_labels": 3, "num_rel_labels": 2}))
    argv = ["convert", "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--checkpoint", str(bad)]) == 2
    assert "bad.ckpt" in _error_line(capsys.readouterr().err)
    assert main([*argv, "--checkpoint", str(tmp_path / "nope.ckpt")]) == 2  # does not exist
    assert "nope.ckpt" in _error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_convert_lists_mismatched_keys_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, config, _, _ = _legacy_run(tmp_path)
    legacy = json.loads(config.read_text())
    config.write_text(json.dumps({**legacy, "num_rel_labels": 3}))  # the wrong run's config
    argv = ["convert", "--checkpoint", str(ckpt), "--config", str(config)]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "does not fit its configuration" in line
    assert "wrong shape" in line
    assert "triplet_dist ([4, 4, 2] vs [4, 4, 3])" in line
    assert not (tmp_path / "o").exists()


# -- predict: folders, patterns, lists, workers, kill -9, torchrun ---------------------------------


def _photo_folder(root: Path, count: int, corrupt: Sequence[int] = ()) -> Path:
    """``count`` small images of three shapes in sub-folders, ``corrupt`` ones unreadable."""
    shapes = [(64, 48), (48, 64), (80, 50)]
    for index in range(count):
        path = root / f"set{index % 3}" / f"{index:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if index in corrupt:
            path.write_bytes(b"\xff\xd8\xff not a jpeg")
        else:
            make_image(*shapes[index % 3], seed=index).save(path)
    return root


def test_predict_reads_a_folder_with_ids_relative_to_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    photos = _photo_folder(tmp_path / "photos", 4)
    (photos / "notes.txt").write_text("skipped: not an image")
    out, draw = tmp_path / "g.jsonl", tmp_path / "drawn"
    argv = ["predict", str(photos), "--model", str(tiny_model_dir), "--out", str(out)]
    assert main([*argv, "--draw", str(draw), "--quiet", "--workers", "1"]) == 0
    rows = _rows(out)
    ids = ["set0/00.jpg", "set0/03.jpg", "set1/01.jpg", "set2/02.jpg"]
    assert [r["id"] for r in rows] == ids
    assert [r["image"] for r in rows] == [str(photos / name) for name in ids]
    assert [r["drawing"] for r in rows] == [
        str(draw / name.replace(".jpg", DRAWING_SUFFIX)) for name in ids
    ]
    # the same images given as a pattern and as a list: ids are the paths as written
    pattern = str(photos / "set0" / "*.jpg")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{photos / 'set1' / '01.jpg'}\n\n{tmp_path / 'gone.jpg'}\n")
    more = tmp_path / "more.jsonl"
    argv = ["predict", pattern, "--list", str(listed), "--model", str(tiny_model_dir)]
    assert main([*argv, "--out", str(more), "--quiet", "--workers", "0"]) == 1  # gone.jpg
    rows = _rows(more)
    assert [r["id"] for r in rows] == [
        str(photos / "set0" / "00.jpg"),
        str(photos / "set0" / "03.jpg"),
        str(photos / "set1" / "01.jpg"),
        str(tmp_path / "gone.jpg"),
    ]
    assert "no such file" in str(rows[3]["error"])
    graphs = {r["image"]: r["relations"] for r in _rows(out)}
    assert [r["relations"] for r in rows[:3]] == [graphs[r["image"]] for r in rows[:3]]


def test_predict_reads_a_list_from_standard_input(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{images[1]}\n{images[0]}\n"))
    argv = ["predict", "--list", "-", "--model", str(tiny_model_dir), "--json", "--quiet"]
    assert main(argv) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [
        str(images[1]),
        str(images[0]),
    ]


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (lambda root: [str(root / "empty")], "the folder holds no images"),
        (lambda root: [str(root / "*.png")], "the pattern matches no image"),
        (lambda root: ["--list", str(root / "nope.txt")], "the list file does not exist"),
        (lambda root: ["--list", str(root / "empty")], "cannot read the list file"),
        (lambda root: [], "no images given"),
        (lambda root: [str(root / "photos"), "--draw", str(root / "photos" / "d")], "--draw"),
    ],
)
def test_inputs_naming_no_image_are_usage_errors_that_touch_nothing(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    inputs: Callable[[Path], list[str]],
    expected: str,
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image")
    _photo_folder(tmp_path / "photos", 1)
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "g.jsonl"
    argv = ["predict", *inputs(tmp_path), "--model", str(tiny_model_dir), "--out", str(out)]
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    assert expected in line
    assert sorted(tmp_path.rglob("*")) == before


def test_predict_refuses_torchrun_without_a_results_file(
    tiny_model_dir: Path,
    images: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["predict", str(images[0]), "--model", str(tiny_model_dir)]) == 2
    assert "under torchrun" in _error_line(capsys.readouterr().err)


def test_predict_writes_the_same_rows_with_any_number_of_workers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    photos = _photo_folder(tmp_path / "photos", 7, corrupt=[4])
    base = ["predict", str(photos), "--model", str(tiny_model_dir), "--quiet"]
    results = []
    for workers, batch in (("0", "1"), ("2", "1"), ("0", "3"), ("2", "3")):
        out = tmp_path / f"w{workers}b{batch}.jsonl"
        assert main([*base, "--out", str(out), "--workers", workers, "--batch-size", batch]) == 1
        results.append(_rows(out))
    assert results[0] == results[1]
    assert results[2] == results[3]
    assert [r["id"] for r in results[0]] == [r["id"] for r in results[2]]


_SLOW_PREDICT = """
import sys, time
import torch
torch.set_num_threads(int(sys.argv.pop(1)))  # the test process's count: the same rounding
from egtr.predictor import EGTRPredictor
real = EGTRPredictor.predict_inputs
def slow(self, inputs):
    time.sleep(0.1)
    return real(self, inputs)
EGTRPredictor.predict_inputs = slow
from egtr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_folder_with_corrupt_images_survives_kill_9_and_resumes_to_the_same_file(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """50 images, 3 corrupt: 47 graphs and 3 error rows; a run killed (``kill -9``) midway and
    run again writes the file an uninterrupted run writes, byte for byte (a batch's graphs
    depend on its members, so the resumed run must batch as the uninterrupted one did)."""
    import os
    import signal
    import time

    photos = _photo_folder(tmp_path / "photos", 50, corrupt=[7, 20, 41])
    argv = ["predict", str(photos), "--model", str(tiny_model_dir), "--batch-size", "2"]
    argv += ["--workers", "1", "--top-k", "3"]
    straight, broken = tmp_path / "straight.jsonl", tmp_path / "broken.jsonl"
    assert main([*argv, "--out", str(straight), "--quiet"]) == 1
    assert "3 of 50 images could not be read" in capsys.readouterr().err
    rows = _rows(straight)
    assert len(rows) == 50
    assert sum("error" in r for r in rows) == 3
    assert sum("relations" in r for r in rows) == 47
    assert [r["id"] for r in rows if "error" in r] == ["set1/07.jpg", "set2/20.jpg", "set2/41.jpg"]

    threads = str(torch.get_num_threads())  # bit for bit needs the same thread count
    command = [sys.executable, "-c", _SLOW_PREDICT, threads, *argv, "--out", str(broken), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    lines = 0
    while lines < 25 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
        lines = broken.read_bytes().count(b"\n") if broken.exists() else 0
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    # killed midway, after the error row of set1/07.jpg, which the resumed run computes again
    assert 25 <= len(broken.read_bytes().splitlines()) < 50
    assert main([*argv, "--out", str(broken)]) == 1
    assert "resuming" in capsys.readouterr().err
    assert broken.read_bytes() == straight.read_bytes()


def _torchrun_predict(argv: list[str], processes: int = 2) -> subprocess.CompletedProcess[str]:
    import os
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    command += ["--master-port", str(port), "-m", "egtr", "predict", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_two_processes_write_what_one_writes_also_after_a_resume(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``torchrun --nproc-per-node 2 -m egtr predict``: the merged file is a single process's,
    also when two processes resume what a killed three-process run left (a torn last line and
    a rank's part file)."""
    photos = _photo_folder(tmp_path / "photos", 7, corrupt=[4])
    argv = ["--model", str(tiny_model_dir), "--batch-size", "2", "--workers", "1", "--quiet"]
    argv += ["--device", "cpu", str(photos)]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert main(["predict", *argv, "--out", str(one)]) == 1
    want = one.read_bytes()
    rows = want.decode().splitlines()
    assert len(rows) == 7

    done = _torchrun_predict([*argv, "--out", str(two)])
    assert done.returncode == 1, done.stderr[-3000:]  # 1: an error row
    assert two.read_bytes() == want
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    # a killed three-process run: rank 0 wrote rows 0-1 (the last torn), rank 2 rows 4-5
    two.write_text(rows[0] + "\n" + rows[1][:30])
    (tmp_path / ".two.jsonl.part-2").write_text(rows[4] + "\n" + rows[5] + "\n")
    done = _torchrun_predict([*argv, "--out", str(two)])
    assert done.returncode == 1, done.stderr[-3000:]
    assert two.read_bytes() == want
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
