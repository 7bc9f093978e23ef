"""Scene-graph evaluation: Visual Genome SGDet (R@K, mR@K, zR@K), Open Images V6 (microR@50,
wmAP_rel, wmAP_phr, score_wtd), detection AP through pycocotools, and the ``egtr eval`` runner.

Every metric works on one image at a time with vectorised numpy (``[GT, predictions]`` hit
matrices) and accumulates over the split; boxes are xyxy in original-image pixels and IoU uses
the protocols' +1-pixel convention (:mod:`egtr.evaluation.boxes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vl_core.lazy import lazy_exports

# Imported lazily so that ``egtr.evaluation.cli`` (and ``egtr --help``) does not load torch.
_EXPORTS: dict[str, str] = {
    "DetectionEvaluator": "egtr.evaluation.detection",
    "EvalOptions": "egtr.evaluation.runner",
    "GroundTruth": "egtr.evaluation.matching",
    "OIEvaluator": "egtr.evaluation.oi",
    "PredictedTriplets": "egtr.evaluation.matching",
    "SGGEvaluator": "egtr.evaluation.sgg_vg",
    "box_iou": "egtr.evaluation.boxes",
    "evaluate": "egtr.evaluation.runner",
    "first_hit_rank": "egtr.evaluation.matching",
    "measure_fps": "egtr.evaluation.runner",
    "oi_candidates": "egtr.evaluation.oi",
    "paired_iou": "egtr.evaluation.boxes",
    "top_detections": "egtr.evaluation.detection",
    "triplet_hits": "egtr.evaluation.matching",
    "union_boxes": "egtr.evaluation.boxes",
    "voc_ap": "egtr.evaluation.oi",
}

__all__ = [
    "DetectionEvaluator",
    "EvalOptions",
    "GroundTruth",
    "OIEvaluator",
    "PredictedTriplets",
    "SGGEvaluator",
    "box_iou",
    "evaluate",
    "first_hit_rank",
    "measure_fps",
    "oi_candidates",
    "paired_iou",
    "top_detections",
    "triplet_hits",
    "union_boxes",
    "voc_ap",
]

if TYPE_CHECKING:
    from egtr.evaluation.boxes import box_iou, paired_iou, union_boxes
    from egtr.evaluation.detection import DetectionEvaluator, top_detections
    from egtr.evaluation.matching import (
        GroundTruth,
        PredictedTriplets,
        first_hit_rank,
        triplet_hits,
    )
    from egtr.evaluation.oi import OIEvaluator, oi_candidates, voc_ap
    from egtr.evaluation.runner import EvalOptions, evaluate, measure_fps
    from egtr.evaluation.sgg_vg import SGGEvaluator


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
