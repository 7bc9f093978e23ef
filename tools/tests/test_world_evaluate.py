"""``tools/world/evaluate.py``: ``clip4dm eval`` on a shapes world, formatted for the model card.

The figures are checked against a literal recomputation from clip4dm's rows (the definitions the
tool used before it called clip4dm), the card sections against the shipped card, and the shipped
model's recorded metrics are reproduced (slow).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tools.train_clip import card_limitations, card_metrics
from tools.world.evaluate import EPSILON_GRID, evaluate, foil_metrics, main
from tools.world.generate import write_world

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "shared" / "models" / "clip-shapes"
WORLD = ROOT / "shared" / "world" / "test-set"


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MODEL / "metrics.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_world(
        tmp_path_factory.mktemp("world"), seed=3, counts={"val": 4, "test": 5}, size=64
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vl_core.testing import make_tiny_hf_clip

    return make_tiny_hf_clip(tmp_path_factory.mktemp("clip"), seed=1)


@pytest.fixture(scope="module")
def evaluated(tiny_world: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    work = tmp_path_factory.mktemp("work")
    found = evaluate(f"hf:{tiny_model}", tiny_world, batch_size=4, work=work)
    return found, work


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _mean(values: list[float] | list[bool]) -> float:
    return float(sum(values)) / len(values)


def _literal_foil(rows: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> dict[str, Any]:
    """The FOIL figures as the tool defined them, from the rows and the world's annotations."""
    hits: dict[str, list[bool]] = {}
    exact: list[bool] = []
    chance: list[float] = []
    originals: dict[int, list[float]] = {}
    for row, ann in zip(rows, annotations, strict=True):
        if not ann["foil"]:
            originals.setdefault(ann["image_id"], []).append(row["clip_score"])
            continue
        lowest = row["misaligned"][0]
        hits.setdefault(ann["foil_kind"], []).append(lowest["word"] == ann["foil_word"])
        exact.append(lowest["index"] == ann["foil_word_index"])
        chance.append(1.0 / len(row["words"]))
    wins: dict[str, list[float]] = {}
    for row, ann in zip(rows, annotations, strict=True):
        if ann["foil"]:
            scores = originals[ann["image_id"]]
            won = sum(s > row["clip_score"] for s in scores)
            won += 0.5 * sum(s == row["clip_score"] for s in scores)
            wins.setdefault(ann["foil_kind"], []).append(won / len(scores))
    return {
        "captions": len(rows),
        "foils": len(exact),
        "LA": _mean([h for kind in sorted(hits) for h in hits[kind]]),
        "LA_exact": _mean(exact),
        "LA_chance": _mean(chance),
        "LA_by_kind": {kind: _mean(hits[kind]) for kind in sorted(hits)},
        "pairwise_by_kind": {kind: _mean(wins[kind]) for kind in sorted(wins)},
    }


def test_output_has_the_recorded_layout(evaluated: Any, recorded: dict[str, Any]) -> None:
    found, _ = evaluated
    assert list(found) == list(recorded)
    for part in ("foil", "hat", "hat_val"):
        assert list(found[part]) == list(recorded[part]), part


def test_foil_figures_match_a_literal_recomputation(evaluated: Any, tiny_world: Path) -> None:
    found, work = evaluated
    rows = _rows(work / "foil" / "samples.jsonl")
    annotations = json.loads((tiny_world / "foil" / "test.json").read_text())["annotations"]
    assert len(rows) == len(annotations) == found["foil"]["captions"]
    literal = _literal_foil(rows, annotations)
    for key, value in literal.items():
        if key == "LA":  # summed in another order: the same count, one division
            assert found["foil"][key] == pytest.approx(value, abs=1e-12), key
        else:
            assert found["foil"][key] == value, key
    assert set(found["foil"]["LA_by_kind"]) <= {"colour", "shape", "size", "relation"}


def test_hat_epsilon_is_chosen_on_the_val_split(evaluated: Any, tiny_world: Path) -> None:
    found, work = evaluated
    hat, val = found["hat"], found["hat_val"]
    result = json.loads((work / "hat" / "result.json").read_text())
    selection = result["epsilon_selection"]
    assert hat["epsilon"] == val["epsilon"] == selection["epsilon"] == result["config"]["epsilon"]
    assert selection["grid"] == list(EPSILON_GRID)
    assert selection["data"] == str((tiny_world / "hat" / "val.json").resolve())
    best = max(c["LA"] for c in selection["candidates"])
    assert val["LA"] == best
    entries = json.loads((tiny_world / "hat" / "val.json").read_text())
    assert val["captions"] == len(entries)
    assert val["hallucinated"] == sum(e["contains_hallucination"] for e in entries)
    assert hat["LA_from_detections"] == hat["LA"] == result["metrics"]["LA"]
    rows = _rows(work / "hat" / "samples.jsonl")
    assert all(r["mode"] == "threshold" for r in rows)
    assert hat["captions"] == len(rows)


