"""Pictures of a detection: the caption's words coloured by score, as HTML or as a PNG figure.

Negative scores (evidence of misalignment) are red, positive ones green; a word's colour
intensity is ``|score| / max |score|`` over the caption. The selected (misaligned) words are
marked: bold, underlined and boxed in HTML; bold and boxed in the figure. Each word is placed by
its character span in the caption (`clip4dm.WordScore.start`/``end``), so the caption keeps its
own spacing. The HTML page is self-contained (the image is embedded as base64 JPEG, styles
inline). The figure needs matplotlib (``pip install "clip4dm[viz]"``), imported only when a
figure is drawn. Files are written atomically (a temporary file renamed over the target).
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from PIL import Image

from clip4dm.results import Detection
from vl_core.cli import require_extra
from vl_core.files import atomic_save, atomic_write
from vl_core.images import ImageSource, load_image

__all__ = [
    "NEGATIVE_RGB",
    "POSITIVE_RGB",
    "DetectionData",
    "render_html",
    "render_html_report",
    "require_matplotlib",
    "save_figure",
    "save_html",
    "word_colour",
]

NEGATIVE_RGB = (220, 38, 38)
"""Colour of the most negative word of a caption (red)."""
POSITIVE_RGB = (22, 163, 74)
"""Colour of the most positive word of a caption (green)."""

DetectionData = Detection | Mapping[str, Any]
"""A `Detection`, or its `to_dict()` form (e.g. a row of a results JSONL file)."""


@dataclass(frozen=True)
class _Word:
    text: str
    score: float | None  # None: beyond the context length, not scored
    misaligned: bool
    start: int | None  # character offset in the caption (None: a word built without its span)


@dataclass(frozen=True)
class _View:
    caption: str
    words: list[_Word]
    scale: float  # max |score| over the scored words (0.0 when none is non-zero)
    clip_score: float
    f_clip_score: float
    cosine: float | None
    negative_sum: float | None
    ref_clip_score: float | None
    mode: str
    truncated: bool


def _unscored_spans(caption: str, words: Sequence[str], cursor: int) -> list[int | None]:
    """Offsets of the unscored words: they follow the last scored word (ending at ``cursor``) in
    order, separated only by whitespace, so each is the next occurrence of its text."""
    offsets: list[int | None] = []
    for word in words:
        at = caption.find(word, cursor) if word else -1
        offsets.append(at if at >= 0 else None)
        if at >= 0:
            cursor = at + len(word)
    return offsets


def _view(detection: DetectionData) -> _View:
    """The fields the renderers need, from a `Detection` or its dictionary form.

    Raises ``ValueError`` when a dictionary is not a detection (`Detection.from_dict`).
    """
    found = detection if isinstance(detection, Detection) else Detection.from_dict(detection)
    selected = {w.index for w in found.misaligned}
    caption = found.caption or " ".join([w.word for w in found.words] + found.unscored_words)
    words = [
        _Word(w.word, w.score, w.index in selected, w.start if w.end is not None else None)
        for w in found.words
    ]
    ends = [w.end for w in found.words]
    if all(end is not None for end in ends):
        cursor = max((end for end in ends if end is not None), default=0)
        offsets = _unscored_spans(caption, found.unscored_words, cursor)
    else:  # words without spans (built by hand, or rows of an older version): spaced out
        offsets = [None] * len(found.unscored_words)
    words += [
        _Word(text, None, False, offset)
        for text, offset in zip(found.unscored_words, offsets, strict=True)
    ]
    scale = max((abs(w.score) for w in words if w.score is not None), default=0.0)
    return _View(
        caption=caption,
        words=words,
        scale=scale,
        clip_score=found.clip_score,
        f_clip_score=found.f_clip_score,
        cosine=found.cosine,
        negative_sum=found.negative_sum,
        ref_clip_score=found.ref_clip_score,
        mode=found.mode,
        truncated=found.truncated,
    )


def _intensity(score: float, scale: float) -> float:
    return min(abs(score) / scale, 1.0) if scale > 0 else 0.0


def word_colour(score: float, scale: float) -> tuple[int, int, int]:
    """The RGB colour of a word: white blended towards red (negative) or green (positive) by
    ``|score| / scale`` (white when ``scale`` is 0); returns ``(r, g, b)`` in 0..255."""
    target = NEGATIVE_RGB if score < 0 else POSITIVE_RGB
    weight = _intensity(score, scale)
    r, g, b = (round(255 + (c - 255) * weight) for c in target)
    return r, g, b


def _format_score(score: float | None) -> str:
    return "—" if score is None else f"{score:+.3e}"


# -- HTML ---------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 60rem; padding: 0 1rem; color: #111; background: #fff; }
section.pair { border-top: 1px solid #ddd; padding: 1rem 0 2rem; }
figure { margin: 0 0 1rem; }
figure img { max-width: 100%; max-height: 28rem; border: 1px solid #ccc; }
.noimage { padding: 2rem; background: #f4f4f4; color: #666; display: inline-block; }
p.caption { font-size: 1.4rem; line-height: 2.4; }
.w { padding: 0.15em 0.2em; border-radius: 0.25em; }
.w.mis { font-weight: bold; text-decoration: underline; text-decoration-thickness: 2px;
         outline: 2px solid #111; }
.w.unscored { color: #888; border: 1px dashed #aaa; }
.legend { display: flex; align-items: center; gap: 0.5rem; font-size: 0.85rem; color: #444; }
.legend .bar { width: 14rem; height: 0.8rem; border: 1px solid #ccc;
   background: linear-gradient(to right, rgb(220,38,38), #fff, rgb(22,163,74)); }
dl.scores { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dl.scores dt { font-weight: 600; }
dl.scores dd { margin: 0; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.2rem 0.8rem; border-bottom: 1px solid #eee; text-align: left; }
td.num { text-align: right; font-family: ui-monospace, monospace; }
tr.mis td { font-weight: bold; }
.note { color: #a15c00; }
"""


