"""``tools/train_egtr.py``'s record of the shipped shapes-world EGTR (shared/models/egtr-shapes):
``egtr eval`` reproduces the recorded test-set metrics, in the script's headline figures, and the
model recalls relations far above a random-initialised one (both slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from egtr import EGTRConfig, EGTRForSceneGraphGeneration
from egtr.evaluation import EvalOptions, evaluate
from tools import train_egtr  # (not its test_set_digest: pytest would collect it)

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "shared" / "models" / "egtr-shapes"
TEST_SET = ROOT / "shared" / "world" / "test-set"
# Recorded figures are reproduced to this many percentage points (float noise across CPUs can
# reorder near-tied triplet scores; the figures themselves are averages over 300 images).
TOLERANCE = 0.5
HEADLINE = ("R@20", "R@50", "R@100", "mR@20", "mR@50", "mR@100")


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MODEL / "metrics.json").read_text(encoding="utf-8"))
    return data


def test_recorded_figures_belong_to_the_shipped_test_set(recorded: dict[str, Any]) -> None:
    assert recorded["test_set_sha256"] == train_egtr.test_set_digest(TEST_SET), (
        "shared/world/test-set changed since the metrics were recorded: re-measure with "
        "`python tools/train_egtr.py --stages eval` and update BENCHMARKS.md and the model card"
    )
    assert {"shipped", "stage_a", "random_init"} <= set(recorded["models"])
    assert set(HEADLINE) <= set(recorded["models"]["shipped"])


def _evaluate(model: Path, out: Path, limit: int | None = None) -> dict[str, float]:
    result = evaluate(
        EvalOptions(
            model=model,
            data=TEST_SET / "vg",
            image_dir=TEST_SET / "images",
            split="test",
            out=out,
            device="cpu",
            limit=limit,
            zero_shot=False,
            write_predictions=False,
            progress=False,
        )
    )
    row: dict[str, float] = train_egtr.headline(result)
    return {name: row[name] for name in (*HEADLINE, "AP50")}


@pytest.mark.slow
def test_reproduces_the_recorded_test_set_metrics(recorded: dict[str, Any], tmp_path: Path) -> None:
    test_recorded_figures_belong_to_the_shipped_test_set(recorded)
    measured = _evaluate(MODEL, tmp_path)
    expected = recorded["models"]["shipped"]
    for name, value in measured.items():
        assert value == pytest.approx(expected[name], abs=TOLERANCE), (name, measured, expected)


@pytest.mark.slow
def test_recalls_relations_far_above_a_random_init_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    EGTRForSceneGraphGeneration(EGTRConfig.from_pretrained(MODEL)).save_pretrained(
        tmp_path / "random"
    )
    # first 100 test images; the random-init model scores 0 everywhere (metrics.json)
    shipped = _evaluate(MODEL, tmp_path / "eval-shipped", limit=100)
    random_init = _evaluate(tmp_path / "random", tmp_path / "eval-random", limit=100)
    margins = {"R@20": 1.5, "R@50": 2.5, "R@100": 2.5, "mR@100": 2.5, "AP50": 15.0}
    for name, margin in margins.items():
        assert shipped[name] >= random_init[name] + margin, (name, shipped, random_init)
