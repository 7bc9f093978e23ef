"""``egtr eval``: run a model over a data split, write per-image predictions and ``result.json``;
``--fps``: forward-only throughput at batch 1 (the paper's 600/1000 protocol).

Outputs follow the shared file rules (:mod:`vl_core.files`): ``result.json``, ``fps.json`` and
``predictions.jsonl`` appear atomically; ``run.json`` (``fps.run.json``) records the model and
annotation fingerprints and the settings, so an output folder is only written again by a run of
the same inputs and settings, and never when it holds such files from something else, unless
``overwrite``. The model directory is opened with the strict
:func:`egtr.builders.load_pretrained`. An image that cannot be read is an error row of
``predictions.jsonl`` (and of ``result.json``'s ``failed``), left out of the metrics; the run
carries on.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from egtr.builders import load_pretrained
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
from vl_core.cli import MissingExtraError
from vl_core.devices import resolve_device, resolve_dtype
from vl_core.files import (
    OutputExistsError,
    atomic_output,
    check_manifest,
    error_text,
    file_fingerprint,
    refuse_input_as_output,
    write_json,
)
from vl_core.images import ImageLoadError

DATASET_KINDS = ("auto", "vg", "oi")
EVAL_OUTPUTS = ("result.json", "predictions.jsonl")
"""What an evaluation writes into its output folder (besides its manifest, ``run.json``)."""
FPS_OUTPUTS = ("fps.json",)
"""What ``--fps`` writes into its output folder (besides its manifest, ``fps.run.json``)."""


class EvalInputError(ValueError):
    """The model and the data set do not fit together, or the data folder is not one."""


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
    oi_ap_overlap: str = "reference"
    overwrite: bool = False


def detect_dataset_kind(root: Path) -> str:
    """``"vg"`` (``rel.json`` present) or ``"oi"`` (``annotations/categories_dict.json``).

    Raises ``FileNotFoundError`` when ``root`` is neither.
    """
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
    """A split with the deterministic evaluation transforms (no training rules, no sampling).

    Returns the data set; raises ``FileNotFoundError`` / :class:`egtr.data.AnnotationError` for
    missing or malformed annotation files and `EvalInputError` for an unknown ``kind``.
    """
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
    raise EvalInputError(f"dataset must be one of {DATASET_KINDS}, got {kind!r}")


def load_model(options: EvalOptions) -> tuple[EGTRForSceneGraphGeneration, torch.device]:
    """The model of ``options.model`` on the chosen device/dtype, in eval mode, with overrides.

    Returns ``(model, device)``. The directory is opened with the strict
    :func:`egtr.builders.load_pretrained`, whose ``ModelDirectoryError`` (a ``ValueError``) it
    raises for a missing, foreign or incomplete model; ``ValueError`` for an unknown or
    unavailable device or dtype.
    """
    model = load_pretrained(Path(options.model))
    if options.logit_adjustment is not None:
        model.config.use_logit_adjustment = options.logit_adjustment
    if options.tau is not None:
        model.config.logit_adjustment_tau = options.tau
    device = resolve_device(options.device)
    model.to(device=device, dtype=resolve_dtype(options.dtype, device))  # type: ignore[call-arg]
    model.eval()  # type: ignore[no-untyped-call]
    return model, device


def evaluate(options: EvalOptions) -> dict[str, Any]:
    """Run the evaluation; writes ``predictions.jsonl``, ``result.json`` and ``run.json`` into
    ``options.out`` (default ``<model>/eval-<split>``) and returns the result.

    Everything is checked before the output folder is touched. Images that cannot be read are
    error rows (``result["errors"]`` counts them, ``result["failed"]`` lists them) and are left
    out of the metrics. Raises ``FileNotFoundError`` / :class:`egtr.data.AnnotationError` for the
    data, ``ModelDirectoryError`` (a ``ValueError``) for the model, `EvalInputError` when they do
    not fit together, ``vl_core.files.ResultsFileError`` when the output folder holds files of
    something else or of other inputs or settings (unless ``options.overwrite``),
    ``vl_core.cli.MissingExtraError`` without pycocotools (unless ``detection_ap`` is off).
    """
    kind = detect_dataset_kind(options.data) if options.dataset == "auto" else options.dataset
    if options.detection_ap:
        try:
            require_pycocotools()
        except ImportError as exc:
            raise MissingExtraError(str(exc)) from exc
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
    out_dir = output_folder(options)
    object_score = options.object_score or config.object_score
    names = dataset.predicate_labels
    seen = _seen_triplets(options, kind, dataset) if options.zero_shot and kind == "vg" else None
    splits = [options.split] + ([options.train_split] if seen is not None else [])
    settings = {
        "dataset": kind,
        "split": options.split,
        "limit": options.limit,
        "min_size": options.min_size,
        "max_size": options.max_size,
        "top_k": options.top_k,
        "object_score": options.object_score,
        "logit_adjustment": options.logit_adjustment,
        "tau": options.tau,
        "detection_ap": options.detection_ap,
        "zero_shot": seen is not None,
        "train_split": options.train_split if seen is not None else None,
        "write_predictions": options.write_predictions,
        "batch_size": options.batch_size,
        "dtype": options.dtype,
        "oi_ap_overlap": options.oi_ap_overlap if kind == "oi" else None,
    }
    prepare_output(
        out_dir,
        "run.json",
        EVAL_OUTPUTS,
        run_record(options, kind, splits, settings),
        inputs=[
            *_model_files(options.model).values(),
            *annotation_files(options.data, kind, splits).values(),
        ],
        overwrite=options.overwrite,
        stale=() if options.write_predictions else ("predictions.jsonl",),
    )
    constrained = SGGEvaluator(len(names), seen_triplets=seen, predicate_names=names)
    unconstrained = SGGEvaluator(len(names), seen_triplets=seen, predicate_names=names)
    oi_eval = (
        OIEvaluator(len(names), predicate_names=names, ap_overlap=options.oi_ap_overlap)
        if kind == "oi"
        else None
    )
    detection = (
        DetectionEvaluator(dataset.num_classes, inclusive_boxes=kind == "oi")
        if options.detection_ap
        else None
    )
    records = {record.image_id: record for record in dataset.records}

    start = time.perf_counter()
    count = 0
    failed: list[dict[str, Any]] = []
    with contextlib.ExitStack() as outputs:
        pred_file: IO[Any] | None = None
        if options.write_predictions:  # appears whole when the run completes
            pred_file = outputs.enter_context(atomic_output(out_dir / "predictions.jsonl"))
        for index, target, out, error in _run(model, dataset, device, options):
            if target is None or out is None:
                image = dataset.records[index]
                row = {"image_id": image.image_id, "file_name": image.file_name, "error": error}
                failed.append(row)
                if pred_file is not None:
                    pred_file.write(json.dumps(row) + "\n")
                continue
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
                "image_size": [width, height],
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
        "errors": len(failed),
        "failed": failed,
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
            "oi_ap_overlap": options.oi_ap_overlap if kind == "oi" else None,
        },
        "metrics": metrics,
        "options": options_dict(options),
        "elapsed_s": round(time.perf_counter() - start, 3),
    }
    write_json(out_dir / "result.json", json_safe(result))
    return result


def measure_fps(
    options: EvalOptions, *, warmup: int = 10, min_size: int = 600, max_size: int = 1000
) -> dict[str, Any]:
    """Forward-only throughput at batch 1 over the split's images (first ``limit``): the model
    forward is timed alone (CUDA synchronised); loading and post-processing are not.

    Returns the result, also written to ``fps.json`` (manifest ``fps.run.json``) in the output
    folder; images that cannot be read are skipped and counted in ``errors``. Raises as
    :func:`evaluate`.
    """
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
    out_dir = output_folder(options)
    settings = {
        "dataset": kind,
        "split": options.split,
        "limit": options.limit,
        "min_size": min_size,
        "max_size": max_size,
        "warmup": warmup,
        "device": options.device,
        "dtype": options.dtype,
    }
    prepare_output(
        out_dir,
        "fps.run.json",
        FPS_OUTPUTS,
        run_record(options, kind, [options.split], settings),
        inputs=[
            *_model_files(options.model).values(),
            *annotation_files(options.data, kind, [options.split]).values(),
        ],
        overwrite=options.overwrite,
    )
    dtype = next(model.parameters()).dtype
    loader = _loader(dataset, 1, options)
    forward_s = 0.0
    timed = 0
    errors = 0
    start = time.perf_counter()
    progress = _progress(loader, options, desc="egtr fps")
    with torch.inference_mode():
        for index, (_, batch, failures) in enumerate(progress):
            errors += len(failures)
            if batch is None:
                continue
            pixel_values, pixel_mask, _ = batch
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
        "errors": errors,
    }
    write_json(out_dir / "fps.json", json_safe(result))
    return result


def output_folder(options: EvalOptions) -> Path:
    """``options.out``, or ``<model>/eval-<split>`` by default."""
    return Path(options.out) if options.out else Path(options.model) / f"eval-{options.split}"


def annotation_files(root: Path, kind: str, splits: Sequence[str]) -> dict[str, Path]:
    """The annotation files of ``splits`` under the data folder ``root``, by relative name."""
    if kind == "vg":
        names = [*(f"{split}.json" for split in splits), "rel.json"]
    else:
        names = [*(f"annotations/vrd-{split}-anno.json" for split in splits)]
        names.append("annotations/categories_dict.json")
    return {name: Path(root) / name for name in dict.fromkeys(names)}


def _model_files(model: Path) -> dict[str, Path]:
    """The files of a model directory that make the model (configuration and weights)."""
    folder = Path(model)
    files = [folder / "config.json", *sorted(folder.glob("*.safetensors"))]
    files += sorted(folder.glob("*.safetensors.index.json"))
    return {path.name: path for path in files if path.is_file()}


def run_record(
    options: EvalOptions, kind: str, splits: Sequence[str], settings: dict[str, Any]
) -> dict[str, Any]:
    """The manifest of a run: size and SHA-256 of the model's files (``model.*``) and of the
    annotation files (``data.*``), and the settings that shape the results (``settings.*``)."""
    record: dict[str, Any] = {}
    for name, path in _model_files(options.model).items():
        record[f"model.{name}"] = file_fingerprint(path)
    for name, path in annotation_files(options.data, kind, splits).items():
        if path.is_file():
            record[f"data.{name}"] = file_fingerprint(path)
    for key, value in settings.items():
        record[f"settings.{key}"] = value
    return record


def prepare_output(
    folder: Path,
    manifest: str,
    outputs: Sequence[str],
    record: dict[str, Any],
    *,
    inputs: Sequence[Path],
    overwrite: bool = False,
    stale: Sequence[str] = (),
) -> None:
    """Make ``folder`` ready for a run's ``outputs`` (the first write of the run).

    Refuses, unless ``overwrite``, a folder holding one of ``outputs`` without the ``manifest``
    of this command (files it did not write), or whose manifest records other inputs or settings
    (the message names each difference); never writes over one of ``inputs``. Then writes the
    manifest and removes the ``stale`` outputs an earlier run left that this one will not write.
    Raises `vl_core.files.OutputExistsError` / ``ResultsFileError``; returns nothing.
    """
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"--out {str(folder)!r} is a file: give a folder")
    refuse_input_as_output([folder / name for name in (*outputs, manifest)], inputs)
    present = [name for name in outputs if (folder / name).exists()]
    if present and not (folder / manifest).is_file() and not overwrite:
        raise OutputExistsError(
            f"{str(folder)!r} holds {', '.join(present)}, not written by egtr eval (no "
            f"{manifest}): choose another --out, or pass --overwrite to replace them"
        )
    folder.mkdir(parents=True, exist_ok=True)
    check_manifest(folder / manifest, record, overwrite=overwrite)
    for name in stale:
        (folder / name).unlink(missing_ok=True)


class _GuardedItems(Dataset[tuple[int, tuple[Tensor, Target] | None, str | None]]):
    """The first ``count`` items of ``dataset`` as ``(index, item, None)``, or ``(index, None,
    error)`` for an image that cannot be read (an error row instead of a failed run)."""

    def __init__(self, dataset: SceneGraphDataset, count: int) -> None:
        self.dataset = dataset
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[int, tuple[Tensor, Target] | None, str | None]:
        try:
            return index, self.dataset[index], None
        except ImageLoadError as exc:
            return index, None, error_text(exc)


_Guarded = tuple[list[int], tuple[Tensor, Tensor, list[Target]] | None, list[tuple[int, str]]]


def _collate_guarded(
    items: Sequence[tuple[int, tuple[Tensor, Target] | None, str | None]],
) -> _Guarded:
    """``(indices of the readable images, their batch or None, [(index, error), ...])``."""
    good = [(index, item) for index, item, _ in items if item is not None]
    failures = [(index, error or "unreadable") for index, item, error in items if item is None]
    batch = collate([item for _, item in good]) if good else None
    return [index for index, _ in good], batch, failures


def _run(
    model: EGTRForSceneGraphGeneration,
    dataset: SceneGraphDataset,
    device: torch.device,
    options: EvalOptions,
) -> Iterator[tuple[int, Target | None, dict[str, Tensor] | None, str | None]]:
    """``(index, target, outputs of that image on the CPU, None)`` for each evaluated image, or
    ``(index, None, None, error)`` for one that cannot be read; in input order."""
    dtype = next(model.parameters()).dtype
    loader = _loader(dataset, options.batch_size, options)
    with torch.inference_mode():
        for indices, images, failures in _progress(loader, options, desc="egtr eval"):
            done: dict[int, tuple[Target, dict[str, Tensor]]] = {}
            if images is not None:
                pixel_values, pixel_mask, targets = images
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
                for position, (index, target) in enumerate(zip(indices, targets, strict=True)):
                    done[index] = (target, {k: v[position] for k, v in cpu.items()})
            errors = dict(failures)
            for index in sorted([*done, *errors]):
                if index in errors:
                    yield index, None, None, errors[index]
                else:
                    yield index, *done[index], None


def _loader(dataset: SceneGraphDataset, batch_size: int, options: EvalOptions) -> DataLoader[Any]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    return DataLoader(
        _GuardedItems(dataset, count),
        batch_size=batch_size,
        shuffle=False,
        num_workers=options.num_workers,
        collate_fn=_collate_guarded,
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
        raise EvalInputError(
            f"the data set has {dataset.num_classes} classes / {dataset.num_predicates} "
            f"predicates but the model {config.num_object_labels} / {config.num_rel_labels}: "
            "evaluate a model trained on this data set"
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
