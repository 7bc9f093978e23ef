"""The ``egtr eval`` sub-command (wired into ``egtr.cli`` with :func:`add_eval_parser`).

Kept import-light: torch and the data/evaluation modules load only when the command runs.
The shared command-line rules (``vl_core.cli``): exit status 0 when every image was evaluated,
1 when some images could not be read (error rows; the metrics cover the others), 2 for a usage
error (one line ``egtr eval: error: ...``; a traceback only with ``--debug``), 130 when
interrupted (the command that resumes is printed: the predictions written so far are kept).
Under ``torchrun`` the processes share the images out; rank 0 prints the results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vl_core.cli import (
    DTYPE_CHOICES,
    EXIT_OK,
    add_quiet_option,
    deprecated_alias,
    device_name,
    finite_float,
    non_negative_int,
    positive_int,
    quiet_libraries,
    report_error_rows,
    run_command,
)

PROG = "egtr eval"


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to an ``argparse`` sub-parser set; returns the new parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "eval",
        help="SGG metrics of a model on VG / Open Images (or --fps throughput)",
        description=(
            "Evaluate a model directory on a data split: writes predictions.jsonl and "
            "result.json (R@K, mR@K, zR@K graph-constrained and unconstrained, the "
            "graph-constrained R@K ceiling R@K_ceiling, AP50; Open "
            "Images: microR@50, wmAP_rel, wmAP_phr, score_wtd). Running the same command again "
            "resumes an interrupted run; under torchrun (torchrun --nproc-per-node N -m egtr "
            "eval ...) the processes share the images. With --fps: forward-only images/s at "
            "batch 1 and 600/1000 resizing, written to fps.json."
        ),
    )
    parser.add_argument(
        "--model", required=True, help="model directory (save_pretrained / convert)"
    )
    parser.add_argument(
        "--data", required=True, help="data folder: VG (rel.json, {split}.json, images/) or OI"
    )
    parser.add_argument("--dataset", choices=("auto", "vg", "oi"), default="auto")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--out", help="output folder (default MODEL/eval-SPLIT)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs in OUT even when they come from other inputs or settings",
    )
    parser.add_argument(
        "--images-root", dest="image_dir", help="image folder (default DATA/images)"
    )
    deprecated_alias(parser, "--image-dir", "--images-root", dest="image_dir")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help=(
            "images per forward pass (default: a resumed run's, else 8 on CPU and what fits in "
            "half the free memory of a GPU); padding changes outputs slightly, 1 is exact"
        ),
    )
    parser.add_argument(
        "--workers", type=non_negative_int, default=0, help="DataLoader workers (default 0)"
    )
    deprecated_alias(parser, "--num-workers", "--workers", dest="workers", type=non_negative_int)
    parser.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda[:N]")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="float32",
        help="float32 (default), bf16, fp16, auto",
    )
    parser.add_argument("--limit", type=positive_int, help="only the first N images of the split")
    parser.add_argument(
        "--min-size", type=positive_int, help="shorter side (default: model config, 800)"
    )
    parser.add_argument(
        "--max-size", type=positive_int, help="longer side cap (default: config, 1333)"
    )
    parser.add_argument("--top-k", type=positive_int, default=100, help="triplets kept per image")
    parser.add_argument(
        "--object-score",
        choices=("softmax", "sigmoid"),
        help="object score (default: model config)",
    )
    parser.add_argument(
        "--logit-adjustment",
        action="store_true",
        default=None,
        help="post-hoc logits -= tau * log(rel_dist)",
    )
    parser.add_argument(
        "--tau", type=finite_float, help="logit adjustment tau (default: config, 0.3)"
    )
    parser.add_argument(
        "--no-detection-ap", action="store_true", help="skip COCO AP (no pycocotools needed)"
    )
    parser.add_argument(
        "--no-zero-shot",
        action="store_true",
        help="skip zR@K (needs the training split's annotations)",
    )
    parser.add_argument("--train-split", default="train", help="split of the seen triplets")
    parser.add_argument("--no-predictions", action="store_true", help="no predictions.jsonl")
    parser.add_argument(
        "--oi-ap-overlap",
        choices=("reference", "consistent"),
        default="reference",
        help="Open Images wmAP box overlap: the reference protocol's (default) or the +1-pixel IoU",
    )
    parser.add_argument("--fps", action="store_true", help="measure throughput instead")
    parser.add_argument(
        "--warmup", type=non_negative_int, default=10, help="--fps: untimed first images"
    )
    add_quiet_option(parser)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.set_defaults(func=run_eval_command, eval_parser=parser)
    return parser


def run_eval_command(args: argparse.Namespace) -> int:
    """Run ``egtr eval`` from parsed arguments; prints the headline metrics as JSON.

    Returns the exit status: 0 all images evaluated, 1 some could not be read (error rows), 2 a
    usage error, 130 interrupted.
    """
    parser = getattr(args, "eval_parser", None)
    return run_command(
        PROG,
        lambda: _run_eval(args),
        argv=command_arguments(parser, args) if parser is not None else None,
        user_errors=_user_errors(),
        debug=bool(getattr(args, "debug", False)),
    )


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors of the inputs and outputs that are the user's to fix (imported lazily)."""
    from egtr.builders import ModelDirectoryError
    from egtr.data.base import AnnotationError
    from egtr.evaluation.runner import EvalInputError
    from vl_core.files import ResultsFileError

    return (
        FileNotFoundError,
        ModelDirectoryError,
        AnnotationError,
        EvalInputError,
        ResultsFileError,
    )


