"""Writes a synthetic visual-grounding set in the exact RefCOCO ``refer`` layout (docs/data.md#refcoco), for the
demo and tests.

From Python (what the harness calls when ``data.root`` is null, and the tests)::

    make_synthetic_refcoco(root, num_images=680, seed=0) -> Path

or from the command line: ``python scripts/make_synthetic_refcoco.py ROOT [--num-images 680] [--seed 0]
[--overwrite]``.

Layout written under ``ROOT`` (what RefCOCO users download, read by the same code as the real data)::

    refcoco/refs(unc).p   refcoco/instances.json       splits train / val / testA / testB
    refcoco+/refs(unc).p  refcoco+/instances.json      splits train / val / testA / testB
    refcocog/refs(umd).p  refcocog/refs(google).p  refcocog/instances.json
                                                       umd: train / val / test, google: train / val
    images/mscoco/images/train2014/COCO_train2014_<image_id:012d>.jpg
    synthetic.json                                     parameters, refs per split, each annotation's colour

``refs(*).p`` are pickled lists of dicts with ``ref_id, ann_id, image_id, split, category_id, sent_ids,
file_name, sentences: [{tokens, raw, sent, sent_id}]``; as in the release, a ref's ``file_name`` is the image
name plus ``_<ann_id>`` (``COCO_train2014_000000581857_16.jpg``), so loaders must find the image through
``image_id``. ``instances.json`` is COCO: ``images`` (id, file_name, height, width), ``annotations`` (id,
image_id, category_id, bbox [x, y, w, h], area, iscrowd, segmentation), ``categories`` (circle, square,
triangle). About 80% of the segmentations are polygons, the rest compressed RLE (``counts`` a str), as COCO
mixes both. The three datasets share the images and the annotations (RefCOCO and RefCOCO+ share their splits,
by image, as in the release); each has its own refs.

Content, designed to be learnable by a tiny model in minutes on a CPU:

- images of 96-160 px a side (never square) with a plain or lightly textured grey-ish background;
- 2-3 large objects (30-60% of the shorter side, shrunk on narrow images) side by side with disjoint
  horizontal extents, so "left" and "right" are unambiguous; each object has a distinct (colour, shape) pair,
  colours red/green/blue/yellow, shapes circle/square/triangle; the mask is the shape's polygon;
- every object is the target of one ref with 1-2 expressions that name it uniquely: by attributes ("red
  circle", "the blue square", "the yellow one") or by position ("left red object", "yellow shape on the
  right", "the leftmost object", "middle shape"), always spatially correct, so the horizontal flip (which
  swaps the words left/right) keeps them correct. About half of RefCOCO's expressions use a position word;
  RefCOCO+ expressions never do (as the real RefCOCO+ bans location words); RefCOCOg's are longer sentences
  ("the red circle to the left of the green triangle").

Default size (``--num-images 680``): about 1,700 objects; RefCOCO unc refs 1,200 / 170 / 170 / 170 (train / val /
testA / testB), about 1.5 expressions each. Generation takes a few seconds.

The output is deterministic for a given seed and written atomically: everything goes into a temporary sibling
folder that is renamed to ``ROOT`` at the end (an existing empty ``ROOT`` is replaced; a complete one is kept
unless ``--overwrite``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cola.data.synthetic.folder import MANIFEST, publish, staging_folder

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 210, 35),
}
SHAPES = ("circle", "square", "triangle")
CATEGORIES = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
IMAGE_DIR = Path("images") / "mscoco" / "images" / "train2014"
MARKER = Path("refcoco") / "instances.json"  # what the harness checks to know the set exists
DEFAULT_NUM_IMAGES = 680
MIN_NUM_IMAGES = 8
RLE_FRACTION = 0.2
# image-level split fractions (the rest is train); every split gets at least one image
SPLIT_FRACTIONS = {
    "unc": {"val": 0.1, "testA": 0.1, "testB": 0.1},
    "umd": {"val": 0.1, "test": 0.1},
    "google": {"val": 0.15},
}
LOCATION_SHARE = 0.5  # share of RefCOCO expressions that name the target by its position


# ------------------------------------------------------------------------------------------------ drawing
def _polygon(shape: str, x0: float, y0: float, side: float) -> list[float]:
    """Flat [x0, y0, x1, y1, ...] outline of a shape inscribed in the square (x0, y0, side)."""
    if shape == "square":
        pts = [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    elif shape == "triangle":
        pts = [(x0 + side / 2, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    else:
        cx, cy, r = x0 + side / 2, y0 + side / 2, side / 2
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 32, endpoint=False)]
    return [round(float(v), 2) for p in pts for v in p]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float background: a grey-ish tint, plain, with a gradient or with light noise."""
    base = rng.uniform(110, 190) + rng.uniform(-15, 15, size=3)
    img = np.broadcast_to(base, (height, width, 3)).astype(np.float64)
    kind = rng.integers(3)
    if kind == 1:  # a gentle gradient in a random direction
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width]
        ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(width, height)
        img = img + rng.uniform(10, 30) * ramp[..., None]
    elif kind == 2:  # light pixel noise
        img = img + rng.normal(0, 6, size=(height, width, 1))
    return img


