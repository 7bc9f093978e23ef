"""Image + box transforms (``torchvision.transforms.v2`` on ``tv_tensors.BoundingBoxes``).

- Evaluation (``val``/``test``): resize so the shorter side is 800 and the longer at most 1333
  (exactly :func:`egtr.preprocessing.resized_size`, as :class:`~egtr.EGTRPredictor`), normalise.
- Training, stage ``"egtr"`` (stage B): horizontal flip + multi-scale resize (shorter side 480..800 step
  32, longer at most 1333). No crop, so no box is ever dropped and relation indices stay valid.
  The flip is done by :class:`SceneGraphTransform` itself (``hflip``), which reports it, so a
  data set can swap mirrored predicates ("left of" / "right of", see ``flip_predicates``).
- Training, stage ``"detector"`` (stage A, detector pre-training): DETR's augmentation — flip, then either the
  multi-scale resize or resize to 400/500/600 + a random 384..600 crop + the multi-scale resize.
  Boxes cropped to nothing are dropped (with their relations, see :mod:`egtr.data`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors

from egtr._recipe import TRAIN_SCALES, Stage, normalise_stage
from egtr.preprocessing import IMAGENET_MEAN, IMAGENET_STD, resized_size

__all__ = [
    "CROP_PRE_SCALES",
    "TRAIN_SCALES",
    "RandomSizeCrop",
    "ResizeShorterSide",
    "SceneGraphTransform",
    "Stage",
    "Transformed",
    "build_transforms",
]

CROP_PRE_SCALES: tuple[int, ...] = (400, 500, 600)


class Transformed(NamedTuple):
    """What :meth:`SceneGraphTransform.apply` returns."""

    pixels: Tensor  # normalised image [3, H, W]
    boxes: Tensor  # xyxy in the new pixels [M, 4]
    keep: Tensor  # bool [M]
    flipped: bool  # whether the image was mirrored left-right (``hflip``)


class SceneGraphTransform:
    """``(PIL image, boxes xyxy pixels [M, 4]) -> (normalised image [3, H, W], boxes xyxy in the
    new pixels [M, 4], keep mask [M])``.

    ``transform`` is the ``torchvision.transforms.v2`` pipeline (image + ``BoundingBoxes``);
    ``keep`` is all true unless ``drop_empty`` (stage ``"detector"`` crops), where it marks non-empty boxes.
    ``hflip`` is the probability of a horizontal flip done *before* ``transform``, drawn from
    torch's global generator; :meth:`apply` says whether it happened (a flip inside
    ``transform`` is not reported).
    """

    def __init__(
        self, transform: v2.Transform, *, drop_empty: bool = False, hflip: float = 0.0
    ) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
        self.transform = transform
        self.drop_empty = drop_empty
        self.hflip = hflip

    def __call__(self, image: Image.Image, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.apply(image, boxes)
        return out.pixels, out.boxes, out.keep

    def apply(self, image: Image.Image, boxes: Tensor) -> Transformed:
        """As calling the transform, plus whether the image was flipped."""
        pixels = tv_tensors.Image(TF.pil_to_tensor(image))
        height, width = int(pixels.shape[-2]), int(pixels.shape[-1])
        box_tensor = tv_tensors.BoundingBoxes(
            boxes.float().reshape(-1, 4), format="XYXY", canvas_size=(height, width)
        )
        flipped = self.hflip > 0 and bool(torch.rand(()) < self.hflip)
        if flipped:
            pixels, box_tensor = TF.horizontal_flip(pixels), TF.horizontal_flip(box_tensor)
        out_pixels, out_boxes = self.transform(pixels, box_tensor)
        result = out_boxes.as_subclass(Tensor).reshape(-1, 4)
        if self.drop_empty:
            keep = (result[:, 2] > result[:, 0]) & (result[:, 3] > result[:, 1])
        else:
            keep = torch.ones(len(result), dtype=torch.bool)
        return Transformed(out_pixels.as_subclass(Tensor), result, keep, flipped)

    def __repr__(self) -> str:
        return (
            f"SceneGraphTransform(drop_empty={self.drop_empty}, hflip={self.hflip}, "
            f"transform={self.transform})"
        )


class ResizeShorterSide(v2.Transform):  # type: ignore[misc]
    """Deterministic resize: shorter side ``min_size``, longer at most ``max_size``."""

    def __init__(self, min_size: int = 800, max_size: int | None = 1333) -> None:
        super().__init__()
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """``{"size": [new_h, new_w]}`` for the image among ``flat_inputs``.

        Raises ``TypeError`` when ``flat_inputs`` holds no ``tv_tensors.Image``.
        """
        height, width = _image_size(flat_inputs)
        new_w, new_h = resized_size(width, height, self.min_size, self.max_size)
        return {"size": [new_h, new_w]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """``inpt`` (image, boxes, ...) resized to ``params["size"]`` (antialiased)."""
        return TF.resize(inpt, params["size"], antialias=True)


class RandomSizeCrop(v2.Transform):  # type: ignore[misc]
    """A random crop with sides drawn in ``[min_size, min(side, max_size)]`` (DETR's)."""

    def __init__(self, min_size: int = 384, max_size: int = 600) -> None:
        super().__init__()
        self.min_size = min_size
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """A random crop ``{"top", "left", "height", "width"}`` inside the image's bounds.

        Raises ``TypeError`` when ``flat_inputs`` holds no ``tv_tensors.Image``.
        """
        height, width = _image_size(flat_inputs)
        crop_w = _randint(min(self.min_size, width, self.max_size), min(width, self.max_size))
        crop_h = _randint(min(self.min_size, height, self.max_size), min(height, self.max_size))
        top = _randint(0, height - crop_h)
        left = _randint(0, width - crop_w)
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """``inpt`` (image, boxes, ...) cropped to the window in ``params``."""
        return TF.crop(inpt, params["top"], params["left"], params["height"], params["width"])


def build_transforms(
    split: str,
    stage: Stage = "egtr",
    *,
    scales: Sequence[int] = TRAIN_SCALES,
    max_size: int = 1333,
    test_size: int = 800,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> SceneGraphTransform:
    """The transforms of ``split`` (``"train"`` random, anything else deterministic) and ``stage``
    (``"detector"``: with crops; ``"egtr"``: never dropping a box; ``"A"``/``"B"`` are accepted
    as aliases).

    Returns a :class:`SceneGraphTransform`; raises ``ValueError`` for an unknown stage.
    """
    stage = normalise_stage(stage)
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if split != "train":
        steps: list[v2.Transform] = [ResizeShorterSide(test_size, max_size)]
        return SceneGraphTransform(v2.Compose([*steps, *normalise]))
    multi_scale = v2.RandomShortestSize(list(scales), max_size=max_size, antialias=True)
    if stage == "egtr":
        return SceneGraphTransform(v2.Compose([multi_scale, *normalise]), hflip=0.5)
    crop_branch = v2.Compose(
        [
            v2.RandomShortestSize(list(CROP_PRE_SCALES), antialias=True),
            RandomSizeCrop(384, 600),
            v2.RandomShortestSize(list(scales), max_size=max_size, antialias=True),
        ]
    )
    steps = [v2.RandomChoice([multi_scale, crop_branch])]
    return SceneGraphTransform(v2.Compose([*steps, *normalise]), drop_empty=True, hflip=0.5)


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    """``(height, width)`` of the image among a transform's inputs."""
    for item in flat_inputs:
        if isinstance(item, tv_tensors.Image):
            return int(item.shape[-2]), int(item.shape[-1])
    raise TypeError("the transform needs a tv_tensors.Image among its inputs")


def _randint(low: int, high: int) -> int:
    """Uniform integer in ``[low, high]`` from torch's global generator (seeded per worker)."""
    return int(torch.randint(low, high + 1, ()).item())
