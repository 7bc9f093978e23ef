"""Training checkpoints: model, optimizer, schedule, loop position and RNG states in one file.

Only tensors and plain containers are stored, so checkpoints load with
``torch.load(weights_only=True)`` (nothing is unpickled that could run code).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vl_core.files import atomic_save

FORMAT = "egtr-train/1"


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, numpy, Python) as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    assert isinstance(np_state, dict)
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.random.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` recorded."""
    torch.random.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` atomically (``vl_core.files.atomic_save``: temporary file, fsync, rename),
    so a crash never leaves half a file. Returns the path; raises ``OSError``."""
    payload = {"format": FORMAT, **state}
    return atomic_save(path, lambda temporary: torch.save(payload, temporary))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights-only unpickling, on the CPU).

    Returns the state dict; raises ``ValueError`` when the file is not such a checkpoint, and
    whatever ``torch.load(weights_only=True)`` raises for an unreadable or unsafe file.
    """
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an egtr training checkpoint ({FORMAT})")
    return state
