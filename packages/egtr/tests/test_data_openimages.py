"""Open Images V6 loader on tiny BGNN/PySGG-format files: parsing, training rules, errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sgg_data_testing import OBJECTS, PREDICATES, oi_records, write_tiny_oi

from egtr.data import AnnotationError, OpenImagesDataset
from egtr.data.openimages import sample_one_predicate_per_pair


@pytest.fixture(scope="module")
def oi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_oi(tmp_path_factory.mktemp("oi"))


def test_test_split_keeps_everything_as_annotated(oi_root: Path) -> None:
    data = OpenImagesDataset(oi_root, "test")
    assert data.object_labels == OBJECTS
    assert data.predicate_labels == PREDICATES
    assert not data.train_rules
    assert [r.file_name for r in data.records] == ["t1.jpg", "crowded.jpg"]  # 201 boxes kept
    assert [r.image_id for r in data.records] == [0, 1]  # index in the annotation file
    first = data.records[0]
    assert first.boxes.tolist() == [[2, 2, 30, 20], [35, 8, 60, 45], [0, 30, 12, 44]]
    assert first.labels.tolist() == [0, 2, 1]
    assert first.rels.tolist() == [[0, 1, 0], [0, 1, 0], [2, 1, 1]]  # duplicates kept
    for _ in range(3):
        assert data.relations(0).tolist() == first.rels.tolist()  # no sampling


def test_training_rules(oi_root: Path) -> None:
    data = OpenImagesDataset(oi_root, "train")
    assert data.train_rules
    # the 201-box image is dropped; image ids stay the annotation-file indices
    assert [r.file_name for r in data.records] == ["a1.jpg", "a2.jpg"]
    assert [r.image_id for r in data.records] == [0, 2]
    # identical triplets de-duplicated, first-occurrence order
    assert data.records[0].rels.tolist() == [[0, 1, 0], [0, 1, 2], [2, 1, 1], [0, 1, 3]]
    assert [r.image_id for r in OpenImagesDataset(oi_root, "train", max_boxes=2).records] == [2]
    assert len(OpenImagesDataset(oi_root, "train", train_rules=False).records) == 3


def test_one_random_predicate_per_pair_each_load(oi_root: Path) -> None:
    data = OpenImagesDataset(oi_root, "train")
    torch.manual_seed(0)
    draws = [data.relations(0).tolist() for _ in range(60)]
    for rels in draws:
        # one relation per pair, pairs in first-seen order, each a real annotation
        assert [r[:2] for r in rels] == [[0, 1], [2, 1]]
        assert rels[0][2] in (0, 2, 3)
        assert rels[1] == [2, 1, 1]
    counts = Counter(rels[0][2] for rels in draws)
    assert set(counts) == {0, 2, 3}  # every predicate of the pair gets drawn
    assert min(counts.values()) >= 8  # roughly uniform (20 expected each)
    torch.manual_seed(0)
    assert [data.relations(0).tolist() for _ in range(60)] == draws  # reproducible
    _, target = data[0]
    assert target["rels"].shape == (2, 3)


def test_sampling_is_uniform_within_each_pair() -> None:
    rels = np.array([[3, 4, 0], [1, 2, 5], [3, 4, 1], [3, 4, 2], [1, 2, 6], [0, 0, 9]])
    torch.manual_seed(1)
    seen: Counter[tuple[int, ...]] = Counter()
    for _ in range(3000):
        out = sample_one_predicate_per_pair(rels)
        assert out[:, :2].tolist() == [[3, 4], [1, 2], [0, 0]]
        seen.update(tuple(row) for row in out.tolist())
    for triplet, expected in [((3, 4, 0), 1000), ((3, 4, 1), 1000), ((1, 2, 5), 1500)]:
        assert abs(seen[triplet] - expected) < 150
    assert seen[(0, 0, 9)] == 3000


def test_target_boxes_and_sizes(oi_root: Path) -> None:
    data = OpenImagesDataset(oi_root, "test")
    image, target = data[0]
    assert target["orig_size"].tolist() == [50, 64]
    assert target["size"].tolist() == list(image.shape[-2:])
    assert target["boxes_xyxy_orig"].tolist() == [[2, 2, 30, 20], [35, 8, 60, 45], [0, 30, 12, 44]]
    cx = (2 + 30) / 2 / 64
    assert target["boxes"][0, 0].item() == pytest.approx(cx, abs=2e-3)
    assert target["rels"].tolist() == [[0, 1, 0], [0, 1, 0], [2, 1, 1]]


def _write_split(root: Path, records: list[dict[str, object]]) -> None:
    (root / "annotations" / "vrd-val-anno.json").write_text(json.dumps(records))


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"bbox": [[0, 0, 5, 5]], "det_labels": [0, 1], "rel": []}, r"one label per box"),
        ({"bbox": [[0, 0, 5, 5]], "det_labels": [3], "rel": []}, r"det_labels\[0\].*0\.\.2"),
        ({"bbox": [[6, 0, 5, 5]], "det_labels": [0], "rel": []}, r"bbox\[0\].*x2 < x1"),
        ({"bbox": [[0, 0, 5]], "det_labels": [0], "rel": []}, r"bbox\[0\] must be 4"),
        ({"bbox": [[0, 0, 5, 5]], "det_labels": [0], "rel": [[0, 1, 0]]}, r"outside the 1 boxes"),
        ({"bbox": [[0, 0, 5, 5]], "det_labels": [0], "rel": [[0, 0, 4]]}, r"predicate"),
        ({"bbox": [[0, 0, 5, 5]], "det_labels": [0]}, None),  # no 'rel': no relations
    ],
)
def test_bad_records_name_file_and_index(
    tmp_path: Path, record: dict[str, object], message: str | None
) -> None:
    root = write_tiny_oi(tmp_path, images=False)
    good = oi_records()["val"][0]
    _write_split(root, [good, {"img_fn": "bad", **record}])
    if message is None:
        assert OpenImagesDataset(root, "val").records[1].rels.shape == (0, 3)
        return
    with pytest.raises(AnnotationError, match=message) as exc:
        OpenImagesDataset(root, "val")
    text = str(exc.value)
    assert "vrd-val-anno.json" in text
    assert "record 1 (bad)" in text


def test_bad_files(tmp_path: Path) -> None:
    root = write_tiny_oi(tmp_path, images=False)
    _write_split(root, [{"bbox": []}])
    with pytest.raises(AnnotationError, match=r"record 0.*img_fn"):
        OpenImagesDataset(root, "val")
    _write_split(root, {"not": "a list"})  # type: ignore[arg-type]
    with pytest.raises(AnnotationError, match="list of image records"):
        OpenImagesDataset(root, "val")
    (root / "annotations" / "categories_dict.json").write_text(json.dumps({"obj": []}))
    with pytest.raises(AnnotationError, match="categories_dict"):
        OpenImagesDataset(root, "val")
    with pytest.raises(FileNotFoundError, match="categories_dict"):
        OpenImagesDataset(tmp_path / "nowhere", "test")