def test_foil_metrics_formats_a_clip4dm_result() -> None:
    result = {
        "metrics": {
            "samples": 6,
            "misaligned": 4,
            "LA": 0.5,
            "LA_exact": 0.25,
            "LA_chance": 0.125,
            "AP": {"CLIPScore": 0.9, "F-CLIPScore": 0.8},
        },
        "groups": {"colour": {"LA": 1.0, "pairwise": 0.75}, "size": {"LA": 0.0}},
    }
    assert foil_metrics(result) == {
        "captions": 6,
        "foils": 4,
        "LA": 0.5,
        "LA_exact": 0.25,
        "LA_chance": 0.125,
        "LA_by_kind": {"colour": 1.0, "size": 0.0},
        "AP_F-CLIPScore": 0.8,
        "AP_CLIPScore": 0.9,
        "pairwise_by_kind": {"colour": 0.75},
    }


def test_main_prints_and_writes_the_json(
    tiny_world: Path, tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "metrics.json"
    argv = ["--model", f"hf:{tiny_model}", "--world", str(tiny_world), "--out", str(out)]
    assert main([*argv, "--quiet", "--batch-size", "8", "--work", str(tmp_path / "work")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    assert out.read_text(encoding="utf-8") == json.dumps(printed, indent=1) + "\n"
    assert (tmp_path / "work" / "hat" / "validation" / "samples.jsonl").is_file()


def test_main_reports_a_missing_world_in_one_line(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere"
    assert main(["--model", f"hf:{tiny_model}", "--world", str(missing), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("python -m tools.world.evaluate: error: ")
    assert "test.json" in err[0]
    with pytest.raises(SystemExit) as exit_info:  # argument errors: argparse, before any work
        main(["--batch-size", "0"])
    assert exit_info.value.code == 2


def test_card_sections_reproduce_the_shipped_card(recorded: dict[str, Any]) -> None:
    """The card's metrics and limitations, written from metrics.json, are the shipped card's."""
    card = (MODEL / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "\n".join(card_metrics(recorded)) in card
    assert "\n".join(card_limitations(recorded)) + "\n" in card


@pytest.mark.slow
def test_reproduces_recorded_metrics(recorded: dict[str, Any], tmp_path: Path) -> None:
    """The full fixed test set, as ``python -m tools.world.evaluate`` computes it (on the machine
    that recorded it the JSON is byte-identical; float noise on other CPUs may move it slightly)."""
    found = evaluate(f"hf:{MODEL}", WORLD, work=tmp_path)
    assert found["hat"]["epsilon"] == recorded["hat"]["epsilon"]
    for part in ("foil", "hat", "hat_val"):
        assert list(found[part]) == list(recorded[part])
    for part, counts in (("foil", ("captions", "foils")), ("hat", ("captions", "hallucinated"))):
        assert [found[part][k] for k in counts] == [recorded[part][k] for k in counts]
    for part, tolerance in (("foil", 0.01), ("hat", 0.02), ("hat_val", 0.02)):
        for key in ("LA", "LA_exact", "LA_chance", "AP_F-CLIPScore", "AP_CLIPScore"):
            assert found[part][key] == pytest.approx(recorded[part][key], abs=tolerance), (
                part,
                key,
            )
    for kind, value in recorded["foil"]["pairwise_by_kind"].items():
        assert found["foil"]["pairwise_by_kind"][kind] == pytest.approx(value, abs=0.02), kind
    foil, hat = found["foil"], found["hat"]
    assert foil["LA"] > 2.5 * foil["LA_chance"]
    assert hat["LA"] > 2.5 * hat["LA_chance"]
    # AP of a random ranking = the share of positives (aligned, resp. hallucinated, captions)
    assert foil["AP_F-CLIPScore"] > (foil["captions"] - foil["foils"]) / foil["captions"] + 0.05
    assert hat["AP_F-CLIPScore"] > hat["hallucinated"] / hat["captions"] + 0.2
