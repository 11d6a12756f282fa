"""Readers of the grounding annotation formats: the `refer` layout (refs pickle + COCO ``instances.json``) and
the TransVG/EEVG split files, both into :class:`GroundingSample` lists per split; COCO segmentation decoding.

Layout under ``root`` (docs/data.md#refcoco; what RefCOCO users download)::

    refcoco/refs(unc).p      refcoco/instances.json
    refcoco+/refs(unc).p     refcoco+/instances.json
    refcocog/refs(umd).p     refcocog/refs(google).p     refcocog/instances.json
    images/mscoco/images/train2014/COCO_train2014_<image_id:012d>.jpg      (``image_dir`` overrides)

``refs(<split_by>).p`` is a pickled list of dicts (``ref_id, ann_id, image_id, split, category_id, sent_ids,
file_name, sentences: [{tokens, raw, sent, sent_id}]``); ``instances.json`` is COCO (``images``,
``annotations`` with ``bbox`` [x, y, w, h] and a polygon or RLE ``segmentation``, ``categories``). A ref's
``file_name`` carries an ``_<ann_id>`` suffix, so images are found through ``image_id`` and the COCO
``images`` entry. Splits: RefCOCO and RefCOCO+ (``unc``) train/val/testA/testB; RefCOCOg ``umd``
train/val/test, ``google`` train/val.

TransVG/EEVG split files: ``<split_root>/<unc|unc+|gref|gref_umd>/<name>_<split>.pth``, each a list of
``(image_file, source, [x, y, w, h, *polygon], phrase, attributes)``; an entry without a polygon gets the
filled box as its mask (with a warning).

Length (~400 lines): three file formats (refer pickles + COCO ``instances.json``, TransVG split files, COCO
segmentations), each with the checks that name the file and field at fault.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DATASETS_HELP",
    "FORMATS",
    "SPLITS",
    "GroundingSample",
    "box_mask",
    "coco_file_name",
    "default_image_dir",
    "read_refer",
    "read_splits",
    "read_transvg",
    "refer_paths",
    "segmentation_to_mask",
    "transvg_path",
]

# dataset -> the split_by options it ships with
DATASETS: dict[str, tuple[str, ...]] = {"refcoco": ("unc",), "refcoco+": ("unc",), "refcocog": ("umd", "google")}
SPLITS: dict[str, tuple[str, ...]] = {
    "unc": ("train", "val", "testA", "testB"),
    "umd": ("train", "val", "test"),
    "google": ("train", "val"),
}
FORMATS = ("refer", "transvg")
TRANSVG_FOLDERS = {
    ("refcoco", "unc"): "unc",
    ("refcoco+", "unc"): "unc+",
    ("refcocog", "google"): "gref",
    ("refcocog", "umd"): "gref_umd",
}
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
IMAGE_KEYS = ("id", "height", "width")
ANNOTATION_KEYS = ("id", "image_id", "bbox")  # a missing/empty "segmentation": the mask is the filled box
DATASETS_HELP = "see README.md#datasets for how to obtain RefCOCO"
MAX_LISTED = 5  # how many missing files an error names


@dataclass(frozen=True)
class GroundingSample:
    """One (expression, object) pair of the index.

    Attributes:
        image_path: the image file.
        expression: the referring expression, lower-cased.
        bbox: the object's COCO box (x, y, w, h) in original pixels.
        segmentation: COCO polygons (list of flat lists) or RLE dict; ``None`` = use the filled box.
        height: the image height the annotation refers to (``None``: read from the image).
        width: the image width the annotation refers to (``None``: read from the image).
        split: the split name.
        image_id: COCO image id (``None`` for TransVG files).
        ann_id: COCO annotation id (``None`` for TransVG files).
        ref_id: refer ref id (``None`` for TransVG files).
        sent_id: refer sentence id (``None`` for TransVG files).
    """

    image_path: Path
    expression: str
    bbox: tuple[float, float, float, float]
    segmentation: Any
    height: int | None
    width: int | None
    split: str
    image_id: int | None = None
    ann_id: int | None = None
    ref_id: int | None = None
    sent_id: int | None = None


# ------------------------------------------------------------------------------------------------ decoding
def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decodes a COCO segmentation (polygons, uncompressed or compressed RLE) into an (H, W) bool mask.

    Raises:
        ValueError: the segmentation has an unknown structure or an RLE of another size.
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        # a polygon needs >= 3 points; pycocotools would read a 4-number list as a box
        polygons = [[float(v) for v in p] for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, Mapping) and "counts" in segmentation and "size" in segmentation:
        size = tuple(int(s) for s in segmentation["size"])
        if size != (height, width):
            raise ValueError(f"RLE segmentation has size {list(size)}, but the image is {height} x {width}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed RLE (COCO iscrowd annotations)
            rle = mask_utils.frPyObjects(dict(segmentation), height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(
            f"unknown segmentation of type {type(segmentation).__name__}; expected COCO polygons (a list of flat "
            "[x0, y0, x1, y1, ...] lists) or an RLE dict with 'size' and 'counts'"
        )
    return mask_utils.decode(rle).astype(bool)


def box_mask(bbox: Sequence[float], height: int, width: int) -> np.ndarray:
    """The filled (x, y, w, h) box as an (H, W) bool mask (pixels whose centre lies inside)."""
    x, y, w, h = bbox
    ys = np.arange(height)[:, None] + 0.5
    xs = np.arange(width)[None, :] + 0.5
    return (xs >= x) & (xs <= x + w) & (ys >= y) & (ys <= y + h)


# ------------------------------------------------------------------------------------------------ readers
def default_image_dir(root: str | Path) -> Path:
    """``<root>/images/mscoco/images/train2014``, where the refer layout keeps the COCO train2014 images."""
    return Path(root) / "images" / "mscoco" / "images" / "train2014"


def coco_file_name(image_id: int) -> str:
    return f"COCO_train2014_{int(image_id):012d}.jpg"


def refer_paths(root: str | Path, dataset: str, split_by: str) -> dict[str, Path]:
    """The refs pickle and the instances file of ``dataset``/``split_by`` under ``root``."""
    folder = Path(root) / dataset
    return {"refs": folder / f"refs({split_by}).p", "instances": folder / "instances.json"}


def _load_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except UnicodeDecodeError:  # Python 2 pickles with non-ASCII byte strings (the original release)
            f.seek(0)
            return pickle.load(f, encoding="latin1")


def _read_refs(path: Path) -> list[dict[str, Any]]:
    try:
        refs = _load_pickle(path)
    except Exception as e:  # pickle raises many types on garbage
        raise ValueError(f"cannot unpickle the refs file {path}: {e}; {DATASETS_HELP}") from e
    if not isinstance(refs, (list, tuple)) or not refs:
        raise ValueError(
            f"{path} must hold a non-empty list of ref dicts (keys {list(REF_KEYS)}), got "
            f"{type(refs).__name__}{'' if refs else ' (empty)'}; {DATASETS_HELP}"
        )
    missing: set[str] = set()
    bad_sentences = 0
    for ref in refs:
        if not isinstance(ref, Mapping):
            raise ValueError(f"{path} must hold ref dicts (keys {list(REF_KEYS)}), found a {type(ref).__name__}")
        missing.update(k for k in REF_KEYS if k not in ref)
        sentences = ref.get("sentences")
        if not isinstance(sentences, (list, tuple)) or not all(
            isinstance(s, Mapping) and ("sent" in s or "raw" in s) for s in sentences
        ):
            bad_sentences += 1
    if missing:
        raise ValueError(
            f"{path} is not a refer refs file: refs lack the key(s) {sorted(missing)} "
            f"(every ref needs {list(REF_KEYS)}); {DATASETS_HELP}"
        )
    if bad_sentences:
        raise ValueError(
            f"{path}: {bad_sentences} ref(s) have 'sentences' that are not a list of dicts with a 'sent' key; "
            f"{DATASETS_HELP}"
        )
    return list(refs)


def _read_instances(path: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot parse the COCO instances file {path}: {e}; {DATASETS_HELP}") from e
    if not isinstance(data, Mapping) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"{path} must be COCO json with lists 'images' and 'annotations', got {keys}")
    for key, needed in (("images", IMAGE_KEYS), ("annotations", ANNOTATION_KEYS)):
        missing = sorted({k for item in data[key] for k in needed if k not in item})
        if missing:
            raise ValueError(f"{path}: entries of '{key}' lack the key(s) {missing} (needed: {list(needed)})")
    images = {int(im["id"]): im for im in data["images"]}
    anns = {int(a["id"]): a for a in data["annotations"]}
    return images, anns


def _check_refer_files(root: str | Path, dataset: str, split_by: str, expected: dict[str, Path]) -> None:
    """Raises ``FileNotFoundError`` listing every expected path (``images`` a folder, the rest files) when one
    is missing."""
    missing = [name for name, p in expected.items() if not (p.is_dir() if name == "images" else p.is_file())]
    if not missing:
        return
    lines = [
        f"  {p}{'/  (COCO_train2014_<image_id:012d>.jpg)' if name == 'images' else ''}"
        f"{'  <- missing' if name in missing else ''}"
        for name, p in expected.items()
    ]
    root_note = "" if Path(root).is_dir() else f" (data.root {root} does not exist)"
    raise FileNotFoundError(
        f"RefCOCO data for dataset={dataset} split_by={split_by} not found{root_note}; expected:\n"
        + "\n".join(lines)
        + f"\nSet data.root to the folder holding {dataset}/ and images/ (data.image_dir for the images); "
        + DATASETS_HELP
    )


def read_refer(
    root: str | Path, dataset: str, split_by: str, *, image_dir: str | Path | None = None
) -> dict[str, list[GroundingSample]]:
    """Reads ``<root>/<dataset>/refs(<split_by>).p`` + ``instances.json`` into samples per split.

    Returns:
        split name -> samples in the order of the refs file (one per sentence).

    Raises:
        FileNotFoundError: a file or the image folder is missing (the message lists every expected path).
        ValueError: a file has the wrong structure (names the path and the missing keys), or a ref points at an
            annotation or image absent from instances.json.

    One pass over the refs file joined with the COCO instances, with the error for each missing or inconsistent
    field inline.
    """
    paths = refer_paths(root, dataset, split_by)
    image_dir = Path(image_dir) if image_dir is not None else default_image_dir(root)
    _check_refer_files(root, dataset, split_by, {**paths, "images": image_dir})
    refs = _read_refs(paths["refs"])
    images, anns = _read_instances(paths["instances"])
    unknown_anns = [r["ann_id"] for r in refs if int(r["ann_id"]) not in anns]
    unknown_images = [r["image_id"] for r in refs if int(r["image_id"]) not in images]
    if unknown_anns or unknown_images:
        raise ValueError(
            f"{paths['refs']} does not match {paths['instances']}: {len(unknown_anns)} ref(s) name annotations "
            f"absent from it (e.g. ann_id {unknown_anns[:MAX_LISTED]}) and {len(unknown_images)} name absent images "
            f"(e.g. image_id {unknown_images[:MAX_LISTED]}); both files must come from the same {dataset} download"
        )
    out: dict[str, list[GroundingSample]] = {}
    without_mask = {int(r["ann_id"]) for r in refs if not anns[int(r["ann_id"])].get("segmentation")}
    if without_mask:
        log.warning(
            "%s: %d referred annotation(s) have no segmentation (e.g. ann_id %s); their masks are the filled boxes",
            paths["instances"],
            len(without_mask),
            sorted(without_mask)[:MAX_LISTED],
        )
    for ref in refs:
        ann = anns[int(ref["ann_id"])]
        im = images[int(ref["image_id"])]
        path = image_dir / str(im.get("file_name") or coco_file_name(ref["image_id"]))
        bbox = tuple(float(v) for v in ann["bbox"])
        if len(bbox) != 4:
            raise ValueError(
                f"{paths['instances']}: annotation {ann['id']} has bbox {ann['bbox']}, expected [x, y, w, h]"
            )
        for sent in ref["sentences"]:
            text = str(sent.get("sent", sent.get("raw", ""))).lower().strip()
            out.setdefault(str(ref["split"]), []).append(
                GroundingSample(
                    image_path=path,
                    expression=text,
                    bbox=bbox,  # type: ignore[arg-type]
                    segmentation=ann.get("segmentation") or None,  # absent or empty: the filled box
                    height=int(im["height"]),
                    width=int(im["width"]),
                    split=str(ref["split"]),
                    image_id=int(ref["image_id"]),
                    ann_id=int(ref["ann_id"]),
                    ref_id=int(ref["ref_id"]),
                    sent_id=int(sent["sent_id"]) if "sent_id" in sent else None,
                )
            )
    return out


def transvg_path(split_root: str | Path, dataset: str, split_by: str, split: str) -> Path:
    """``<split_root>/<unc|unc+|gref|gref_umd>/<name>_<split>.pth`` for ``dataset``/``split_by``."""
    name = TRANSVG_FOLDERS[(dataset, split_by)]
    return Path(split_root) / name / f"{name}_{split}.pth"


def read_transvg(path: str | Path, split: str, *, image_dir: str | Path) -> list[GroundingSample]:
    """Reads one TransVG/EEVG split file: a list of ``(image_file, source, [x, y, w, h, *polygon], phrase, ...)``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: it cannot be loaded or an entry has another structure (names the path and the entry).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TransVG split file {path} does not exist; {DATASETS_HELP}")
    try:
        entries = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch.load raises many types on garbage
        raise ValueError(f"cannot load the TransVG split file {path}: {e}") from e
    if not isinstance(entries, (list, tuple)):
        raise ValueError(
            f"{path} must hold a list of (image_file, source, box, phrase, attributes), got {type(entries)}"
        )
    samples, without_polygon = [], 0
    for i, entry in enumerate(entries):
        if not isinstance(entry, (list, tuple)) or len(entry) < 4:
            raise ValueError(
                f"{path}: entry {i} is {entry!r}; expected (image_file, source, [x, y, w, h, *polygon], phrase, ...)"
            )
        image_file, _source, geometry, phrase = entry[:4]
        values = [float(v) for v in np.asarray(geometry, dtype=np.float64).reshape(-1)]
        if len(values) < 4:
            raise ValueError(f"{path}: entry {i} has box {geometry!r}; expected [x, y, w, h, *polygon]")
        polygon = values[4:]
        has_polygon = len(polygon) >= 6 and len(polygon) % 2 == 0
        without_polygon += not has_polygon
        samples.append(
            GroundingSample(
                image_path=Path(image_dir) / str(image_file),
                expression=str(phrase).lower().strip(),
                bbox=tuple(values[:4]),  # type: ignore[arg-type]
                segmentation=[polygon] if has_polygon else None,
                height=None,
                width=None,
                split=split,
            )
        )
    if without_polygon:
        log.warning(
            "%s: %d of %d entries have no polygon; their masks are the filled boxes",
            path,
            without_polygon,
            len(entries),
        )
    return samples