def _layout(rng: np.random.Generator, width: int, height: int, n: int) -> list[tuple[float, float, float]]:
    """Squares (x0, y0, side) for n objects, left to right, with disjoint horizontal extents."""
    short = min(width, height)
    sides = rng.uniform(0.3, 0.6, size=n) * short
    margin, gap = 2.0, 4.0
    room = width - 2 * margin - gap * (n - 1)
    if sides.sum() > room:  # narrow images: shrink so that the objects stay side by side
        sides *= room / sides.sum()
    slack = room - sides.sum()
    gaps = rng.dirichlet(np.ones(n + 1)) * slack
    boxes, x = [], margin + gaps[0]
    for i, side in enumerate(sides):
        y = rng.uniform(margin, height - margin - side)
        boxes.append((float(x), float(y), float(side)))
        x += side + gap + gaps[i + 1]
    return boxes


# ------------------------------------------------------------------------------------------------ language
def _the(rng: np.random.Generator) -> str:
    return "the " if rng.random() < 0.5 else ""


def _attribute_expression(target: dict, objs: list[dict], rng: np.random.Generator) -> str:
    """Names the target by colour and/or shape (always unique: the pairs are distinct)."""
    colour, shape = target["colour"], target["shape"]
    options = [f"{_the(rng)}{colour} {shape}", f"{colour} {shape}"]
    if sum(o["colour"] == colour for o in objs) == 1:
        options += [f"{_the(rng)}{colour} object", f"the {colour} one", f"{colour} shape"]
    if sum(o["shape"] == shape for o in objs) == 1:
        options += [f"the {shape}", shape]
    return str(options[rng.integers(len(options))])


def _position_in(target: dict, group: list[dict]) -> str | None:
    """left / right / middle of the target within ``group`` (ordered by x); None if not extreme or alone."""
    if len(group) < 2:
        return None
    ordered = sorted(group, key=lambda o: o["cx"])
    if target is ordered[0]:
        return "left"
    if target is ordered[-1]:
        return "right"
    return "middle" if len(group) == 3 else None


def _location_expression(target: dict, objs: list[dict], rng: np.random.Generator) -> str | None:
    """Names the target by its position within all objects, its colour group or its shape group."""
    colour, shape = target["colour"], target["shape"]
    options = []
    pos = _position_in(target, objs)
    if pos in ("left", "right"):
        options += [f"{pos} object", f"the {pos}most shape", f"object on the {pos}", f"the one on the {pos}"]
    elif pos == "middle":
        options += ["middle object", "the shape in the middle"]
    pos = _position_in(target, [o for o in objs if o["colour"] == colour])
    if pos in ("left", "right"):
        options += [f"{pos} {colour} object", f"{colour} shape on the {pos}", f"the {colour} one on the {pos}"]
    pos = _position_in(target, [o for o in objs if o["shape"] == shape])
    if pos in ("left", "right"):
        options += [f"{pos} {shape}", f"the {shape} on the {pos}", f"{_the(rng)}{pos}most {shape}"]
    if not options:
        return None
    return str(options[rng.integers(len(options))])


