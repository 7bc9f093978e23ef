"""Helpers of egtr's training tests: a synthetic scene-graph data set following the batch contract."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from egtr.training.config import TrainingConfig, default_config


class SyntheticSceneGraphs(Dataset[tuple[Tensor, dict[str, Any]]]):
    """``n`` random images (``height x width``) with 2-3 boxes and 1-3 relations each.

    Deterministic per index; ``augment=True`` flips horizontally with the global torch RNG (as
    torchvision's random transforms do), which the trainer must seed per sample.
    """

    def __init__(
        self,
        n: int,
        *,
        num_classes: int = 3,
        num_predicates: int = 4,
        height: int = 48,
        width: int = 64,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.n = n
        self.num_classes = num_classes
        self.num_predicates = num_predicates
        self.height = height
        self.width = width
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        gen = torch.Generator().manual_seed(self.seed * 1000 + index)
        image = torch.randn(3, self.height, self.width, generator=gen)
        m = 2 + index % 2
        centres = torch.rand(m, 2, generator=gen) * 0.5 + 0.25
        sizes = torch.rand(m, 2, generator=gen) * 0.3 + 0.1
        boxes = torch.cat([centres, sizes], dim=1)
        labels = torch.randint(0, self.num_classes, (m,), generator=gen)
        rels = [[0, 1, int(torch.randint(0, self.num_predicates, (1,), generator=gen))]]
        if m == 3:
            rels.append([2, 0, int(torch.randint(0, self.num_predicates, (1,), generator=gen))])
        if self.augment and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
            boxes = boxes.clone()
            boxes[:, 0] = 1 - boxes[:, 0]
        size = torch.tensor([self.height, self.width])
        target = {
            "boxes": boxes,
            "class_labels": labels,
            "rels": torch.tensor(rels, dtype=torch.long),
            "image_id": index,
            "orig_size": size,
            "size": size.clone(),
        }
        return image, target


def collate(
    batch: list[tuple[Tensor, dict[str, Any]]],
) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Pad to the largest image (bottom/right) with a pixel mask, as ``egtr.data.collate``."""
    height = max(int(image.shape[1]) for image, _ in batch)
    width = max(int(image.shape[2]) for image, _ in batch)
    pixels = torch.zeros(len(batch), 3, height, width)
    mask = torch.zeros(len(batch), height, width, dtype=torch.long)
    for i, (image, _) in enumerate(batch):
        pixels[i, :, : image.shape[1], : image.shape[2]] = image
        mask[i, : image.shape[1], : image.shape[2]] = 1
    return pixels, mask, [target for _, target in batch]


def tiny_training_config(stage: str = "egtr", **train: Any) -> TrainingConfig:
    """A training configuration for the tiny model: small batches, no progress bars, no workers."""
    config = default_config("vg", stage)
    config.data.num_workers = 0
    config.train.batch_size = 1
    config.train.effective_batch = 2
    config.train.epochs = 1
    config.train.continuation_epochs = 0
    config.train.progress = False
    config.train.log_every = 1
    config.train.lr = 1e-4
    config.train.lr_backbone = 1e-5
    config.train.lr_new = 1e-3 if stage == "egtr" else None
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ddp_worker(rank: int, world_size: int, port: int, out: str, config: dict[str, Any]) -> None:
    """One process of a CPU (gloo) DDP run on the synthetic data; saves its final parameters."""
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)
    from egtr_testing import tiny_config

    from egtr import EGTRForSceneGraphGeneration
    from egtr.training import Trainer, load_config
    from vl_core.distributed import teardown_process_group

    torch.manual_seed(rank)  # different initialisations: DDP must broadcast rank 0's
    model = EGTRForSceneGraphGeneration(tiny_config(dropout=0.0))
    data = SyntheticSceneGraphs(4, augment=True)
    trainer = Trainer(load_config(config), model, data, collate, out, device="cpu")
    try:
        trainer.fit()
        torch.save(trainer.module.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        teardown_process_group()
