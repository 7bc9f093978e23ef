"""The benchmark loaders on tiny data sets written in the public formats, and ``clip4dm eval`` end to
end on a tiny random CLIP: rows, error rows, metrics recomputed from the rows, resumption."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip4dm.eval import (
    BadRecord,
    DataError,
    DataSource,
    EvalConfig,
    EvalError,
    GroundTruth,
    Sample,
    available_benchmarks,
    average_precision,
    get_benchmark,
    run_eval,
)
from clip4dm.eval.cli import add_eval_parser, main
from clip4dm.eval.richhf import load_richhf
from clip4dm.eval.seetrue import DATASET_ID, load_seetrue
from clip4dm.eval.tfrecord import Feature, encode_example, write_tfrecord


def _image(path: Path, seed: int, size: tuple[int, int] = (40, 32)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def _samples(records: list[Any]) -> dict[str, Sample]:
    return {r.id: r for r in records if isinstance(r, Sample)}


def _errors(records: list[Any]) -> dict[str, str]:
    return {r.id: r.error for r in records if isinstance(r, BadRecord)}


# -- writers: the public formats -------------------------------------------------------------------


def coco_name(i: int) -> str:
    return f"COCO_val2014_{i:012d}.jpg"


def write_foil(root: Path) -> tuple[Path, Path, Path]:
    """foilv1.0_test_2017.json (COCO-style), val2014 images, captions_val2014.json."""
    images = root / "val2014"
    for i in range(3):
        _image(images / coco_name(i), i)
    (images / coco_name(3)).write_text("not an image")  # unreadable; coco_name(4) is missing
    annotations: list[Any] = [
        {
            "id": 11,
            "image_id": 100,
            "caption": "A cat sitting on a red sofa.",
            "foil_word": "ORIG",
            "foil": False,
            "target_word": "ORIG",
        },
        {
            "id": 11,
            "image_id": 100,
            "caption": "A dog sitting on a red sofa.",
            "foil_word": "dog",
            "foil": True,
            "target_word": "cat",
        },
        {
            "id": 12,
            "image_id": 101,
            "caption": "Two men riding horses on a beach.",
            "foil_word": "ORIG",
            "foil": False,
            "target_word": "ORIG",
        },
        {
            "id": 12,
            "image_id": 101,
            "caption": "Two men riding bikes on a beach.",
            "foil_word": "bikes",
            "foil": True,
            "target_word": "horses",
        },
        {
            "id": 13,
            "image_id": 102,
            "caption": " A bowl of fruit on a table. ",
            "foil_word": "ORIG",
            "foil": False,
            "target_word": "ORIG",
        },
        {"id": 14, "image_id": 103, "caption": "A bus on a street.", "foil_word": "ORIG"},
        {"id": 15, "image_id": 104, "caption": "A plane in the sky.", "foil_word": "ORIG"},
        {"id": 16, "image_id": 100, "foil_word": "ORIG"},
        {"id": 17, "image_id": 999, "caption": "A kite.", "foil_word": "ORIG"},
        "not an object",
    ]
    data = {
        "info": {"description": "FOIL test"},
        "images": [{"id": 100 + i, "file_name": coco_name(i)} for i in range(5)],
        "annotations": annotations,
    }
    refs = {
        "annotations": [
            {"id": 11, "image_id": 100, "caption": "A cat sitting on a red sofa."},
            {"id": 21, "image_id": 100, "caption": "A cat on a couch."},
            {"id": 22, "image_id": 101, "caption": "Men on horses at the beach."},
            {"id": 23, "image_id": 102, "caption": "Fruit in a bowl."},
            {"id": 24, "image_id": 102, "caption": "A table with a bowl."},
        ]
    }
    return (
        _write_json(root / "foilv1.0_test_2017.json", data),
        images,
        _write_json(root / "captions_val2014.json", refs),
    )


def write_nocaps(root: Path) -> tuple[Path, Path]:
    """nocaps-val-foil.json (ALOHa) and its images."""
    images = root / "nocaps"
    for i in range(3):
        _image(images / f"{i:04d}.jpg", 10 + i)
    entries: list[Any] = [
        {
            "image_path": "0000.jpg",
            "references": ["a red bus on a road", "a bus"],
            "baseline": "A red bus on the road.",
            "foil": "A red car on the road.",
            "replacement": ["bus", "car"],
            "domain": "in-domain",
        },
        {
            "image_path": "0001.jpg",
            "references": ["a man with a guitar"],
            "baseline": "A man holding a guitar.",
            "foil": "A man holding a violin.",
            "replacement": ["guitar", "violin"],
            "domain": "out-domain",
        },
        {
            "image_path": "0002.jpg",
            "references": ["a dog in snow"],
            "baseline": "A dog in the snow.",
            "foil": "A dog in the snow.",
            "replacement": ["dog", "dog"],
            "domain": "near-domain",
        },
        {
            "image_path": "0003.jpg",
            "references": [],
            "baseline": "x",
            "foil": "y",
            "replacement": ["a"],
            "domain": "in-domain",
        },
    ]
    return _write_json(root / "nocaps-val-foil.json", entries), images


def write_hat(root: Path) -> tuple[Path, Path]:
    """hat-trainval.json (ALOHa) and its images."""
    images = root / "coco"
    for i in range(3):
        _image(images / coco_name(i), 20 + i)
    entries: list[Any] = [
        {
            "sample_id": "hat-1",
            "caption": "A man riding a red horse.",
            "grounding": [
                ["A", False],
                ["man", False],
                ["riding", False],
                ["a", False],
                ["red", True],
                ["horse.", True],
            ],
            "contains_hallucination": True,
            "image_path": coco_name(0),
            "references": ["A man riding a brown horse."],
        },
        {
            "sample_id": "hat-2",
            "caption": "Two dogs play in a park.",
            "grounding": [[w, False] for w in ["Two", "dogs", "play", "in", "a", "park."]],
            "contains_hallucination": False,
            "image_path": coco_name(1),
            "references": ["Dogs playing on grass."],
        },
        {
            "sample_id": 3,
            "caption": "A cat, a laptop.",
            "grounding": [["A", 0], ["cat,", 1], ["a", 0], ["laptop.", 0]],
            "contains_hallucination": True,
            "image_path": coco_name(2),
            "references": ["A laptop on a desk."],
        },
        {
            "sample_id": "hat-4",
            "caption": "bad",
            "grounding": [["bad"]],
            "contains_hallucination": False,
            "image_path": coco_name(0),
            "references": [],
        },
        {
            "sample_id": "hat-1",
            "caption": "A repeated id.",
            "grounding": [],
            "contains_hallucination": False,
            "image_path": coco_name(0),
            "references": [],
        },
    ]
    return _write_json(root / "hat-trainval.json", entries), images


SEETRUE_ROWS = [
    {
        "image_caption": "A red apple on a plate",
        "caption_misalignment": "The apple is green.",
        "dataset_source": "SeeTRUE-Drawbench",
        "id_in_source_dataset": 7,
    },
    {
        "image_caption": "Two cats on a bed",
        "caption_misalignment": "There is only one cat.",
        "dataset_source": "SeeTRUE-COCO",
        "id_in_source_dataset": 8,
    },
    {
        "image_caption": "A blue car",
        "caption_misalignment": "The car is yellow, not blue.",
        "dataset_source": "SeeTRUE-COCO",
        "id_in_source_dataset": 9,
    },
]


def write_seetrue_jsonl(root: Path) -> Path:
    """A JSON Lines export of SeeTRUE-Feedback's test split, with image files."""
    lines = []
    for i, row in enumerate(SEETRUE_ROWS):
        _image(root / "images" / f"{i}.png", 30 + i)
        entry = {"image": f"images/{i}.png", **row}
        if i != 1:
            entry["id"] = f"st-{i}"
        lines.append(json.dumps(entry))
    lines.insert(2, "")
    lines.append(
        json.dumps({"id": "st-x", "image_caption": "no image", "caption_misalignment": "?"})
    )
    lines.append('{"id": "st-y", "image": ')
    path = root / "seetrue.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


