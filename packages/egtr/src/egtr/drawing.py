"""Draw a scene graph: boxes and labels on the image, the relation graph beside it, one PNG.

Needs matplotlib (``pip install 'egtr[viz]'``); it is imported only when drawing. Drawings are
written atomically and carry a PNG text chunk (``Software: egtr draw_scene_graph``) so that
``egtr predict`` can tell its own drawings from other files (:func:`is_drawing`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from egtr.scene_graph import SceneGraph
from vl_core.cli import require_extra
from vl_core.files import atomic_save
from vl_core.images import ImageSource, load_image

DRAWING_SOFTWARE = "egtr draw_scene_graph"
"""The ``Software`` text chunk of every PNG written by :func:`draw_scene_graph`."""

_COLORS = (
    "tab:red",
    "tab:blue",
    "tab:green",
    "tab:orange",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:olive",
    "tab:cyan",
    "tab:gray",
)


def require_matplotlib() -> Any:
    """The ``matplotlib.pyplot`` module (Agg backend unless one was chosen).

    Raises ``vl_core.cli.MissingExtraError`` (an ``ImportError``) naming ``egtr[viz]`` when
    matplotlib is not installed.
    """
    matplotlib = require_extra(
        "matplotlib", package="egtr", extra="viz", feature="drawing scene graphs"
    )
    matplotlib.use("Agg", force=False)
    return require_extra(
        "matplotlib.pyplot", package="egtr", extra="viz", feature="drawing scene graphs"
    )


def is_drawing(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a PNG written by :func:`draw_scene_graph` (False when unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            text = getattr(image, "text", {})
            return bool(image.format == "PNG" and text.get("Software") == DRAWING_SOFTWARE)
    except (OSError, ValueError):
        return False


def draw_scene_graph(
    image: ImageSource,
    graph: SceneGraph,
    path: str | os.PathLike[str],
    *,
    max_relations: int | None = 20,
    dpi: int = 100,
) -> Path:
    """Write one PNG to ``path``: the image with the graph's boxes, and the graph drawn beside it.

    Only the best ``max_relations`` relations (and the objects they use) are drawn. The file is
    replaced atomically (parent folders are created). Returns ``path`` as a ``Path``.

    Raises ``vl_core.cli.MissingExtraError`` (an ``ImportError``) without matplotlib,
    ``vl_core.images.ImageLoadError`` when ``image`` cannot be read and ``OSError`` when the file
    cannot be written.
    """
    plt = require_matplotlib()
    picture = load_image(image)
    relations = graph.relations if max_relations is None else graph.relations[:max_relations]
    used = sorted({r.subject for r in relations} | {r.object for r in relations})
    width, height = picture.size
    fig, (ax_img, ax_graph) = plt.subplots(
        1, 2, figsize=(12, 6), gridspec_kw={"width_ratios": [max(width / height, 0.5), 1.0]}
    )
    try:
        ax_img.imshow(picture)
        ax_img.set_axis_off()
        for index in used:
            obj = graph.objects[index]
            color = _COLORS[index % len(_COLORS)]
            x1, y1, x2, y2 = obj.box
            ax_img.add_patch(
                plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2)
            )
            ax_img.text(
                x1,
                y1,
                f"{index}:{obj.label_name} {obj.score:.2f}",
                color="white",
                fontsize=8,
                va="bottom",
                bbox={"facecolor": color, "alpha": 0.7, "pad": 1, "edgecolor": "none"},
            )
        _draw_graph(ax_graph, graph, used, relations)
        fig.tight_layout()
        target = atomic_save(
            path,
            lambda temporary: fig.savefig(
                temporary, format="png", dpi=dpi, metadata={"Software": DRAWING_SOFTWARE}
            ),
        )
    finally:
        plt.close(fig)
    return target


def _draw_graph(ax: Any, graph: SceneGraph, used: list[int], relations: tuple[Any, ...]) -> None:
    """Nodes on a circle, one arrow per relation labelled with its predicate."""
    ax.set_axis_off()
    ax.set_xlim(-1.4, 1.4)
    ax.set_ylim(-1.4, 1.4)
    ax.set_aspect("equal")
    if not used:
        ax.text(0, 0, "no relations", ha="center", va="center")
        return
    pos = {
        node: (math.cos(2 * math.pi * k / len(used)), math.sin(2 * math.pi * k / len(used)))
        for k, node in enumerate(used)
    }
    for rel in relations:
        (xs, ys), (xo, yo) = pos[rel.subject], pos[rel.object]
        ax.annotate(
            "",
            xy=(xo, yo),
            xytext=(xs, ys),
            arrowprops={"arrowstyle": "->", "color": "0.4", "shrinkA": 14, "shrinkB": 14},
        )
        ax.text(
            (xs + xo) / 2,
            (ys + yo) / 2,
            rel.predicate_name,
            fontsize=7,
            ha="center",
            color="0.2",
            bbox={"facecolor": "white", "alpha": 0.8, "pad": 1, "edgecolor": "none"},
        )
    for node, (x, y) in pos.items():
        color = _COLORS[node % len(_COLORS)]
        ax.text(
            x,
            y,
            f"{node}:{graph.objects[node].label_name}",
            ha="center",
            va="center",
            fontsize=8,
            color="white",
            bbox={"facecolor": color, "boxstyle": "round"},
        )
