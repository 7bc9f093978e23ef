"""The SeeTRUE-Feedback NLI score on a tiny random MNLI classifier, and SeeTRUE end to end."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from clip4dm.eval import NLIScorer, merge_phrases
from clip4dm.eval.cli import main
from clip4dm.results import WordScore

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "apple",
    "is",
    "green",
    "red",
    "a",
    "cat",
    "there",
    "one",
    "only",
    "car",
    "yellow",
    "blue",
    "not",
    ",",
    ".",
]


@pytest.fixture(scope="module")
def tiny_nli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random BERT sequence classifier with MNLI labels in a non-default order."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    out = tmp_path_factory.mktemp("tiny_nli")
    labels = {0: "entailment", 1: "neutral", 2: "contradiction"}
    config = BertConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out)
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(out)
    return out


def test_nli_score_is_the_entailment_probability_without_neutral(tiny_nli_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer = NLIScorer(str(tiny_nli_dir), device="cpu", batch_size=2)
    assert (scorer.entailment, scorer.contradiction) == (0, 2)  # read from label2id
    premises = ["The apple is green.", "There is only one cat", "The car is yellow, not blue", "x"]
    hypotheses = ["red", "a cat, one", "blue car", "  "]
    scores = scorer.score(premises, hypotheses)
    tokenizer = AutoTokenizer.from_pretrained(tiny_nli_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_nli_dir).eval()
    for premise, hypothesis, score in zip(premises[:3], hypotheses[:3], scores, strict=False):
        encoded = tokenizer(premise.lower(), hypothesis.lower(), return_tensors="pt")
        with torch.no_grad():
            logits = model(**encoded).logits[0]
        contradiction, entailment = float(logits[2]), float(logits[0])
        expected = np.exp(entailment) / (np.exp(entailment) + np.exp(contradiction))
        assert score == pytest.approx(expected, abs=1e-6)
    assert scores[3] == 0.0  # an empty prediction scores 0
    assert 0.0 < scores[0] < 1.0
    with pytest.raises(ValueError, match="2 premises but 1 hypotheses"):
        scorer.score(["a", "b"], ["c"])


def test_missing_nli_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="cannot load model"):
        NLIScorer(str(tmp_path / "no-such-model"), device="cpu")


def _seetrue_rows(count: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    sources = ["SeeTRUE-COCO", "SeeTRUE-Drawbench"]
    return [
        {
            "image": Image.fromarray(rng.integers(0, 256, (28, 36, 3), dtype=np.uint8)),
            "image_caption": caption,
            "caption_misalignment": feedback,
            "dataset_source": sources[i % 2],
        }
        for i, (caption, feedback) in enumerate(
            [
                ("A red apple on a plate", "The apple is green."),
                ("Two cats on a bed", "There is only one cat."),
                ("A blue car parked outside", "The car is yellow, not blue."),
                ("A dog", ""),
            ][:count]
        )
    ]


def test_seetrue_end_to_end_with_nli(
    tmp_path: Path,
    tiny_hf_dir: Path,
    tiny_nli_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the HF datasets format (a stand-in `datasets` module), with a tiny NLI model."""
    datasets = types.ModuleType("datasets")
    datasets.load_dataset = lambda name, split: _seetrue_rows(4)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", datasets)
    out = tmp_path / "out"
    argv = [
        "seetrue",
        "--data",
        "mismatch-quest/SeeTRUE-Feedback",
        "--out",
        str(out),
        "--model",
        f"hf:{tiny_hf_dir}",
        "--nli-model",
        str(tiny_nli_dir),
        "--epsilon",
        "-1e-9",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    result = json.loads((out / "result.json").read_text())
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"]
    scorer = NLIScorer(str(tiny_nli_dir), device="cpu")
    for row in rows[:3]:
        words = [WordScore(**w) for w in row["words"]]
        selected = [WordScore(**w) for w in row["misaligned"]]
        phrases = [p.text.lower() for p in merge_phrases(words, selected)]
        assert row["prediction"] == ", ".join(phrases)
        expected = scorer.score([row["ground_truth"]["text"]], [row["prediction"]])[0]
        assert row["nli_score"] == pytest.approx(expected, abs=1e-6)
    assert "nli_score" not in rows[3]  # an aligned caption has no misalignment to entail
    metrics = result["metrics"]
    assert metrics["NLI"] == pytest.approx(sum(r["nli_score"] for r in rows[:3]) / 3)
    assert "LA" not in metrics
    assert result["group_by"] == "source"
    coco = [r["nli_score"] for r in rows[:3] if r["group"] == "SeeTRUE-COCO"]
    assert result["groups"]["SeeTRUE-COCO"]["NLI"] == pytest.approx(sum(coco) / len(coco))
    assert result["model"]["nli_model"] == str(tiny_nli_dir)
    assert result["config"]["nli_model"] == str(tiny_nli_dir)


def test_seetrue_jsonl_without_nli(tmp_path: Path, tiny_hf_dir: Path) -> None:
    rows = _seetrue_rows(2)
    lines = []
    for i, row in enumerate(rows):
        row["image"].save(tmp_path / f"{i}.png")
        lines.append(json.dumps({**row, "image": f"{i}.png"}))
    data = tmp_path / "seetrue.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = [
        "seetrue-feedback",
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-nli",
        "--model",
        f"hf:{tiny_hf_dir}",
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"]["NLI"] is None
    assert result["counts"]["scored"] == 2
    assert result["config"]["nli_model"] is None
