"""Draw a scene graph: boxes and labels on the image, the relation graph beside it, one PNG.

Needs matplotlib (``pip install 'egtr[viz]'``); it is imported only when drawing.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from egtr.scene_graph import SceneGraph
from vl_core.images import ImageSource, load_image

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


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("draw_scene_graph needs matplotlib: pip install 'egtr[viz]'") from exc
    return plt


def draw_scene_graph(
    image: ImageSource,
    graph: SceneGraph,
    path: str | os.PathLike[str],
    *,
    max_relations: int | None = 20,
    dpi: int = 100,
) -> Path:
    """Write one PNG to ``path``: the image with the graph's boxes, and the graph drawn beside it.

    Only the best ``max_relations`` relations (and the objects they use) are drawn.
    """
    plt = _pyplot()
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
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(target, format="png", dpi=dpi)
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
