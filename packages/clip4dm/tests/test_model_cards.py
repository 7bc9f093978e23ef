"""The shipped CLIP's README.md is a model card hubs can read: YAML front matter with the license,
library, task, tags, data set and a model-index whose values are exactly those of metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "shared" / "models" / "clip-shapes"

#: model-index result (by data set name's last words) and metric name -> metrics.json path
EXPECTED = {
    ("FOIL captions", "LA, localisation accuracy (most_negative)"): ("foil", "LA"),
    ("FOIL captions", "LA, exact position (most_negative)"): ("foil", "LA_exact"),
    ("FOIL captions", "AP, F-CLIPScore"): ("foil", "AP_F-CLIPScore"),
    ("FOIL captions", "AP, CLIPScore alone"): ("foil", "AP_CLIPScore"),
    ("HAT captions", "LA, localisation accuracy (threshold)"): ("hat", "LA"),
    ("HAT captions", "LA, exact position (threshold)"): ("hat", "LA_exact"),
    ("HAT captions", "AP, F-CLIPScore"): ("hat", "AP_F-CLIPScore"),
    ("HAT captions", "AP, CLIPScore alone"): ("hat", "AP_CLIPScore"),
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


def check_model_index(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The model-index results, after checking the shape hubs expect; returns them."""
    (entry,) = data["model-index"]
    assert entry["name"] == name
    for result in entry["results"]:
        assert isinstance(result["task"]["type"], str)
        assert isinstance(result["dataset"]["type"], str)
        assert isinstance(result["dataset"]["name"], str)
        for metric in result["metrics"]:
            assert isinstance(metric["type"], str)
            assert isinstance(metric["name"], str)
            assert isinstance(metric["value"], float)
    results: list[dict[str, Any]] = entry["results"]
    return results


def test_readme_front_matter_describes_the_model() -> None:
    data, body = front_matter(MODEL / "README.md")
    assert data["license"] == "mit"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert data["library_name"] == "transformers"
    assert json.loads((MODEL / "config.json").read_text())["model_type"] == "clip"
    assert data["pipeline_tag"] == "zero-shot-image-classification"
    assert {"clip", "clip4dm"} <= set(data["tags"])
    assert data["datasets"] == ["shapes-world"]
    assert "base_model" not in data  # trained from scratch
    assert body.lstrip().startswith("# clip-shapes")


def test_readme_metrics_equal_metrics_json() -> None:
    data, _ = front_matter(MODEL / "README.md")
    recorded = json.loads((MODEL / "metrics.json").read_text())
    seen = {}
    for result in check_model_index(data, "clip-shapes"):
        assert result["dataset"]["split"] == recorded["split"]
        for metric in result["metrics"]:
            key = (result["dataset"]["name"].rsplit("), ", 1)[1], metric["name"])
            assert key in EXPECTED, f"unexpected metric {key}"
            block, field = EXPECTED[key]
            assert metric["value"] == recorded[block][field], key
            seen[key] = metric["value"]
    assert set(seen) == set(EXPECTED)


def test_readme_carries_the_model_card_prose() -> None:
    _, body = front_matter(MODEL / "README.md")
    card = MODEL / "MODEL_CARD.md"
    if card.exists():  # written by tools/train_clip.py: the README must not drift from it
        assert card.read_text(encoding="utf-8").rstrip("\n") in body
    assert "## Metrics" in body
    assert "python tools/train_clip.py" in body