def _long_expression(target: dict, objs: list[dict], rng: np.random.Generator) -> str:
    """RefCOCOg-style sentence: the unique attribute pair plus a true relation or position."""
    name = f"{target['colour']} {target['shape']}"
    others = [o for o in objs if o is not target]
    other = others[rng.integers(len(others))]
    side = "left" if target["cx"] < other["cx"] else "right"
    pos = _position_in(target, objs)
    options = [
        f"the {name} to the {side} of the {other['colour']} {other['shape']}",
        f"a {name} next to a {other['colour']} {other['shape']}",
        f"the {name} in the picture",
    ]
    if pos in ("left", "right"):
        options.append(f"the {name} that is the {pos}most object in the image")
    return str(options[rng.integers(len(options))])


def _expression(flavour: str, target: dict, objs: list[dict], rng: np.random.Generator) -> str:
    if flavour == "refcocog":
        if rng.random() < 0.6:
            return _long_expression(target, objs, rng)
        return f"{_attribute_expression(target, objs, rng)} in the image"
    if flavour == "refcoco" and rng.random() < LOCATION_SHARE:
        located = _location_expression(target, objs, rng)
        if located is not None:
            return located
    return _attribute_expression(target, objs, rng)


def _sentence(text: str, sent_id: int, rng: np.random.Generator) -> dict[str, Any]:
    """A refer sentence: ``raw`` as typed (sometimes capitalised), ``sent``/``tokens`` normalised lower case."""
    style = rng.integers(3)
    raw = text.upper() if style == 0 else (text.capitalize() if style == 1 else text)
    return {"tokens": text.split(), "raw": raw, "sent": text, "sent_id": sent_id}


# ------------------------------------------------------------------------------------------------ writing
def _split_images(rng: np.random.Generator, n: int, fractions: dict[str, float]) -> list[str]:
    """A split name per image: shuffled, at least one image per split."""
    counts = {name: max(1, round(f * n)) for name, f in fractions.items()}
    names = [name for name, c in counts.items() for _ in range(c)]
    names += ["train"] * (n - len(names))
    return [names[i] for i in rng.permutation(n)]


def _write_refs(path: Path, flavour: str, objects_per_image: list, split_of_image: list[str], rng) -> list[dict]:
    """Writes one ``refs(*).p``: a ref per object with 1-2 expressions of ``flavour``; returns the refs."""
    refs, ref_id, sent_id = [], 0, 0
    for (image_id, objs), split in zip(objects_per_image, split_of_image):
        for obj in objs:
            sentences = []
            for _ in range(int(rng.integers(1, 3))):
                sentences.append(_sentence(_expression(flavour, obj, objs, rng), sent_id, rng))
                sent_id += 1
            refs.append(
                {
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "file_name": f"COCO_train2014_{image_id:012d}_{obj['ann_id']}.jpg",
                    "ann_id": obj["ann_id"],
                    "ref_id": ref_id,
                    "image_id": image_id,
                    "split": split,
                    "sentences": sentences,
                    "category_id": SHAPES.index(obj["shape"]) + 1,
                }
            )
            ref_id += 1
    with open(path, "wb") as f:
        pickle.dump(refs, f, protocol=2)  # the release's pickles are protocol 2 (Python 2)
    return refs


