"""The shapes-world generator (tools/world): determinism, geometric truth of relations and
captions, one-word foils, and the FOIL / HAT / Visual Genome files it writes.

The truth checks here re-derive everything from the written files (boxes, words) with their own
small parser, not with the generator's helpers.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tools.world import COLOURS, PREDICATES, SHAPES, SIZES, make_sample, render
from tools.world.generate import main as world_main
from tools.world.generate import write_world
from tools.world.scene import Shape, shape_mask

ROOT = Path(__file__).resolve().parents[2]

SHIPPED = ROOT / "shared" / "world" / "test-set"
COUNTS = {"train": 5, "val": 3, "test": 4}
CAPTION = re.compile(
    r"^a (?:(?P<s1>small|large) )?(?P<c1>\w+) (?P<h1>\w+) "
    r"(?P<rel>to the left of|to the right of|above|below|and) "
    r"a (?:(?P<s2>small|large) )?(?P<c2>\w+) (?P<h2>\w+)$"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_world(tmp_path_factory.mktemp("world"), seed=7, counts=COUNTS, size=96)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _rows(root: Path, split: str) -> list[dict[str, Any]]:
    text = (root / "scenes" / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


def _xyxy(b: list[float]) -> tuple[float, float, float, float]:
    return (b[0], b[1], b[0] + b[2], b[1] + b[3])


# -- determinism -------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes(world: Path, tmp_path: Path) -> None:
    again = write_world(tmp_path / "again", seed=7, counts=COUNTS, size=96, jobs=2)
    first, second = _files(world), _files(again)
    assert sorted(first) == sorted(second)
    assert len([name for name in first if name.endswith(".png")]) == sum(COUNTS.values())
    for name in first:
        assert first[name] == second[name], name


def test_other_seed_differs_and_samples_do_not_depend_on_count(world: Path, tmp_path: Path) -> None:
    other = write_world(tmp_path / "other", seed=8, counts={"test": 2}, size=96)
    assert _rows(other, "test")[0]["shapes"] != _rows(world, "test")[0]["shapes"]
    # sample i of a split is a function of (seed, split, i) alone
    assert _rows(world, "test")[:2] == _rows(
        write_world(tmp_path / "few", seed=7, counts={"test": 2}, size=96), "test"
    )
    sample = make_sample(7, "val", 2, 96)
    assert _rows(world, "val")[2]["captions"] == [c.text for c in sample.captions]


def test_shipped_test_set_is_reproducible_from_the_generator() -> None:
    """shared/world/test-set = ``python -m tools.world --seed 1 --val 100 --test 300``."""
    meta = json.loads((SHIPPED / "world.json").read_text())
    assert (meta["seed"], meta["size"], meta["counts"]) == (
        1,
        128,
        {"train": 0, "val": 100, "test": 300},
    )
    for split in ("val", "test"):
        rows = _rows(SHIPPED, split)
        assert len(rows) == meta["counts"][split]
        for index in (0, 1, len(rows) - 1):
            sample = make_sample(1, split, index, 128)
            assert [c.text for c in sample.captions] == rows[index]["captions"]
            assert [s.shape for s in sample.scene.shapes] == [
                s["shape"] for s in rows[index]["shapes"]
            ]
            shipped = np.asarray(Image.open(SHIPPED / "images" / rows[index]["file_name"]))
            assert np.array_equal(np.asarray(render(sample.scene)), shipped)


# -- scenes and relations ----------------------------------------------------------------------
def _many_rows(count: int = 150) -> list[tuple[Any, dict[str, Any]]]:
    from tools.world.generate import Sample, scene_row

    out = []
    for i in range(count):
        sample: Sample = make_sample(11, "train", i, 128)
        out.append((sample, scene_row(sample)))
    return out


@pytest.fixture(scope="module")
def many() -> list[tuple[Any, dict[str, Any]]]:
    return _many_rows()


def test_scenes_are_well_formed(many: list[tuple[Any, dict[str, Any]]]) -> None:
    counts = set()
    for _, row in many:
        shapes = row["shapes"]
        counts.add(len(shapes))
        kinds = [(s["colour"], s["shape"]) for s in shapes]
        assert len(set(kinds)) == len(kinds), "colour+shape must name one shape"
        for s in shapes:
            x0, y0, x1, y1 = _xyxy(s["bbox"])
            assert 0 <= x0 < x1 <= row["width"]
            assert 0 <= y0 < y1 <= row["height"]
            low, high = SIZES[s["size"]]
            assert low * 128 - 1 <= x1 - x0 <= high * 128 + 1
            assert s["colour"] in COLOURS
            assert s["shape"] in SHAPES
    assert counts == {2, 3, 4}


def _mask(s: dict[str, Any], size: int) -> np.ndarray:
    return shape_mask(s["shape"], _xyxy(s["bbox"]), size) > 0.5


def test_relations_are_geometrically_true(many: list[tuple[Any, dict[str, Any]]]) -> None:
    seen: set[str] = set()
    for _, row in many:
        shapes, size = row["shapes"], row["width"]
        masks = [_mask(s, size) for s in shapes]
        by_pair: dict[tuple[int, int], set[str]] = {}
        for i, j, predicate in row["relations"]:
            by_pair.setdefault((i, j), set()).add(predicate)
        for i, a in enumerate(shapes):
            for j, b in enumerate(shapes):
                if i == j:
                    continue
                preds = by_pair.get((i, j), set())
                seen |= preds
                (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = _xyxy(a["bbox"]), _xyxy(b["bbox"])
                apart = ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0
                spatial = preds & {"left of", "right of", "above", "below"}
                assert len(spatial) == (1 if apart else 0), (row["id"], i, j, preds)
                assert ("left of" in preds) <= (ax1 <= bx0)
                assert ("right of" in preds) <= (bx1 <= ax0)
                assert ("above" in preds) <= (ay1 <= by0)
                assert ("below" in preds) <= (by1 <= ay0)
                a_in_b = bx0 <= ax0 and by0 <= ay0 and ax1 <= bx1 and ay1 <= by1
                assert ("inside" in preds) == a_in_b
                if a_in_b:  # really inside: every pixel of a lies on b
                    assert masks[j][masks[i]].all()
                overlap = (
                    not apart
                    and not a_in_b
                    and not (ax0 <= bx0 and ay0 <= by0 and bx1 <= ax1 and by1 <= ay1)
                )
                assert ("overlapping" in preds) == overlap
                if overlap:
                    assert (masks[i] & masks[j]).any()
                if not apart:  # touching shapes never share a colour (they would merge)
                    assert a["colour"] != b["colour"]
                side_a, side_b = ax1 - ax0, bx1 - bx0
                assert ("bigger than" in preds) == (
                    ["small", "medium", "large"].index(a["size"])
                    > ["small", "medium", "large"].index(b["size"])
                )
                if "bigger than" in preds:
                    assert side_a > side_b
                assert ("smaller than" in preds) == ("bigger than" in by_pair.get((j, i), set()))
                assert ("same colour as" in preds) == (a["colour"] == b["colour"])
                assert ("same shape as" in preds) == (a["shape"] == b["shape"])
    assert {"left of", "right of", "above", "below", "inside", "overlapping"} <= seen


def test_rendered_image_shows_the_shapes(many: list[tuple[Any, dict[str, Any]]]) -> None:
    for sample, row in many[:40]:
        image = np.asarray(render(sample.scene)).astype(int)
        shapes = row["shapes"]
        covered = np.zeros(image.shape[:2], dtype=bool)
        visible = []
        for s in reversed(shapes):  # later shapes are drawn on top
            core = shape_mask(s["shape"], _xyxy(s["bbox"]), row["width"]) > 0.999
            visible.append((s, core & ~covered))
            covered |= shape_mask(s["shape"], _xyxy(s["bbox"]), row["width"]) > 0
        for s, pixels in visible:
            assert pixels.sum() > 20, "every shape stays visible"
            assert np.abs(image[pixels] - np.array(s["rgb"])).max() <= 1


# -- captions and foils ------------------------------------------------------------------------
def _find(shapes: list[dict[str, Any]], size: str | None, colour: str, shape: str) -> list[int]:
    return [
        k
        for k, s in enumerate(shapes)
        if s["colour"] == colour and s["shape"] == shape and (size is None or s["size"] == size)
    ]


def _true(caption: str, shapes: list[dict[str, Any]]) -> bool:
    """Truth of a caption in a scene, from the words and the boxes alone."""
    m = CAPTION.match(caption)
    assert m is not None, caption
    for i in _find(shapes, m["s1"], m["c1"], m["h1"]):
        for j in _find(shapes, m["s2"], m["c2"], m["h2"]):
            if i == j:
                continue
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = (
                _xyxy(shapes[i]["bbox"]),
                _xyxy(shapes[j]["bbox"]),
            )
            ok = {
                "to the left of": ax1 <= bx0,
                "to the right of": bx1 <= ax0,
                "above": ay1 <= by0,
                "below": by1 <= ay0,
                "and": True,
            }[m["rel"]]
            if ok:
                return True
    return False


def test_captions_are_true_and_foils_false_by_one_word(
    many: list[tuple[Any, dict[str, Any]]],
) -> None:
    kinds = set()
    for _, row in many:
        assert row["captions"], row["id"]
        for caption, foils in zip(row["captions"], row["foils"], strict=True):
            assert _true(caption, row["shapes"]), caption
            words = caption.split()
            for foil in foils:
                kinds.add(foil["kind"])
                changed = foil["caption"].split()
                assert len(changed) == len(words)
                diff = [k for k, (x, y) in enumerate(zip(words, changed, strict=True)) if x != y]
                assert diff == [foil["index"]], (caption, foil)
                assert words[diff[0]] == foil["target_word"]
                assert changed[diff[0]] == foil["foil_word"]
                assert not _true(foil["caption"], row["shapes"]), (caption, foil)
                if foil["kind"] in ("colour", "shape"):  # absent from the image altogether
                    assert all(s[foil["kind"]] != foil["foil_word"] for s in row["shapes"])
    assert kinds == {"colour", "shape", "size", "relation"}


def test_hallucinated_captions_are_false_where_marked(world: Path) -> None:
    for split in COUNTS:
        rows = {r["file_name"]: r for r in _rows(world, split)}
        entries = json.loads((world / "hat" / f"{split}.json").read_text())
        assert any(e["contains_hallucination"] for e in entries)
        assert any(not e["contains_hallucination"] for e in entries)
        for entry in entries:
            shapes = rows[entry["image_path"]]["shapes"]
            assert _true(entry["caption"], shapes) != entry["contains_hallucination"]


# -- file formats ------------------------------------------------------------------------------
def test_foil_file_format(world: Path) -> None:
    data = json.loads((world / "foil" / "test.json").read_text())
    images = {im["id"]: im["file_name"] for im in data["images"]}
    assert len(images) == COUNTS["test"]
    ids = [a["id"] for a in data["annotations"]]
    assert len(set(ids)) == len(ids)
    originals = {}
    for ann in data["annotations"]:
        assert set(ann) >= {"id", "image_id", "caption", "foil_word", "foil", "target_word"}
        assert (world / "images" / images[ann["image_id"]]).is_file()
        if ann["foil_word"] == "ORIG":
            assert ann["foil"] is False
            assert ann["target_word"] == "ORIG"
            originals[ann["image_id"]] = ann["caption"]
        else:
            assert ann["foil"] is True
            words, foil = originals[ann["image_id"]].split(), ann["caption"].split()
            k = ann["foil_word_index"]
            assert (words[k], foil[k]) == (ann["target_word"], ann["foil_word"])
            assert words[:k] + words[k + 1 :] == foil[:k] + foil[k + 1 :]
    assert len(originals) == COUNTS["test"]


def test_hat_file_format(world: Path) -> None:
    entries = json.loads((world / "hat" / "val.json").read_text())
    assert isinstance(entries, list)
    assert len({e["sample_id"] for e in entries}) == len(entries)
    for e in entries:
        assert set(e) == {
            "sample_id",
            "caption",
            "grounding",
            "contains_hallucination",
            "image_path",
            "references",
        }
        assert " ".join(w for w, _ in e["grounding"]) == e["caption"]
        assert all(isinstance(flag, bool) for _, flag in e["grounding"])
        assert e["contains_hallucination"] == any(flag for _, flag in e["grounding"])
        assert (world / "images" / e["image_path"]).is_file()
        assert all(isinstance(r, str) for r in e["references"])


def test_visual_genome_files_format(world: Path) -> None:
    rel = json.loads((world / "vg" / "rel.json").read_text())
    assert rel["rel_categories"] == ["__background__", *PREDICATES]
    for split, count in COUNTS.items():
        coco = json.loads((world / "vg" / f"{split}.json").read_text())
        assert [c["id"] for c in coco["categories"]] == list(range(1, len(SHAPES) + 1))
        assert len(coco["images"]) == count
        per_image: dict[int, list[dict[str, Any]]] = {}
        for ann in coco["annotations"]:
            per_image.setdefault(ann["image_id"], []).append(ann)
            assert 1 <= ann["category_id"] <= len(SHAPES)
            assert ann["area"] == ann["bbox"][2] * ann["bbox"][3]
            assert ann["iscrowd"] == 0
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        for image in coco["images"]:
            with Image.open(world / "images" / image["file_name"]) as im:
                assert im.size == (image["width"], image["height"])
            triples = rel[split][str(image["id"])]
            assert triples, "every image has relations"
            n = len(per_image[image["id"]])
            for s, o, p in triples:
                assert 0 <= s < n
                assert 0 <= o < n
                assert s != o
                assert 1 <= p < len(rel["rel_categories"])


def test_files_load_with_the_project_loaders(world: Path) -> None:
    """clip4dm's FOIL/HAT loaders and egtr's VG dataset read the files (where installed)."""
    foil = pytest.importorskip("clip4dm.eval.foil")
    hat = pytest.importorskip("clip4dm.eval.hat")
    samples = pytest.importorskip("clip4dm.eval.samples")
    records = foil.load_foil(
        samples.DataSource(data=world / "foil" / "test.json", images=world / "images")
    )
    assert len(records) == len(
        json.loads((world / "foil" / "test.json").read_text())["annotations"]
    )
    assert all(Path(r.image).is_file() for r in records)
    records = hat.load_hat(
        samples.DataSource(data=world / "hat" / "test.json", images=world / "images")
    )
    assert sum(not r.ground_truth.aligned for r in records) >= 1
    vg = pytest.importorskip("egtr.data.vg")
    dataset = vg.VisualGenomeDataset(world / "vg", "val", image_dir=world / "images")
    assert len(dataset) == COUNTS["val"]


# -- command line ------------------------------------------------------------------------------
def test_cli_module_and_script_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert world_main(["--seed", "5", "--out", str(tmp_path / "a"), "--test", "2"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "world" / "generate.py"),
            "--seed",
            "5",
            "--out",
            str(tmp_path / "b"),
            "--test",
            "2",
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    with pytest.raises(SystemExit):
        world_main(["--out", str(tmp_path / "c"), "--test", "-1"])


def test_shape_mask_rejects_bad_boxes() -> None:
    with pytest.raises(ValueError, match="integer corners"):
        shape_mask("circle", (0.5, 0, 10, 10), 32)
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", (0, 0, 10, 10), 32)
    assert Shape("circle", "red", "small", (0, 0, 4, 4), (1, 2, 3)).area == 16