def _image_data_uri(image: ImageSource, max_side: int) -> str:
    """The image as a ``data:`` URI (JPEG, at most ``max_side`` pixels on its long side)."""
    picture = load_image(image)
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _caption_html(view: _View) -> str:
    """The caption with each word in a coloured span, keeping the caption's own spacing."""
    parts: list[str] = []
    cursor = 0
    for word in view.words:
        if word.start is not None and word.start >= cursor:
            parts.append(html.escape(view.caption[cursor : word.start]))
            cursor = word.start + len(word.text)
        elif parts:
            parts.append(" ")
        classes = ["w"]
        if word.score is None:
            classes.append("unscored")
            style = ""
            tip = "not scored (beyond the model's context length)"
        else:
            r, g, b = word_colour(word.score, view.scale)
            style = f' style="background-color: rgb({r}, {g}, {b})"'
            tip = f"score {_format_score(word.score)}" + (
                " — misaligned" if word.misaligned else ""
            )
            if word.misaligned:
                classes.append("mis")
        parts.append(
            f'<span class="{" ".join(classes)}"{style} title="{html.escape(tip)}">'
            f"{html.escape(word.text)}</span>"
        )
    if cursor < len(view.caption) and any(w.start is not None for w in view.words):
        parts.append(html.escape(view.caption[cursor:]))
    return "".join(parts)


