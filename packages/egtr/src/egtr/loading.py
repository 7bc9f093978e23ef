"""Image decoding and preprocessing in DataLoader worker processes, for ``egtr predict``.

The inputs are processed in *blocks*: consecutive images that one forward pass (or, for images of
different resized shapes, a few) computes together. A worker reads every image of a block, turns
each into a normalised tensor and pads those of one resized shape into a batch (the grouping of
:meth:`egtr.EGTRPredictor.predict_loaded`, so the graphs are the same), while the main process
runs the model on the previous blocks. Blocks come back in input order. An image that cannot be
read becomes an error message of its block instead of an exception, so one bad file never stops
a run.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from egtr.preprocessing import IMAGENET_MEAN, IMAGENET_STD, BatchInputs, image_tensor, pad_batch
from vl_core.files import error_text
from vl_core.images import ImageLoadError, load_image

__all__ = [
    "BlockImages",
    "LoadedBlock",
    "Preprocessing",
    "load_blocks",
]


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs (picklable, for worker processes): the resize bounds, the
    normalisation, and whether images of different resized shapes share a padded batch."""

    min_size: int = 800
    max_size: int | None = 1333
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    pad_batches: bool = False

    def tensor(self, image: Image.Image) -> Tensor:
        """``image`` resized and normalised: a float32 ``[3, H, W]`` tensor."""
        return image_tensor(
            image, min_size=self.min_size, max_size=self.max_size, mean=self.mean, std=self.std
        )

    def batches(
        self, tensors: Sequence[Tensor], sizes: Sequence[tuple[int, int]]
    ) -> list[tuple[tuple[int, ...], BatchInputs]]:
        """The forward passes of one block: ``(indices into tensors, padded batch)`` for each
        resized shape in order of first appearance (one batch of all with ``pad_batches``).

        Returns an empty list for no tensors.
        """
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, tensor in enumerate(tensors):
            key = () if self.pad_batches else tuple(tensor.shape[1:])
            groups.setdefault(key, []).append(index)
        return [
            (tuple(indices), pad_batch([tensors[i] for i in indices], [sizes[i] for i in indices]))
            for indices in groups.values()
        ]


@dataclass
class LoadedBlock:
    """One block, read and preprocessed: ``batches`` pairs the input positions of each forward
    pass with its padded inputs; ``errors`` maps the positions that could not be read to the
    reason; ``images`` holds the decoded images when asked for (to draw on)."""

    index: int
    batches: list[tuple[tuple[int, ...], BatchInputs]] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)
    images: dict[int, Image.Image] = field(default_factory=dict)
    interrupted: bool = False
    """A worker was interrupted (Ctrl-C) while reading the block: the run must stop."""

    def pin_memory(self) -> LoadedBlock:
        """The block with its tensors in pinned memory (the DataLoader's ``pin_memory``)."""
        pinned = [
            (
                positions,
                BatchInputs(
                    inputs.pixel_values.pin_memory(),
                    inputs.pixel_mask.pin_memory(),
                    inputs.original_sizes,
                ),
            )
            for positions, inputs in self.batches
        ]
        return LoadedBlock(self.index, pinned, self.errors, self.images, self.interrupted)


class BlockImages(Dataset[LoadedBlock]):
    """A dataset whose item ``i`` is block ``blocks[i]`` of ``sources`` read and preprocessed
    (a `LoadedBlock`; item ``i`` of a block of positions ``p`` reads ``sources[p]``).

    ``keep_images``: also return the decoded images (to draw on). An image that cannot be read
    (`vl_core.images.ImageLoadError`, ``OSError``) is an entry of ``LoadedBlock.errors``.
    """

    def __init__(
        self,
        sources: Sequence[str | os.PathLike[str]],
        blocks: Sequence[Sequence[int]],
        preprocessing: Preprocessing,
        *,
        keep_images: bool = False,
    ) -> None:
        self.sources = list(sources)
        self.blocks = [tuple(block) for block in blocks]
        self.preprocessing = preprocessing
        self.keep_images = keep_images

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> LoadedBlock:
        block = LoadedBlock(index)
        try:
            self._read(block)
        except KeyboardInterrupt:  # reported to the main process, which stops the run
            return LoadedBlock(index, interrupted=True)
        return block

    def _read(self, block: LoadedBlock) -> None:
        positions: list[int] = []
        tensors: list[Tensor] = []
        sizes: list[tuple[int, int]] = []
        for position in self.blocks[block.index]:
            try:
                image = load_image(self.sources[position])
                tensor = self.preprocessing.tensor(image)
            except (ImageLoadError, OSError) as exc:
                block.errors[position] = error_text(exc)
                continue
            positions.append(position)
            tensors.append(tensor)
            sizes.append(image.size)
            if self.keep_images:
                block.images[position] = image
        block.batches = [
            (tuple(positions[i] for i in indices), inputs)
            for indices, inputs in self.preprocessing.batches(tensors, sizes)
        ]


def _as_is(block: Any) -> Any:
    """The DataLoader's ``collate_fn``: blocks are batched already (a module-level function, so
    that worker processes started with ``spawn`` can pickle it)."""
    return block


def load_blocks(
    sources: Sequence[str | os.PathLike[str]],
    blocks: Sequence[Sequence[int]],
    preprocessing: Preprocessing,
    *,
    workers: int = 0,
    keep_images: bool = False,
    pin_memory: bool = False,
    prefetch: int = 4,
) -> Generator[LoadedBlock, None, None]:
    """Yield each of ``blocks`` (lists of positions into ``sources``) read and preprocessed, in
    order, by ``workers`` processes (0: in this process), each keeping ``prefetch`` blocks ready.

    ``pin_memory``: put the tensors in pinned memory (faster copies to a CUDA device).
    Returns a generator of `LoadedBlock` (close it to stop the workers early). Raises ``ValueError`` for a negative ``workers`` or a
    ``prefetch`` below 1, and ``KeyboardInterrupt`` when a worker was interrupted.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, got {prefetch}")
    if not blocks:
        return
    dataset = BlockImages(sources, blocks, preprocessing, keep_images=keep_images)
    workers = min(workers, len(blocks))
    options: dict[str, Any] = {"prefetch_factor": prefetch} if workers else {}
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=pin_memory and torch.cuda.is_available(),
        **options,
    )
    for block in loader:
        if block.interrupted:
            raise KeyboardInterrupt
        yield block
