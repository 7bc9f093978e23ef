"""``egtr eval``: run a model over a data split, write per-image predictions and ``result.json``;
``--fps``: forward-only throughput at batch 1 (the paper's 600/1000 protocol).

Outputs follow the shared file rules (:mod:`vl_core.files`). ``predictions.jsonl`` is the
resumable cache of the run (:class:`vl_core.runs.ShardedRun`): one row per image, appended as it
is computed, so an interrupted run (Ctrl-C, ``kill -9``) resumes where it stopped; the metrics
are computed from it, so they do not depend on how the run was interrupted or sharded. Under
``torchrun`` the batches are dealt out to the processes, each appends to its own part file, and
rank 0 merges them in input order and computes the metrics. ``result.json`` and ``fps.json``
appear atomically; ``run.json`` (``fps.run.json``) records the model and annotation
fingerprints and the settings, so an output folder is only resumed or written again by a run of
the same inputs and settings, and never when it holds such files from something else, unless
``overwrite``. The model directory is opened with the strict
:func:`egtr.builders.load_pretrained`. An image that cannot be read is an error row of
``predictions.jsonl`` (and of ``result.json``'s ``failed``), left out of the metrics and tried
again by a resumed run; the run carries on.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from egtr.builders import load_pretrained
from egtr.configuration import EGTRConfig
from egtr.data.base import SceneGraphDataset, Target, _clip_xyxy
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
from vl_core.distributed import Dist, device_for_rank, process_group
from vl_core.files import (
    OutputExistsError,
    ResultsFileError,
    check_manifest,
    error_text,
    file_fingerprint,
    refuse_input_as_output,
    write_json,
)
from vl_core.images import ImageLoadError
from vl_core.runs import ShardedRun

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
    batch_size: int | None = None
    """Images per forward pass; ``None``: the batch size a resumed run recorded, else
    :func:`default_batch_size`."""
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


def load_model(
    options: EvalOptions, on: str | None = None
) -> tuple[EGTRForSceneGraphGeneration, torch.device]:
    """The model of ``options.model`` on device ``on`` (default ``options.device``) and the chosen
    dtype, in eval mode, with overrides.

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
    device = resolve_device(options.device if on is None else on)
    model.to(device=device, dtype=resolve_dtype(options.dtype, device))  # type: ignore[call-arg]
    model.eval()  # type: ignore[no-untyped-call]
    return model, device


def evaluate(options: EvalOptions) -> dict[str, Any]:
    """Run (or resume) the evaluation; writes ``predictions.jsonl``, ``result.json`` and
    ``run.json`` into ``options.out`` (default ``<model>/eval-<split>``) and returns the result.

    ``predictions.jsonl`` is the resumable cache of the run (one row per image, id = image id,
    `vl_core.runs.ShardedRun`): a rerun skips the images it holds, and the metrics are computed
    from it, so they are the same whether the run was interrupted, resumed or sharded. Under
    ``torchrun`` the images are shared out among the processes by batch (see
    `vl_core.runs`); every process returns the result. With ``write_predictions`` off the cache
    is removed once ``result.json`` is written.

    Everything is checked before the output folder is touched. Images that cannot be read are
    error rows (``result["errors"]`` counts them, ``result["failed"]`` lists them), left out of
    the metrics and tried again by a rerun. Raises ``FileNotFoundError`` /
    :class:`egtr.data.AnnotationError` for the data, ``ModelDirectoryError`` (a ``ValueError``)
    for the model, `EvalInputError` when they do not fit together, ``vl_core.files.ResultsFileError``
    when the output folder holds files of something else or of other inputs or settings (unless
    ``options.overwrite``), ``vl_core.cli.MissingExtraError`` without pycocotools (unless
    ``detection_ap`` is off), ``vl_core.distributed.DistributedError`` when another process of a
    ``torchrun`` run failed.
    """
    kind = detect_dataset_kind(options.data) if options.dataset == "auto" else options.dataset
    if options.detection_ap:
        try:
            require_pycocotools()
        except ImportError as exc:
            raise MissingExtraError(str(exc)) from exc
    with process_group("gloo") as dist:
        return _evaluate(options, kind, dist)


