"""``egtr eval``: run a model over a data split, write per-image predictions and ``result.json``;
``--fps``: forward-only throughput at batch 1 (the paper's 600/1000 protocol)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from egtr.data.base import SceneGraphDataset, Target
from egtr.data.collate import collate
from egtr.data.openimages import OpenImagesDataset
from egtr.data.statistics import predicate_statistics
from egtr.data.transforms import build_transforms
from egtr.data.vg import VisualGenomeDataset
from egtr.evaluation.detection import DetectionEvaluator, require_pycocotools, top_detections
from egtr.evaluation.matching import GroundTruth, PredictedTriplets
from egtr.evaluation.oi import OIEvaluator, oi_candidates
from egtr.evaluation.sgg_vg import SGGEvaluator
from egtr.modeling import EGTRForSceneGraphGeneration
from egtr.postprocess import boxes_to_pixels, object_scores, top_triplets
from vl_core.devices import resolve_device, resolve_dtype

DATASET_KINDS = ("auto", "vg", "oi")


@dataclass
class EvalOptions:
    """Settings of one evaluation run (the ``egtr eval`` flags)."""

    model: Path
    data: Path
    dataset: str = "auto"
    split: str = "test"
    out: Path | None = None
    image_dir: Path | None = None
    batch_size: int = 1
    num_workers: int = 0
    device: str = "auto"
    dtype: str = "float32"
    limit: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    top_k: int = 100
    object_score: str | None = None
    logit_adjustment: bool | None = None
    tau: float | None = None
    detection_ap: bool = True
    zero_shot: bool = True
    train_split: str = "train"
    write_predictions: bool = True
    progress: bool = True


def detect_dataset_kind(root: Path) -> str:
    """``"vg"`` (``rel.json`` present) or ``"oi"`` (``annotations/categories_dict.json``)."""
    if (root / "rel.json").is_file():
        return "vg"
    if (root / "annotations" / "categories_dict.json").is_file():
        return "oi"
    raise FileNotFoundError(
        f"{str(root)!r} is neither a Visual Genome folder (rel.json) nor an Open Images folder "
        "(annotations/categories_dict.json); pass --dataset vg|oi with the right --data"
    )


def load_eval_dataset(
    root: Path,
    kind: str,
    split: str,
    *,
    min_size: int = 800,
    max_size: int = 1333,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    image_dir: Path | None = None,
) -> SceneGraphDataset:
    """A split with the deterministic evaluation transforms (no training rules, no sampling)."""
    norm: dict[str, Any] = {}
    if mean is not None:
        norm["mean"] = mean
    if std is not None:
        norm["std"] = std
    transforms = build_transforms("test", test_size=min_size, max_size=max_size, **norm)
    if kind == "vg":
        return VisualGenomeDataset(root, split, transforms=transforms, image_dir=image_dir)
    if kind == "oi":
        return OpenImagesDataset(
            root, split, transforms=transforms, image_dir=image_dir, train_rules=False
        )
    raise ValueError(f"dataset must be one of {DATASET_KINDS}, got {kind!r}")


def load_model(options: EvalOptions) -> tuple[EGTRForSceneGraphGeneration, torch.device]:
    """The model of ``options.model`` on the chosen device/dtype, in eval mode, with overrides."""
    path = Path(options.model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not an EGTR model directory (no config.json); "
            "create one with save_pretrained or `egtr convert`"
        )
    model = EGTRForSceneGraphGeneration.from_pretrained(path)
    if options.logit_adjustment is not None:
        model.config.use_logit_adjustment = options.logit_adjustment
    if options.tau is not None:
        model.config.logit_adjustment_tau = options.tau
    device = resolve_device(options.device)
    model.to(device=device, dtype=resolve_dtype(options.dtype, device))  # type: ignore[call-arg]
    model.eval()  # type: ignore[no-untyped-call]
    return model, device


def evaluate(options: EvalOptions) -> dict[str, Any]:
    """Run the evaluation; writes ``predictions.jsonl`` and ``result.json`` into ``options.out``
    (default ``<model>/eval-<split>``) and returns the result."""
    kind = detect_dataset_kind(options.data) if options.dataset == "auto" else options.dataset
    if options.detection_ap:
        require_pycocotools()
    model, device = load_model(options)
    config = model.config
    min_size = options.min_size or config.image_min_size
    max_size = options.max_size or config.image_max_size
    dataset = load_eval_dataset(
        options.data,
        kind,
        options.split,
        min_size=min_size,
        max_size=max_size,
        mean=config.image_mean,
        std=config.image_std,
        image_dir=options.image_dir,
    )
    _check_label_spaces(dataset, model)
    out_dir = Path(options.out) if options.out else Path(options.model) / f"eval-{options.split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    object_score = options.object_score or config.object_score
    names = dataset.predicate_labels
    seen = _seen_triplets(options, kind, dataset) if options.zero_shot and kind == "vg" else None
    constrained = SGGEvaluator(len(names), seen_triplets=seen, predicate_names=names)
    unconstrained = SGGEvaluator(len(names), seen_triplets=seen, predicate_names=names)
    oi_eval = OIEvaluator(len(names), predicate_names=names) if kind == "oi" else None
    detection = DetectionEvaluator(dataset.num_classes) if options.detection_ap else None
    records = {record.image_id: record for record in dataset.records}

    start = time.perf_counter()
    count = 0
    pred_file: TextIO | None = None
    if options.write_predictions:
        pred_file = (out_dir / "predictions.jsonl").open("w", encoding="utf-8")
    try:
        for target, out in _run(model, dataset, device, options):
            count += 1
            height, width = (int(v) for v in target["orig_size"])
            logits = out["logits"]
            boxes = boxes_to_pixels(out["pred_boxes"], width, height)
            scores, labels = object_scores(logits, object_score)
            rel = out["pred_rel"].float()
            conn = out["pred_connectivity"].float()
            graph = top_triplets(scores, rel, conn, top_k=options.top_k, graph_constrained=True)
            free = top_triplets(scores, rel, conn, top_k=options.top_k, graph_constrained=False)
            gt = GroundTruth.from_target(target)
            pred_graph = PredictedTriplets.create(
                boxes, labels, graph.subjects, graph.objects, graph.predicates, graph.scores
            )
            pred_free = PredictedTriplets.create(
                boxes, labels, free.subjects, free.objects, free.predicates, free.scores
            )
            constrained.add(gt, pred_graph)
            unconstrained.add(gt, pred_free)
            record: dict[str, Any] = {
                "image_id": target["image_id"],
                "file_name": records[target["image_id"]].file_name,
                "orig_size": [height, width],
                "triplets": _triplet_rows(pred_graph),
                "triplets_unconstrained": _triplet_rows(pred_free),
            }
            used = {*pred_graph.subjects.tolist(), *pred_graph.objects.tolist()}
            used |= {*pred_free.subjects.tolist(), *pred_free.objects.tolist()}
            if oi_eval is not None:
                candidates = oi_candidates(scores, labels, boxes, rel * conn[..., None])
                oi_eval.add(gt, candidates)
                record["oi_candidates"] = _triplet_rows(candidates)
                used |= {*candidates.subjects.tolist(), *candidates.objects.tolist()}
            if detection is not None:
                if kind == "vg":
                    det_boxes, det_labels, det_scores, det_queries = top_detections(logits, boxes)
                else:
                    det_boxes, det_labels, det_scores = boxes, labels, scores
                    det_queries = torch.arange(len(boxes))
                detection.add(
                    target["image_id"], gt.boxes, gt.labels, det_boxes, det_labels, det_scores
                )
                record["detections"] = [
                    [int(q), int(c), _score(s)]
                    for q, c, s in zip(
                        det_queries.tolist(), det_labels.tolist(), det_scores.tolist(), strict=True
                    )
                ]
                used |= set(det_queries.tolist())
            record["objects"] = [
                [
                    q,
                    *(round(float(v), 2) for v in boxes[q].tolist()),
                    int(labels[q]),
                    _score(float(scores[q])),
                ]
                for q in sorted(used)
            ]
            if pred_file is not None:
                pred_file.write(json.dumps(record) + "\n")
    finally:
        if pred_file is not None:
            pred_file.close()

    metrics: dict[str, Any] = {
        "sgdet": constrained.compute(),
        "sgdet_unconstrained": unconstrained.compute(),
    }
    if oi_eval is not None:
        metrics["open_images"] = oi_eval.compute()
    if detection is not None:
        metrics["detection"] = detection.compute()
    result = {
        "model": str(options.model),
        "data": str(options.data),
        "dataset": kind,
        "split": options.split,
        "images": count,
        "settings": {
            "min_size": min_size,
            "max_size": max_size,
            "top_k": options.top_k,
            "object_score": object_score,
            "use_logit_adjustment": bool(config.use_logit_adjustment),
            "logit_adjustment_tau": float(config.logit_adjustment_tau),
            "batch_size": options.batch_size,
            "device": str(device),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "zero_shot": seen is not None,
            "detections": None if detection is None else _detection_mode(kind),
        },
        "metrics": metrics,
        "options": options_dict(options),
        "elapsed_s": round(time.perf_counter() - start, 3),
    }
    _write_json(out_dir / "result.json", result)
    return result


def measure_fps(
    options: EvalOptions, *, warmup: int = 10, min_size: int = 600, max_size: int = 1000
) -> dict[str, Any]:
    """Forward-only throughput at batch 1 over the split's images (first ``limit``): the model
    forward is timed alone (CUDA synchronised); loading and post-processing are not."""
    kind = detect_dataset_kind(options.data) if options.dataset == "auto" else options.dataset
    model, device = load_model(options)
    config = model.config
    dataset = load_eval_dataset(
        options.data,
        kind,
        options.split,
        min_size=min_size,
        max_size=max_size,
        mean=config.image_mean,
        std=config.image_std,
        image_dir=options.image_dir,
    )
    dtype = next(model.parameters()).dtype
    loader = _loader(dataset, 1, options)
    forward_s = 0.0
    timed = 0
    start = time.perf_counter()
    progress = _progress(loader, options, desc="egtr fps")
    with torch.inference_mode():
        for index, (pixel_values, pixel_mask, _) in enumerate(progress):
            pixel_values = pixel_values.to(device, dtype)
            pixel_mask = pixel_mask.to(device)
            _synchronize(device)
            tic = time.perf_counter()
            model(pixel_values=pixel_values, pixel_mask=pixel_mask)
            _synchronize(device)
            if index >= warmup:
                forward_s += time.perf_counter() - tic
                timed += 1
    wall = time.perf_counter() - start
    result = {
        "model": str(options.model),
        "data": str(options.data),
        "split": options.split,
        "min_size": min_size,
        "max_size": max_size,
        "batch_size": 1,
        "warmup": warmup,
        "images_timed": timed,
        "fps": timed / forward_s if timed and forward_s > 0 else math.nan,
        "mean_forward_ms": 1000 * forward_s / timed if timed else math.nan,
        "wall_s": round(wall, 3),
        "device": _device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
    }
    out_dir = Path(options.out) if options.out else Path(options.model) / f"eval-{options.split}"
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "fps.json", result)
    return result


def _run(
    model: EGTRForSceneGraphGeneration,
    dataset: SceneGraphDataset,
    device: torch.device,
    options: EvalOptions,
) -> Iterator[tuple[Target, dict[str, Tensor]]]:
    """``(target, outputs of that image on the CPU)`` for each evaluated image, in order."""
    dtype = next(model.parameters()).dtype
    loader = _loader(dataset, options.batch_size, options)
    with torch.inference_mode():
        for pixel_values, pixel_mask, targets in _progress(loader, options, desc="egtr eval"):
            out = model(
                pixel_values=pixel_values.to(device, dtype), pixel_mask=pixel_mask.to(device)
            )
            batch = {
                "logits": out.logits,
                "pred_boxes": out.pred_boxes,
                "pred_rel": out.pred_rel,
                "pred_connectivity": out.pred_connectivity,
            }
            cpu = {k: v.float().cpu() for k, v in batch.items() if v is not None}
            for index, target in enumerate(targets):
                yield target, {k: v[index] for k, v in cpu.items()}


def _loader(dataset: SceneGraphDataset, batch_size: int, options: EvalOptions) -> DataLoader[Any]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    return DataLoader(
        Subset(dataset, range(count)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=options.num_workers,
        collate_fn=collate,
    )


def _progress(loader: DataLoader[Any], options: EvalOptions, *, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(loader, desc=desc, unit="batch", file=sys.stderr, disable=not options.progress)


def _check_label_spaces(dataset: SceneGraphDataset, model: EGTRForSceneGraphGeneration) -> None:
    config = model.config
    if (dataset.num_classes, dataset.num_predicates) != (
        config.num_object_labels,
        config.num_rel_labels,
    ):
        raise ValueError(
            f"the data set has {dataset.num_classes} classes / {dataset.num_predicates} "
            f"predicates but the model {config.num_object_labels} / {config.num_rel_labels}"
        )


def _seen_triplets(options: EvalOptions, kind: str, dataset: SceneGraphDataset) -> Tensor | None:
    """Training triplets for zR@K, from the training split's annotations (no image is read)."""
    try:
        train = load_eval_dataset(options.data, kind, options.train_split)
    except FileNotFoundError as exc:
        warnings.warn(f"zero-shot recall skipped: {exc}", stacklevel=2)
        return None
    return predicate_statistics(train, dataset.num_classes, dataset.num_predicates).seen_triplets


def _detection_mode(kind: str) -> str:
    return "sigmoid_topk" if kind == "vg" else "per_query"


def _triplet_rows(pred: PredictedTriplets) -> list[list[Any]]:
    return [
        [int(s), int(o), int(p), _score(float(sc))]
        for s, o, p, sc in zip(
            pred.subjects, pred.objects, pred.predicates, pred.scores, strict=True
        )
    ]


def _score(value: float) -> float:
    return float(f"{value:.6g}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return str(device)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def json_safe(value: Any) -> Any:
    """NaN/inf floats as ``None`` (valid JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def options_dict(options: EvalOptions) -> dict[str, Any]:
    """The options as plain JSON values (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()}