def _generate(tmp: Path, num_images: int, seed: int) -> dict[str, Any]:
    """One generation loop whose random draws must stay in this exact order (the set is byte-identical for a seed)."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    image_dir = tmp / IMAGE_DIR
    image_dir.mkdir(parents=True)
    image_ids = np.sort(rng.choice(np.arange(1, 582000), size=num_images, replace=False))
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    images, annotations, objects_per_image = [], [], []
    ann_id = 1000000
    for image_id in image_ids.tolist():
        while True:
            width, height = int(rng.integers(96, 161)), int(rng.integers(96, 161))
            if width != height:
                break
        canvas = Image.fromarray(np.clip(_background(rng, width, height), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        n = int(rng.integers(2, 4))
        chosen = [pairs[i] for i in rng.choice(len(pairs), size=n, replace=False)]
        objs = []
        for (x0, y0, side), (colour, shape) in zip(_layout(rng, width, height, n), chosen):
            poly = _polygon(shape, x0, y0, side)
            fill = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + rng.integers(-15, 16, size=3), 0, 255))
            draw.polygon(list(zip(poly[0::2], poly[1::2])), fill=fill)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], height, width))
            xs, ys = poly[0::2], poly[1::2]
            bbox = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
            ann_id += int(rng.integers(1, 40))
            if rng.random() < RLE_FRACTION:
                enc = mask_utils.encode(np.asfortranarray(mask_utils.decode(rle)))
                segmentation: Any = {"size": [height, width], "counts": enc["counts"].decode("ascii")}
            else:
                segmentation = [poly]
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": SHAPES.index(shape) + 1,
                    "bbox": bbox,
                    "area": float(mask_utils.area(rle)),
                    "iscrowd": 0,
                    "segmentation": segmentation,
                }
            )
            objs.append({"ann_id": ann_id, "colour": colour, "shape": shape, "cx": bbox[0] + bbox[2] / 2})
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        canvas.save(image_dir / file_name, quality=92)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        objects_per_image.append((image_id, objs))

    instances = {
        "info": {"description": "synthetic RefCOCO-layout grounding set (scripts/make_synthetic_refcoco.py)"},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    unc = _split_images(rng, num_images, SPLIT_FRACTIONS["unc"])
    umd = _split_images(rng, num_images, SPLIT_FRACTIONS["umd"])
    google = _split_images(rng, num_images, SPLIT_FRACTIONS["google"])
    files = {
        "refcoco": {"unc": unc},
        "refcoco+": {"unc": unc},
        "refcocog": {"umd": umd, "google": google},
    }
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for flavour, by in files.items():
        (tmp / flavour).mkdir()
        (tmp / flavour / "instances.json").write_text(json.dumps(instances))
        for split_by, split_of_image in by.items():
            refs = _write_refs(tmp / flavour / f"refs({split_by}).p", flavour, objects_per_image, split_of_image, rng)
            per_split: dict[str, int] = {}
            for r in refs:
                per_split[r["split"]] = per_split.get(r["split"], 0) + 1
            counts[f"{flavour}/{split_by}"] = {
                "refs": per_split,
                "sentences": {s: sum(len(r["sentences"]) for r in refs if r["split"] == s) for s in per_split},
            }
    colours = {str(o["ann_id"]): o["colour"] for _, objs in objects_per_image for o in objs}
    return {
        "num_images": num_images,
        "seed": seed,
        "num_annotations": len(annotations),
        "counts": counts,
        "colours": colours,  # ann_id -> colour name (the shape is the COCO category), for tests and debugging
    }


def make_synthetic_refcoco(
    root: str | os.PathLike, *, num_images: int = DEFAULT_NUM_IMAGES, seed: int = 0, overwrite: bool = False
) -> Path:
    """Writes the synthetic RefCOCO/RefCOCO+/RefCOCOg set into ``root`` atomically and returns ``root``.

    Args:
        root: the dataset folder to create (``data.root``). An existing empty folder is replaced.
        num_images: number of images (2-3 objects, hence refs, each); at least 8.
        seed: the random seed; the output is identical for the same seed and size.
        overwrite: replace an existing non-empty ``root``.

    Raises:
        ValueError: ``num_images`` is too small.
        FileExistsError: ``root`` holds other files and ``overwrite`` is False.
    """
    if int(num_images) < MIN_NUM_IMAGES:
        raise ValueError(f"num_images must be >= {MIN_NUM_IMAGES} (every split needs an image), got {num_images}")
    root = Path(root)
    if root.exists() and not overwrite and any(root.iterdir()):
        if (root / MANIFEST).is_file() and (root / MARKER).is_file():
            log.info("%s already holds a synthetic RefCOCO set; keeping it", root)
            return root
        raise FileExistsError(f"{root} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    with staging_folder(root) as tmp:
        start = time.perf_counter()
        manifest = _generate(tmp, int(num_images), int(seed))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if root.exists() and any(root.iterdir()) and not overwrite and (root / MARKER).is_file():
            return root  # another process finished first (e.g. a second DDP rank)
        publish(tmp, root)
        log.info("wrote %s (%d images) in %.1f s", root, num_images, time.perf_counter() - start)
    return root
