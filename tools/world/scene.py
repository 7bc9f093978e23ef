"""Scenes of the shapes world: what is drawn where, sampled deterministically, and rendered.

A scene is 2–4 shapes with distinct (colour, shape) pairs on a background. Every pair of shapes
is either well apart (boxes disjoint), one *inside* the other (mask contained in the other's
mask) or *overlapping* (masks intersect): box relations therefore agree with what is visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 212, 30),
    "purple": (140, 55, 190),
    "pink": (250, 110, 185),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
#: Size classes: side of the shape's box as a fraction of the image side (low, high).
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.16, 0.20),
    "medium": (0.24, 0.28),
    "large": (0.32, 0.38),
}
SIZE_ORDER: tuple[str, ...] = ("small", "medium", "large")
SUPERSAMPLE = 4
GAP = 0.02  # minimum gap between "apart" boxes, as a fraction of the image side

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (pixels, x1/y1 exclusive)


@dataclass(frozen=True)
class Shape:
    """One shape: its names, size class, box (``x0, y0, x1, y1`` in pixels) and drawn colour."""

    shape: str
    colour: str
    size: str
    box: Box
    rgb: tuple[int, int, int]

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass(frozen=True)
class Background:
    """A flat colour or a linear gradient (``rgb2`` at the far end), plus optional pixel noise."""

    kind: str  # "flat" | "gradient"
    rgb: tuple[int, int, int]
    rgb2: tuple[int, int, int]
    angle: float
    noise: float  # standard deviation on the 0..255 scale; 0 = none
    noise_seed: int


@dataclass(frozen=True)
class Scene:
    """A sampled scene; shapes are listed in drawing order (later ones on top)."""

    size: int
    background: Background
    shapes: list[Shape] = field(default_factory=list)


def _muted_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A low-saturation background colour (never confusable with the saturated shape colours)."""
    hue = rng.uniform(0.0, 1.0)
    sat = rng.uniform(0.0, 0.22)
    val = rng.uniform(0.35, 0.95)
    rgb = _hsv_to_rgb(hue, sat, val)
    return (round(rgb[0] * 255), round(rgb[1] * 255), round(rgb[2] * 255))


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def sample_background(rng: np.random.Generator) -> Background:
    kind = "flat" if rng.random() < 0.45 else "gradient"
    rgb = _muted_colour(rng)
    rgb2 = _muted_colour(rng) if kind == "gradient" else rgb
    angle = float(rng.uniform(0.0, 2 * math.pi))
    noise = float(rng.uniform(3.0, 9.0)) if rng.random() < 0.35 else 0.0
    return Background(kind, rgb, rgb2, angle, noise, int(rng.integers(0, 2**31 - 1)))


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    out = np.clip(np.array(rgb) + rng.integers(-12, 13, size=3), 0, 255)
    return (int(out[0]), int(out[1]), int(out[2]))


