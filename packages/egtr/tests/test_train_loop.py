"""The training loop on a tiny model and synthetic data (CPU): learning, stage A, exact resume
across an epoch end and the continuation phase, checkpoint format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from egtr_testing import tiny_config
from train_testing import SyntheticSceneGraphs, collate, tiny_training_config

from egtr import EGTRForSceneGraphGeneration
from egtr.training import Trainer, TrainingConfig
from egtr.training.checkpoint import load_checkpoint
from egtr.training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run far faster on one thread, especially on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0, **overrides: object) -> EGTRForSceneGraphGeneration:
    torch.manual_seed(seed)
    return EGTRForSceneGraphGeneration(tiny_config(**overrides))


def _train_records(out: Path) -> list[dict[str, Any]]:
    return [r for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"]


def test_loss_decreases_on_a_tiny_batch(tmp_path: Path) -> None:
    config = tiny_training_config(
        "egtr", epochs=12, effective_batch=1, lr=1e-3, lr_backbone=1e-3, lr_new=1e-3, grad_clip=1.0
    )
    trainer = Trainer(
        config, _model(dropout=0.0), SyntheticSceneGraphs(1), collate, tmp_path, device="cpu"
    )
    result = trainer.fit()
    losses = [float(r["loss"]) for r in _train_records(tmp_path)]
    assert result.finished
    assert len(losses) == 12
    assert losses[-1] < 0.9 * losses[0], losses
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert (tmp_path / "config.yaml").is_file()


def test_stage_a_trains_the_detector_only(tmp_path: Path) -> None:
    config = tiny_training_config("detector", max_steps=1)
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = Trainer(config, model, SyntheticSceneGraphs(2), collate, tmp_path, device="cpu").fit()
    assert not result.finished
    assert result.global_step == 1
    (record,) = _train_records(tmp_path)
    assert {"ce_0", "bbox_0", "giou_0"} <= set(record)
    assert "rel" not in record
    assert set(record["lr"]) == {"detector", "backbone"}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "class_embed.weight" in changed
    assert not any(n.startswith("relation_head.") for n in changed)


def _resume_config(**train: Any) -> TrainingConfig:
    return tiny_training_config(
        **{"epochs": 1, "continuation_epochs": 1, "patience": None, **train}
    )


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path: Path) -> None:
    """Dropout, random flips and accumulation on; interrupted mid-epoch, resumed across the
    main epoch's end, its validation and the switch to the continuation phase."""
    data = SyntheticSceneGraphs(4, augment=True)
    val = SyntheticSceneGraphs(2, seed=1)

    full_dir = tmp_path / "full"
    full = Trainer(
        _resume_config(), _model(), data, collate, full_dir, val_dataset=val, device="cpu"
    )
    full.fit()
    expected = _train_records(full_dir)
    assert [r["step"] for r in expected] == [1, 2, 3, 4]
    assert [r["phase"] for r in expected] == ["main", "main", "continuation", "continuation"]
    assert expected[2]["lr"] == pytest.approx({"detector": 1e-5, "backbone": 1e-6, "new": 1e-4})

    part_dir = tmp_path / "part"
    first = Trainer(
        _resume_config(max_steps=1),
        _model(),
        data,
        collate,
        part_dir,
        val_dataset=val,
        device="cpu",
    )
    assert not first.fit().finished
    torch.manual_seed(123)  # a resumed process starts from unrelated RNG state
    second = Trainer(
        _resume_config(), _model(seed=7), data, collate, part_dir, val_dataset=val, device="cpu"
    )
    assert second.fit(resume=True).finished
    resumed = _train_records(part_dir)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for got, want in zip(resumed, expected, strict=True):
        assert got["loss"] == want["loss"]
        assert got["grad_norm"] == want["grad_norm"]
    vals = [
        [r["loss"] for r in read_metrics(d / "metrics.jsonl") if r["event"] == "val"]
        for d in (full_dir, part_dir)
    ]
    assert vals[0] == vals[1]
    assert len(vals[0]) == 2
    for (name, p), q in zip(
        full.module.state_dict().items(), second.module.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_checkpoint_contents_and_refusals(tmp_path: Path) -> None:
    data = SyntheticSceneGraphs(2)
    trainer = Trainer(_resume_config(max_steps=1), _model(), data, collate, tmp_path, device="cpu")
    trainer.fit()
    state = load_checkpoint(trainer.checkpoint_path)  # weights_only=True inside
    assert state["loop"]["global_step"] == 1
    assert state["loop"]["step_in_epoch"] == 1
    assert set(state["rng"][0]) >= {"torch", "numpy", "python"}
    assert state["optimizer"]["param_groups"][0]["name"] == "detector"
    torch.load(trainer.checkpoint_path, weights_only=True)
    other = _resume_config(effective_batch=1)
    with pytest.raises(ValueError, match=r"same train\.effective_batch"):
        Trainer(other, _model(), data, collate, tmp_path, device="cpu").fit(resume=True)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017, PT011 - any unpickling error
        load_checkpoint(tmp_path / "bad.pt")


def test_resume_drops_metrics_written_after_the_checkpoint(tmp_path: Path) -> None:
    """An interrupted run may have logged steps after its last checkpoint (and a torn line):
    the resumed run computes them again, so they are dropped instead of doubled."""
    data = SyntheticSceneGraphs(4)
    Trainer(_resume_config(max_steps=1), _model(), data, collate, tmp_path, device="cpu").fit()
    log = tmp_path / "metrics.jsonl"
    with log.open("a") as handle:
        handle.write(json.dumps({"event": "train", "step": 2, "loss": -1.0}) + "\n")
        handle.write('{"event": "train", "st')
    resumed = Trainer(_resume_config(max_steps=2), _model(), data, collate, tmp_path, device="cpu")
    resumed.fit(resume=True)
    records = _train_records(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["loss"] > 0


def test_model_directories_and_checkpoints_are_replaced_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while saving leaves the previous best/ and last.pt intact, and no temporary
    files behind."""
    data, val = SyntheticSceneGraphs(2), SyntheticSceneGraphs(2, seed=1)
    trainer = Trainer(
        _resume_config(), _model(), data, collate, tmp_path, val_dataset=val, device="cpu"
    )
    trainer.fit()
    best = tmp_path / "best"
    weights = (best / "model.safetensors").read_bytes()
    checkpoint = trainer.checkpoint_path.read_bytes()

    def broken_save(self: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        (Path(path) / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(EGTRForSceneGraphGeneration, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer._save_best({"event": "val", "loss": 0.0})
    assert (best / "model.safetensors").read_bytes() == weights
    assert json.loads((best / "best.json").read_text())["event"] == "val"

    def broken_torch_save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_torch_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save_checkpoint()
    assert trainer.checkpoint_path.read_bytes() == checkpoint
    assert list(tmp_path.rglob(".*")) == []  # no temporary files left


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(tmp_path: Path, amp: str) -> None:
    config = _resume_config(amp=amp, max_steps=2, continuation_epochs=0, epochs=2)
    data, val = SyntheticSceneGraphs(4, augment=True), SyntheticSceneGraphs(2, seed=1)
    trainer = Trainer(config, _model(), data, collate, tmp_path, val_dataset=val, device="cuda")
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    assert not trainer.fit().finished
    resumed = Trainer(
        _resume_config(amp=amp, continuation_epochs=0, epochs=2),
        _model(),
        data,
        collate,
        tmp_path,
        val_dataset=val,
        device="cuda",
    )
    result = resumed.fit(resume=True)
    assert result.finished
    assert result.global_step == 4
    losses = [float(r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_detector_only_and_auxiliary_outputs() -> None:
    model = _model().eval()
    pixels = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        full = model(pixels)
        det = model(pixels, detector_only=True, output_auxiliary=True)
        hidden = model.model(pixel_values=pixels).intermediate_hidden_states  # [B, L, N, d]
    assert det.rel_logits is None
    assert det.pred_rel is None
    assert full.auxiliary_logits is None
    torch.testing.assert_close(det.logits, full.logits)
    torch.testing.assert_close(det.pred_boxes, full.pred_boxes)
    layers = model.config.decoder_layers
    assert det.auxiliary_logits is not None
    assert det.auxiliary_pred_boxes is not None
    assert det.auxiliary_logits.shape == (2, layers - 1, 6, 3)
    assert det.auxiliary_pred_boxes.shape == (2, layers - 1, 6, 4)
    torch.testing.assert_close(det.auxiliary_logits[:, 0], model.class_embed(hidden[:, 0]))
    # the same heads on the last layer give the final outputs
    last = model._predict_boxes(
        hidden[:, -1], model.model(pixel_values=pixels).intermediate_reference_points[:, -1]
    )
    torch.testing.assert_close(last, full.pred_boxes)
