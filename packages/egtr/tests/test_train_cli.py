"""``egtr train`` end to end on a tiny Visual Genome data set in the public format: stage A
(detector) then stage B (EGTR from stage A's best checkpoint), resume and error handling."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from sgg_data_testing import write_tiny_vg

from egtr import EGTRForSceneGraphGeneration
from egtr.training.cli import main
from egtr.training.metrics import read_metrics

TINY_MODEL = {
    "backbone_config": {
        "model_type": "resnet",
        "embedding_size": 8,
        "hidden_sizes": [8, 16, 32, 32],
        "depths": [1, 1, 1, 1],
        "out_features": ["stage2", "stage3", "stage4"],
    },
    "d_model": 64,
    "encoder_layers": 1,
    "decoder_layers": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_n_points": 2,
    "decoder_n_points": 2,
    "num_queries": 6,
}
SMALL_RUN: dict[str, dict[str, Any]] = {
    "data": {"num_workers": 0, "train_scales": [48, 64], "max_size": 96, "test_size": 64},
    "train": {
        "batch_size": 1,
        "effective_batch": 2,
        "epochs": 2,
        "continuation_epochs": 1,
        "log_every": 1,
    },
}


def _stage_a_config(tmp_path: Path) -> Path:
    """A stage-A (detector) config file for the tiny model and run."""
    path = tmp_path / "detector.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "stage": "detector",
                **SMALL_RUN,
                "model": {"pretrained_backbone": False, "overrides": TINY_MODEL},
            }
        )
    )
    return path


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_stage_a_then_stage_b(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_tiny_vg(tmp_path / "vg")
    stage_a = _stage_a_config(tmp_path)
    run_a = tmp_path / "run-a"
    assert (
        main(
            [
                "--config",
                str(stage_a),
                "--data",
                str(data),
                "--out",
                str(run_a),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "finished after 3 steps (continuation)" in capsys.readouterr().out
    assert (run_a / "best" / "best.json").is_file()
    assert (run_a / "final").is_dir()
    records = read_metrics(run_a / "metrics.jsonl")
    assert [r["event"] for r in records].count("val") == 3
    assert "ce_0" in records[0]
    assert "rel" not in records[0]

    run_b = tmp_path / "run-b"
    args = [
        "--config",
        "vg_egtr",
        "--data",
        str(data),
        "--init",
        str(run_a / "best"),
        "--out",
        str(run_b),
        "--quiet",
        "--device",
        "cpu",
        "--set",
        "train.continuation_epochs=0",
    ]
    for section, values in SMALL_RUN.items():
        args += [
            f"--set={section}.{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
            for k, v in values.items()
            if k != "continuation_epochs"
        ]
    assert main(args) == 0
    train_records = [r for r in read_metrics(run_b / "metrics.jsonl") if r["event"] == "train"]
    assert len(train_records) == 2
    assert {"rel", "connectivity"} <= set(train_records[0])
    assert train_records[0]["lr"] == {"detector": 2e-6, "backbone": 2e-7, "new": 2e-4}
    model = EGTRForSceneGraphGeneration.from_pretrained(run_b / "best")
    assert model.config.rel_labels == ["on", "near", "has", "under"]
    assert model.config.object_labels == ["cat", "dog", "table"]
    # frequency bias from the training counts: (cat, table, "on") is annotated (twice)
    assert model.triplet_dist[0, 2, 0].item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert model.triplet_dist[0, 2, 3].item() < -20  # seen pair, unseen predicate

    # an existing run is not overwritten; --resume continues it (here: nothing left to do)
    assert main(args) == 1
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert len([r for r in read_metrics(run_b / "metrics.jsonl") if r["event"] == "train"]) == 2


def test_print_config_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "oi_egtr", "--print-config", "--set", "train.lr=1e-5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 1e-5
    assert printed["loss"]["connectivity"] == 90
    assert main(["--config", "vg_egtr", "--out", str(tmp_path / "x")]) == 1
    assert "--data" in capsys.readouterr().err
    assert main(["--config", "nope.yaml", "--out", str(tmp_path / "x")]) == 1
    assert "no configuration file" in capsys.readouterr().err
    assert main(["--config", "vg_egtr", "--set", "train.epochs=x", "--out", "o"]) == 1
    assert "train.epochs must be an integer" in capsys.readouterr().err
    missing = [
        "--config",
        "vg_egtr",
        "--data",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(missing) == 1
    assert "not found" in capsys.readouterr().err


def test_flip_predicates_reach_the_training_set(tmp_path: Path) -> None:
    from egtr.training.cli import build_datasets
    from egtr.training.config import load_config

    data = write_tiny_vg(tmp_path / "vg")
    sets = ["data.root=" + str(data), 'data.flip_predicates=[["on", "under"]]']
    config = load_config("vg_egtr", sets)
    train, val, (_, predicates), _ = build_datasets(config)
    mirror = train.predicate_mirror.tolist()  # type: ignore[attr-defined]
    assert [predicates[i] for i in mirror] == ["under", "near", "has", "on"]
    assert val is not None
    assert val.predicate_mirror.tolist() == mirror  # type: ignore[attr-defined]
    config = load_config(
        "vg_egtr", ["data.root=" + str(data), 'data.flip_predicates=[["on", "x"]]']
    )
    with pytest.raises(ValueError, match="unknown predicate 'x'"):
        build_datasets(config)


def test_train_seed_fixes_the_initial_weights(tmp_path: Path) -> None:
    """Two fresh stage-A runs with one seed end with identical weights (init included); another
    seed gives other weights."""
    from egtr.training.checkpoint import load_checkpoint

    data = write_tiny_vg(tmp_path / "vg")
    config = _stage_a_config(tmp_path)

    def run(name: str, seed: int) -> dict[str, torch.Tensor]:
        out = tmp_path / name
        args = [
            "--config",
            str(config),
            "--data",
            str(data),
            "--out",
            str(out),
            "--quiet",
            "--device",
            "cpu",
            "--set",
            "train.max_steps=1",
            "--set",
            f"train.seed={seed}",
        ]
        assert main(args) == 0
        return dict(load_checkpoint(out / "checkpoints" / "last.pt")["model"])

    first, again, other = run("a", 0), run("b", 0), run("c", 1)
    assert first.keys() == again.keys()
    assert all(first[k].equal(again[k]) for k in first)
    assert any(not first[k].equal(other[k]) for k in first)