def _section_html(
    image: ImageSource | None, detection: DetectionData, title: str | None, max_side: int
) -> str:
    view = _view(detection)
    out: list[str] = ['<section class="pair">']
    if title:
        out.append(f"<h2>{html.escape(title)}</h2>")
    if image is not None:
        alt = html.escape(view.caption, quote=True)
        out.append(f'<figure><img src="{_image_data_uri(image, max_side)}" alt="{alt}"></figure>')
    else:
        out.append('<figure><div class="noimage">image not available</div></figure>')
    out.append(f'<p class="caption">{_caption_html(view)}</p>')
    span = f"{view.scale:.2e}"
    out.append(
        f'<div class="legend"><span>&minus;{span}</span><span class="bar"></span>'
        f"<span>+{span}</span><span>red: negative score (misalignment evidence); "
        "boxed and underlined: selected as misaligned</span></div>"
    )
    if view.truncated:
        out.append(
            '<p class="note">The caption is longer than the model\'s context: the grey words '
            "were not scored.</p>"
        )
    selected = [w.text for w in view.words if w.misaligned]
    rows = [
        ("CLIPScore", f"{view.clip_score:.4f}"),
        ("F-CLIPScore", f"{view.f_clip_score:.4e}"),
    ]
    if view.ref_clip_score is not None:
        rows.append(("RefCLIPScore", f"{view.ref_clip_score:.4f}"))
    if view.cosine is not None:
        rows.append(("cosine", f"{view.cosine:.4f}"))
    if view.negative_sum is not None:
        rows.append(("negative sum", f"{view.negative_sum:.4e}"))
    if view.mode:
        rows.append(("mode", view.mode))
    rows.append(("misaligned", ", ".join(selected) if selected else "none"))
    out.append('<dl class="scores">')
    out.extend(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in rows)
    out.append("</dl>")
    out.append("<table><thead><tr><th>#</th><th>word</th><th>score</th><th></th></tr></thead>")
    out.append("<tbody>")
    for number, word in enumerate(view.words):
        marker = "misaligned" if word.misaligned else ("not scored" if word.score is None else "")
        row_class = ' class="mis"' if word.misaligned else ""
        out.append(
            f"<tr{row_class}><td>{number}</td><td>{html.escape(word.text)}</td>"
            f'<td class="num">{_format_score(word.score)}</td><td>{marker}</td></tr>'
        )
    out.append("</tbody></table></section>")
    return "\n".join(out)


def render_html_report(
    entries: Sequence[tuple[ImageSource | None, DetectionData, str | None]],
    *,
    title: str = "clip4dm",
    max_image_side: int = 768,
) -> str:
    """One self-contained HTML page with a section per ``(image, detection, heading)`` entry;
    returns the page's text.

    ``image`` None shows a placeholder (e.g. a results row whose image file is gone). Raises
    ``ValueError`` for a detection dictionary that is not a detection, or an unreadable image.
    """
    sections = [_section_html(img, det, head, max_image_side) for img, det, head in entries]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )


def render_html(
    image: ImageSource | None,
    detection: DetectionData,
    *,
    title: str = "clip4dm",
    max_image_side: int = 768,
) -> str:
    """A self-contained HTML page: the image, the coloured caption, the scores and a word table.

    Returns the page's text; raises like `render_html_report`.
    """
    return render_html_report(
        [(image, detection, None)], title=title, max_image_side=max_image_side
    )


def save_html(
    image: ImageSource | None,
    detection: DetectionData,
    path: str | os.PathLike[str],
    *,
    title: str = "clip4dm",
    max_image_side: int = 768,
) -> Path:
    """Write `render_html` to ``path`` (UTF-8, atomically) and return the path.

    Raises like `render_html_report`, and ``OSError`` when the file cannot be written.
    """
    page = render_html(image, detection, title=title, max_image_side=max_image_side)
    return atomic_write(path, page)


