"""``egtr train``: train the detector (stage A) or EGTR (stage B) from a configuration file.

Registered into the ``egtr`` command by :func:`add_train_parser`; nothing heavy is imported until
the command runs. Multi-GPU: ``torchrun --nproc_per_node=N -m egtr train ...``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from egtr.training.config import TrainingConfig

_EPILOG = """\
examples:
  egtr train --config vg_detector --data data/vg --out runs/vg-detector
  egtr train --config vg_egtr --data data/vg --init runs/vg-detector/best --out runs/vg-egtr
  torchrun --nproc_per_node=8 -m egtr train --config vg_egtr --data data/vg \\
      --init runs/vg-detector/best --out runs/vg-egtr --set train.batch_size=4
  egtr train --config my.yaml --out runs/x --resume      # continue exactly where it stopped

shipped configs: vg_detector, vg_egtr, oi_detector, oi_egtr (or a YAML/JSON path)
"""


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an ``argparse`` sub-parsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="train the detector (stage A) or EGTR (stage B)",
        description="Train EGTR from a configuration (YAML/JSON) with the paper's defaults.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="configuration file or shipped config name")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value, e.g. --set train.lr=1e-5 (repeatable; values parsed as YAML)",
    )
    parser.add_argument("--data", help="data set root directory (sets data.root)")
    parser.add_argument("--init", help="model directory to start from (sets model.init)")
    parser.add_argument("--out", help="output directory (checkpoints, logs, best model)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from OUT/checkpoints/last.pt if present"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration and exit"
    )
    parser.set_defaults(func=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``egtr train``; returns the exit status."""
    from pathlib import Path

    from egtr.training.config import load_config

    try:
        config = load_config(args.config, args.overrides)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(exc)
    if args.data:
        config.data.root = args.data
    if args.init:
        config.model.init = args.init
    if args.quiet:
        config.train.progress = False
    if args.print_config:
        import yaml

        sys.stdout.write(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    if not args.out:
        return _fail(ValueError("--out is required"))
    if config.data.root is None:
        return _fail(ValueError("no data set: pass --data DIR (or set data.root)"))
    checkpoint = Path(args.out) / "checkpoints" / "last.pt"
    if checkpoint.exists() and not args.resume:
        return _fail(
            FileExistsError(f"{args.out} already holds a run; pass --resume or another --out")
        )
    _configure_logging()
    import torch

    from egtr.data import collate
    from egtr.training import distributed
    from egtr.training.model_init import build_training_model
    from egtr.training.trainer import Trainer

    try:
        train_set, val_set, labels, counts = build_datasets(config)
        # train.seed also fixes a new model's initial weights (every rank builds the same model)
        torch.manual_seed(config.train.seed)
        model = build_training_model(
            config, object_labels=labels[0], predicate_labels=labels[1], frequency_counts=counts
        )
        trainer = Trainer(
            config, model, train_set, collate, args.out, val_dataset=val_set, device=args.device
        )
    except (FileNotFoundError, ValueError, OSError) as exc:
        return _fail(exc)
    try:
        result = trainer.fit(resume=args.resume)
    finally:
        distributed.teardown()
    if trainer.dist.is_main:
        best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f}"
        status = "finished" if result.finished else "stopped at train.max_steps"
        print(
            f"egtr train: {status} after {result.global_step} steps ({result.phase}); "
            f"best validation loss {best}; outputs in {result.out_dir}"
        )
    return 0


def build_datasets(
    config: TrainingConfig,
) -> tuple[Dataset[Any], Dataset[Any] | None, tuple[list[str], list[str]], Any]:
    """Training and validation sets of ``config.data`` (through :mod:`egtr.data`), the label
    names ``(objects, predicates)`` and, for stage B, the training ``fg`` counts."""
    from torch.utils.data import Subset

    from egtr.data import (
        OpenImagesDataset,
        VisualGenomeDataset,
        build_transforms,
        predicate_statistics,
    )

    data = config.data
    if data.root is None:
        raise ValueError("no data set: pass --data DIR (or set data.root)")
    root: str = data.root
    stage: Literal["A", "B"] = "A" if config.stage == "detector" else "B"

    def make(split: str) -> Any:
        transforms = build_transforms(
            split,
            stage,
            scales=data.train_scales,
            max_size=data.max_size,
            test_size=data.test_size,
        )
        mirrored = data.flip_predicates
        if data.dataset == "vg":
            return VisualGenomeDataset(
                root, split, stage=stage, transforms=transforms, flip_predicates=mirrored
            )
        return OpenImagesDataset(
            root,
            split,
            stage=stage,
            transforms=transforms,
            max_boxes=data.max_boxes,
            flip_predicates=mirrored,
        )

    train = make(data.train_split)
    labels = (list(train.object_labels), list(train.predicate_labels))
    counts = predicate_statistics(train).fg if config.stage == "egtr" else None
    val = make(data.val_split) if data.val_split else None
    train_set: Dataset[Any] = train
    if data.max_train_images is not None:
        train_set = Subset(train, range(min(data.max_train_images, len(train))))
    val_set: Dataset[Any] | None = val
    if val is not None and data.max_val_images is not None:
        val_set = Subset(val, range(min(data.max_val_images, len(val))))
    return train_set, val_set, labels, counts


def _configure_logging() -> None:
    log = logging.getLogger("egtr")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("egtr train: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _fail(exc: BaseException) -> int:
    print(f"egtr train: {exc}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m egtr.training.cli``), equivalent to ``egtr train``."""
    parser = argparse.ArgumentParser(prog="egtr")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
