"""clip4dm.metrics: FCLIPScore / CLIPScore as torchmetrics metrics, against CLIP4DM.detect_batch,
on both scales, with per-pair details, and synchronised across two gloo processes (torchrun)."""

from __future__ import annotations

import builtins
import importlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import clip4dm.metrics as metrics
from clip4dm import CLIP4DM
from clip4dm.results import Detection
from vl_core.cli import MissingExtraError

CAPTIONS = [
    "a red square above a blue circle",
    "two green triangles on the left",
    "a yellow star, next to a cat",
    "a small blue circle",
    "three red squares and one dog",
]


def write_images(root: Path, count: int = len(CAPTIONS)) -> list[str]:
    """``count`` small random PNG files; returns their paths as strings."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (24 + i, 30, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_images(tmp_path_factory.mktemp("metric_images"))


@pytest.fixture(scope="module")
def detector(tiny_hf_dir: Path) -> CLIP4DM:
    return CLIP4DM(f"hf:{tiny_hf_dir}", device="cpu")


@pytest.fixture(scope="module")
def detections(detector: CLIP4DM, images: list[str]) -> list[Detection]:
    return detector.detect_batch(images, CAPTIONS)


def mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def test_fclipscore_equals_detect_batch_mean(
    tiny_hf_dir: Path, images: list[str], detections: list[Detection]
) -> None:
    metric = metrics.FCLIPScore(str(tiny_hf_dir), device="cpu", batch_size=2)
    metric.update(images[:3], CAPTIONS[:3])
    metric.update(images[3:], CAPTIONS[3:])
    expected = mean([d.f_clip_score for d in detections])
    value = metric.compute()
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert any(d.f_clip_score != 0.0 for d in detections)  # the comparison is not 0 == 0
    assert int(metric.count) == len(CAPTIONS)
    metric.reset()
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert math.isnan(metric.compute().item())


def test_scales_are_stated_and_exact(
    detector: CLIP4DM, images: list[str], detections: list[Detection]
) -> None:
    cosines = [d.cosine for d in detections]
    values: dict[tuple[str, str], float] = {}
    for scale in ("clip-s", "torchmetrics"):
        for cls in (metrics.FCLIPScore, metrics.CLIPScore):
            metric = cls(detector, scale=scale)
            metric.update(images, CAPTIONS)
            values[cls.__name__, scale] = metric.compute().item()
    fscore = mean([d.f_clip_score for d in detections])
    assert values["FCLIPScore", "clip-s"] == pytest.approx(fscore, rel=1e-5, abs=1e-12)
    # torchmetrics scale: negative_sum * (100 - 100 max(cos, 0)) == 100 x the clip-s F-CLIPScore
    hundred = mean(
        [
            d.negative_sum * (100 - 100 * max(c, 0.0))
            for d, c in zip(detections, cosines, strict=True)
        ]
    )
    assert values["FCLIPScore", "torchmetrics"] == pytest.approx(hundred, rel=1e-5, abs=1e-12)
    assert values["FCLIPScore", "torchmetrics"] == pytest.approx(
        100 * values["FCLIPScore", "clip-s"], rel=1e-12
    )
    # CLIPScore: 2.5 max(cos, 0) (Detection.clip_score) and 100 max(cos, 0), clamped per pair
    assert values["CLIPScore", "clip-s"] == pytest.approx(
        mean([d.clip_score for d in detections]), rel=1e-6
    )
    assert values["CLIPScore", "torchmetrics"] == pytest.approx(
        mean([100 * max(c, 0.0) for c in cosines]), rel=1e-6
    )


def test_clipscore_clamps_each_pair_not_the_mean(detector: CLIP4DM, images: list[str]) -> None:
    metric = metrics.CLIPScore(detector, scale="torchmetrics", keep_pairs=True)
    metric.update(images, CAPTIONS)
    details = metric.compute_details()
    cosines = [pair.cosine for pair in details.pairs]
    for pair in details.pairs:
        assert pair.score == pytest.approx(100 * max(pair.cosine, 0.0), rel=1e-12)
        assert pair.detection is None
    assert details.score == pytest.approx(mean([100 * max(c, 0.0) for c in cosines]), rel=1e-12)
    assert min(cosines) < 0 < max(cosines)  # the tiny random model gives both signs
    assert details.score > max(100 * mean(cosines), 0.0)  # torchmetrics' clamp of the mean


def test_details_keep_every_word(
    detector: CLIP4DM, images: list[str], detections: list[Detection]
) -> None:
    metric = metrics.FCLIPScore(detector, keep_pairs=True, scale="torchmetrics")
    metric.update(images[:2], CAPTIONS[:2])
    metric.update(images[2:], CAPTIONS[2:])
    details = metric.compute_details()
    assert details.count == len(CAPTIONS)
    assert details.scale == "torchmetrics"
    assert [pair.caption for pair in details.pairs] == CAPTIONS
    for pair, expected in zip(details.pairs, detections, strict=True):
        assert pair.detection is not None
        assert [w.word for w in pair.detection.words] == [w.word for w in expected.words]
        for got, want in zip(pair.detection.words, expected.words, strict=True):
            assert got.score == pytest.approx(want.score, rel=1e-4, abs=1e-9)
        assert pair.score == pytest.approx(100 * pair.detection.f_clip_score, rel=1e-12)
        assert metrics.PairScore.from_dict(json.loads(json.dumps(pair.to_dict()))) == pair
    assert details.score == pytest.approx(metric.compute().item(), rel=1e-12)
    assert json.loads(json.dumps(details.to_dict()))["count"] == len(CAPTIONS)


def test_details_need_keep_pairs(detector: CLIP4DM, images: list[str]) -> None:
    metric = metrics.FCLIPScore(detector)
    metric.update(images[:1], CAPTIONS[:1])
    with pytest.raises(RuntimeError, match="keep_pairs=True"):
        metric.compute_details()


def test_batch_tensor_and_single_pair_inputs(detector: CLIP4DM, images: list[str]) -> None:
    pixels = [np.asarray(Image.open(path).convert("RGB").resize((30, 24))) for path in images[:2]]
    batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)  # [N, C, H, W] uint8
    as_batch = metrics.CLIPScore(detector)
    as_batch.update(batch, CAPTIONS[:2])
    one_by_one = metrics.CLIPScore(detector)
    for image, caption in zip(batch, CAPTIONS[:2], strict=True):
        one_by_one.update(image, caption)
    assert as_batch.compute().item() == pytest.approx(one_by_one.compute().item(), rel=1e-6)
    assert int(as_batch.count) == int(one_by_one.count) == 2


def test_forward_returns_the_batch_value_and_accumulates(
    detector: CLIP4DM, images: list[str], detections: list[Detection]
) -> None:
    metric = metrics.FCLIPScore(detector, keep_pairs=True)
    first = metric(images[:2], CAPTIONS[:2])
    assert first.item() == pytest.approx(
        mean([d.f_clip_score for d in detections[:2]]), rel=1e-5, abs=1e-12
    )
    metric(images[2:], CAPTIONS[2:])
    assert metric.compute().item() == pytest.approx(
        mean([d.f_clip_score for d in detections]), rel=1e-5, abs=1e-12
    )
    assert len(metric.compute_details().pairs) == len(CAPTIONS)


@pytest.mark.parametrize(
    ("images_arg", "captions", "match"),
    [
        (["a.png", "b.png"], ["one caption"], "2 images but 1 captions"),
        (["a.png"], ["   "], "caption #0 is empty"),
    ],
)
def test_bad_updates_are_refused(
    detector: CLIP4DM, images_arg: list[str], captions: list[str], match: str
) -> None:
    metric = metrics.FCLIPScore(detector)
    with pytest.raises(ValueError, match=match):
        metric.update(images_arg, captions)
    assert int(metric.count) == 0


def test_settings_are_validated(detector: CLIP4DM, tiny_hf_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown scale"):
        metrics.FCLIPScore(detector, scale="percent")
    with pytest.raises(ValueError, match="batch_size"):
        metrics.CLIPScore(detector, batch_size=0)
    with pytest.raises(ValueError, match="epsilon, mode cannot be given with a ready CLIP4DM"):
        metrics.FCLIPScore(detector, mode="most_negative", epsilon=-1e-4)
    with pytest.raises(ValueError, match="device cannot be given"):
        metrics.CLIPScore(detector, device="cpu")
    built = metrics.FCLIPScore(
        str(tiny_hf_dir), mode="most_negative", layers=1, template="", device="cpu"
    )
    assert (built.detector.mode, built.detector.layers, built.detector.template) == (
        "most_negative",
        1,
        "",
    )


def test_missing_torchmetrics_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_torchmetrics(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torchmetrics" or name.startswith("torchmetrics."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchmetrics)
    for name in [m for m in sys.modules if m == "torchmetrics" or m.startswith("torchmetrics.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(sys.modules, "clip4dm.metrics")
    with pytest.raises(MissingExtraError, match=r"pip install 'clip4dm\[torchmetrics\]'"):
        importlib.import_module("clip4dm.metrics")


_WORKER = """
import json
import sys
from pathlib import Path

