"""``egtr train``: train the detector (stage A) or EGTR (stage B) from a configuration file.

Registered into the ``egtr`` command by :func:`add_train_parser`; nothing heavy is imported until
the command runs. Multi-GPU: ``torchrun --nproc_per_node=N -m egtr train ...``.

The shared command-line rules (``vl_core.cli``): a user mistake is one line
``egtr train: error: ...`` with exit status 2 (a traceback only with ``--debug``); Ctrl-C exits with
130 after printing the command that resumes the run from its last checkpoint. Every argument, the
configuration and the output directory are checked before anything is written: a run never
writes into a directory that holds another run or files it did not write unless ``--resume``
(continue that run, refused when its inputs or settings changed, naming them) or ``--overwrite``
(start over) is given. ``OUT/run.json`` records the run's settings and input fingerprints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vl_core.cli import (
    DTYPE_CHOICES,
    Parser,
    UsageError,
    add_quiet_option,
    device_name,
    non_negative_int,
    positive_int,
    quiet_libraries,
    run_command,
)

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from egtr.training.config import TrainingConfig

PROG = "egtr train"

OUTPUT_NAMES = (
    "run.json",
    "config.yaml",
    "metrics.jsonl",
    "checkpoints",
    "best",
    "final",
    "tensorboard",
)
"""What ``egtr train`` writes into ``OUT`` (``--overwrite`` removes these, and only these)."""

RESUMABLE_SETTINGS = frozenset(
    {
        "data.root",
        "data.num_workers",
        "model.init",
        "train.batch_size",
        "train.val_batch_size",
        "train.epochs",
        "train.continuation_epochs",
        "train.patience",
        "train.max_steps",
        "train.log_every",
        "train.checkpoint_every",
        "train.progress",
        "train.tensorboard",
        "train.find_unused_parameters",
        "train.deterministic",
    }
)
"""Settings a resumed run may change (the checkpoint holds the weights; the images per
optimizer step, ``train.effective_batch``, must stay)."""

_AMP_OF_DTYPE = {
    "auto": "auto",
    "float32": "fp32",
    "fp32": "fp32",
    "float16": "fp16",
    "fp16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "bf16": "bf16",
}

_EPILOG = """\
examples:
  egtr train --config vg_detector --data data/vg --out runs/vg-detector
  egtr train --config vg_egtr --data data/vg --init runs/vg-detector/best --out runs/vg-egtr
  torchrun --nproc_per_node=8 -m egtr train --config vg_egtr --data data/vg \\
      --init runs/vg-detector/best --out runs/vg-egtr --batch-size 4
  egtr train --config my.yaml --out runs/x --resume      # continue exactly where it stopped

shipped configs: vg_detector, vg_egtr, oi_detector, oi_egtr (or a YAML/JSON path)
exit status: 0 done, 2 usage error, 130 interrupted (the resume command is printed)
"""


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to an ``argparse`` sub-parsers object; returns its parser."""
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
        "--resume", action="store_true", help="continue the run in OUT from its last checkpoint"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an OUT that holds a run (its run files are replaced)",
    )
    parser.add_argument(
        "--device", type=device_name, default="auto", help="auto (CUDA if available), cpu, cuda"
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        help="CUDA mixed precision (sets train.amp): float32, bf16, fp16 or auto",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help="images per device and micro-batch (train.batch_size)",
    )
    parser.add_argument(
        "--workers", type=non_negative_int, help="DataLoader workers (data.num_workers)"
    )
    add_quiet_option(parser)
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration and exit"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.set_defaults(func=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Handler of ``egtr train``; returns the exit status (0 done, 2 usage error, 130 interrupted)."""
    from egtr.training.config import ConfigError
    from vl_core.files import ResultsFileError

    return run_command(
        PROG,
        lambda: _train(args),
        argv=resume_arguments(args),
        user_errors=(ConfigError, FileNotFoundError, ResultsFileError, *_runtime_user_errors()),
        debug=bool(getattr(args, "debug", False)),
    )


def resume_arguments(args: argparse.Namespace) -> list[str]:
    """The ``egtr train`` arguments that continue the run of ``args`` (with ``--resume``)."""
    words = ["--config", str(args.config)]
    for item in args.overrides:
        words += ["--set", str(item)]
    for flag, value in (
        ("--data", args.data),
        ("--init", args.init),
        ("--out", args.out),
        ("--device", None if args.device == "auto" else args.device),
        ("--dtype", args.dtype),
        ("--batch-size", args.batch_size),
        ("--workers", args.workers),
    ):
        if value is not None:
            words += [flag, str(value)]
    if args.quiet:
        words.append("--quiet")
    return [*words, "--resume"]


def _runtime_user_errors() -> tuple[type[BaseException], ...]:
    """Errors of the data and model inputs that are the user's to fix (imported lazily)."""
    from egtr.builders import ModelDirectoryError
    from egtr.data.base import AnnotationError
    from vl_core.checkpoints import CheckpointError
    from vl_core.distributed import DistributedError
    from vl_core.images import ImageLoadError

    return (ModelDirectoryError, AnnotationError, CheckpointError, DistributedError, ImageLoadError)


