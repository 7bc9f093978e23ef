"""Training statistics: fg counts by hand, the frequency-bias table and the predicate marginal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sgg_data_testing import write_tiny_oi, write_tiny_vg

from egtr import build_rel_dist, build_triplet_dist
from egtr.data import OpenImagesDataset, VisualGenomeDataset, predicate_statistics


def test_vg_counts_every_annotated_triplet(tmp_path: Path) -> None:
    data = VisualGenomeDataset(write_tiny_vg(tmp_path, images=False), "train")
    stats = predicate_statistics(data)
    expected = torch.zeros(4, 4, 4, dtype=torch.long)  # (C+1, C+1, P), 0-based classes
    expected[0, 2, 0] = 2  # image 11: cat-on-table twice (repeats count)
    expected[1, 2, 0] = 1  # dog on table
    expected[0, 2, 1] = 1  # cat near table
    expected[1, 2, 3] = 1  # image 12: dog under table
    assert stats.fg.dtype == torch.long
    assert torch.equal(stats.fg, expected)
    assert torch.equal(stats.triplet_dist, build_triplet_dist(expected))
    assert stats.triplet_dist[0, 2, 0] == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert stats.triplet_dist[0, 2, 2] < -27  # unseen predicate of a seen pair
    assert stats.triplet_dist[2, 0, 0] == 0  # unseen pair
    assert torch.allclose(stats.rel_dist, torch.tensor([3, 1, 0, 1]) / 5)
    assert torch.equal(stats.rel_dist, build_rel_dist(expected))
    assert torch.equal(stats.seen_triplets, expected > 0)


def test_oi_counts_after_training_filters_before_sampling(tmp_path: Path) -> None:
    data = OpenImagesDataset(write_tiny_oi(tmp_path, images=False), "train")
    torch.manual_seed(0)
    fg = predicate_statistics(data).fg
    expected = torch.zeros(4, 4, 4, dtype=torch.long)
    for s, o, p in [(0, 2, 0), (0, 2, 2), (1, 2, 1), (0, 2, 3), (0, 1, 3)]:
        expected[s, o, p] += 1  # duplicates removed, the 201-box image dropped
    assert torch.equal(fg, expected)


def test_raw_records_need_sizes(tmp_path: Path) -> None:
    data = VisualGenomeDataset(write_tiny_vg(tmp_path, images=False), "train")
    with pytest.raises(ValueError, match="num_classes"):
        predicate_statistics(data.records)
    fg = predicate_statistics(data.records, num_classes=3, num_predicates=4).fg
    assert fg.shape == (4, 4, 4)
    assert predicate_statistics([], num_classes=2, num_predicates=3).fg.sum() == 0