RICHHF = [  # filename, prompt, labels, score
    ("pickapic/abc123.png", "A red cat, on a blue sofa!", "1 0 1 1 1 0 1", 2.5),
    ("def456.png", "a photo of a dog", "1 1 1 1 1", 4.0),
    ("ghi789.png", "sunset over the sea", "1 1", 3.0),
    ("jkl000.png", None, "1", 1.0),
]


def write_richhf(root: Path) -> tuple[Path, Path]:
    """test.tfrecord (RichHF-18K) and the per-stem Pick-a-Pic image + prompt files."""
    images = root / "richhf"
    payloads = []
    for i, (filename, prompt, labels, score) in enumerate(RICHHF):
        stem = Path(filename).stem
        _image(images / f"{stem}.png", 40 + i)
        if prompt is not None:
            (images / f"{stem}.txt").write_text(prompt, encoding="utf-8")
        payloads.append(
            encode_example(
                {
                    "filename": Feature(bytes_list=(filename.encode(),)),
                    "aesthetics_score": Feature(float_list=(3.0,)),
                    "misalignment_score": Feature(float_list=(score,)),
                    "prompt_misalignment_label": Feature(bytes_list=(labels.encode(),)),
                    "artifact_map": Feature(bytes_list=(b"\x89PNG...",)),
                }
            )
        )
    payloads.append(b"\x0b")  # not a tf.train.Example
    payloads.append(encode_example({"filename": Feature(bytes_list=(b"nos.png",))}))
    path = root / "test.tfrecord"
    write_tfrecord(path, payloads)
    return path, images


