"""Deformable DETR preprocessing: resize (shorter side 800, longer at most 1333), ImageNet
normalisation, and bottom/right zero padding of a batch with a pixel mask.

Sizes: every image size in egtr's public API and output files is ``(width, height)`` (PIL's
order): :func:`resized_size`, :attr:`BatchInputs.original_sizes`, ``SceneGraph.image_size``.
Tensor shapes are ``[..., H, W]`` as usual in PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import Tensor

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""ImageNet per-channel (R, G, B) mean: the one constant used by inference preprocessing, the
training transforms (:mod:`egtr.data.transforms`) and :class:`~egtr.EGTRConfig`'s default."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet per-channel (R, G, B) standard deviation (see :data:`IMAGENET_MEAN`)."""


@dataclass(frozen=True)
class BatchInputs:
    """``pixel_values [B, 3, H, W]``, ``pixel_mask [B, H, W]`` (1 = image, 0 = padding) and each
    original image's ``(width, height)``."""

    pixel_values: Tensor
    pixel_mask: Tensor
    original_sizes: tuple[tuple[int, int], ...]


def resized_size(
    width: int, height: int, min_size: int = 800, max_size: int | None = 1333
) -> tuple[int, int]:
    """``(new_width, new_height)``: shorter side ``min_size`` unless the longer would pass ``max_size``.

    Raises ``ValueError`` for a non-positive ``width`` or ``height``.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    size = float(min_size)
    short, long = min(width, height), max(width, height)
    if max_size is not None and long / short * size > max_size:
        size = max_size * short / long
    if width <= height:
        new_w = round(size)
        new_h = round(size * height / width)
    else:
        new_h = round(size)
        new_w = round(size * width / height)
    if max_size is not None:
        new_w, new_h = min(new_w, max_size), min(new_h, max_size)
    return max(new_w, 1), max(new_h, 1)


def preprocess(
    images: Sequence[Image.Image],
    *,
    min_size: int = 800,
    max_size: int | None = 1333,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> BatchInputs:
    """Resize, normalise and pad RGB PIL images into one batch; returns :class:`BatchInputs`.

    Raises ``ValueError`` when ``images`` is empty.
    """
    if not images:
        raise ValueError("no images to preprocess")
    tensors = [
        image_tensor(image, min_size=min_size, max_size=max_size, mean=mean, std=std)
        for image in images
    ]
    return pad_batch(tensors, [image.size for image in images])


def image_tensor(
    image: Image.Image,
    *,
    min_size: int = 800,
    max_size: int | None = 1333,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Tensor:
    """One RGB PIL image resized (:func:`resized_size`) and normalised: returns a float32
    ``[3, H, W]`` tensor (what :func:`preprocess` does to each image before padding).

    Raises ``ValueError`` for an image without pixels.
    """
    width, height = image.size
    new_w, new_h = resized_size(width, height, min_size, max_size)
    pixels = TF.to_image(image.convert("RGB"))
    pixels = TF.resize(pixels, [new_h, new_w], antialias=True)
    pixels = TF.to_dtype(pixels, torch.float32, scale=True)
    normalised: Tensor = TF.normalize(pixels, list(mean), list(std))
    return normalised


def pad_batch(tensors: Sequence[Tensor], sizes: Sequence[tuple[int, int]]) -> BatchInputs:
    """Pad ``[3, H, W]`` tensors (of :func:`image_tensor`) at the bottom and right into one
    batch; ``sizes`` are the original images' ``(width, height)``. Returns :class:`BatchInputs`.

    Raises ``ValueError`` when ``tensors`` is empty or ``sizes`` does not match it.
    """
    if not tensors:
        raise ValueError("no images to preprocess")
    if len(sizes) != len(tensors):
        raise ValueError(f"{len(tensors)} tensors but {len(sizes)} sizes")
    batch_h = max(t.shape[1] for t in tensors)
    batch_w = max(t.shape[2] for t in tensors)
    pixel_values = torch.zeros(len(tensors), 3, batch_h, batch_w)
    pixel_mask = torch.zeros(len(tensors), batch_h, batch_w, dtype=torch.long)
    for index, tensor in enumerate(tensors):
        _, h, w = tensor.shape
        pixel_values[index, :, :h, :w] = tensor
        pixel_mask[index, :h, :w] = 1
    return BatchInputs(pixel_values, pixel_mask, tuple((int(w), int(h)) for w, h in sizes))
