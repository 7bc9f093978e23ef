"""``egtr train`` end to end on a tiny Visual Genome data set in the public format: stage A
(detector) then stage B (EGTR from stage A's best checkpoint), resume and error handling."""

from __future__ import annotations

import shutil
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
from vl_core.testing import intra_op_threads

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


def _quick_run(tmp_path: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """Arguments of a one-step stage-A run of the tiny model."""
    return [
        "--config",
        str(_stage_a_config(tmp_path)),
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        "--set",
        "train.max_steps=1",
        *extra,
    ]


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("egtr train: error: "), err
    assert err.count("\n") == 1, err
    return err


def _init_model(path: Path) -> Path:
    """A tiny model directory for the tiny VG labels (cat, dog, table / on, near, has, under)."""
    from egtr_testing import tiny_config

    torch.manual_seed(0)
    EGTRForSceneGraphGeneration(tiny_config()).save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with intra_op_threads(1):
        yield


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
    quiet = capsys.readouterr()
    assert quiet.err == ""  # --quiet: no "Loading weights" bar, no warnings
    assert quiet.out.startswith("egtr train: finished")
    model = EGTRForSceneGraphGeneration.from_pretrained(run_b / "best")
    capsys.readouterr()
    assert model.config.rel_labels == ["on", "near", "has", "under"]
    assert model.config.object_labels == ["cat", "dog", "table"]
    # frequency bias from the training counts: (cat, table, "on") is annotated (twice)
    assert model.triplet_dist[0, 2, 0].item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert model.triplet_dist[0, 2, 3].item() < -20  # seen pair, unseen predicate

    # an existing run is not overwritten; --resume continues it (here: nothing left to do)
    assert main(args) == 2
    assert "--resume" in _one_line_error(capsys)
    assert main([*args, "--resume"]) == 0
    assert len([r for r in read_metrics(run_b / "metrics.jsonl") if r["event"] == "train"]) == 2


def test_print_config_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "oi_egtr", "--print-config", "--set", "train.lr=1e-5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 1e-5
    assert printed["loss"]["connectivity"] == 90
    for argv, message in (
        (["--config", "vg_egtr", "--out", str(tmp_path / "x")], "--data"),
        (["--config", "nope.yaml", "--out", str(tmp_path / "x")], "no configuration file"),
        (
            ["--config", "vg_egtr", "--set", "train.epochs=x", "--out", "o"],
            "train.epochs must be an integer",
        ),
        (
            ["--config", "vg_egtr", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")],
            "does not exist",
        ),
        (["--config", "vg_egtr", "--batch-size", "3", "--out", "o"], "multiple of"),
    ):
        assert main(argv) == 2, argv
        assert message in _one_line_error(capsys)
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exited:  # argparse: validated before anything is read
        main(["--config", "vg_egtr", "--batch-size", "0"])
    assert exited.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


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


def test_misspelt_override_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--set model.overrides.num_querys=50`` used to train with the default and exit 0."""
    data = write_tiny_vg(tmp_path / "vg")
    out = tmp_path / "run"
    assert main(_quick_run(tmp_path, data, out, "--set", "model.overrides.num_querys=50")) == 2
    assert _one_line_error(capsys) == (
        "egtr train: error: unknown configuration key 'model.overrides.num_querys' (did you "
        "mean 'model.overrides.num_queries'?): EGTRConfig has no such setting\n"
    )
    assert not out.exists()


def test_config_syntax_error_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("stage: detector\ntrain:\n  epochs: [1, 2\n  lr: 1e-4\n")
    assert main(["--config", str(config), "--out", str(tmp_path / "run")]) == 2
    err = _one_line_error(capsys)
    assert f"{config}, line 4, column 5: invalid YAML" in err
    assert not (tmp_path / "run").exists()


def test_init_is_opened_strictly_and_overrides_must_fit_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong override with --init, or an --init missing a weight, is one line (exit 2) and
    nothing is written; both used to end in a traceback or in a silently random weight."""
    from safetensors.torch import load_file, save_file

    data = write_tiny_vg(tmp_path / "vg")
    init = _init_model(tmp_path / "init")
    capsys.readouterr()
    out = tmp_path / "run"
    base = ["--config", "vg_egtr", "--data", str(data), "--init", str(init), "--out", str(out)]
    small = [
        "--device=cpu",
        "--quiet",
        "--workers=0",
        "--batch-size=1",
        "--set=train.effective_batch=2",
        "--set=train.max_steps=1",
        "--set=data.train_scales=[48]",
        "--set=data.max_size=96",
        "--set=data.test_size=64",
    ]
    assert main([*base, *small, "--set", "model.overrides.num_queries=50"]) == 2
    err = _one_line_error(capsys)
    assert "model.overrides (num_queries) do not fit the model in model.init" in err
    assert "query_position_embeddings" in err
    assert not out.exists()

    assert main([*base, *small]) == 0  # the same run without the override trains
    capsys.readouterr()

    weights = init / "model.safetensors"
    state = load_file(weights)
    del state["class_embed.bias"]
    save_file(state, weights, metadata={"format": "pt"})
    other = tmp_path / "run-2"
    assert main([*base[:-1], str(other), *small]) == 2
    err = _one_line_error(capsys)
    assert "missing 1: class_embed.bias" in err
    assert not other.exists()


def test_quiet_prints_nothing_but_the_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_tiny_vg(tmp_path / "vg")
    config = tmp_path / "egtr.yaml"  # stage B without --init: a warning without --quiet
    config.write_text(yaml.safe_dump({**SMALL_RUN, "model": {"overrides": TINY_MODEL}}))
    args = ["--config", str(config), "--data", str(data), "--device", "cpu"]
    args += ["--set", "train.max_steps=1"]
    assert main([*args, "--out", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr()
    assert "model.init is not set" in loud.err
    assert main([*args, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""
    assert quiet.out.startswith("egtr train: stopped at train.max_steps after 1 steps")
    assert quiet.out.count("\n") == 1


def test_interrupt_prints_the_command_that_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shlex

    from egtr.training.trainer import Trainer

    data = write_tiny_vg(tmp_path / "vg")
    out = tmp_path / "run"
    args = _quick_run(tmp_path, data, out)
    real_fit = Trainer.fit

    def interrupted(self: Trainer, *, resume: bool = False) -> Any:
        real_fit(self, resume=resume)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "fit", interrupted)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "egtr train: interrupted" in err
    command = shlex.split(err.split("resume with: ")[1])
    assert command[:2] == ["egtr", "train"]
    assert command[-1] == "--resume"
    assert sorted(command[2:-1]) == sorted(args)
    monkeypatch.setattr(Trainer, "fit", real_fit)
    assert main(command[2:]) == 0  # the printed command continues the run
    assert "after 1 steps" in capsys.readouterr().out


def test_output_directory_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Never write over an input or a file the command did not create; resume only the same
    run; --overwrite starts over."""
    data = write_tiny_vg(tmp_path / "vg")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("mine\n")
    assert main(_quick_run(tmp_path, data, foreign)) == 2
    assert "did not write (config.yaml)" in _one_line_error(capsys)
    assert (foreign / "config.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in foreign.iterdir()) == ["config.yaml"]

    assert main(_quick_run(tmp_path, data, data)) == 2
    assert "is the input" in _one_line_error(capsys)

    out = tmp_path / "run"
    assert main(_quick_run(tmp_path, data, out)) == 0
    capsys.readouterr()
    assert (out / "run.json").is_file()
    assert main(_quick_run(tmp_path, data, out)) == 2
    assert "already holds a training run" in _one_line_error(capsys)
    changed = _quick_run(tmp_path, data, out, "--resume", "--set", "train.lr=0.001")
    assert main(changed) == 2
    assert "config.train.lr: 0.0001 -> 0.001" in _one_line_error(capsys)
    more = _quick_run(tmp_path, data, out, "--resume", "--set", "train.max_steps=2")
    assert main(more) == 0  # the step limit may change on resume
    assert "after 2 steps" in capsys.readouterr().out
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"]
    assert steps == [1, 2]
    assert main([*_quick_run(tmp_path, data, out), "--resume", "--overwrite"]) == 2
    assert "pass only one of them" in _one_line_error(capsys)
    init = _init_model(out / "final")  # e.g. stage B started from this run's own model
    capsys.readouterr()
    assert main([*_quick_run(tmp_path, data, out), "--init", str(init), "--overwrite"]) == 2
    assert "which this run writes" in _one_line_error(capsys)
    assert (init / "model.safetensors").is_file()
    shutil.rmtree(init)
    assert main([*_quick_run(tmp_path, data, out), "--overwrite"]) == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"]
    assert steps == [1]
    # a run stopped before its first checkpoint: the same command starts it again from nothing
    shutil.rmtree(out / "checkpoints")
    assert main(_quick_run(tmp_path, data, out, "--set", "train.lr=0.001")) == 2
    assert "config.train.lr" in _one_line_error(capsys)
    assert main(_quick_run(tmp_path, data, out)) == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["event"] == "train"]
    assert steps == [1]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files