def read_splits(
    format: str,
    root: str | Path,
    dataset: str,
    split_by: str,
    splits: Sequence[str],
    *,
    image_dir: str | Path,
    split_root: str | Path,
) -> dict[str, list[GroundingSample]]:
    """The samples of ``splits`` in ``format`` (``refer``: :func:`read_refer`, ``transvg``: :func:`read_transvg`).

    Raises:
        FileNotFoundError: a file or the image folder is missing (the message lists every expected path).
        ValueError: a file is malformed, or a split does not exist in the refs file.
    """
    image_dir = Path(image_dir)
    if format == "refer":
        index = read_refer(root, dataset, split_by, image_dir=image_dir)
        unknown = [s for s in splits if s not in index]
        if unknown:
            raise ValueError(
                f"split(s) {unknown} (data.train_split / val_split / test_splits) do not exist in "
                f"{refer_paths(root, dataset, split_by)['refs']}; it has {sorted(index)}"
            )
        return {s: index[s] for s in splits}
    paths = {s: transvg_path(split_root, dataset, split_by, s) for s in splits}
    absent = [p for p in paths.values() if not p.is_file()]
    if absent or not image_dir.is_dir():
        listing = "\n".join(f"  {p}{'  <- missing' if p in absent else ''}" for p in paths.values())
        image_note = "" if image_dir.is_dir() else "  <- missing"
        raise FileNotFoundError(
            f"TransVG split files for dataset={dataset} split_by={split_by} not found "
            f"(data.split_root={split_root}); expected:\n{listing}\n  {image_dir}/{image_note}\n" + DATASETS_HELP
        )
    return {s: read_transvg(p, s, image_dir=image_dir) for s, p in paths.items()}