# -- PNG figure ---------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Check now that matplotlib (the ``viz`` extra) is there.

    Raises `vl_core.cli.MissingExtraError` (an ``ImportError``) naming ``clip4dm[viz]``.
    """
    require_extra(
        "matplotlib",
        package="clip4dm",
        extra="viz",
        feature="PNG figures; an .html page needs nothing",
    )


def save_figure(
    image: ImageSource,
    detection: DetectionData,
    path: str | os.PathLike[str],
    *,
    dpi: int = 150,
    width_in: float = 8.0,
    font_size: float = 14.0,
) -> Path:
    """Draw the image above the caption's coloured words, with a colour bar; save as PNG
    (atomically) and return the path.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch). Raises
    `vl_core.cli.MissingExtraError` without matplotlib, ``ValueError`` for a detection dictionary
    that is not a detection or an unreadable image, ``OSError`` when the file cannot be written.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    view = _view(detection)
    picture = load_image(image)
    pt_per_px = 72.0 / dpi

    # Lay the words out in lines (in points) before sizing the figure.
    probe = cast(Any, FigureCanvasAgg(Figure(dpi=dpi))).get_renderer()
    margin_pt, pad_pt, gap_pt = 0.5 * 72, 0.35 * font_size, 0.45 * font_size
    usable_pt = width_in * 72 - 2 * margin_pt
    line_pt = 2.2 * font_size
    placed: list[tuple[_Word, float, int]] = []
    x, line = 0.0, 0
    for word in view.words:
        prop = FontProperties(size=font_size, weight="bold" if word.misaligned else "normal")
        width_px, _, _ = probe.get_text_width_height_descent(word.text, prop, ismath=False)
        width_pt = width_px * pt_per_px + 2 * pad_pt
        if x > 0 and x + width_pt > usable_pt:
            x, line = 0.0, line + 1
        placed.append((word, x + pad_pt, line))
        x += width_pt + gap_pt
    lines = line + 1 if placed else 1

    aspect = picture.height / picture.width
    image_in = min((width_in - 1.0) * aspect, 6.0)
    words_in = lines * line_pt / 72 + 0.3
    bar_in, header_in, footer_in = 0.25, 0.45, 0.55
    height_in = header_in + image_in + 0.2 + words_in + bar_in + footer_in
    figure = Figure(figsize=(width_in, height_in), dpi=dpi, facecolor="white")
    FigureCanvasAgg(figure)

    def box(
        bottom_in: float, h_in: float, left_in: float = 0.5
    ) -> tuple[float, float, float, float]:
        return (
            left_in / width_in,
            bottom_in / height_in,
            (width_in - 2 * left_in) / width_in,
            h_in / height_in,
        )

    # Image, top.
    image_ax = figure.add_axes(box(height_in - header_in - image_in, image_in))
    image_ax.imshow(picture)
    image_ax.set_axis_off()
    scores = f"CLIPScore {view.clip_score:.4f}    F-CLIPScore {view.f_clip_score:.4e}"
    figure.text(0.5, 1 - 0.22 / height_in, scores, ha="center", va="center", fontsize=11)

    # Words, below the image.
    words_ax = figure.add_axes(box(footer_in + bar_in, words_in))
    words_ax.set_xlim(0, usable_pt)
    words_ax.set_ylim(words_in * 72, 0)
    words_ax.set_axis_off()
    for word, left, row in placed:
        if word.score is None:
            face, edge, width, style = "white", "#999999", 1.0, "dashed"
        else:
            face = "#{:02x}{:02x}{:02x}".format(*word_colour(word.score, view.scale))
            edge, width, style = (
                ("black", 1.6, "solid") if word.misaligned else ("none", 0, "solid")
            )
        words_ax.text(
            left,
            (row + 0.6) * line_pt,
            word.text,
            fontsize=font_size,
            fontweight="bold" if word.misaligned else "normal",
            color="#777777" if word.score is None else "black",
            va="center",
            ha="left",
            parse_math=False,
            bbox={
                "boxstyle": "round,pad=0.3",
                "facecolor": face,
                "edgecolor": edge,
                "linewidth": width,
                "linestyle": style,
            },
        )

    # Colour bar, bottom: the same white-to-red / white-to-green ramps as the words.
    scale = view.scale if view.scale > 0 else 1.0
    ramp = [tuple(c / 255 for c in rgb) for rgb in (NEGATIVE_RGB, (255, 255, 255), POSITIVE_RGB)]
    cmap = LinearSegmentedColormap.from_list("clip4dm", ramp)
    bar_ax = figure.add_axes(box(footer_in, bar_in, left_in=1.5))
    colour_bar = figure.colorbar(
        ScalarMappable(norm=Normalize(-scale, scale), cmap=cmap),
        cax=bar_ax,
        orientation="horizontal",
    )
    colour_bar.set_label("word score (red: negative, misalignment evidence; boxed: misaligned)")
    ticks = [-scale, -scale / 2, 0.0, scale / 2, scale]
    colour_bar.set_ticks(ticks, labels=[f"{t:+.1e}" if t else "0" for t in ticks], fontsize=8)

    return atomic_save(
        path, lambda target: figure.savefig(target, format="png", dpi=dpi, facecolor="white")
    )