# -- loaders ---------------------------------------------------------------------------------------


def test_registry_names_and_aliases() -> None:
    assert available_benchmarks()[:5] == [
        "foil",
        "nocaps-foil",
        "hat",
        "seetrue-feedback",
        "richhf",
    ]
    assert get_benchmark("NoCaps").name == "nocaps-foil"
    assert get_benchmark("rich-hf").name == "richhf"
    assert get_benchmark("seetrue").name == "seetrue-feedback"
    with pytest.raises(ValueError, match="unknown benchmark 'coco'"):
        get_benchmark("coco")
    modes = {n: get_benchmark(n).mode for n in available_benchmarks()[:5]}
    assert modes == {
        "foil": "most_negative",
        "nocaps-foil": "most_negative",
        "hat": "threshold",
        "seetrue-feedback": "threshold",
        "richhf": "threshold",
    }
    for name in modes:
        bench = get_benchmark(name)
        assert (bench.epsilon, bench.layers, bench.template) == (-5e-5, 3, "A photo depicts ")


def test_foil_loader(tmp_path: Path) -> None:
    data, images, refs = write_foil(tmp_path)
    records = get_benchmark("foil").load(DataSource(str(data), images, refs))
    assert [r.id for r in records] == [str(i) for i in range(10)]
    samples = _samples(records)
    assert samples["0"].caption == "A cat sitting on a red sofa."
    assert samples["0"].ground_truth == GroundTruth(aligned=True)
    assert samples["1"].ground_truth == GroundTruth(aligned=False, words=("dog",))
    assert samples["3"].ground_truth.words == ("bikes",)
    assert samples["4"].caption == "A bowl of fruit on a table."  # stripped
    assert samples["0"].image == images / coco_name(0)
    assert samples["0"].references == ("A cat on a couch.",)  # its own caption left out
    assert samples["1"].references == ("A cat on a couch.",)
    assert samples["4"].references == ("Fruit in a bowl.", "A table with a bowl.")
    assert samples["1"].meta == {"annotation_id": 11, "image_id": 100, "target_word": "cat"}
    assert _errors(records) == {
        "7": "foilv1.0_test_2017.json: annotations[7]: missing field 'caption'",
        "8": "foilv1.0_test_2017.json: annotations[8]: image_id 999 has no entry in 'images'",
        "9": "foilv1.0_test_2017.json: annotations[9]: expected a JSON object, got str",
    }
    no_refs = get_benchmark("foil").load(DataSource(str(data), images))
    assert all(s.references == () for s in _samples(no_refs).values())


def test_nocaps_loader_gives_two_samples_per_entry(tmp_path: Path) -> None:
    data, images = write_nocaps(tmp_path)
    records = get_benchmark("nocaps-foil").load(DataSource(str(data), images))
    assert [r.id for r in records] == [
        "0/foil",
        "0/baseline",
        "1/foil",
        "1/baseline",
        "2/foil",
        "2/baseline",
        "3/foil",
        "3/baseline",
    ]
    samples = _samples(records)
    assert samples["0/foil"].caption == "A red car on the road."
    assert samples["0/foil"].ground_truth == GroundTruth(aligned=False, words=("car",))
    assert samples["0/baseline"].caption == "A red bus on the road."
    assert samples["0/baseline"].ground_truth == GroundTruth(aligned=True)
    assert samples["2/foil"].ground_truth.aligned  # the replacement changed nothing
    assert samples["1/foil"].group == samples["1/baseline"].group == "out-domain"
    assert samples["0/foil"].references == ("a red bus on a road", "a bus")
    assert samples["1/foil"].image == images / "0001.jpg"
    message = "nocaps-val-foil.json: entry 3: 'replacement' must be [original, foil], got ['a']"
    assert _errors(records) == {"3/foil": message, "3/baseline": message}


def test_hat_loader(tmp_path: Path) -> None:
    data, images = write_hat(tmp_path)
    records = get_benchmark("hat").load(DataSource(str(data), images))
    assert [r.id for r in records] == ["hat-1", "hat-2", "3", "hat-4", "hat-1#2"]
    samples = _samples(records)
    assert samples["hat-1"].ground_truth == GroundTruth(
        aligned=False,
        words=("red", "horse"),
        positions=(4, 5),  # "horse." = "horse", "."
    )
    assert samples["hat-2"].ground_truth == GroundTruth(aligned=True)
    assert samples["3"].ground_truth.words == ("cat",)
    assert samples["hat-1"].references == ("A man riding a brown horse.",)
    errors = _errors(records)
    assert (
        errors["hat-4"]
        == "hat-trainval.json: entry 3: 'grounding'[0] must be [word, is_hallucinated]"
    )
    assert errors["hat-1#2"] == (
        "hat-trainval.json: entry 4 (sample_id hat-1): duplicate id 'hat-1' "
        "(first in hat-trainval.json: entry 0 (sample_id hat-1))"
    )


