"""Names of the paper's training recipe shared by :mod:`egtr.data` and :mod:`egtr.training`.

One spelling each: the training stage is ``"detector"`` (stage A, detector pre-training) or
``"egtr"`` (stage B, EGTR from the detector); ``"A"``/``"B"`` are accepted as aliases on input and
normalised by :func:`normalise_stage`. ``TRAIN_SCALES`` are the shorter sides of the multi-scale
training resize. Kept free of heavy imports, so configuration code can use it without torch.
"""

from __future__ import annotations

from typing import Literal, get_args

Stage = Literal["detector", "egtr"]
"""A training stage: ``"detector"`` (stage A) or ``"egtr"`` (stage B)."""

STAGES: tuple[Stage, ...] = get_args(Stage)
STAGE_ALIASES: dict[str, Stage] = {"A": "detector", "a": "detector", "B": "egtr", "b": "egtr"}

TRAIN_SCALES: tuple[int, ...] = tuple(range(480, 801, 32))
"""Shorter sides of the multi-scale training resize (480..800 step 32), as the paper."""


def normalise_stage(stage: str) -> Stage:
    """The canonical name of ``stage``: ``"A"``/``"B"`` (any case) or a stage's name.

    Returns ``"detector"`` or ``"egtr"``; raises ``ValueError`` for anything else.
    """
    name = STAGE_ALIASES.get(stage, stage)
    if name == "detector":
        return "detector"
    if name == "egtr":
        return "egtr"
    raise ValueError(f"unknown stage {stage!r}; use one of {STAGES} (or A/B)")
