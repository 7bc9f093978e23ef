"""Training-split frequency statistics: ``fg`` triplet counts, the frequency-bias table, the
predicate marginal and the set of seen triplets (for zero-shot recall)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from egtr.data.base import SceneGraphDataset, SceneGraphRecord
from egtr.relation_head import build_rel_dist, build_triplet_dist


@dataclass(frozen=True)
class PredicateStatistics:
    """``fg [C+1, C+1, P]`` int64: ``fg[subject class, object class, predicate]`` counts of the
    annotated training triplets (0-based classes; the extra row/column stays zero, as in the
    reference, whose table checkpoints store with that shape)."""

    fg: Tensor

    @property
    def triplet_dist(self) -> Tensor:
        """The frequency-bias table (:func:`egtr.build_triplet_dist`)."""
        return build_triplet_dist(self.fg)

    @property
    def rel_dist(self) -> Tensor:
        """The predicate marginal (:func:`egtr.build_rel_dist`), for the logit adjustment."""
        return build_rel_dist(self.fg)

    @property
    def seen_triplets(self) -> Tensor:
        """Boolean ``[C+1, C+1, P]``: which ``(subject class, object class, predicate)`` occur."""
        return self.fg > 0


def predicate_statistics(
    source: SceneGraphDataset | Iterable[SceneGraphRecord],
    num_classes: int | None = None,
    num_predicates: int | None = None,
) -> PredicateStatistics:
    """Count the training triplets of a data set (or records) as annotated.

    Counts come from the parsed records — after Open Images' training filters (boxes > 200
    dropped, identical triplets de-duplicated) but before the per-load one-predicate-per-pair
    draw — and no image is read. Sizes default to the data set's. Returns the
    :class:`PredicateStatistics` of the ``[C+1, C+1, P]`` triplet counts.

    Raises ``ValueError`` when ``source`` is an iterable of records and ``num_classes`` or
    ``num_predicates`` is not given.
    """
    if isinstance(source, SceneGraphDataset):
        num_classes = source.num_classes if num_classes is None else num_classes
        num_predicates = source.num_predicates if num_predicates is None else num_predicates
        records: Iterable[SceneGraphRecord] = source.records
    else:
        records = source
    if num_classes is None or num_predicates is None:
        raise ValueError("num_classes and num_predicates are needed when counting raw records")
    shape = (num_classes + 1, num_classes + 1, num_predicates)
    flat: list[npt.NDArray[np.intp]] = []
    for record in records:
        if len(record.rels):
            subj = record.labels[record.rels[:, 0]]
            obj = record.labels[record.rels[:, 1]]
            flat.append(np.ravel_multi_index((subj, obj, record.rels[:, 2]), shape))
    indices = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int64)
    fg = np.bincount(indices, minlength=int(np.prod(shape))).astype(np.int64).reshape(shape)
    return PredicateStatistics(torch.from_numpy(fg))
