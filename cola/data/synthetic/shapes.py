"""Flat shapes drawn around a centre, shared by the synthetic audio-visual sets (AVE and AVSBench)."""

from __future__ import annotations

from typing import Any

from PIL import ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "plus", "ring", "bar", "ellipse")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: Any) -> None:
    """Draws ``shape`` of radius ``r`` centred at (cx, cy) with ``fill`` (an RGB tuple or a grey level).

    Raises:
        ValueError: ``shape`` is not one of :data:`SHAPES`.
    """
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = 0.85 * r
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "plus":
        w = 0.35 * r
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(0.35 * r)))
    elif shape == "bar":
        draw.rectangle([cx - r, cy - 0.4 * r, cx + r, cy + 0.4 * r], fill=fill)
    elif shape == "ellipse":
        draw.ellipse([cx - r, cy - 0.55 * r, cx + r, cy + 0.55 * r], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
