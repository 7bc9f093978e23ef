"""Pictures of a detection: the caption's words coloured by score, as HTML or as a PNG figure.

Negative scores (evidence of misalignment) are red, positive ones green; a word's colour
intensity is ``|score| / max |score|`` over the caption. The selected (misaligned) words are
marked: bold, underlined and boxed in HTML; bold and boxed in the figure. The HTML page is
self-contained (the image is embedded as base64 JPEG, styles inline). The figure needs matplotlib
(``pip install "clip4dm[viz]"``), imported only when a figure is drawn.
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
    start: int | None  # character offset in the caption, when found there


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


def _field(source: object, name: str, default: Any = None) -> Any:
    if isinstance(source, Mapping):
        return source.get(name, default)
    return getattr(source, name, default)


def _word_entries(items: object) -> list[tuple[str, int, float]]:
    """(word, index, score) of each entry of a ``words``/``misaligned`` list (objects or dicts)."""
    if not isinstance(items, Sequence):
        return []
    entries: list[tuple[str, int, float]] = []
    for position, item in enumerate(items):
        word = _field(item, "word")
        score = _field(item, "score")
        index = _field(item, "index", position)
        if isinstance(word, str) and isinstance(score, int | float):
            entries.append((word, int(index), float(score)))
    return entries


def _locate(caption: str, words: Sequence[str]) -> list[int | None]:
    """Character offset of each word in ``caption``, searching left to right."""
    offsets: list[int | None] = []
    cursor = 0
    lowered = caption.casefold()
    for word in words:
        at = caption.find(word, cursor)
        if at < 0 and len(word.casefold()) == len(word):
            at = lowered.find(word.casefold(), cursor)
        if at < 0:
            offsets.append(None)
            continue
        offsets.append(at)
        cursor = at + len(word)
    return offsets


def _view(detection: DetectionData) -> _View:
    """The fields the renderers need, from a `Detection` or its dictionary form."""
    scored = _word_entries(_field(detection, "words", []))
    selected = {index for _, index, _ in _word_entries(_field(detection, "misaligned", []))}
    unscored_raw = _field(detection, "unscored_words", []) or []
    unscored = [w for w in unscored_raw if isinstance(w, str)]
    caption = str(_field(detection, "caption", "") or "")
    if not caption:
        caption = " ".join([w for w, _, _ in scored] + unscored)
    texts = [w for w, _, _ in scored] + unscored
    offsets = _locate(caption, texts)
    words = [
        _Word(text, score, index in selected, offset)
        for (text, index, score), offset in zip(scored, offsets, strict=False)
    ]
    words += [
        _Word(text, None, False, offset)
        for text, offset in zip(unscored, offsets[len(scored) :], strict=True)
    ]
    scale = max((abs(w.score) for w in words if w.score is not None), default=0.0)

    def number(name: str) -> float | None:
        value = _field(detection, name)
        return float(value) if isinstance(value, int | float) else None

    return _View(
        caption=caption,
        words=words,
        scale=scale,
        clip_score=number("clip_score") or 0.0,
        f_clip_score=number("f_clip_score") or 0.0,
        cosine=number("cosine"),
        negative_sum=number("negative_sum"),
        ref_clip_score=number("ref_clip_score"),
        mode=str(_field(detection, "mode", "") or ""),
        truncated=bool(_field(detection, "truncated", False)),
    )


def _intensity(score: float, scale: float) -> float:
    return min(abs(score) / scale, 1.0) if scale > 0 else 0.0


def word_colour(score: float, scale: float) -> tuple[int, int, int]:
    """The RGB colour of a word: white blended towards red (negative) or green (positive)."""
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
    """One self-contained HTML page with a section per ``(image, detection, heading)`` entry.

    ``image`` None shows a placeholder (e.g. a results row whose image file is gone).
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
    """A self-contained HTML page: the image, the coloured caption, the scores and a word table."""
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
    """Write `render_html` to ``path`` (UTF-8) and return the path."""
    out = Path(path)
    out.write_text(
        render_html(image, detection, title=title, max_image_side=max_image_side),
        encoding="utf-8",
    )
    return out


# -- PNG figure ---------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Raise a helpful ImportError now if matplotlib (the ``viz`` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            'PNG figures need matplotlib: pip install "clip4dm[viz]" (or write an .html page)'
        ) from exc


def save_figure(
    image: ImageSource,
    detection: DetectionData,
    path: str | os.PathLike[str],
    *,
    dpi: int = 150,
    width_in: float = 8.0,
    font_size: float = 14.0,
) -> Path:
    """Draw the image above the caption's coloured words, with a colour bar; save as PNG.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).
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

    out = Path(path)
    figure.savefig(out, format="png", dpi=dpi, facecolor="white")
    return out
