"""Visual Genome loader on tiny RelTR-format files: parsing, the target contract, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2 as v2
from sgg_data_testing import OBJECTS, PREDICATES, VG_SPLITS, write_tiny_vg

from egtr.data import (
    AnnotationError,
    SceneGraphTransform,
    VisualGenomeDataset,
    build_transforms,
)
from egtr.preprocessing import resized_size
from vl_core.images import ImageNotFoundError


@pytest.fixture(scope="module")
def vg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vg(tmp_path_factory.mktemp("vg"))


def test_records_follow_the_files(vg_root: Path) -> None:
    data = VisualGenomeDataset(vg_root, "train")
    assert data.object_labels == OBJECTS
    assert data.predicate_labels == PREDICATES
    assert [r.image_id for r in data.records] == [11, 12]
    first = data.records[0]
    assert first.labels.tolist() == [0, 2, 1]  # category_id - 1, annotation order
    assert first.boxes.tolist() == [[2, 3, 22, 13], [30, 5, 45, 35], [10, 20, 18, 28]]
    # predicates shifted by the background entry; repeated triplets and multi-predicate pairs kept
    assert first.rels.tolist() == [[0, 1, 0], [2, 1, 0], [0, 1, 1], [0, 1, 0]]


def test_image_without_relations_is_kept_with_none(vg_root: Path) -> None:
    data = VisualGenomeDataset(vg_root, "test")
    assert [r.image_id for r in data.records] == [31, 32, 33]
    assert data.records[2].rels.shape == (0, 3)
    _, target = data[2]
    assert target["rels"].shape == (0, 3)
    assert target["boxes"].shape == (1, 4)


def test_target_contract_at_test_time(vg_root: Path) -> None:
    data = VisualGenomeDataset(vg_root, "test")
    image, target = data[1]  # 60x90 image, second box runs past the border
    new_w, new_h = resized_size(60, 90, 800, 1333)
    assert image.dtype == torch.float32
    assert image.shape == (3, new_h, new_w)
    assert set(target) == {
        "boxes",
        "class_labels",
        "rels",
        "image_id",
        "orig_size",
        "size",
        "boxes_xyxy_orig",
    }
    assert target["image_id"] == 32
    assert target["orig_size"].tolist() == [90, 60]
    assert target["size"].tolist() == [new_h, new_w]
    assert target["class_labels"].dtype == torch.long
    assert target["class_labels"].tolist() == [1, 2]
    assert target["rels"].dtype == torch.long
    assert target["rels"].tolist() == [[0, 1, 3]]
    # original pixels, clipped to the image
    assert target["boxes_xyxy_orig"].tolist() == [[10, 10, 30, 30], [15, 50, 60, 90]]
    # normalised cxcywh of the resized boxes equals the original box over the original size
    expected = torch.tensor(
        [[20 / 60, 20 / 90, 20 / 60, 20 / 90], [37.5 / 60, 70 / 90, 45 / 60, 40 / 90]]
    )
    assert torch.allclose(target["boxes"], expected, atol=2e-3)
    assert target["boxes"].dtype == torch.float32


def test_image_normalised_with_imagenet_stats(vg_root: Path) -> None:
    import numpy as np
    from PIL import Image

    data = VisualGenomeDataset(vg_root, "val", transforms=build_transforms("val", test_size=40))
    image, _ = data[0]
    raw = torch.from_numpy(np.array(Image.open(vg_root / "images" / "21.jpg")))
    raw = raw.permute(2, 0, 1).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(image, (raw - mean) / std, atol=1e-5)  # 40 -> 40: no resampling


def test_missing_image_names_the_file(vg_root: Path, tmp_path: Path) -> None:
    data = VisualGenomeDataset(vg_root, "val", image_dir=tmp_path)
    with pytest.raises(ImageNotFoundError, match=r"21\.jpg"):
        data[0]


def _corrupt(root: Path, split: str, edit: object) -> None:
    path = root / f"{split}.json"
    coco = json.loads(path.read_text())
    edit(coco)  # type: ignore[operator]
    path.write_text(json.dumps(coco))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["annotations"][1].update(bbox=[1, 2, -3, 4]), r"annotations\[1\].*negative"),
        (lambda c: c["annotations"][0].update(bbox=[1, 2, 3]), r"annotations\[0\].*4 finite"),
        (lambda c: c["annotations"][2].update(category_id=4), r"annotations\[2\].*1\.\.3"),
        (lambda c: c["annotations"][2].update(image_id=999), r"annotations\[2\].*999"),
        (lambda c: c["images"][0].pop("file_name"), r"images\[0\].*file_name"),
        (lambda c: c["categories"].pop(0), r"categories.*1\.\.C"),
    ],
)
def test_bad_coco_records_name_file_and_index(tmp_path: Path, edit: object, message: str) -> None:
    root = write_tiny_vg(tmp_path, images=False)
    _corrupt(root, "train", edit)
    with pytest.raises(AnnotationError, match=message) as exc:
        VisualGenomeDataset(root, "train")
    assert "train.json" in str(exc.value)


@pytest.mark.parametrize(
    ("rels", "message"),
    [
        ([[0, 3, 1]], r"outside the 3 boxes"),
        ([[0, 1, 0]], r"predicate must be in \[1, 4\]"),  # 0 is the background entry
        ([[0, 1, 5]], r"predicate must be in \[1, 4\]"),
        ([[0, 1]], r"\[\[s, o, p\]"),
        ([[0, 1, 1.5]], r"integers"),
    ],
)
def test_bad_relations_name_file_and_image(tmp_path: Path, rels: list, message: str) -> None:
    root = write_tiny_vg(tmp_path, images=False)
    rel = json.loads((root / "rel.json").read_text())
    rel["train"]["11"] = rels
    (root / "rel.json").write_text(json.dumps(rel))
    with pytest.raises(AnnotationError, match=message) as exc:
        VisualGenomeDataset(root, "train")
    assert "rel.json" in str(exc.value)
    assert "'11'" in str(exc.value)


def test_missing_files_and_bad_split(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"test\.json"):
        VisualGenomeDataset(tmp_path, "test")
    with pytest.raises(ValueError, match="split"):
        VisualGenomeDataset(tmp_path, "dev")
    (tmp_path / "test.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        VisualGenomeDataset(tmp_path, "test")


def test_every_split_parses(vg_root: Path) -> None:
    for split, entries in VG_SPLITS.items():
        data = VisualGenomeDataset(vg_root, split)
        assert len(data) == len(entries)
        assert "VisualGenomeDataset(split=" in repr(data)


def _flip_always() -> SceneGraphTransform:
    return SceneGraphTransform(v2.ToDtype(torch.float32, scale=True), hflip=1.0)


def test_flip_swaps_mirrored_predicates_and_mirrors_boxes(vg_root: Path) -> None:
    """ "on" <-> "under" stands in for "left of" <-> "right of": a flipped image keeps true rels."""
    plain = VisualGenomeDataset(vg_root, "train", transforms=build_transforms("val"))
    flipped = VisualGenomeDataset(
        vg_root, "train", transforms=_flip_always(), flip_predicates=[["on", "under"]]
    )
    unmirrored = VisualGenomeDataset(vg_root, "train", transforms=_flip_always())
    _, before = plain[0]
    _, after = flipped[0]
    on, near, under = (PREDICATES.index(p) for p in ("on", "near", "under"))
    swap = {on: under, under: on}
    expected = [[s, o, swap.get(p, p)] for s, o, p in before["rels"].tolist()]
    assert after["rels"].tolist() == expected
    assert near in after["rels"][:, 2].tolist()  # other predicates untouched
    assert unmirrored[0][1]["rels"].tolist() == before["rels"].tolist()
    boxes = before["boxes"].clone()
    boxes[:, 0] = 1 - boxes[:, 0]  # cx -> 1 - cx under the flip
    assert torch.allclose(after["boxes"], boxes, atol=1e-6)
    assert flipped.records[0].rels.tolist() == plain.records[0].rels.tolist()  # not in place


def test_no_flip_no_swap(vg_root: Path) -> None:
    data = VisualGenomeDataset(
        vg_root, "train", transforms=build_transforms("val"), flip_predicates=[["on", "under"]]
    )
    assert data[0][1]["rels"].tolist() == data.records[0].rels.tolist()


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([["on", "beside"]], "unknown predicate 'beside'"),
        ([["on", "under"], ["near", "on"]], "'on' appears in more than one pair"),
        ([["on"]], "must be a pair of names"),
        (["on"], "must be a pair of names"),
    ],
)
def test_bad_flip_predicates_are_named(vg_root: Path, pairs: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VisualGenomeDataset(vg_root, "train", flip_predicates=pairs)