def test_seetrue_jsonl_loader(tmp_path: Path) -> None:
    data = write_seetrue_jsonl(tmp_path)
    records = load_seetrue(DataSource(str(data)))
    assert [r.id for r in records] == ["st-0", "2", "st-2", "st-x", "6"]
    samples = _samples(records)
    assert samples["st-0"].caption == "A red apple on a plate"
    assert samples["st-0"].ground_truth == GroundTruth(aligned=False, text="The apple is green.")
    assert samples["2"].group == "SeeTRUE-COCO"
    assert samples["st-0"].image == tmp_path / "images" / "0.png"
    errors = _errors(records)
    assert errors["st-x"] == "seetrue.jsonl: line 5: missing field 'image'"
    assert errors["6"].startswith("seetrue.jsonl: line 6: invalid JSON")


def _fake_datasets(rows: list[dict[str, Any]]) -> types.ModuleType:
    module = types.ModuleType("datasets")
    calls: list[Any] = []

    def load_dataset(name: str, split: str) -> list[dict[str, Any]]:
        calls.append((name, split))
        return rows

    def load_from_disk(path: str) -> dict[str, Any]:
        calls.append(path)
        return {"test": rows}

    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    module.load_from_disk = load_from_disk  # type: ignore[attr-defined]
    module.calls = calls  # type: ignore[attr-defined]
    return module


def hf_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i, row in enumerate(SEETRUE_ROWS):
        rng = np.random.default_rng(50 + i)
        image = Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8))
        rows.append({"image": image, **row})
    rows.append({"image": None, "image_caption": 5, "caption_misalignment": "x"})
    return rows


def test_seetrue_hf_dataset_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = hf_rows()
    fake = _fake_datasets(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    records = load_seetrue(DataSource(DATASET_ID))
    assert fake.calls == [(DATASET_ID, "test")]  # type: ignore[attr-defined]
    samples = _samples(records)
    assert list(samples) == ["0", "1", "2"]
    assert samples["1"].group == "SeeTRUE-COCO"
    assert samples["2"].meta == {"id_in_source_dataset": 9}
    image = samples["0"].image
    assert callable(image)
    assert image() is rows[0]["image"]  # decoded only when scored
    assert _errors(records) == {"3": f"{DATASET_ID}[3]: 'image_caption' must be a string, got int"}
    saved = tmp_path / "saved"
    saved.mkdir()
    assert len(load_seetrue(DataSource(str(saved)))) == 4
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataError, match=r"needs the `datasets` package.*\.jsonl"):
        load_seetrue(DataSource(DATASET_ID))


def test_richhf_tfrecord_loader(tmp_path: Path) -> None:
    data, images = write_richhf(tmp_path)
    records = load_richhf(DataSource(str(data), images))
    samples = _samples(records)
    assert list(samples) == ["pickapic/abc123.png", "def456.png"]
    first = samples["pickapic/abc123.png"]
    assert first.caption == "A red cat, on a blue sofa!"
    assert first.ground_truth == GroundTruth(aligned=False, tokens=((1, "red"), (5, "blue")))
    assert first.human_score == 2.5
    assert first.image == images / "abc123.png"
    assert samples["def456.png"].ground_truth.aligned
    assert _errors(records) == {
        "ghi789.png": "test.tfrecord: record 2 (ghi789.png): 2 labels for 4 prompt tokens",
        "jkl000.png": f"test.tfrecord: record 3 (jkl000.png): prompt file "
        f"{str(images / 'jkl000.txt')!r} not found",
        "record 4": "test.tfrecord: record 4: not a tf.train.Example "
        "(unsupported wire type 3 (field 1))",
        "nos.png": "test.tfrecord: record 5 (nos.png): feature 'prompt_misalignment_label' "
        "missing or not a bytes_list",
    }


