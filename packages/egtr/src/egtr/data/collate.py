"""Batching: pad images bottom/right with zeros and mark the real pixels in a mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from egtr.data.base import Target


def collate(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, Tensor, list[Target]]:
    """``(pixel_values [B, 3, Hmax, Wmax], pixel_mask long [B, Hmax, Wmax], targets)``.

    ``pixel_mask`` is 1 on real pixels and 0 on padding; targets are passed through unchanged.
    Raises ``ValueError`` when ``batch`` is empty or the images are not all ``[C, H, W]`` with
    the same ``C``.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = [image for image, _ in batch]
    channels = images[0].shape[0]
    if any(image.dim() != 3 or image.shape[0] != channels for image in images):
        shapes = [tuple(image.shape) for image in images]
        raise ValueError(f"images must be [C, H, W] with the same C, got {shapes}")
    height = max(int(image.shape[1]) for image in images)
    width = max(int(image.shape[2]) for image in images)
    pixel_values = images[0].new_zeros(len(images), channels, height, width)
    pixel_mask = torch.zeros(len(images), height, width, dtype=torch.long)
    for index, image in enumerate(images):
        h, w = int(image.shape[1]), int(image.shape[2])
        pixel_values[index, :, :h, :w] = image
        pixel_mask[index, :h, :w] = 1
    return pixel_values, pixel_mask, [target for _, target in batch]
