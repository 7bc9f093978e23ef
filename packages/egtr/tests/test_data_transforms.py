"""Transforms keep boxes on their objects and relation indices valid; collate pads correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as v2
from PIL import Image
from sgg_data_testing import write_tiny_vg

from egtr.data import SceneGraphTransform, VisualGenomeDataset, build_transforms, collate
from egtr.data.base import remap_relations
from egtr.data.transforms import TRAIN_SCALES
from egtr.preprocessing import IMAGENET_MEAN, IMAGENET_STD, preprocess

MEAN = torch.tensor(IMAGENET_MEAN)[:, None, None]
STD = torch.tensor(IMAGENET_STD)[:, None, None]


def _scene(width: int = 120, height: int = 90) -> tuple[Image.Image, torch.Tensor]:
    """A black image with one white rectangle; its box."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    x1, y1, x2, y2 = 10, 20, 50, 70
    pixels[y1:y2, x1:x2] = 255
    return Image.fromarray(pixels), torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32)


def _white_box(image: torch.Tensor) -> list[float]:
    """Bounding box (xyxy, pixel edges) of the bright pixels of a normalised image."""
    raw = (image * STD + MEAN).mean(0)
    ys, xs = torch.nonzero(raw > 0.5, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_flip_maps_x_to_width_minus_x() -> None:
    image, _ = _scene()
    boxes = torch.tensor([[10.0, 20, 50, 70], [0, 0, 120, 5], [100, 1, 119, 2]])
    flip = SceneGraphTransform(
        v2.Compose([v2.RandomHorizontalFlip(1.0), v2.ToDtype(torch.float32, scale=True)])
    )
    pixels, out, keep = flip(image, boxes)
    expected = torch.stack([120 - boxes[:, 2], boxes[:, 1], 120 - boxes[:, 0], boxes[:, 3]], 1)
    assert torch.equal(out, expected)
    assert keep.all()
    raw = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert torch.equal(pixels, raw.flip(-1))


def test_stage_b_training_keeps_boxes_on_their_objects() -> None:
    image, box = _scene()
    default = build_transforms("train", "egtr")
    assert not default.drop_empty
    resize = [t for t in default.transform.transforms if isinstance(t, v2.RandomShortestSize)]
    assert tuple(range(480, 801, 32)) == TRAIN_SCALES
    assert [(list(r.min_size), r.max_size) for r in resize] == [(list(TRAIN_SCALES), 1333)]
    transform = build_transforms("train", "egtr", scales=(96, 128, 160), max_size=200)
    torch.manual_seed(1)
    flipped = 0
    for _ in range(10):
        pixels, out, keep = transform(image, box)
        h, w = pixels.shape[-2:]
        assert max(h, w) <= 200
        assert min(h, w) in (96, 128) or max(h, w) in (199, 200)  # capped by max_size
        assert keep.tolist() == [True]
        found = _white_box(pixels)
        scale = w / 120
        assert np.allclose(out[0].tolist(), found, atol=1.5 * scale)
        flipped += int(out[0, 0] > w / 2 - 10 * scale)  # the rectangle is on the left originally
    assert 0 < flipped < 10


def test_test_transform_matches_the_predictor_preprocessing() -> None:
    image, box = _scene(97, 61)
    pixels, out, _ = build_transforms("test")(image, box)
    reference = preprocess([image]).pixel_values[0]
    assert pixels.shape == reference.shape
    assert torch.equal(pixels, reference)
    scale = pixels.shape[-1] / 97
    assert torch.allclose(out, box * torch.tensor([scale, pixels.shape[-2] / 61] * 2), atol=1e-3)


def test_stage_a_crops_drop_boxes_and_remap_relations(tmp_path: Path) -> None:
    root = write_tiny_vg(tmp_path)
    data = VisualGenomeDataset(root, "train", stage="detector")
    assert data.transforms.drop_empty
    record = data.records[0]
    original = {
        (int(record.labels[s]), int(record.labels[o]), int(p)) for s, o, p in record.rels.tolist()
    }
    torch.manual_seed(3)
    dropped = 0
    for _ in range(15):
        image, target = data[0]
        boxes, labels, rels = target["boxes"], target["class_labels"], target["rels"]
        assert len(boxes) == len(labels) == len(target["boxes_xyxy_orig"])
        assert (boxes[:, 2:] > 0).all()
        assert (boxes >= -1e-6).all()
        assert (boxes[:, :2] <= 1 + 1e-6).all()
        if len(rels):
            assert rels[:, :2].max() < len(boxes)
        # every relation still links the same objects (labels are unique within this image)
        kept = set(labels.tolist())
        expected = {t for t in original if t[0] in kept and t[1] in kept}
        got = {(int(labels[s]), int(labels[o]), int(p)) for s, o, p in rels.tolist()}
        assert got == expected
        dropped += int(len(boxes) < 3)
        assert target["size"].tolist() == list(image.shape[-2:])
    assert dropped > 0


def test_stage_b_never_drops_boxes(tmp_path: Path) -> None:
    root = write_tiny_vg(tmp_path)
    data = VisualGenomeDataset(root, "train", stage="egtr")
    torch.manual_seed(0)
    for _ in range(4):
        _, target = data[0]
        assert target["rels"].tolist() == data.records[0].rels.tolist()
        assert target["class_labels"].tolist() == data.records[0].labels.tolist()


def test_remap_relations_by_hand() -> None:
    rels = torch.tensor([[0, 1, 2], [1, 3, 0], [3, 2, 1], [2, 0, 4]])
    keep = torch.tensor([True, False, True, True])
    assert remap_relations(rels, keep).tolist() == [[2, 1, 1], [1, 0, 4]]
    assert remap_relations(torch.zeros(0, 3, dtype=torch.long), keep).shape == (0, 3)


def test_unknown_stage() -> None:
    with pytest.raises(ValueError, match="stage"):
        build_transforms("train", "C")  # type: ignore[arg-type]


def test_stage_aliases_name_the_same_transforms() -> None:
    """One spelling of the stage ("detector"/"egtr"); "A"/"B" are accepted on input."""
    for alias, stage in (("A", "detector"), ("B", "egtr")):
        aliased = build_transforms("train", alias)  # type: ignore[arg-type]
        assert aliased.drop_empty == build_transforms("train", stage).drop_empty
    assert build_transforms("train", "detector").drop_empty
    assert not build_transforms("train", "egtr").drop_empty


def test_collate_pads_bottom_right_with_a_mask() -> None:
    a, b = torch.randn(3, 4, 6), torch.randn(3, 5, 2)
    targets = [{"image_id": 1}, {"image_id": 2}]
    pixels, mask, out = collate([(a, targets[0]), (b, targets[1])])  # type: ignore[list-item]
    assert pixels.shape == (2, 3, 5, 6)
    assert mask.dtype == torch.long
    assert torch.equal(pixels[0, :, :4, :6], a)
    assert torch.equal(pixels[1, :, :5, :2], b)
    assert pixels[0, :, 4:].abs().sum() == 0
    assert pixels[1, :, :, 2:].abs().sum() == 0
    assert mask[0].sum() == 24
    assert mask[0, :4, :6].all()
    assert mask[1].sum() == 10
    assert mask[1, :5, :2].all()
    assert out == targets
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_dataloader_batches(tmp_path: Path) -> None:
    root = write_tiny_vg(tmp_path)
    data = VisualGenomeDataset(root, "test", transforms=build_transforms("test", test_size=64))
    loader = torch.utils.data.DataLoader(data, batch_size=3, collate_fn=collate)
    pixels, mask, targets = next(iter(loader))
    assert pixels.shape[0] == 3
    for index, target in enumerate(targets):
        h, w = target["size"].tolist()
        assert mask[index].sum() == h * w
        assert mask[index, :h, :w].all()


def test_apply_reports_the_flip_it_made() -> None:
    image, box = _scene()
    always = SceneGraphTransform(v2.ToDtype(torch.float32, scale=True), hflip=1.0)
    never = SceneGraphTransform(v2.ToDtype(torch.float32, scale=True))
    out = always.apply(image, box)
    assert out.flipped
    assert torch.equal(
        out.boxes, torch.stack([120 - box[:, 2], box[:, 1], 120 - box[:, 0], box[:, 3]], 1)
    )
    assert not never.apply(image, box).flipped
    assert torch.equal(never(image, box)[1], box.float())
    assert build_transforms("train", "egtr").hflip == build_transforms("train", "detector").hflip
    assert build_transforms("train", "egtr").hflip == 0.5
    assert build_transforms("test").hflip == 0.0
    with pytest.raises(ValueError, match="hflip must be a probability"):
        SceneGraphTransform(v2.Identity(), hflip=1.5)
