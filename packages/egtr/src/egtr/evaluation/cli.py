"""The ``egtr eval`` sub-command (wired into ``egtr.cli`` with :func:`add_eval_parser`).

Kept import-light: torch and the data/evaluation modules load only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to an ``argparse`` sub-parser set; returns the new parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "eval",
        help="SGG metrics of a model on VG / Open Images (or --fps throughput)",
        description=(
            "Evaluate a model directory on a data split: writes predictions.jsonl and "
            "result.json (R@K, mR@K, zR@K graph-constrained and unconstrained, AP50; Open "
            "Images: microR@50, wmAP_rel, wmAP_phr, score_wtd). With --fps: forward-only "
            "images/s at batch 1 and 600/1000 resizing, written to fps.json."
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
    parser.add_argument("--image-dir", help="image folder (default DATA/images)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="padding changes outputs slightly; 1 is exact (default)",
    )
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bf16, fp16, auto")
    parser.add_argument("--limit", type=int, help="only the first N images of the split")
    parser.add_argument("--min-size", type=int, help="shorter side (default: model config, 800)")
    parser.add_argument("--max-size", type=int, help="longer side cap (default: config, 1333)")
    parser.add_argument("--top-k", type=int, default=100, help="triplets kept per image")
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
    parser.add_argument("--tau", type=float, help="logit adjustment tau (default: config, 0.3)")
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
    parser.add_argument("--fps", action="store_true", help="measure throughput instead")
    parser.add_argument("--warmup", type=int, default=10, help="--fps: untimed first images")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_eval_command)
    return parser


def run_eval_command(args: argparse.Namespace) -> int:
    """Run ``egtr eval`` from parsed arguments; prints the headline metrics as JSON."""
    from egtr.evaluation.runner import EvalOptions, evaluate, json_safe, measure_fps
    from vl_core.images import ImageLoadError

    options = EvalOptions(
        model=Path(args.model),
        data=Path(args.data),
        dataset=args.dataset,
        split=args.split,
        out=Path(args.out) if args.out else None,
        image_dir=Path(args.image_dir) if args.image_dir else None,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
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
    )
    try:
        if args.fps:
            result = measure_fps(
                options,
                warmup=args.warmup,
                min_size=args.min_size or 600,
                max_size=args.max_size or 1000,
            )
            print(json.dumps(json_safe(result), indent=2))
            return 0
        result = evaluate(options)
    except (FileNotFoundError, ImportError, ValueError, ImageLoadError) as exc:
        print(f"egtr eval: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(json_safe(_headline(result)), indent=2))
    return 0


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