def shape_mask(shape: str, box: Box, size: int) -> NDArray[np.float32]:
    """Anti-aliased coverage ``[size, size]`` in 0..1 of ``shape`` filling ``box``.

    Boxes have integer corners inside the image; the shape is drawn supersampled on a canvas of
    the box alone and box-filtered down, so the cost does not grow with the image.
    """
    bx0, by0, bx1, by1 = (int(c) for c in box)
    if (bx0, by0, bx1, by1) != box or not (0 <= bx0 < bx1 <= size and 0 <= by0 < by1 <= size):
        raise ValueError(f"box {box} must have integer corners inside a {size}px image")
    w, h = (bx1 - bx0) * SUPERSAMPLE, (by1 - by0) * SUPERSAMPLE
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = w / 2, h / 2
    if shape == "circle":
        draw.ellipse([0, 0, w - 1, h - 1], fill=255)
    elif shape == "square":
        draw.rectangle([0, 0, w - 1, h - 1], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, 0), (w - 1, h - 1), (0, h - 1)], fill=255)
    elif shape == "star":
        points = []
        for k in range(10):
            radius = (w / 2 if k % 2 == 0 else w / 2 * 0.45) - 0.5
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        # the star's top point is at the top edge; stretch it so its lowest points reach the bottom
        ys = [p[1] for p in points]
        lo, hi = min(ys), max(ys)
        points = [(px, (py - lo) * (h - 1) / (hi - lo)) for px, py in points]
        draw.polygon(points, fill=255)
    elif shape == "cross":
        t = w * 0.34
        draw.rectangle([cx - t / 2, 0, cx + t / 2 - 1, h - 1], fill=255)
        draw.rectangle([0, cy - t / 2, w - 1, cy + t / 2 - 1], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    small = canvas.resize((bx1 - bx0, by1 - by0), Image.Resampling.BOX)
    mask = np.zeros((size, size), dtype=np.float32)
    mask[by0:by1, bx0:bx1] = np.asarray(small, dtype=np.float32) / 255.0
    return mask


def _box_gap(a: Box, b: Box) -> float:
    """Largest separation along x or y (negative when the boxes intersect)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def _contains(outer: Box, inner: Box) -> bool:
    return (
        outer[0] <= inner[0]
        and outer[1] <= inner[1]
        and inner[2] <= outer[2]
        and inner[3] <= outer[3]
    )


def _pair_ok(a: Shape, b: Shape, size: int) -> str | None:
    """How two placed shapes relate (``apart``/``inside``/``overlap``) or None if ambiguous."""
    if _box_gap(a.box, b.box) >= GAP * size:
        return "apart"
    if _box_gap(a.box, b.box) >= 0:
        return None  # boxes touch or nearly: neither clearly apart nor overlapping
    ma, mb = shape_mask(a.shape, a.box, size) > 0.5, shape_mask(b.shape, b.box, size) > 0.5
    for outer, inner, mo, mi in ((a, b, ma, mb), (b, a, mb, ma)):
        if _contains(outer.box, inner.box) and mi.sum() > 0 and np.all(mo[mi]):
            return "inside"
    shared = np.logical_and(ma, mb).sum()
    # ``b`` is drawn over ``a``: at least 15% of the smaller one is shared, at most 35% of ``a``
    if 0.15 * min(ma.sum(), mb.sum()) <= shared <= 0.35 * ma.sum() and not (
        _contains(a.box, b.box) or _contains(b.box, a.box)
    ):
        return "overlap"
    return None


def sample_scene(rng: np.random.Generator, size: int) -> Scene:
    """A random scene: 2–4 shapes with distinct (colour, shape); rejection-sampled placement."""
    background = sample_background(rng)
    while True:
        count = int(rng.integers(2, 5))
        kinds: set[tuple[str, str]] = set()
        while len(kinds) < count:
            kinds.add((str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))))
        ordered = sorted(kinds)
        rng.shuffle(ordered)
        mode = rng.choice(["apart", "inside", "overlap"], p=[0.7, 0.15, 0.15])
        shapes = _place(rng, size, ordered, str(mode))
        if shapes is not None:
            return Scene(size=size, background=background, shapes=shapes)


def _place(
    rng: np.random.Generator, size: int, kinds: list[tuple[str, str]], mode: str
) -> list[Shape] | None:
    shapes: list[Shape] = []
    for index, (colour, shape) in enumerate(kinds):
        want_inside = mode == "inside" and index == 1
        for _ in range(200):
            if want_inside:
                size_class = "small"
            elif mode == "inside" and index == 0:
                size_class = "large"
            else:
                size_class = str(rng.choice(SIZE_ORDER))
            low, high = SIZES[size_class]
            side = float(np.round(rng.uniform(low, high) * size))
            if want_inside:
                host = shapes[0].box
                cx = (host[0] + host[2]) / 2 + rng.uniform(-0.12, 0.12) * (host[2] - host[0])
                cy = (host[1] + host[3]) / 2 + rng.uniform(-0.05, 0.2) * (host[3] - host[1])
                x0, y0 = float(np.round(cx - side / 2)), float(np.round(cy - side / 2))
            else:
                x0 = float(rng.integers(1, size - int(side)))
                y0 = float(rng.integers(1, size - int(side)))
            box = (x0, y0, x0 + side, y0 + side)
            if box[0] < 0 or box[1] < 0 or box[2] > size or box[3] > size:
                continue
            candidate = Shape(shape, colour, size_class, box, _jitter(COLOURS[colour], rng))
            relations = [_pair_ok(other, candidate, size) for other in shapes]
            if any(r is None for r in relations):
                continue
            if any(
                r != "apart" and o.colour == colour for r, o in zip(relations, shapes, strict=True)
            ):
                continue  # a shape inside/over one of its own colour would not be visible
            if want_inside and relations[0] != "inside":
                continue
            if mode == "overlap" and index == 1 and relations[0] != "overlap":
                continue
            if not want_inside and any(r == "inside" for r in relations):
                continue
            if index >= 2 and any(r != "apart" for r in relations):
                continue
            shapes.append(candidate)
            break
        else:
            return None
    return shapes


def render_background(background: Background, size: int) -> NDArray[np.float32]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    if background.kind == "gradient":
        dx, dy = math.cos(background.angle), math.sin(background.angle)
        t = (xx - 0.5) * dx + (yy - 0.5) * dy
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    else:
        t = np.zeros_like(xx)
    a = np.array(background.rgb, dtype=np.float32)
    b = np.array(background.rgb2, dtype=np.float32)
    image = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    if background.noise > 0:
        noise_rng = np.random.default_rng(background.noise_seed)
        image = image + noise_rng.normal(0.0, background.noise, size=image.shape).astype(np.float32)
    out: NDArray[np.float32] = image.astype(np.float32)
    return out


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of ``scene.size`` pixels square."""
    image = render_background(scene.background, scene.size)
    for shape in scene.shapes:
        alpha = shape_mask(shape.shape, shape.box, scene.size)[..., None]
        image = image * (1 - alpha) + np.array(shape.rgb, dtype=np.float32) * alpha
    return Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8), "RGB")
