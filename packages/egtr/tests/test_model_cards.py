"""The shipped EGTR's README.md is a model card hubs can read: YAML front matter with the license,
library, task, tags, data set and a model-index whose values are exactly those of metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "shared" / "models" / "egtr-shapes"

#: model-index metric name -> key of metrics.json's "shipped" model
EXPECTED = {
    **{f"SGDet R@{k} (graph-constrained, %)": f"R@{k}" for k in (20, 50, 100)},
    **{f"SGDet mR@{k} (graph-constrained, %)": f"mR@{k}" for k in (20, 50, 100)},
    **{f"SGDet R@{k} (unconstrained, %)": f"ng_R@{k}" for k in (20, 50, 100)},
    **{f"SGDet mR@{k} (unconstrained, %)": f"ng_mR@{k}" for k in (20, 50, 100)},
    "AP50 (%)": "AP50",
}


def front_matter(path: Path) -> tuple[dict[str, Any], str]:
    """The YAML block between the leading ``---`` lines, parsed, and the Markdown after it."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n"), f"{path} does not start with YAML front matter"
    block, separator, body = text[4:].partition("\n---\n")
    assert separator, f"{path}: the front matter is not closed by a '---' line"
    data = yaml.safe_load(block)
    assert isinstance(data, dict)
    return data, body


def test_readme_front_matter_describes_the_model() -> None:
    data, body = front_matter(MODEL / "README.md")
    assert data["license"] == "mit"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert data["library_name"] == "egtr"  # model_type "egtr" is not a transformers architecture
    assert json.loads((MODEL / "config.json").read_text())["model_type"] == "egtr"
    assert data["pipeline_tag"] == "object-detection"
    assert {"scene-graph-generation", "egtr"} <= set(data["tags"])
    assert data["datasets"] == ["shapes-world"]
    assert "base_model" not in data  # trained from scratch
    assert body.lstrip().startswith("# egtr-shapes")


def test_readme_metrics_equal_metrics_json() -> None:
    data, _ = front_matter(MODEL / "README.md")
    recorded = json.loads((MODEL / "metrics.json").read_text())
    shipped = recorded["models"]["shipped"]
    (entry,) = data["model-index"]
    assert entry["name"] == "egtr-shapes"
    seen = {}
    for result in entry["results"]:
        assert isinstance(result["task"]["type"], str)
        assert isinstance(result["dataset"]["type"], str)
        assert result["dataset"]["split"] == recorded["split"]
        for metric in result["metrics"]:
            assert isinstance(metric["type"], str)
            assert metric["name"] in EXPECTED, f"unexpected metric {metric['name']!r}"
            assert isinstance(metric["value"], float)
            assert metric["value"] == shipped[EXPECTED[metric["name"]]], metric["name"]
            seen[metric["name"]] = metric["value"]
    assert set(seen) == set(EXPECTED)
    assert set(EXPECTED.values()) == set(shipped)  # every recorded figure is on the card


def test_readme_carries_the_model_card_prose() -> None:
    _, body = front_matter(MODEL / "README.md")
    card = MODEL / "MODEL_CARD.md"
    if card.exists():  # written by tools/train_egtr.py: the README must not drift from it
        assert card.read_text(encoding="utf-8").rstrip("\n") in body
    assert "## Metrics" in body
    assert "python tools/train_egtr.py" in body
