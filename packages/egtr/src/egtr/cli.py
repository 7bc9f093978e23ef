"""The ``egtr`` command line: ``predict``, ``convert`` and ``info``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from egtr import __version__
from egtr.scene_graph import DEFAULT_OBJECT_THRESHOLD

if TYPE_CHECKING:
    from PIL import Image


def _cmd_info(args: argparse.Namespace) -> int:
    if args.model is None:
        from vl_core import environment_report

        report = environment_report(("egtr", "vl-core", "torch", "transformers", "timm"))
        print(json.dumps(report, indent=2))
        return 0
    from egtr.configuration import EGTRConfig

    path = Path(args.model)
    if not (path / "config.json").is_file():
        print(f"egtr info: {str(path)!r} is not an EGTR model directory", file=sys.stderr)
        return 1
    config = EGTRConfig.from_pretrained(path)
    summary: dict[str, Any] = {
        "model": str(path),
        "objects": config.num_object_labels,
        "predicates": config.num_rel_labels,
        "queries": config.num_queries,
        "d_model": config.d_model,
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "backbone": getattr(config.backbone_config, "backbone", None)
        or getattr(config.backbone_config, "model_type", None),
        "use_freq_bias": config.use_freq_bias,
        "use_logit_adjustment": config.use_logit_adjustment,
        "object_score": config.object_score,
    }
    summary.update(_count_parameters(config))
    print(json.dumps(summary, indent=2))
    return 0


def _count_parameters(config: Any) -> dict[str, int]:
    """Parameter counts of the architecture, built on the meta device (no memory, no weights)."""
    import torch

    from egtr.modeling import EGTRForSceneGraphGeneration

    with torch.device("meta"):
        model = EGTRForSceneGraphGeneration(config)
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "with_frequency_table": params + model.triplet_dist.numel()}


def _cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from egtr.drawing import draw_scene_graph
    from egtr.predictor import EGTRPredictor
    from vl_core.images import ImageLoadError, load_image

    try:
        predictor = EGTRPredictor(
            args.model,
            device=args.device,
            dtype=args.dtype,
            top_k=args.top_k,
            graph_constrained=not args.unconstrained,
            object_threshold=args.object_threshold,
        )
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"egtr predict: cannot load model: {exc}", file=sys.stderr)
        return 1
    out: TextIO = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115
    failures = 0
    collected: list[dict[str, Any]] = []
    try:
        batch: list[tuple[str, Image.Image]] = []
        progress = tqdm(args.images, desc="egtr", unit="img", file=sys.stderr, disable=args.quiet)
        for index, name in enumerate(progress):
            try:
                batch.append((name, load_image(name)))
            except (ImageLoadError, OSError) as exc:
                failures += 1
                tqdm.write(f"egtr predict: skipped {name}: {exc}", file=sys.stderr)
            if batch and (len(batch) == args.batch_size or index == len(args.images) - 1):
                graphs = predictor.predict_loaded([img for _, img in batch])
                for (src, img), graph in zip(batch, graphs, strict=True):
                    record = {"image": src, **graph.to_dict()}
                    if args.draw:
                        png = Path(args.draw) / f"{Path(src).stem}.png"
                        record["drawing"] = str(draw_scene_graph(img, graph, png))
                    if args.json and not args.out:
                        collected.append(record)
                    elif args.out or args.json:
                        out.write(json.dumps(record) + "\n")
                    else:
                        _print_summary(src, graph.triplets(), out)
                batch = []
        if collected:
            json.dump(collected, out, indent=2)
            out.write("\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 1 if failures else 0


def _print_summary(name: str, triplets: list[tuple[str, str, str, float]], out: TextIO) -> None:
    out.write(f"{name}: {len(triplets)} relations\n")
    for subj, pred, obj, score in triplets[:10]:
        out.write(f"  {score:.3f}  {subj} {pred} {obj}\n")


def _cmd_convert(args: argparse.Namespace) -> int:
    from egtr.convert import convert_checkpoint
    from vl_core.checkpoints import CheckpointError

    try:
        report = convert_checkpoint(
            args.checkpoint, args.config, args.out, categories=args.categories
        )
    except (CheckpointError, FileNotFoundError, IsADirectoryError, ValueError, KeyError) as exc:
        print(f"egtr convert: {exc}", file=sys.stderr)
        return 1
    print(
        f"converted {args.checkpoint} -> {args.out}: {report.loaded} tensors loaded, "
        f"{len(report.ignored_keys)} dropped (num_batches_tracked of unfrozen BatchNorms)"
    )
    return 0


def _threshold(text: str) -> float | None:
    """``--object-threshold``: a score in [0, 1], or ``none``."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a score in [0, 1] or 'none', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egtr",
        description="Scene graphs (objects and relations) from images in one stage (EGTR).",
    )
    parser.add_argument("--version", action="version", version=f"egtr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    predict = sub.add_parser("predict", help="scene graphs of images (JSON lines, drawings)")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument(
        "--model", required=True, help="model directory (save_pretrained / convert)"
    )
    predict.add_argument(
        "--out", help="write JSON lines here (one graph per image) instead of stdout"
    )
    predict.add_argument("--draw", metavar="DIR", help="write IMAGE_STEM.png drawings into DIR")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    predict.add_argument(
        "--top-k", type=int, default=None, help="relations per image (default 100)"
    )
    predict.add_argument("--unconstrained", action="store_true", help="several predicates per pair")
    predict.add_argument(
        "--object-threshold",
        type=_threshold,
        default=DEFAULT_OBJECT_THRESHOLD,
        metavar="SCORE",
        help="also list objects scoring at least SCORE without a relation "
        f"(default {DEFAULT_OBJECT_THRESHOLD}; 'none': only objects of kept relations)",
    )
    predict.add_argument("--batch-size", type=int, default=1)
    predict.add_argument("--device", default="auto")
    predict.add_argument("--dtype", default="auto")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=_cmd_predict)

    convert = sub.add_parser("convert", help="import an authors' released Lightning checkpoint")
    convert.add_argument("--checkpoint", required=True, help="epoch=NN-....ckpt")
    convert.add_argument(
        "--config", required=True, help="the run's config.json (transformers 4.18)"
    )
    convert.add_argument("--out", required=True, help="output model directory")
    convert.add_argument("--categories", help="categories_dict.json with object/predicate names")
    convert.set_defaults(func=_cmd_convert)

    info = sub.add_parser("info", help="versions (for bug reports), or a model directory's summary")
    info.add_argument("model", nargs="?", help="model directory")
    info.set_defaults(func=_cmd_info)
    from egtr.evaluation.cli import add_eval_parser
    from egtr.training.cli import add_train_parser

    add_train_parser(sub)
    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