def _load_split(
    options: EvalOptions, kind: str, config: EGTRConfig, min_size: int, max_size: int
) -> SceneGraphDataset:
    """``options.split`` of ``options.data``, images resized and normalised for the model."""
    return load_eval_dataset(
        options.data,
        kind,
        options.split,
        min_size=min_size,
        max_size=max_size,
        mean=config.image_mean,
        std=config.image_std,
        image_dir=options.image_dir,
    )


def _evaluate(options: EvalOptions, kind: str, dist: Dist) -> dict[str, Any]:
    start = time.perf_counter()
    model, device = load_model(options, device_for_rank(options.device, dist))
    config = model.config
    min_size = options.min_size or config.image_min_size
    max_size = options.max_size or config.image_max_size
    dataset = _load_split(options, kind, config, min_size, max_size)
    _check_label_spaces(dataset, model)
    out_dir = output_folder(options)
    seen = _seen_triplets(options, kind, dataset) if options.zero_shot and kind == "vg" else None
    splits = [options.split] + ([options.train_split] if seen is not None else [])
    dtype = next(model.parameters()).dtype

    def prepare() -> int:
        """Rank 0: the batch size, then the output folder and its manifest."""
        batch_size = options.batch_size or _resumed_batch_size(out_dir, options.overwrite)
        if batch_size is None:
            batch_size = default_batch_size(device, dtype, min_size, max_size)
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
            "batch_size": batch_size,
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
        )
        return batch_size

    batch_size = dist.run_on_main(prepare, error=ResultsFileError)
    count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    records = dataset.records[:count]
    run = ShardedRun(
        out_dir / "predictions.jsonl",
        [record.image_id for record in records],
        dist,
        block_size=batch_size,
        overwrite=options.overwrite,
    )
    resumed = run.start()
    object_score = options.object_score or config.object_score
    todo = set(run.todo)
    with run.writing() as writer:
        positions = [position for block in run.blocks for position in block.positions]
        work = _run(model, positions, dataset, device, options, dist, batch_size)
        for index, target, out, error in work:
            if index not in todo:
                continue  # done before: computed again only for its batch's padding
            record = records[index]
            if target is None or out is None:
                row = {"id": record.image_id, "image_id": record.image_id}
                writer.write({**row, "file_name": record.file_name, "error": error})
                continue
            height, width = (int(v) for v in target["orig_size"])
            found = ImagePredictions.from_outputs(
                out,
                width,
                height,
                kind=kind,
                object_score=object_score,
                top_k=options.top_k,
                detections=options.detection_ap,
            )
            writer.write(found.to_row(record.image_id, record.file_name, (width, height)))
    finished = run.finish()

    def summarise() -> dict[str, Any]:
        """Rank 0: the metrics from the predictions cache, then ``result.json``."""
        if finished.missing:  # pragma: no cover - a complete run leaves none
            raise RuntimeError(f"{finished.missing} images have no row in predictions.jsonl")
        metrics, failed = _metrics_from_rows(
            finished.rows[:count], dataset, kind, options, seen, dataset.predicate_labels
        )
        result = {
            "model": str(options.model),
            "data": str(options.data),
            "dataset": kind,
            "split": options.split,
            "images": count - len(failed),
            "errors": len(failed),
            "failed": failed,
            "settings": {
                "min_size": min_size,
                "max_size": max_size,
                "top_k": options.top_k,
                "object_score": object_score,
                "use_logit_adjustment": bool(config.use_logit_adjustment),
                "logit_adjustment_tau": float(config.logit_adjustment_tau),
                "batch_size": batch_size,
                "device": str(device),
                "dtype": str(dtype).replace("torch.", ""),
                "zero_shot": seen is not None,
                "detections": None if not options.detection_ap else _detection_mode(kind),
                "oi_ap_overlap": options.oi_ap_overlap if kind == "oi" else None,
            },
            "metrics": metrics,
            "run": {
                "processes": dist.world_size,
                "computed": finished.written,
                "reused": resumed.done,
            },
            "options": {**options_dict(options), "batch_size": batch_size},
            "elapsed_s": round(time.perf_counter() - start, 3),
        }
        write_json(out_dir / "result.json", json_safe(result))
        if not options.write_predictions:  # the cache served the run; it is not wanted
            (out_dir / "predictions.jsonl").unlink(missing_ok=True)
        return result

    result: dict[str, Any] = dist.run_on_main(summarise)
    return result