def command_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The ``egtr eval`` arguments that run ``args`` again (options that differ from their
    defaults, in canonical spelling)."""
    words: list[str] = []
    for action in parser._actions:  # the parser's own option table
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        if action.dest in ("help", "eval_parser", "func") or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value is None or value == action.default:
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:
            words.append(flag)
        else:
            words += [flag, str(value)]
    return words


def _run_eval(args: argparse.Namespace) -> int:
    import egtr.modeling  # noqa: F401 - transformers, loaded before its chatter is silenced
    from egtr.evaluation.runner import EvalOptions, evaluate, json_safe, measure_fps
    from vl_core.distributed import from_environment

    main = from_environment().is_main  # under torchrun, rank 0 reports

    options = EvalOptions(
        model=Path(args.model),
        data=Path(args.data),
        dataset=args.dataset,
        split=args.split,
        out=Path(args.out) if args.out else None,
        image_dir=Path(args.image_dir) if args.image_dir else None,
        batch_size=1 if args.fps else args.batch_size,
        num_workers=args.workers,
        device=args.device,
        dtype=args.dtype,
        limit=args.limit,
        min_size=args.min_size,
        max_size=args.max_size,
        top_k=args.top_k,
        object_score=args.object_score,
        logit_adjustment=args.logit_adjustment,
        tau=args.tau,
        detection_ap=not args.no_detection_ap,
        zero_shot=not args.no_zero_shot,
        train_split=args.train_split,
        write_predictions=not args.no_predictions,
        progress=not args.quiet,
        oi_ap_overlap=args.oi_ap_overlap,
        overwrite=args.overwrite,
    )
    with quiet_libraries(args.quiet):
        if args.fps:
            result = measure_fps(
                options,
                warmup=args.warmup,
                min_size=args.min_size or 600,
                max_size=args.max_size or 1000,
            )
            print(json.dumps(json_safe(result), indent=2))
        else:
            result = evaluate(options)
            if not main:
                return EXIT_OK  # this process's share is done; rank 0 reports the run
            print(json.dumps(json_safe(_headline(result)), indent=2))
            reused = int(result.get("run", {}).get("reused", 0))
            if reused and not args.quiet:
                print(
                    f"{PROG}: resumed: {reused} of {result['images'] + result['errors']} images "
                    "were already in predictions.jsonl",
                    file=sys.stderr,
                )
    errors = int(result.get("errors", 0))
    what = "skipped" if args.fps else "error rows, left out of the metrics"
    return report_error_rows(PROG, errors, "image(s) could not be read", f" ({what})")


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    """The summary printed on stdout (everything is in result.json)."""
    metrics = result["metrics"]
    summary: dict[str, Any] = {"images": result["images"]}
    for section, prefix in (("sgdet", ""), ("sgdet_unconstrained", "ng_")):
        for key, value in metrics[section].items():
            if isinstance(value, float):
                summary[prefix + key] = value
    for key, value in metrics.get("open_images", {}).items():
        if isinstance(value, float):
            summary[key] = value
    if "detection" in metrics:
        summary["AP50"] = metrics["detection"]["AP50"]
    return summary
