"""Train the small EGTR shipped as ``shared/models/egtr-shapes`` on the shapes world (CPU).

The recipe is the project's own two-stage training, run through the ``egtr train`` command:

1. the training world (``python -m tools.world --seed 0 --train N``; reused when present);
2. stage A, the detector: ``egtr train --config tools/configs/egtr_shapes_detector.yaml``;
3. stage B, EGTR from the stage-A weights: ``egtr train --config
   tools/configs/egtr_shapes_egtr.yaml --init WORK/detector/final``;
4. the shipped model (``WORK/egtr/final``: ``config.json`` + ``model.safetensors``) is copied to
   ``--out``, and ``egtr eval`` measures it on the fixed test set next to two baselines: the
   stage-B starting point (stage-A detector, untrained relation head, frequency bias installed)
   and a random-initialised model of the same configuration.

Usage (the shipped model; its MODEL_CARD.md records the exact run)::

    python tools/train_egtr.py --world /tmp/egtr-shapes-world --work /tmp/egtr-shapes \
        --out shared/models/egtr-shapes

Re-running the same command resumes an interrupted stage (``egtr train --resume``) and skips
finished ones. ``--stages eval`` only re-measures. ``--export-checkpoint RUN`` writes the
weights of ``RUN/checkpoints/last.pt`` as a model directory (to ship an unfinished run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vl_core.files import write_json

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tools" / "configs"
DETECTOR_CONFIG = CONFIGS / "egtr_shapes_detector.yaml"
EGTR_CONFIG = CONFIGS / "egtr_shapes_egtr.yaml"
TEST_SET = ROOT / "shared" / "world" / "test-set"
STAGES = ("world", "detector", "egtr", "export", "eval")
WORLD_SEED = 0
WORLD_SIZE = 128
RANDOM_INIT_SEED = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--world",
        type=Path,
        default=Path("/tmp/egtr-shapes-world"),
        help="training world (generated here when missing)",
    )
    parser.add_argument(
        "--train",
        type=int,
        default=5000,
        help="training images to generate when the world is missing",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/egtr-shapes"),
        help="runs, baselines and evaluations",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "shared" / "models" / "egtr-shapes")
    parser.add_argument("--test-set", type=Path, default=TEST_SET)
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=2, help="world generation processes")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to both `egtr train` runs",
    )
    parser.add_argument(
        "--export-checkpoint",
        type=Path,
        metavar="RUN",
        help="only write RUN/checkpoints/last.pt as RUN/exported/ and exit",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.export_checkpoint is not None:
        out = export_checkpoint(args.export_checkpoint, args.export_checkpoint / "exported")
        print(f"wrote {out}")
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {STAGES}")

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    timings = _read_json(work / "timings.json", {})
    data = work / "data"
    detector_run, egtr_run = work / "detector", work / "egtr"
    for stage in STAGES:
        if stage not in stages:
            continue
        start = time.time()
        if stage == "world":
            ensure_world(args.world, args.train, args.jobs)
            link_data(args.world, data)
        elif stage == "detector":
            if not train(DETECTOR_CONFIG, data, detector_run, None, args.overrides):
                continue
        elif stage == "egtr":
            init = detector_run / "final"
            if not train(EGTR_CONFIG, data, egtr_run, init, args.overrides):
                continue
        elif stage == "export":
            ship(egtr_run / "final", args.out)
            stage_b_start(EGTR_CONFIG, data, detector_run / "final", work / "baseline-stage-a")
            random_init(args.out, work / "baseline-random")
        elif stage == "eval":
            models = {
                "shipped": args.out,
                "stage_a": work / "baseline-stage-a",
                "random_init": work / "baseline-random",
            }
            results = {
                name: evaluate(path, args.test_set, work / "eval" / name)
                for name, path in models.items()
            }
            summary = {name: headline(result) for name, result in results.items()}
            record = {
                "test_set": _display(args.test_set),
                "split": "test",
                "images": results["shipped"]["images"],
                "test_set_sha256": test_set_digest(args.test_set),
                "units": "percent; sgdet graph-constrained, ng_ = unconstrained; AP50 = COCO",
                "models": summary,
            }
            write_json(args.out / "metrics.json", record)
            print(table(summary))
        timings[stage] = round(time.time() - start, 1)
        write_json(work / "timings.json", timings)
        print(f"[train_egtr] {stage}: {timings[stage]:.0f} s", flush=True)
    return 0


def ensure_world(world: Path, count: int, jobs: int) -> None:
    """Generate the training world unless ``world`` already holds one from seed 0 at 128 px."""
    info = _read_json(world / "world.json", None)
    if info is not None:
        if info.get("seed") != WORLD_SEED or info.get("size") != WORLD_SIZE:
            raise SystemExit(
                f"{world} holds another world ({info.get('seed')=}, {info.get('size')=})"
            )
        if not (world / "vg" / "train.json").is_file():
            raise SystemExit(f"{world} has no vg/train.json")
        print(f"[train_egtr] reusing {world} ({info['counts']['train']} training images)")
        return
    command = [
        sys.executable,
        "-m",
        "tools.world",
        "--seed",
        str(WORLD_SEED),
        "--out",
        str(world),
        "--train",
        str(count),
        "--jobs",
        str(jobs),
    ]
    _run(command)


def link_data(world: Path, data: Path) -> None:
    """``egtr train --data`` wants ``rel.json``, ``train.json`` and ``images/`` in one folder."""
    data.mkdir(parents=True, exist_ok=True)
    for name, target in (("train.json", world / "vg" / "train.json"),
                         ("rel.json", world / "vg" / "rel.json"),
                         ("images", world / "images")):  # fmt: skip
        link = data / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve())


def train(config: Path, data: Path, out: Path, init: Path | None, overrides: list[str]) -> bool:
    """One ``egtr train`` run; resumes an interrupted one. ``False`` when it had finished."""
    if (out / "final" / "model.safetensors").is_file():
        print(f"[train_egtr] {out} is finished; skipping")
        return False
    command = [
        "egtr",
        "train",
        "--config",
        str(config),
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    if init is not None:
        command += ["--init", str(init)]
    for item in overrides:
        command += ["--set", item]
    if (out / "checkpoints" / "last.pt").is_file():
        command.append("--resume")
    _run(command)
    return True


def ship(final: Path, out: Path) -> None:
    """Copy the trained model (``config.json`` + ``model.safetensors``) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(final / name, out / name)
    print(f"[train_egtr] shipped {final} -> {out}")