import torch

from clip4dm.metrics import CLIPScore, FCLIPScore
from vl_core.distributed import process_group

torch.set_num_threads(1)
model, out = sys.argv[1], Path(sys.argv[2])
pairs = json.loads(Path(sys.argv[3]).read_text())
with process_group(backend="gloo") as info:
    mine = pairs[:3] if info.rank == 0 else pairs[3:]  # uneven shares: 3 and 2 pairs
    fscore = FCLIPScore(model, device="cpu", keep_pairs=True, scale="torchmetrics")
    fscore.update([p[0] for p in mine], [p[1] for p in mine])
    clip = CLIPScore(model, device="cpu", keep_pairs=True)
    if info.rank == 0:  # rank 1 sees no pair at all
        clip.update([p[0] for p in pairs], [p[1] for p in pairs])
    details = fscore.compute_details()
    result = {
        "fscore": fscore.compute().item(),
        "local_count": int(fscore.count),  # outside compute: this rank's own state
        "details": details.to_dict(),
        "clip": clip.compute().item(),
        "clip_pairs": [pair.caption for pair in clip.compute_details().pairs],
    }
(out / f"{info.rank}.json").write_text(json.dumps(result))
"""


def test_two_gloo_processes_sync_to_the_single_process_mean(
    tmp_path: Path, tiny_hf_dir: Path, images: list[str], detections: list[Detection]
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(list(zip(images, CAPTIONS, strict=True))))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(_free_port()), str(script)]
    command += [f"hf:{tiny_hf_dir}", str(tmp_path), str(pairs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    expected = mean([100 * d.f_clip_score for d in detections])
    clip_expected = mean([d.clip_score for d in detections])
    assert [result.pop("local_count") for result in ranks] == [3, 2]
    for result in ranks:
        assert result["fscore"] == pytest.approx(expected, rel=1e-5, abs=1e-10)
        details = result["details"]
        assert details["count"] == len(CAPTIONS)  # the counts were summed across ranks
        assert [p["caption"] for p in details["pairs"]] == CAPTIONS  # rank 0's, then rank 1's
        assert details["score"] == pytest.approx(result["fscore"], rel=1e-12)
        words = [[w["word"] for w in p["detection"]["words"]] for p in details["pairs"]]
        assert words == [[w.word for w in d.words] for d in detections]
        assert result["clip"] == pytest.approx(clip_expected, rel=1e-6)
        assert result["clip_pairs"] == CAPTIONS
    assert ranks[0] == ranks[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
