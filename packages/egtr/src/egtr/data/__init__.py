"""Scene-graph data sets (Visual Genome, Open Images V6), their transforms, batching and statistics.

Batch contract (shared with training and evaluation — keep it stable):

Each data set item is ``(image, target)``:

- ``image``: ``torch.Tensor [3, H, W]`` float, normalised with the ImageNet mean/std, after the
  split's transforms (:func:`build_transforms`).
- ``target``: a dict (typed as :class:`Target`) with

  ``"boxes"``            FloatTensor ``[M, 4]`` ``(cx, cy, w, h)`` normalised to ``[0, 1]`` by the
                         transformed image size;
  ``"class_labels"``     LongTensor ``[M]``, 0-based (VG: ``category_id - 1``);
  ``"rels"``             LongTensor ``[R, 3]``: ``(subject index, object index, predicate)``,
                         predicate 0-based, indices into the boxes, in annotation order;
  ``"image_id"``         int;
  ``"orig_size"``        LongTensor ``[2]`` ``(h, w)`` of the original image;
  ``"size"``             LongTensor ``[2]`` ``(h, w)`` after the transforms;
  ``"boxes_xyxy_orig"``  FloatTensor ``[M, 4]`` ``(x1, y1, x2, y2)`` in original pixels (evaluation).

``collate(batch) -> (pixel_values [B, 3, Hmax, Wmax], pixel_mask LongTensor [B, Hmax, Wmax],
list[target])``: images padded bottom/right with zeros, ``pixel_mask`` 1 on real pixels.

Boxes are never dropped except by the detector stage's random crop (stage ``"detector"``), which
removes boxes cropped to nothing together with the relations that use them and renumbers the
rest, so relation indices are valid after every transform.
"""

from __future__ import annotations

from egtr.data.base import AnnotationError, SceneGraphDataset, SceneGraphRecord, Target
from egtr.data.collate import collate
from egtr.data.openimages import OpenImagesDataset
from egtr.data.statistics import PredicateStatistics, predicate_statistics
from egtr.data.transforms import TRAIN_SCALES, SceneGraphTransform, Stage, build_transforms
from egtr.data.vg import VisualGenomeDataset

__all__ = [
    "TRAIN_SCALES",
    "AnnotationError",
    "OpenImagesDataset",
    "PredicateStatistics",
    "SceneGraphDataset",
    "SceneGraphRecord",
    "SceneGraphTransform",
    "Stage",
    "Target",
    "VisualGenomeDataset",
    "build_transforms",
    "collate",
    "predicate_statistics",
]