def stage_b_start(config: Path, data: Path, detector: Path, out: Path) -> None:
    """The model stage B starts from, saved: stage-A weights, the relation head as initialised in
    stage A (never trained), the frequency bias from the training counts (as ``egtr train``)."""
    from egtr.training.cli import build_datasets
    from egtr.training.config import load_config
    from egtr.training.model_init import build_training_model

    cfg = load_config(config)
    cfg.data.root = str(data)
    cfg.model.init = str(detector)
    _, _, labels, counts = build_datasets(cfg)
    model = build_training_model(
        cfg, object_labels=labels[0], predicate_labels=labels[1], frequency_counts=counts
    )
    model.save_pretrained(out)


def random_init(reference: Path, out: Path) -> None:
    """A random-initialised model with ``reference``'s configuration (seeded; frequency table
    left at zero, so nothing comes from the training data)."""
    import torch

    from egtr import EGTRConfig, EGTRForSceneGraphGeneration

    config = EGTRConfig.from_pretrained(reference)
    torch.manual_seed(RANDOM_INIT_SEED)
    EGTRForSceneGraphGeneration(config).save_pretrained(out)


def export_checkpoint(run: Path, out: Path) -> Path:
    """Write the model weights of ``run/checkpoints/last.pt`` as a model directory."""
    import torch

    from egtr import EGTRConfig, EGTRForSceneGraphGeneration

    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    config = EGTRConfig.from_dict(json.loads(state["model_config"]))
    model = EGTRForSceneGraphGeneration(config)
    model.load_state_dict(state["model"])
    model.save_pretrained(out)
    return out


def evaluate(model: Path, test_set: Path, out: Path) -> dict[str, Any]:
    """``egtr eval`` on the test split of the fixed set; returns its ``result.json``."""
    command = [
        "egtr",
        "eval",
        "--model",
        str(model),
        "--data",
        str(test_set / "vg"),
        "--images-root",
        str(test_set / "images"),
        "--split",
        "test",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-zero-shot",
        "--quiet",
    ]
    _run(command)
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return result


def test_set_digest(test_set: Path) -> str:
    """SHA-256 over the test split's annotation files (the recorded figures belong to them)."""
    digest = hashlib.sha256()
    for name in ("test.json", "rel.json"):
        digest.update((test_set / "vg" / name).read_bytes())
    return digest.hexdigest()


def headline(result: dict[str, Any]) -> dict[str, float]:
    """R@K, mR@K (graph-constrained and not) and AP50 of an ``egtr eval`` result, in percent."""
    metrics = result["metrics"]
    row: dict[str, float] = {}
    for key, prefix in (("sgdet", ""), ("sgdet_unconstrained", "ng_")):
        for name in ("R", "mR"):
            for k in (20, 50, 100):
                row[f"{prefix}{name}@{k}"] = round(100 * float(metrics[key][f"{name}@{k}"]), 2)
    row["AP50"] = round(100 * float(metrics["detection"]["AP50"]), 2)
    return row


def table(summary: dict[str, dict[str, float]]) -> str:
    """The summary as a Markdown table."""
    columns = list(next(iter(summary.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in summary.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")
    return "\n".join(lines)


def _run(command: list[str]) -> None:
    executable = shutil.which(command[0], path=str(Path(sys.executable).parent))
    if command[0] != sys.executable and executable is not None:
        command = [executable, *command[1:]]
    print("[train_egtr] $ " + " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def _display(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


if __name__ == "__main__":
    raise SystemExit(main())