def default_batch_size(
    device: torch.device, dtype: torch.dtype, min_size: int = 800, max_size: int = 1333
) -> int:
    """The ``egtr eval`` batch size when none is given: 8 off CUDA; on a CUDA device, what fits
    in half of its free memory at 1 GiB per ``min_size x max_size`` image in float32 (half that
    in 16-bit types), between 1 and 32. Returns the batch size."""
    if device.type != "cuda":
        return 8
    free, _ = torch.cuda.mem_get_info(device)
    scale = (min_size * max_size) / (800 * 1333) * (torch.finfo(dtype).bits / 32)
    per_image = (1 << 30) * scale
    return max(1, min(32, int(free * 0.5 // per_image)))


def _resumed_batch_size(out_dir: Path, overwrite: bool) -> int | None:
    """The batch size the run in ``out_dir`` recorded (a resumed run keeps its batches)."""
    if overwrite:
        return None
    try:
        recorded = json.loads((out_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = recorded.get("settings.batch_size") if isinstance(recorded, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _ground_truth(dataset: SceneGraphDataset, index: int, width: int, height: int) -> GroundTruth:
    """Image ``index``'s ground truth as its evaluation target has it (boxes clipped to the
    ``width x height`` image), from the annotations alone (no image is read)."""
    record = dataset.records[index]
    boxes = torch.from_numpy(record.boxes.astype(np.float32).reshape(-1, 4))
    rels = np.array(dataset.relations(index), dtype=np.int64).reshape(-1, 3)
    return GroundTruth.create(_clip_xyxy(boxes, width, height), record.labels, rels)


def _metrics_from_rows(
    rows: Sequence[dict[str, Any]],
    dataset: SceneGraphDataset,
    kind: str,
    options: EvalOptions,
    seen: Tensor | None,
    names: Sequence[str],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The metrics of the prediction rows (in input order) and the error rows."""
    constrained = SGGEvaluator(
        len(names), seen_triplets=seen, predicate_names=names, graph_constrained=True
    )
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
    failed: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        if "error" in row:
            failed.append(row)
            continue
        width, height = row["image_size"]
        gt = _ground_truth(dataset, index, width, height)
        found = ImagePredictions.from_row(row)
        constrained.add(gt, found.graph)
        unconstrained.add(gt, found.free)
        if oi_eval is not None:
            assert found.candidates is not None
            oi_eval.add(gt, found.candidates)
        if detection is not None:
            assert found.detections is not None
            det_boxes, det_labels, det_scores = found.detections
            detection.add(row["image_id"], gt.boxes, gt.labels, det_boxes, det_labels, det_scores)
    metrics: dict[str, Any] = {
        "sgdet": constrained.compute(),
        "sgdet_unconstrained": unconstrained.compute(),
    }
    if oi_eval is not None:
        metrics["open_images"] = oi_eval.compute()
    if detection is not None:
        metrics["detection"] = detection.compute()
    return metrics, failed


@dataclass(frozen=True)
class ImagePredictions:
    """One image's predictions as the metrics use them, and as ``predictions.jsonl`` holds them.

    ``graph`` / ``free``: graph-constrained / unconstrained triplets; ``candidates``: the Open
    Images candidates (OI only); ``detections``: ``(boxes [D, 4], labels [D], scores [D])`` for
    detection AP (when it is computed). Scores and boxes are float32 values, written to the row
    with the shortest text that reads back as the same float32, so `from_row` gives back exactly
    what `from_outputs` computed.
    """

    graph: PredictedTriplets
    free: PredictedTriplets
    candidates: PredictedTriplets | None
    detections: tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]] | None
    object_scores: npt.NDArray[np.float32]
    detection_queries: npt.NDArray[np.int64] | None

    @classmethod
    def from_outputs(
        cls,
        out: dict[str, Tensor],
        width: int,
        height: int,
        *,
        kind: str,
        object_score: str,
        top_k: int,
        detections: bool,
    ) -> ImagePredictions:
        """From one image's model outputs (``logits``, ``pred_boxes``, ``pred_rel``,
        ``pred_connectivity``, on the CPU) and its original ``width x height``. Returns them."""
        logits = out["logits"]
        boxes = boxes_to_pixels(out["pred_boxes"], width, height)
        scores, labels = object_scores(logits, object_score)
        rel = out["pred_rel"].float()
        conn = out["pred_connectivity"].float()
        graph = top_triplets(scores, rel, conn, top_k=top_k, graph_constrained=True)
        free = top_triplets(scores, rel, conn, top_k=top_k, graph_constrained=False)
        candidates = (
            oi_candidates(scores, labels, boxes, rel * conn[..., None]) if kind == "oi" else None
        )
        found: tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]] | None = None
        queries: npt.NDArray[np.int64] | None = None
        if detections:
            if kind == "vg":
                det_boxes, det_labels, det_scores, det_queries = top_detections(logits, boxes)
            else:
                det_boxes, det_labels, det_scores = boxes, labels, scores
                det_queries = torch.arange(len(boxes))
            found = (det_boxes.numpy(), det_labels.numpy(), det_scores.numpy())
            queries = det_queries.numpy().astype(np.int64)
        return cls(
            graph=PredictedTriplets.create(
                boxes, labels, graph.subjects, graph.objects, graph.predicates, graph.scores
            ),
            free=PredictedTriplets.create(
                boxes, labels, free.subjects, free.objects, free.predicates, free.scores
            ),
            candidates=candidates,
            detections=found,
            object_scores=scores.numpy(),
            detection_queries=queries,
        )

    def to_row(self, image_id: Any, file_name: str, image_size: tuple[int, int]) -> dict[str, Any]:
        """The ``predictions.jsonl`` row (``id`` = ``image_id``; ``image_size`` is ``[w, h]``)."""
        row: dict[str, Any] = {
            "id": image_id,
            "image_id": image_id,
            "file_name": file_name,
            "image_size": list(image_size),
            "triplets": _triplet_rows(self.graph),
            "triplets_unconstrained": _triplet_rows(self.free),
        }
        used = {*self.graph.subjects.tolist(), *self.graph.objects.tolist()}
        used |= {*self.free.subjects.tolist(), *self.free.objects.tolist()}
        if self.candidates is not None:
            row["oi_candidates"] = _triplet_rows(self.candidates)
            used |= {*self.candidates.subjects.tolist(), *self.candidates.objects.tolist()}
        if self.detections is not None and self.detection_queries is not None:
            _, det_labels, det_scores = self.detections
            row["detections"] = [
                [int(q), int(c), s]
                for q, c, s in zip(
                    self.detection_queries.tolist(),
                    det_labels.tolist(),
                    _exact(det_scores),
                    strict=True,
                )
            ]
            used |= set(self.detection_queries.tolist())
        queries = sorted(used)
        boxes = _exact(self.graph.boxes[queries]) if queries else []
        scores = _exact(self.object_scores[queries]) if queries else []
        row["objects"] = [
            [q, *boxes[4 * i : 4 * i + 4], int(self.graph.labels[q]), scores[i]]
            for i, q in enumerate(queries)
        ]
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ImagePredictions:
        """From a ``predictions.jsonl`` row written by `to_row`. Boxes and labels of the queries
        the row does not reference are zero. Returns them."""
        objects = row["objects"]
        size = max((int(obj[0]) for obj in objects), default=-1) + 1
        boxes = np.zeros((size, 4), dtype=np.float32)
        labels = np.zeros(size, dtype=np.int64)
        scores = np.zeros(size, dtype=np.float32)
        for q, x1, y1, x2, y2, label, score in objects:
            boxes[q] = (x1, y1, x2, y2)
            labels[q] = label
            scores[q] = score

        def triplets(name: str) -> PredictedTriplets:
            found = np.asarray(row[name], dtype=np.float64).reshape(-1, 4)
            return PredictedTriplets.create(
                boxes,
                labels,
                found[:, 0].astype(np.int64),
                found[:, 1].astype(np.int64),
                found[:, 2].astype(np.int64),
                found[:, 3].astype(np.float32),
            )

        detections = None
        queries = None
        if "detections" in row:
            found = np.asarray(row["detections"], dtype=np.float64).reshape(-1, 3)
            queries = found[:, 0].astype(np.int64)
            detections = (
                boxes[queries],
                found[:, 1].astype(np.int64),
                found[:, 2].astype(np.float32),
            )
        return cls(
            graph=triplets("triplets"),
            free=triplets("triplets_unconstrained"),
            candidates=triplets("oi_candidates") if "oi_candidates" in row else None,
            detections=detections,
            object_scores=scores,
            detection_queries=queries,
        )


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
    dataset = _load_split(options, kind, config, min_size, max_size)
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
    count = len(dataset) if options.limit is None else min(options.limit, len(dataset))
    loader = _loader(dataset, range(count), 1, options)
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
) -> None:
    """Make ``folder`` ready for a run's ``outputs`` (the first write of the run).

    Refuses, unless ``overwrite``, a folder holding one of ``outputs`` without the ``manifest``
    of this command (files it did not write), or whose manifest records other inputs or settings
    (the message names each difference); never writes over one of ``inputs``. Then writes the
    manifest.
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


class _GuardedItems(Dataset[tuple[int, tuple[Tensor, Target] | None, str | None]]):
    """The items of ``dataset`` at ``positions`` as ``(index, item, None)``, or ``(index, None,
    error)`` for an image that cannot be read (an error row instead of a failed run)."""

    def __init__(self, dataset: SceneGraphDataset, positions: Sequence[int]) -> None:
        self.dataset = dataset
        self.positions = list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, item: int) -> tuple[int, tuple[Tensor, Target] | None, str | None]:
        index = self.positions[item]
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
    positions: Sequence[int],
    dataset: SceneGraphDataset,
    device: torch.device,
    options: EvalOptions,
    dist: Dist,
    batch_size: int,
) -> Iterator[tuple[int, Target | None, dict[str, Tensor] | None, str | None]]:
    """``(index, target, outputs of that image on the CPU, None)`` for each image at
    ``positions`` (batches of ``batch_size`` consecutive ones), or ``(index, None, None, error)``
    for one that cannot be read; in order."""
    dtype = next(model.parameters()).dtype
    loader = _loader(dataset, positions, batch_size, options)
    desc = "egtr eval" if not dist.sharded else f"egtr eval (rank {dist.rank})"
    with torch.inference_mode():
        for indices, images, failures in _progress(loader, options, desc=desc):
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


def _loader(
    dataset: SceneGraphDataset, positions: Sequence[int], batch_size: int, options: EvalOptions
) -> DataLoader[Any]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return DataLoader(
        _GuardedItems(dataset, positions),
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
        [int(s), int(o), int(p), sc]
        for s, o, p, sc in zip(
            pred.subjects.tolist(),
            pred.objects.tolist(),
            pred.predicates.tolist(),
            _exact(pred.scores),
            strict=True,
        )
    ]


def _exact(values: Any) -> list[float]:
    """Float32 values (flattened) as the floats of their shortest text: JSON that reads back as
    the same float32 values."""
    return [float(str(value)) for value in np.asarray(values, dtype=np.float32).reshape(-1)]


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
