"""The clip4dm command line parses and reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


# -- one surface ----------------------------------------------------------------------------------


def test_help_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import contextlib, io, sys\n"
        "from clip4dm.cli import build_parser, main\n"
        "build_parser().format_help()\n"
        "for argv in (['--help'], ['detect', '--help'], ['visualize', '--help'], "
        "['eval', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as exc:\n"
        "            assert exc.code == 0, argv\n"
        "    assert 'usage' in out.getvalue(), argv\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'open_clip', 'PIL') "
        "if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["detect", "IMG", "a cat", "--epsilon", "nan"], "expected a finite number, got 'nan'"),
        (["detect", "IMG", "a cat", "--epsilon", "-inf"], "expected a finite number"),
        (["detect", "IMG", "a cat", "--layers", "0"], "expected a positive integer"),
        (["detect", "--pairs", "p.jsonl", "--out", "o", "--batch-size", "0"], "positive integer"),
        (["detect", "IMG", "a cat", "--dtype", "float8"], "invalid choice: 'float8'"),
        (["detect", "IMG", "a cat", "--device", "gpu"], "expected auto, cpu"),
        (["detect", "IMG", "a cat", "--mode", "lowest"], "invalid choice: 'lowest'"),
        (["eval", "foil", "--data", "d", "--out", "o", "--epsilon", "nan"], "finite number"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(
    argv: list[str], message: str, image_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(image_file) if a == "IMG" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"clip4dm {argv[0]}: error: ")
    assert message in err


def test_debug_shows_the_traceback(tmp_path: Path, tiny_hf_dir: Path) -> None:
    from vl_core.cli import UsageError

    argv = ["detect", str(tmp_path / "nope.jpg"), "a cat", "--model", f"hf:{tiny_hf_dir}"]
    assert main(argv) == 2
    with pytest.raises(UsageError, match="no such file"):
        main([*argv, "--debug"])


# -- the word table -------------------------------------------------------------------------------


def _display_columns(text: str) -> int:
    """Terminal columns of ``text``: wide (CJK, emoji) characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def test_table_aligns_wide_characters() -> None:
    from clip4dm import Detection, WordScore
    from clip4dm.cli import format_table

    words = [("猫がいる", -2e-4), ("a", 1e-4), ("🐱", -1e-4), ("cat", 3e-5)]
    scored = [WordScore(w, i, s) for i, (w, s) in enumerate(words)]
    table = format_table(
        Detection(
            caption="猫がいる a 🐱 cat",
            words=scored,
            misaligned=[scored[0]],
            negative_sum=-2e-4,
            cosine=0.2,
            clip_score=0.5,
            f_clip_score=-1.6e-4,
            mode="threshold",
        )
    )
    rows = table.splitlines()[:5]  # the header and the four words
    ends = set()
    for row, (word, score) in zip(rows, [("word", 0.0), *words], strict=True):
        text = "score" if word == "word" else f"{score:+.3e}"
        assert word in row
        ends.add(_display_columns(row[: row.index(text) + len(text)]))
    assert len(ends) == 1, table  # every score ends in the same display column


# -- models: strict weights, the wrong kind, downloads ---------------------------------------------


def test_a_clip_with_missing_weights_is_refused(
    tmp_path: Path, tiny_hf_dir: Path, image_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_hf_dir, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["text_projection.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    assert main(["detect", str(image_file), "a cat", "--model", f"hf:{broken}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("clip4dm detect: error: the weights of hf:")
    assert "1 missing (text_projection.weight)" in captured.err

    extra = load_file(tiny_hf_dir / "model.safetensors")
    extra.update({f"spare.{i}": extra["logit_scale"].clone() for i in range(6)})
    save_file(extra, broken / "model.safetensors", metadata={"format": "pt"})
    assert main(["detect", str(image_file), "a cat", "--model", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "6 unexpected (spare.0, spare.1, spare.2, spare.3 and 2 more)" in err


def test_an_egtr_model_is_not_taken_for_a_clip(
    image_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    egtr = Path(__file__).resolve().parents[3] / "shared" / "models" / "egtr-shapes"
    assert (egtr / "config.json").is_file()
    assert main(["detect", str(image_file), "a cat", "--model", str(egtr)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "is not a CLIP model (its config.json says model_type 'egtr')" in captured.err


def _fake_hub_cache(cache: Path, repo: str, files: list[str]) -> None:
    """The layout huggingface_hub gives a downloaded repository (one snapshot)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0123abcd")
    for name in files:
        (snapshot / name).write_text("{}")


def test_a_first_download_is_announced(
    tmp_path: Path,
    image_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub.constants

    import clip4dm.detector as detector_module
    from vl_core.hub import ModelNotAvailableError

    def no_network(name: str, **kwargs: Any) -> Any:
        raise ModelNotAvailableError(name, "no network in tests", "")

    monkeypatch.setattr(detector_module, "load_clip", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    notice = (
        "clip4dm: downloading openai/clip-vit-base-patch32 (about 605 MB) from the Hugging Face "
        "Hub; set HF_HUB_OFFLINE=1 or pass --model DIR to use local files"
    )
    assert main(["detect", str(image_file), "a cat"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == notice
    assert err[1].startswith("clip4dm detect: error: cannot load model")

    # Already in the local cache: nothing to announce. Offline: nothing is downloaded.
    _fake_hub_cache(cache, "openai/clip-vit-base-patch32", ["config.json", "model.safetensors"])
    assert main(["detect", str(image_file), "a cat"]) == 2
    assert "downloading" not in capsys.readouterr().err
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["detect", str(image_file), "a cat"]) == 2
    assert "downloading" not in capsys.readouterr().err
