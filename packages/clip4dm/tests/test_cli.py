"""The clip4dm command line parses and reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip4dm import CLIP4DM
from clip4dm.cli import main


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "info" in capsys.readouterr().out


def test_info_reports_versions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clip4dm"] != "not installed"
    assert "torch" in report


# -- detect, end to end on tiny local models -----------------------------------------------------


def _write_image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


CAPTION = 'a cup of "coke" on the table...'


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    return _write_image(tmp_path / "img.png")


def test_help_lists_detect_and_visualize(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "detect" in out
    assert "visualize" in out


def test_detect_prints_the_word_table(
    image_file: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = f"hf:{tiny_hf_dir}"
    argv = ["detect", str(image_file), CAPTION, "--model", model, "--mode", "most_negative"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    expected = CLIP4DM(model, mode="most_negative").detect(image_file, CAPTION)
    table = [line.split() for line in out.splitlines()[1 : 1 + len(expected.words)]]
    assert [row[1] for row in table] == [w.word for w in expected.words]
    assert [float(row[2]) for row in table] == pytest.approx(
        [w.score for w in expected.words], rel=2e-3
    )
    marked = [row[1] for row in table if "misaligned" in row]
    assert marked == [w.word for w in expected.misaligned]
    assert len(marked) == 1
    assert f"CLIPScore    {expected.clip_score:.4f}" in out
    assert f"F-CLIPScore  {expected.f_clip_score:.4e}" in out


def test_detect_json_matches_the_api(
    image_file: Path, tiny_openclip_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = f"openclip:{tiny_openclip_dir}"
    options = ["--layers", "2", "--template", "", "--epsilon", "-1e-4", "--dtype", "float32"]
    argv = ["detect", str(image_file), CAPTION, "--model", model, *options, "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    expected = CLIP4DM(model, layers=2, template="", epsilon=-1e-4).detect(image_file, CAPTION)
    for key in (
        "caption",
        "words",
        "misaligned",
        "negative_sum",
        "clip_score",
        "f_clip_score",
        "cosine",
        "truncated",
        "unscored_words",
        "mode",
    ):
        assert key in result, key
    assert result["mode"] == "threshold"
    assert [w["word"] for w in result["words"]] == [w.word for w in expected.words]
    assert [w["score"] for w in result["words"]] == pytest.approx(
        [w.score for w in expected.words], rel=1e-5, abs=1e-9
    )
    assert [w["word"] for w in result["misaligned"]] == [w.word for w in expected.misaligned]
    assert result["f_clip_score"] == pytest.approx(expected.f_clip_score, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing image", "no such file"),
        ("not an image", "not a recognised image format"),
        ("empty text", "empty"),
        ("offline model", "cannot load model"),
        ("unknown model", "unknown model"),
        ("too many layers", "layers must be"),
        ("no arguments", "give IMAGE and TEXT"),
        ("pairs without out", "--pairs needs --out"),
        ("out without pairs", "go with --pairs"),
    ],
)
def test_detect_errors_are_one_line(
    case: str,
    message: str,
    tmp_path: Path,
    image_file: Path,
    tiny_hf_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    tiny = ["--model", f"hf:{tiny_hf_dir}"]
    argv = {
        "missing image": ["detect", str(tmp_path / "nope.jpg"), "a cat", *tiny],
        "not an image": ["detect", str(text_file), "a cat", *tiny],
        "empty text": ["detect", str(image_file), " \t ", *tiny],
        "offline model": ["detect", str(image_file), "a cat"],  # default hub model, offline
        "unknown model": ["detect", str(image_file), "a cat", "--model", str(tmp_path / "none")],
        "too many layers": ["detect", str(image_file), "a cat", *tiny, "--layers", "99"],
        "no arguments": ["detect"],
        "pairs without out": ["detect", "--pairs", str(tmp_path / "p.jsonl")],
        "out without pairs": ["detect", str(image_file), "a cat", "--out", "r.jsonl"],
    }[case]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("clip4dm detect: error: ")
    assert message in lines[-1]
    assert "Traceback" not in captured.err
    assert captured.out == ""


def test_detect_lists_unscored_words_of_a_long_caption(
    image_file: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    words = [f"word{i}" for i in range(90)]  # far beyond the 77-token context
    assert main(["detect", str(image_file), " ".join(words), "--model", f"hf:{tiny_hf_dir}"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().endswith("(not scored)")]
    assert rows
    assert [row[1] for row in rows] == words[-len(rows) :]
    assert f"{len(rows)} word(s) at the end were not scored" in out