def _train(args: argparse.Namespace) -> int:
    from egtr.training.config import load_config

    if args.resume and args.overwrite:
        raise UsageError(
            "--resume continues a run and --overwrite starts over", fix="pass only one of them"
        )
    config = load_config(args.config, args.overrides, flag_values(args))
    if args.print_config:
        import yaml

        sys.stdout.write(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    if not args.out:
        raise UsageError("--out is required", fix="name the directory the run writes")
    if config.data.root is None:
        raise UsageError("no data set", fix="pass --data DIR (or set data.root)")
    if not Path(config.data.root).is_dir():
        raise UsageError(
            f"the data set directory {config.data.root!r} does not exist", where="--data"
        )
    out = Path(args.out)
    resume = _check_inputs_and_output(config, args, out)
    record = run_record(config)
    if resume:
        _refuse_changed_run(out / "run.json", record)
    _configure_logging(quiet=args.quiet)
    import egtr.modeling  # noqa: F401 - transformers, loaded before its chatter is silenced

    with quiet_libraries(args.quiet):
        return _fit(config, args, out, record, resume=resume)


def _fit(
    config: TrainingConfig,
    args: argparse.Namespace,
    out: Path,
    record: dict[str, Any],
    *,
    resume: bool,
) -> int:
    import torch

    from egtr.data import collate
    from egtr.training.model_init import build_training_model
    from egtr.training.trainer import Trainer, training_device
    from vl_core.distributed import from_environment, teardown_process_group
    from vl_core.files import check_manifest

    try:
        training_device(args.device, from_environment())
    except ValueError as exc:
        raise UsageError(str(exc), where="--device") from None
    train_set, val_set, labels, counts = build_datasets(config)
    if len(train_set) == 0:  # type: ignore[arg-type]  # map-style data sets have a length
        raise UsageError(
            f"the training split of {str(config.data.root)!r} has no images",
            where="--data",
            fix="point --data at a data set with training images",
        )
    # train.seed also fixes a new model's initial weights (every rank builds the same model)
    torch.manual_seed(config.train.seed)
    model = build_training_model(
        config, object_labels=labels[0], predicate_labels=labels[1], frequency_counts=counts
    )
    try:
        trainer = Trainer(
            config, model, train_set, collate, out, val_dataset=val_set, device=args.device
        )
        if trainer.dist.is_main:  # everything is checked: now the output directory is written
            if args.overwrite:
                _remove_run_files(out)
            out.mkdir(parents=True, exist_ok=True)
            check_manifest(out / "run.json", record, overwrite=True)
        result = trainer.fit(resume=resume)
    finally:
        teardown_process_group()
    if trainer.dist.is_main:
        best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f}"
        status = "finished" if result.finished else "stopped at train.max_steps"
        print(
            f"egtr train: {status} after {result.global_step} steps ({result.phase}); "
            f"best validation loss {best}; outputs in {result.out_dir}"
        )
    return 0


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration values that command-line flags set, by dotted key."""
    values: dict[str, Any] = {}
    for key, value in (
        ("data.root", args.data or None),
        ("model.init", args.init or None),
        ("train.batch_size", args.batch_size),
        ("data.num_workers", args.workers),
        ("train.amp", None if args.dtype is None else _AMP_OF_DTYPE[args.dtype]),
    ):
        if value is not None:
            values[key] = value
    if args.quiet:
        values["train.progress"] = False
    return values


def _check_inputs_and_output(config: TrainingConfig, args: argparse.Namespace, out: Path) -> bool:
    """Refuse an output directory that is an input, or that holds what this run would write over
    (a run with a checkpoint without ``--resume``/``--overwrite``, or files of something else).

    Returns whether the run continues the one in ``out``: with ``--resume``, or when that run
    stopped before its first checkpoint (then it starts from nothing, its partial log dropped).
    """
    from vl_core.files import refuse_input_as_output

    inputs = [path for path in (config.data.root, config.model.init) if path]
    if Path(args.config).is_file():
        inputs.append(args.config)
    refuse_input_as_output([out], inputs)
    written = [(out / name).resolve() for name in OUTPUT_NAMES]
    for item in inputs:
        path = Path(item).resolve()
        for target in written:
            if path == target or target in path.parents:
                raise UsageError(
                    f"the input {str(item)!r} is inside {str(target)!r}, which this run writes",
                    where="--out",
                    fix="choose another --out (a command never writes over its inputs)",
                )
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file", fix="give a directory")
    if args.overwrite:
        return False
    checkpoint = (out / "checkpoints" / "last.pt").is_file()
    ours = checkpoint or (out / "run.json").is_file()
    present = [name for name in OUTPUT_NAMES if (out / name).exists()]
    if checkpoint and not args.resume:
        raise UsageError(
            f"{str(out)!r} already holds a training run",
            where="--out",
            fix="pass --resume to continue it, --overwrite to start over, or another --out",
        )
    if present and not ours:
        raise UsageError(
            f"{str(out)!r} holds files that egtr train did not write ({', '.join(present)})",
            where="--out",
            fix="choose another --out, or pass --overwrite to replace them",
        )
    return bool(args.resume or ours)


def run_record(config: TrainingConfig) -> dict[str, Any]:
    """The manifest of a run (``OUT/run.json``): every setting a resume must keep (dotted
    ``config.*`` keys) and the size and SHA-256 of each annotation file (``data.*`` keys)."""
    from vl_core.files import file_fingerprint

    record: dict[str, Any] = {"stage": config.stage}
    for key, value in _flatten(config.to_dict()).items():
        if key not in RESUMABLE_SETTINGS:
            record[f"config.{key}"] = value
    for name, path in annotation_files(config).items():
        if path.is_file():
            record[f"data.{name}"] = file_fingerprint(path)
    return record


def annotation_files(config: TrainingConfig) -> dict[str, Path]:
    """The annotation files a run reads, by their name under ``data.root``."""
    data = config.data
    if data.root is None:
        return {}
    root = Path(data.root)
    splits = [split for split in (data.train_split, data.val_split) if split]
    if data.dataset == "vg":
        names = [f"{split}.json" for split in splits] + ["rel.json"]
    else:
        names = [f"annotations/vrd-{split}-anno.json" for split in splits]
        names.append("annotations/categories_dict.json")
    return {name: root / name for name in names}


def _refuse_changed_run(manifest: Path, record: dict[str, Any]) -> None:
    """Raise `UsageError` naming each difference when the run in ``manifest`` had other inputs
    or settings (read only: every process checks it alike)."""
    import json

    if not manifest.is_file():
        return
    try:
        previous = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"the run manifest {str(manifest)!r} is unreadable ({exc})",
            fix="pass --overwrite to start over",
        ) from None
    wanted = json.loads(json.dumps(record))
    if not isinstance(previous, dict):
        previous = {}
    changed = []
    for key in sorted(set(previous) | set(wanted)):
        if previous.get(key) != wanted.get(key):
            changed.append(f"{key}: {_short(previous.get(key))} -> {_short(wanted.get(key))}")
    if changed:
        raise UsageError(
            f"the run in {str(manifest.parent)!r} was started with other inputs or settings "
            f"({'; '.join(changed)})",
            where=manifest.name,
            fix="resume with the same ones, pass --overwrite to start over, or another --out",
        )


def _short(value: Any) -> str:
    import json

    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _remove_run_files(out: Path) -> None:
    """``--overwrite``: remove what an earlier run wrote into ``out`` (nothing else)."""
    import shutil

    for name in OUTPUT_NAMES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def build_datasets(
    config: TrainingConfig,
) -> tuple[Dataset[Any], Dataset[Any] | None, tuple[list[str], list[str]], Any]:
    """Training and validation sets of ``config.data`` (through :mod:`egtr.data`).

    Returns ``(train, val or None, (object names, predicate names), fg counts or None)``; the
    counts (stage ``"egtr"``) are the training split's ``fg[s_cls, o_cls, p]``. Raises
    ``FileNotFoundError`` / :class:`egtr.data.AnnotationError` for missing or malformed
    annotation files and ``ValueError`` for an unknown ``flip_predicates`` name.
    """
    from torch.utils.data import Subset

    from egtr.data import (
        OpenImagesDataset,
        VisualGenomeDataset,
        build_transforms,
        predicate_statistics,
    )
    from egtr.training.config import ConfigError

    data = config.data
    if data.root is None:
        raise ConfigError("no data set: pass --data DIR (or set data.root)")
    root: str = data.root

    def make(split: str) -> Any:
        transforms = build_transforms(
            split,
            config.stage,
            scales=data.train_scales,
            max_size=data.max_size,
            test_size=data.test_size,
        )
        mirrored = data.flip_predicates
        try:
            if data.dataset == "vg":
                return VisualGenomeDataset(
                    root, split, stage=config.stage, transforms=transforms, flip_predicates=mirrored
                )
            return OpenImagesDataset(
                root,
                split,
                stage=config.stage,
                transforms=transforms,
                max_boxes=data.max_boxes,
                flip_predicates=mirrored,
            )
        except ValueError as exc:
            if type(exc) is ValueError:  # flip_predicates or split names: configuration values
                raise ConfigError(f"data: {exc}") from exc
            raise

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


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines ``egtr train: message`` on the current ``sys.stderr`` (which may be replaced)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_logging(*, quiet: bool) -> None:
    """egtr's log messages on stderr; with ``quiet`` only errors."""
    log = logging.getLogger("egtr")
    if not any(isinstance(handler, _StderrHandler) for handler in log.handlers):
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("egtr train: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.ERROR if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m egtr.training.cli``), equivalent to ``egtr train``; returns
    the exit status."""
    parser = Parser(prog="egtr")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
