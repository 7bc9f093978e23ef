"""HTML pages and PNG figures of detections: content, escaping, colours, self-containment."""

from __future__ import annotations

import html
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clip4dm import CLIP4DM, Detection
from clip4dm.cli import main
from clip4dm.visualize import (
    NEGATIVE_RGB,
    POSITIVE_RGB,
    render_html,
    render_html_report,
    require_matplotlib,
    save_figure,
    save_html,
    word_colour,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _image(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _hand_made() -> dict[str, Any]:
    """A detection in its dictionary form, with HTML-hostile words and uneven spacing."""
    caption = 'a  <b>cup</b> of & "coke"...'
    words = [
        ("a", 0, -1e-4),
        ("<b>cup</b>", 3, -4e-4),
        ("of", 14, 2e-4),
        ("&", 17, 1e-4),
        ('"coke"', 19, -2e-4),
        ("...", 25, 0.0),
    ]
    spans = [{"start": at, "end": at + len(w)} for w, at, _ in words]
    assert all(
        caption[x["start"] : x["end"]] == w for x, (w, _, _) in zip(spans, words, strict=True)
    )
    return {
        "caption": caption,
        "words": [
            {"word": w, "index": i, "score": s, **span}
            for i, ((w, _, s), span) in enumerate(zip(words, spans, strict=True))
        ],
        "misaligned": [{"word": "<b>cup</b>", "index": 1, "score": -4e-4, **spans[1]}],
        "negative_sum": -4e-4,
        "cosine": 0.25,
        "clip_score": 0.625,
        "f_clip_score": -3e-4,
        "mode": "most_negative",
        "truncated": False,
        "unscored_words": [],
    }


def _caption_paragraph(page: str) -> str:
    match = re.search(r'<p class="caption">(.*?)</p>', page, re.S)
    assert match is not None
    return match.group(1)


def _spans(paragraph: str) -> list[tuple[str, str]]:
    """(class attribute, inner text) of each word span of the caption paragraph."""
    return [
        (cls, html.unescape(text))
        for cls, text in re.findall(r'<span class="([^"]*)"[^>]*>(.*?)</span>', paragraph)
    ]


@pytest.fixture(scope="module")
def detection(tiny_hf_dir: Path) -> Detection:
    return CLIP4DM(f"hf:{tiny_hf_dir}").detect(
        _image(), 'a cup of "coke" on the <table> & T-shirt.'
    )


def test_word_colour_blends_from_white() -> None:
    assert word_colour(0.0, 1.0) == (255, 255, 255)
    assert word_colour(-2.0, 2.0) == NEGATIVE_RGB
    assert word_colour(3.0, 2.0) == POSITIVE_RGB  # clipped at full intensity
    # A quarter of the way from white to red (220, 38, 38): 255 - 35/4, 255 - 217/4.
    assert word_colour(-1.0, 4.0) == (246, 201, 201)
    assert word_colour(1.0, 0.0) == (255, 255, 255)  # all-zero caption: no colour


def test_html_escapes_and_keeps_the_caption_text() -> None:
    data = _hand_made()
    page = render_html(_image(), data)
    paragraph = _caption_paragraph(page)
    assert "<b>" not in paragraph
    # Dropping the word markup gives back the caption, spacing included.
    assert html.unescape(re.sub(r"<[^>]+>", "", paragraph)) == data["caption"]
    spans = _spans(paragraph)
    assert [text for _, text in spans] == [w["word"] for w in data["words"]]
    assert [cls for cls, _ in spans] == ["w", "w mis", "w", "w", "w", "w"]
    # Intensity is |score| / max |score|: the -4e-4 word is full red, +2e-4 half green.
    assert (
        'style="background-color: rgb(220, 38, 38)" title="score -4.000e-04 — misaligned">'
        "&lt;b&gt;cup&lt;/b&gt;</span>"
    ) in paragraph
    half_green = word_colour(2e-4, 4e-4)
    assert f"rgb({half_green[0]}, {half_green[1]}, {half_green[2]})" in paragraph
    assert "CLIPScore" in page
    assert "F-CLIPScore" in page
    assert "-3.0000e-04" in page
    assert "RefCLIPScore" not in page
    data["ref_clip_score"] = 0.5
    assert "<dt>RefCLIPScore</dt><dd>0.5000</dd>" in render_html(None, data)


def test_html_is_self_contained(detection: Detection) -> None:
    page = render_html(_image(), detection)
    assert page.startswith("<!DOCTYPE html>")
    assert re.search(r'src="data:image/jpeg;base64,[A-Za-z0-9+/=]+"', page)
    for external in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert external not in page
    paragraph = _caption_paragraph(page)
    assert [text for _, text in _spans(paragraph)] == [w.word for w in detection.words]
    marked = [text for cls, text in _spans(paragraph) if "mis" in cls.split()]
    assert marked == [w.word for w in detection.misaligned]
    for word in detection.words:
        assert f"<td>{html.escape(word.word)}</td>" in page
    assert f"{detection.clip_score:.4f}" in page


def test_html_from_dict_equals_html_from_detection(detection: Detection) -> None:
    as_dict = json.loads(json.dumps(detection.to_dict()))
    assert render_html(_image(), as_dict) == render_html(_image(), detection)


def test_html_marks_unscored_words_and_missing_image() -> None:
    data = _hand_made()
    data["caption"] = "a cup of  coke beyond"
    data["words"] = [
        {"word": w, "index": i, "score": -1e-4, "start": at, "end": at + len(w)}
        for i, (w, at) in enumerate([("a", 0), ("cup", 2), ("of", 6)])
    ]
    data["misaligned"] = []
    data["truncated"] = True
    data["unscored_words"] = ["coke", "beyond"]
    page = render_html(None, data)
    assert "image not available" in page
    paragraph = _caption_paragraph(page)
    spans = _spans(paragraph)
    assert spans[-2:] == [("w unscored", "coke"), ("w unscored", "beyond")]
    assert html.unescape(re.sub(r"<[^>]+>", "", paragraph)) == data["caption"]
    assert "not scored" in page


def test_words_are_placed_by_their_spans_not_by_searching() -> None:
    data = _hand_made()
    data["caption"] = "a a"
    data["words"] = [
        {"word": "a", "index": 0, "score": -1e-4, "start": 0, "end": 1},
        {"word": "a", "index": 1, "score": 2e-4, "start": 2, "end": 3},
    ]
    data["misaligned"] = [data["words"][0]]
    paragraph = _caption_paragraph(render_html(None, data))
    assert [cls for cls, _ in _spans(paragraph)] == ["w mis", "w"]
    assert html.unescape(re.sub(r"<[^>]+>", "", paragraph)) == "a a"
    with pytest.raises(ValueError, match="mode"):
        render_html(None, {**data, "mode": "bogus"})


def test_report_has_one_section_per_entry(tmp_path: Path) -> None:
    first, second = _hand_made(), _hand_made()
    second["caption"] = "a dog"
    second["words"] = [
        {"word": "a", "index": 0, "score": 1e-4},
        {"word": "dog", "index": 1, "score": -1e-4},
    ]
    page = render_html_report([(_image(1), first, "row <1>"), (None, second, "row 2")])
    assert page.count('<section class="pair">') == 2
    assert "row &lt;1&gt;" in page
    out = save_html(_image(), first, tmp_path / "page.html")
    assert out.read_text(encoding="utf-8") == render_html(_image(), first)


def _check_png(path: Path) -> Image.Image:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1024
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def test_figure_is_a_valid_png(tmp_path: Path, detection: Detection) -> None:
    picture = _check_png(save_figure(_image(), detection, tmp_path / "fig.png", dpi=60))
    assert picture.width == 8 * 60  # width_in * dpi
    assert picture.height > picture.width // 2
    # Hand-made, with unscored words and a tall image.
    data = _hand_made()
    data["unscored_words"] = ["more", "words"]
    data["truncated"] = True
    _check_png(save_figure(_image(2, (30, 90)), data, tmp_path / "tall.png", dpi=60))


def test_missing_matplotlib_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"clip4dm\[viz\]"):
        require_matplotlib()
    image = tmp_path / "img.png"
    _image().save(image)
    assert main(["visualize", str(image), "a cat", "--out", str(tmp_path / "f.png")]) == 2
    assert "clip4dm[viz]" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_cli_visualize_html_and_png(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "img.png"
    _image(3).save(image)
    text = "a cup of <coke> & tea."
    detector = CLIP4DM(f"hf:{tiny_hf_dir}")
    words = [w.word for w in detector.detect(image, text).words]
    model = ["--model", f"hf:{tiny_hf_dir}"]
    page = tmp_path / "page.html"
    assert main(["visualize", str(image), text, "--out", str(page), *model]) == 0
    content = page.read_text(encoding="utf-8")
    assert [t for _, t in _spans(_caption_paragraph(content))] == words
    assert "data:image/jpeg;base64," in content
    figure = tmp_path / "figure.png"
    assert main(["visualize", str(image), text, "--out", str(figure), *model]) == 0
    _check_png(figure)
    assert "wrote" in capsys.readouterr().out


def test_cli_visualize_from_results(
    tmp_path: Path, detection: Detection, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "img.png"
    _image().save(image)
    other = _hand_made()
    rows = [
        {"id": "x", "image": "img.png", **detection.to_dict()},
        {"id": 7, "line": 2, "error": "cannot load image"},
        {"id": "y", "image": "gone.png", **other},
    ]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    page = tmp_path / "all.html"
    assert main(["visualize", "--from", str(results), "--out", str(page)]) == 0
    content = page.read_text(encoding="utf-8")
    assert content.count('<section class="pair">') == 2
    assert content.count("data:image/jpeg;base64,") == 1  # gone.png: placeholder
    assert "image not available" in content
    captured = capsys.readouterr()
    assert "1 error or invalid row(s) skipped" in captured.out
    assert "gone.png" in captured.err

    figure = tmp_path / "x.png"
    assert main(["visualize", "--from", str(results), "--id", "x", "--out", str(figure)]) == 0
    _check_png(figure)
    # A PNG shows one pair: several rows, an unknown id, or a missing image are errors.
    assert main(["visualize", "--from", str(results), "--out", str(tmp_path / "many.png")]) == 2
    again = ["--out", str(page), "--overwrite"]
    assert main(["visualize", "--from", str(results), "--id", "zz", *again]) == 2
    again = ["--out", str(figure), "--overwrite"]
    assert main(["visualize", "--from", str(results), "--id", "y", *again]) == 2
    err = capsys.readouterr().err
    assert "--id" in err
    assert "no result row with id zz" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["visualize", "IMG", "a cat", "--out", "page.pdf"], "must end in .html or .png"),
        (["visualize", "--out", "page.html"], "give IMAGE and TEXT"),
        (["visualize", "IMG", "a cat", "--out", "p.html", "--id", "3"], "go with --from"),
        (["visualize", "IMG", "  ", "--out", "p.html"], "empty"),
        (["visualize", "missing.png", "a cat", "--out", "p.html"], "no such file"),
    ],
)
def test_cli_visualize_usage_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "img.png"
    _image().save(image)
    argv = [str(image) if a == "IMG" else a for a in argv]
    argv = [str(tmp_path / a) if a.startswith(("page", "p.", "missing")) else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_visualize_never_replaces_a_file_unasked(
    tmp_path: Path, tiny_hf_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "img.png"
    _image().save(image)
    page = tmp_path / "page.html"
    page.write_text("my page")
    model = ["--model", f"hf:{tiny_hf_dir}"]
    assert main(["visualize", str(image), "a cat", "--out", str(page), *model]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "already exists (--out): pass --overwrite" in err
    assert page.read_text() == "my page"
    assert main(["visualize", str(image), "a cat", "--out", str(page), *model, "--overwrite"]) == 0
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    # Never over an input, --overwrite or not.
    copy = tmp_path / "img.html"
    copy.write_text("<html>an input</html>")
    args = ["visualize", "--from", str(copy), "--out", str(copy), "--overwrite"]
    assert main(args) == 2
    assert "never writes over its inputs" in capsys.readouterr().err
    assert copy.read_text() == "<html>an input</html>"


def test_a_failed_figure_leaves_the_old_file(
    tmp_path: Path, detection: Detection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matplotlib.figure import Figure

    target = tmp_path / "fig.png"
    target.write_bytes(b"old figure")

    def torn(self: Figure, fname: Any, **kwargs: Any) -> None:
        Path(fname).write_bytes(PNG_MAGIC)  # half a file, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", torn)
    with pytest.raises(OSError, match="No space"):
        save_figure(_image(), detection, target, dpi=40)
    assert target.read_bytes() == b"old figure"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