def test_richhf_jsonl_export_loader(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png", 1)
    lines = [
        {
            "filename": "a.png",
            "misalignment_score": 3,
            "prompt_misalignment_label": "0 1",
            "prompt": "Green sky",
            "image": "img/a.png",
        },
        {"filename": "b.png", "misalignment_score": "high", "prompt_misalignment_label": "1"},
    ]
    path = tmp_path / "richhf.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = load_richhf(DataSource(str(path), tmp_path))
    sample = _samples(records)["a.png"]
    assert sample.ground_truth.tokens == ((0, "Green"),)
    assert sample.image == tmp_path / "img" / "a.png"
    assert sample.human_score == 3.0
    assert _errors(records) == {
        "b.png": "richhf.jsonl: line 2: 'misalignment_score' must be a number, got 'high'"
    }


@pytest.mark.parametrize(
    ("benchmark", "content", "message"),
    [
        ("foil", "{not json", "foil.json: not valid JSON"),
        ("foil", "[]", "foil.json: expected a JSON object with 'images' and 'annotations'"),
        ("nocaps-foil", "{}", "foil.json: expected a JSON list of nocaps-FOIL entries"),
        ("hat", '{"a": 1}', "foil.json: expected a JSON list of HAT entries"),
    ],
)
def test_whole_file_errors_name_the_file(
    tmp_path: Path, benchmark: str, content: str, message: str
) -> None:
    path = tmp_path / "foil.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        get_benchmark(benchmark).load(DataSource(str(path), tmp_path))
    with pytest.raises(DataError, match="not found"):
        get_benchmark(benchmark).load(DataSource(str(tmp_path / "missing.json"), tmp_path))


# -- clip4dm eval, end to end ------------------------------------------------------------------------


_DETECTORS: dict[tuple[Any, ...], Any] = {}


@pytest.fixture
def reuse_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs build their detector through the real path once per setting, then reuse it (speed)."""
    from clip4dm.eval import _scoring

    real = _scoring.CLIP4DM

    def cached(model: str, **kwargs: Any) -> Any:
        key = (model, *sorted(kwargs.items()))
        if key not in _DETECTORS:
            _DETECTORS[key] = real(model, **kwargs)
        return _DETECTORS[key]

    monkeypatch.setattr(_scoring, "CLIP4DM", cached)


def _rows(out: Path) -> list[dict[str, Any]]:
    text = (out / "samples.jsonl").read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def _result(out: Path) -> dict[str, Any]:
    return json.loads((out / "result.json").read_text(encoding="utf-8"))


def _run(argv: list[str], model_dir: Path) -> int:
    return main([*argv, "--model", f"hf:{model_dir}", "--device", "cpu", "--quiet"])


def _check_common(result: dict[str, Any], rows: list[dict[str, Any]], positive: str) -> None:
    """Metrics in result.json equal the metrics recomputed from the rows."""
    good = [r for r in rows if "error" not in r]
    assert result["counts"]["scored"] == len(good)
    assert result["counts"]["errors"] == len(rows) - len(good)
    misaligned = [r for r in good if not r["ground_truth"]["aligned"]]
    if "LA" in result["metrics"]:
        expected_la = sum(r["correct"] is True for r in misaligned) / len(misaligned)
        assert result["metrics"]["LA"] == pytest.approx(expected_la)
    labels = [r["ground_truth"]["aligned"] == (positive == "aligned") for r in good]
    sign = 1.0 if positive == "aligned" else -1.0
    for name, key in (("CLIPScore", "clip_score"), ("F-CLIPScore", "f_clip_score")):
        expected = average_precision(labels, [sign * r[key] for r in good])
        assert result["metrics"]["AP"][name] == pytest.approx(expected)
    for row in good:
        assert {
            "id",
            "caption",
            "ground_truth",
            "prediction",
            "words",
            "clip_score",
            "f_clip_score",
            "misaligned",
        } <= set(row)
    assert result["versions"]["clip4dm"]
    assert result["model"]["family"] == "hf"


def test_eval_foil_end_to_end(tmp_path: Path, tiny_hf_dir: Path) -> None:
    data, images, refs = write_foil(tmp_path / "data")
    out = tmp_path / "out"
    parser = argparse.ArgumentParser(prog="clip4dm")  # wired as the clip4dm CLI does
    add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "eval",
            "foil",
            "--data",
            str(data),
            "--images-root",
            str(images),
            "--references",
            str(refs),
            "--out",
            str(out),
            "--model",
            f"hf:{tiny_hf_dir}",
            "--device",
            "cpu",
            "--batch-size",
            "3",
            "--quiet",
        ]
    )
    assert args.func(args) == 1  # finished, with error rows
    rows, result = _rows(out), _result(out)
    assert [r["id"] for r in rows] == [str(i) for i in range(10)]
    assert result["counts"] == {"samples": 10, "scored": 5, "errors": 5, "missing": 0}
    _check_common(result, rows, "aligned")
    by_id = {r["id"]: r for r in rows}
    assert "not a recognised image format" in by_id["5"]["error"]
    assert coco_name(3) in by_id["5"]["error"]
    assert "no such file" in by_id["6"]["error"]
    assert by_id["7"]["error"] == "foilv1.0_test_2017.json: annotations[7]: missing field 'caption'"
    assert by_id["7"]["record"] == "foilv1.0_test_2017.json: annotations[7]"
    assert {e["id"] for e in result["errors"]} == {"5", "6", "7", "8", "9"}
    first = by_id["1"]
    assert first["mode"] == "most_negative"
    assert len(first["misaligned"]) == 1
    assert first["prediction"] == first["misaligned"][0]["word"].lower()
    assert first["correct"] == (first["prediction"] == "dog")
    assert all(by_id[i]["ref_clip_score"] is not None for i in "01234")
    ranked = [r for r in rows if "error" not in r]
    labels = [r["ground_truth"]["aligned"] for r in ranked]
    assert result["metrics"]["AP"]["RefCLIPScore"] == pytest.approx(
        average_precision(labels, [r["ref_clip_score"] for r in ranked])
    )
    config = result["config"]
    assert (config["mode"], config["epsilon"], config["layers"]) == ("most_negative", -5e-5, 3)
    assert config["template"] == "A photo depicts "
    assert config["references"] == str(refs.resolve())


def test_eval_nocaps_per_domain(tmp_path: Path, tiny_hf_dir: Path, reuse_models: None) -> None:
    data, images = write_nocaps(tmp_path / "data")
    out = tmp_path / "out"
    assert (
        _run(
            ["nocaps", "--data", str(data), "--images-root", str(images), "--out", str(out)],
            tiny_hf_dir,
        )
        == 1  # 2 error rows
    )
    rows, result = _rows(out), _result(out)
    _check_common(result, rows, "aligned")
    assert result["counts"] == {"samples": 8, "scored": 6, "errors": 2, "missing": 0}
    assert result["group_by"] == "domain"
    assert sorted(result["groups"]) == ["in-domain", "near-domain", "out-domain"]
    for domain, metrics in result["groups"].items():
        group = [r for r in rows if r.get("group") == domain and "error" not in r]
        assert metrics["samples"] == len(group)
        wrong = [r for r in group if not r["ground_truth"]["aligned"]]
        expected = sum(r["correct"] for r in wrong) / len(wrong) if wrong else None
        assert metrics["LA"] == expected
    assert "RefCLIPScore" in result["metrics"]["AP"]


def test_eval_hat_phrases(tmp_path: Path, tiny_hf_dir: Path, reuse_models: None) -> None:
    data, images = write_hat(tmp_path / "data")
    out = tmp_path / "out"
    argv = [
        "hat",
        "--data",
        str(data),
        "--images-root",
        str(images),
        "--out",
        str(out),
        "--epsilon",
        "-1e-9",
        "--no-references",
    ]
    assert _run(argv, tiny_hf_dir) == 1  # 2 error rows
    rows, result = _rows(out), _result(out)
    _check_common(result, rows, "misaligned")
    assert result["config"]["epsilon"] == -1e-9
    assert result["config"]["mode"] == "threshold"
    assert "RefCLIPScore" not in result["metrics"]["AP"]
    for row in rows:
        if "error" in row:
            continue
        assert all(w["score"] < -1e-9 for w in row["misaligned"])
        if row["misaligned"]:
            assert isinstance(row["prediction"], str)
            assert set(row["prediction"].split()) <= {w["word"].lower() for w in row["misaligned"]}
        else:
            assert row["prediction"] is None


def test_limit_evaluates_the_first_samples(
    tmp_path: Path, tiny_hf_dir: Path, reuse_models: None
) -> None:
    data, images = write_nocaps(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["nocaps", "--data", str(data), "--images-root", str(images), "--out", str(out)]
    assert _run([*argv, "--limit", "3"], tiny_hf_dir) == 0
    assert [r["id"] for r in _rows(out)] == ["0/foil", "0/baseline", "1/foil"]
    assert _result(out)["counts"]["samples"] == 3
    assert _run(argv, tiny_hf_dir) == 1  # the rest, later (with 2 error rows)
    assert len(_rows(out)) == 8
    assert _result(out)["config"]["limit"] is None


def test_eval_richhf_tokens_and_correlations(
    tmp_path: Path, tiny_hf_dir: Path, reuse_models: None
) -> None:
    data, images = write_richhf(tmp_path / "data")
    out = tmp_path / "out"
    assert (
        _run(
            ["richhf", "--data", str(data), "--images-root", str(images), "--out", str(out)],
            tiny_hf_dir,
        )
        == 1  # 4 error rows
    )
    rows, result = _rows(out), _result(out)
    _check_common(result, rows, "misaligned")
    good = [r for r in rows if "error" not in r]
    metrics = result["metrics"]
    for key in ("tp", "fp", "fn"):
        assert metrics[key] == sum(r[key] for r in good)
    assert {"precision", "recall", "f1", "pearson", "spearman"} <= set(metrics)
    assert [r["human_score"] for r in good] == [2.5, 4.0]
    assert result["counts"] == {"samples": 6, "scored": 2, "errors": 4, "missing": 0}


def test_cli_errors_are_one_line(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, images, refs = write_foil(tmp_path / "data")
    out = str(tmp_path / "out")
    cases = [
        (["foil", "--data", str(tmp_path / "nope.json"), "--images-root", str(images), "--out", out], "not found"),
        (["coco", "--data", str(data), "--out", out], "unknown benchmark 'coco'"),
        (["foil", "--data", str(data), "--out", out], "foil needs --images-root DIR"),
        (["hat", "--data", str(data), "--images-root", str(images), "--references", str(refs), "--out", out],
         "--references (COCO captions) is for foil"),
    ]  # fmt: skip
    for argv, message in cases:
        assert _run(argv, tiny_hf_dir) == 2
        err = capsys.readouterr().err
        assert message in err
        assert "Traceback" not in err
    argv = ["foil", "--data", str(data), "--images-root", str(images), "--out", out, "--quiet"]
    assert main([*argv, "--model", "hf:openai/clip-vit-base-patch32"]) == 2  # offline here
    assert "cannot load model" in capsys.readouterr().err


def test_resume_retries_errors_repairs_torn_rows_and_checks_settings(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str], reuse_models: None
) -> None:
    data, images, _ = write_foil(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["foil", "--data", str(data), "--images-root", str(images), "--out", str(out)]
    assert _run(argv, tiny_hf_dir) == 1  # 5 error rows
    before = {r["id"]: r for r in _rows(out)}
    capsys.readouterr()

    _image(images / coco_name(4), 4)  # the missing image appears
    assert _run(argv, tiny_hf_dir) == 1  # 4 error rows are left
    captured = capsys.readouterr()
    assert "retrying 5 error row(s)" in captured.err
    assert "5 computed now, 5 already done" in captured.out
    after = {r["id"]: r for r in _rows(out)}
    assert "error" not in after["6"]
    assert after["6"]["caption"] == "A plane in the sky."
    for key in "01234":
        assert after[key] == before[key]
    assert _result(out)["counts"]["errors"] == 4

    text = (out / "samples.jsonl").read_text(encoding="utf-8")
    lines = text.splitlines()
    torn = lines[-1][: len(lines[-1]) // 2]
    (out / "samples.jsonl").write_text("\n".join(lines[:-1]) + "\n" + torn, encoding="utf-8")
    assert _run(argv, tiny_hf_dir) == 1
    assert "truncated last line" in capsys.readouterr().err
    assert [r["id"] for r in _rows(out)] == [str(i) for i in range(10)]

    assert _run([*argv, "--epsilon", "-1e-4"], tiny_hf_dir) == 2
    err = capsys.readouterr().err
    assert "the output was made from other inputs or settings (epsilon: -5e-05 -> -0.0001" in err


def test_interrupted_run_resumes(
    tmp_path: Path, tiny_hf_dir: Path, monkeypatch: pytest.MonkeyPatch, reuse_models: None
) -> None:
    from clip4dm.eval._scoring import Scorer

    data, images = write_nocaps(tmp_path / "data")
    out = tmp_path / "out"
    argv = [
        "nocaps",
        "--data",
        str(data),
        "--images-root",
        str(images),
        "--out",
        str(out),
        "--batch-size",
        "2",
    ]
    original = Scorer.score
    calls = []

    def interrupt_second(self: Any, batch: Any) -> Any:
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Scorer, "score", interrupt_second)
    assert _run(argv, tiny_hf_dir) == 130
    assert [r["id"] for r in _rows(out)] == ["0/foil", "0/baseline"]
    assert not (out / "result.json").exists()
    monkeypatch.setattr(Scorer, "score", original)
    assert _run(argv, tiny_hf_dir) == 1
    assert len(_rows(out)) == 8
    assert _result(out)["counts"]["scored"] == 6


def test_run_eval_api_with_a_loaded_detector(tmp_path: Path, tiny_hf_dir: Path) -> None:
    from clip4dm import CLIP4DM
    from clip4dm.eval import EvalConfig, EvalError, run_eval

    data, images = write_hat(tmp_path / "data")
    detector = CLIP4DM(f"hf:{tiny_hf_dir}", device="cpu")  # threshold, -5e-5: HAT's setting
    config = EvalConfig("hat", str(data), str(tmp_path / "out"), images=str(images))
    summary = run_eval(config, progress=False, detector=detector)
    assert summary is not None
    assert summary.result["counts"] == {"samples": 5, "scored": 3, "errors": 2, "missing": 0}
    assert (summary.scored, summary.errors, summary.skipped) == (3, 2, 0)
    assert summary.result["model"]["backbone"] == str(tiny_hf_dir)
    foil = EvalConfig("foil", str(data), str(tmp_path / "other"), images=str(images))
    with pytest.raises(EvalError, match="differ from the run's"):
        run_eval(foil, progress=False, detector=detector)  # FOIL is most_negative


# -- nothing lost: changed inputs, foreign files, earlier versions' outputs -------------------------


def _nocaps_argv(data: Path, images: Path, out: Path) -> list[str]:
    return ["nocaps", "--data", str(data), "--images-root", str(images), "--out", str(out)]


def test_resume_over_replaced_data_is_refused(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str], reuse_models: None
) -> None:
    data, images = write_nocaps(tmp_path / "data")
    out = tmp_path / "out"
    argv = [*_nocaps_argv(data, images, out), "--limit", "3"]
    assert _run(argv, tiny_hf_dir) == 0
    before = (out / "samples.jsonl").read_bytes()
    # Same path, other samples: resuming would keep the old rows as done and mix two data sets.
    entries = json.loads(data.read_text())
    entries[0]["foil"] = "A red boat on the road."
    entries[0]["replacement"] = ["bus", "boat"]
    data.write_text(json.dumps(entries))
    capsys.readouterr()
    assert _run(argv, tiny_hf_dir) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "made from other inputs or settings (data_fingerprint:" in err
    assert "--overwrite" in err
    assert (out / "samples.jsonl").read_bytes() == before

    assert _run([*argv, "--overwrite"], tiny_hf_dir) == 0  # starts over on the new data
    rows = _rows(out)
    assert rows[0]["caption"] == "A red boat on the road."
    assert rows[0]["ground_truth"]["words"] == ["boat"]
    assert _result(out)["counts"] == {"samples": 3, "scored": 3, "errors": 0, "missing": 0}


def test_foreign_files_in_the_output_directory_are_kept(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, images = write_nocaps(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "samples.jsonl").write_text("my own notes\n")
    assert _run(_nocaps_argv(data, images, out), tiny_hf_dir) == 2
    assert "is not a results file of this command" in capsys.readouterr().err
    assert (out / "samples.jsonl").read_text() == "my own notes\n"
    (out / "samples.jsonl").unlink()
    (out / "result.json").write_text('{"mine": true}')
    assert _run(_nocaps_argv(data, images, out), tiny_hf_dir) == 2
    assert "result.json' was not written by a clip4dm eval run" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text()) == {"mine": True}
    assert not (out / "samples.jsonl").exists()
    # The data file is never an output.
    with pytest.raises(EvalError, match="never writes over its inputs"):
        run_eval(EvalConfig("seetrue", str(tmp_path / "o" / "samples.jsonl"), str(tmp_path / "o")))


def test_an_earlier_versions_run_resumes(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str], reuse_models: None
) -> None:
    data, images = write_richhf(tmp_path / "data")
    out = tmp_path / "out"
    argv = ["richhf", "--data", str(data), "--images-root", str(images), "--out", str(out)]
    assert _run(argv, tiny_hf_dir) == 1
    result = _result(out)
    # What an earlier version wrote: run.json {"config": ...} and rows with "gt_score".
    (out / "run.json").write_text(json.dumps({"config": dict(result["config"])}))
    rows = _rows(out)
    legacy = [
        {("gt_score" if k == "human_score" else k): v for k, v in row.items()} for row in rows
    ]
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in legacy))
    (out / "result.json").unlink()
    capsys.readouterr()
    assert _run(argv, tiny_hf_dir) == 1
    assert "4 computed now, 2 already done" in capsys.readouterr().out
    again = _result(out)
    assert again["metrics"] == result["metrics"]
    assert [r.get("human_score") for r in _rows(out)] == [r.get("human_score") for r in rows]
    from clip4dm.eval import Outcome
    from clip4dm.rows import upgrade

    good = next(r for r in legacy if "error" not in r)
    assert Outcome.from_row(upgrade(good)).human_score == good["gt_score"] == 2.5
    assert "gt_score" not in (out / "samples.jsonl").read_text()
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["data_fingerprint"]["size"] == data.stat().st_size


def test_images_is_a_deprecated_spelling_of_images_root(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str], reuse_models: None
) -> None:
    data, images = write_nocaps(tmp_path / "data")
    argv = ["nocaps", "--data", str(data), "--images", str(images), "--out", str(tmp_path / "o")]
    assert _run([*argv, "--limit", "2"], tiny_hf_dir) == 0
    captured = capsys.readouterr()
    assert "--images is deprecated" in captured.err
    assert "2 samples, 2 scored, 0 errors" in captured.out
