"""RefCOCO / RefCOCO+ / RefCOCOg referring-expression data (REC boxes + RES masks), read from the `refer` layout.

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

``format="transvg"`` reads the TransVG/EEVG split files instead:
``<split_root>/<unc|unc+|gref|gref_umd>/<name>_<split>.pth`` (``split_root`` defaults to ``root``), each a list
of ``(image_file, source, [x, y, w, h, *polygon], phrase, attributes)``; an entry without a polygon gets the
filled box as its mask (with a warning).

One sample is one (expression, object) pair. The expression is lower-cased and tokenised with a BERT uncased
WordPiece tokenizer (``[CLS] ... [SEP]``, padded/truncated to ``max_query_len``). Batches (dict):

- ``pixel_values`` (B, 3, S, S) normalised; ``input_ids``, ``attention_mask`` (B, L) int64;
- ``box`` (B, 4) normalised cx, cy, w, h in the input frame; ``mask`` (B, S, S) float 0/1 in the input frame;
- ``orig_box`` (B, 4) x0, y0, x1, y1 pixels at original resolution; ``orig_mask`` list of (H_i, W_i) bool;
- ``meta`` list of dicts: the resize geometry (see :mod:`cola.data.transforms`) and the sample's ids/expression.

Robustness: :meth:`RefCOCODataModule.validate` (also run by ``prepare_data``/``setup``) reads the annotation
files and checks every referenced image exists before any training starts; errors list the expected paths.
An image that exists but cannot be decoded is skipped at load time with a warning naming the file and counted
(:attr:`RefCOCODataModule.num_skipped`; the collate function drops the sample), so it never stops an epoch;
:meth:`RefCOCODataset.load` raises instead.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from cola.data.resumable import ResumableDataLoader, ResumableRandomSampler
from cola.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RESIZE_MODES, AugmentConfig, GroundingTransform

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DEFAULT_TEST_SPLITS",
    "FORMATS",
    "GroundingSample",
    "RefCOCODataModule",
    "RefCOCODataset",
    "collate_grounding",
    "collate_grounding_longest",
    "default_image_dir",
    "load_image",
    "read_refer",
    "read_transvg",
    "segmentation_to_mask",
]

# dataset -> the split_by options it ships with
DATASETS: dict[str, tuple[str, ...]] = {"refcoco": ("unc",), "refcoco+": ("unc",), "refcocog": ("umd", "google")}
SPLITS: dict[str, tuple[str, ...]] = {
    "unc": ("train", "val", "testA", "testB"),
    "umd": ("train", "val", "test"),
    "google": ("train", "val"),
}
DEFAULT_TEST_SPLITS: dict[str, list[str]] = {
    "unc": ["val", "testA", "testB"],
    "umd": ["val", "test"],
    "google": ["val"],
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
STACKED_KEYS = ("pixel_values", "input_ids", "attention_mask", "box", "mask", "orig_box")
PAD_MODES = ("longest", "max_length")


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


def load_image(path: str | Path) -> Image.Image:
    """Opens an image as RGB.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file exists but cannot be decoded (the error names it).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist; {DATASETS_HELP}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


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
    """
    paths = refer_paths(root, dataset, split_by)
    image_dir = Path(image_dir) if image_dir is not None else default_image_dir(root)
    expected = {**paths, "images": image_dir}
    missing = [name for name, p in expected.items() if not (p.is_dir() if name == "images" else p.is_file())]
    if missing:
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


# ------------------------------------------------------------------------------------------------ dataset
class RefCOCODataset(Dataset):
    """Grounding samples -> transformed, tokenised tensors (one sample = one expression).

    Args:
        samples: the index (see :func:`read_refer`, :func:`read_transvg`).
        transform: the resize/augmentation transform.
        tokenizer: a Hugging Face BERT tokenizer (callable).
        max_query_len: token length L (``[CLS] ... [SEP]`` + padding).
    """

    def __init__(
        self,
        samples: Sequence[GroundingSample],
        *,
        transform: GroundingTransform,
        tokenizer: Any,
        max_query_len: int = 40,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.tokenizer = tokenizer
        self.max_query_len = int(max_query_len)
        # samples skipped because their image could not be read (index -> reason); one copy per DataLoader worker
        self.skipped: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        """Sample ``index``, or ``None`` (dropped by :func:`collate_grounding`) when its image cannot be read."""
        s = self.samples[index]
        try:
            image = load_image(s.image_path)
        except (FileNotFoundError, ValueError) as err:
            new_image = all(str(s.image_path) not in reason for reason in self.skipped.values())
            self.skipped[index] = str(err)
            if new_image:
                log.warning("%s; skipping its samples (%d skipped so far)", err, len(self.skipped))
            return None
        return self._sample(s, image)

    def load(self, index: int) -> dict[str, Any]:
        """Sample ``index``; raises ``ValueError``/``FileNotFoundError`` naming an unreadable image."""
        s = self.samples[index]
        return self._sample(s, load_image(s.image_path))

    def _sample(self, s: GroundingSample, image: Image.Image) -> dict[str, Any]:
        width, height = image.size
        if s.height is not None and (s.height, s.width) != (height, width):
            raise ValueError(
                f"image {s.image_path} is {width} x {height} (w x h), but its annotation says {s.width} x {s.height}; "
                "the images do not belong to this annotation file"
            )
        if s.segmentation is None:
            mask = box_mask(s.bbox, height, width)
        else:
            try:
                mask = segmentation_to_mask(s.segmentation, height, width)
            except ValueError as e:
                raise ValueError(f"annotation {s.ann_id} of image {s.image_path}: {e}") from e
        x, y, w, h = s.bbox
        orig_box = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
        # a box reaching outside the image is clipped to it (one wholly outside has zero area: always a miss)
        orig_box = torch.minimum(
            orig_box.clamp(min=0), torch.tensor([width, height, width, height], dtype=torch.float32)
        )
        orig_mask = torch.from_numpy(mask)  # (H, W) bool
        out = self.transform(image, orig_box, orig_mask, s.expression)
        tokens = self.tokenizer(
            out["text"],
            max_length=self.max_query_len,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        meta = dict(out["meta"])
        meta.update(
            image_file=str(s.image_path),
            expression=out["text"],
            split=s.split,
            image_id=s.image_id,
            ann_id=s.ann_id,
            ref_id=s.ref_id,
            sent_id=s.sent_id,
        )
        return {
            "pixel_values": out["pixel_values"],  # (3, S, S)
            "input_ids": tokens["input_ids"][0].long(),  # (L,)
            "attention_mask": tokens["attention_mask"][0].long(),  # (L,)
            "box": out["box"],  # (4,) normalised cx, cy, w, h
            "mask": out["mask"],  # (S, S)
            "orig_box": orig_box,  # (4,) xyxy pixels
            "orig_mask": orig_mask,  # (H, W) bool
            "meta": meta,
        }


def collate_grounding(samples: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stacks the fixed-size fields; ``orig_mask`` and ``meta`` (sizes differ per image) stay lists.

    ``None`` samples (unreadable images) are dropped; a batch with none left is ``None`` (the task skips it).
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    batch: dict[str, Any] = {k: torch.stack([s[k] for s in samples]) for k in STACKED_KEYS}
    batch["orig_mask"] = [s["orig_mask"] for s in samples]
    batch["meta"] = [s["meta"] for s in samples]
    return batch


def collate_grounding_longest(samples: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """:func:`collate_grounding`, then the token positions past the batch's longest expression are cut."""
    batch = collate_grounding(samples)
    if batch is not None:
        length = max(1, int(batch["attention_mask"].sum(1).max()))  # padding is on the right
        batch["input_ids"] = batch["input_ids"][:, :length]
        batch["attention_mask"] = batch["attention_mask"][:, :length]
    return batch


def load_tokenizer(name_or_path: str) -> Any:
    """``AutoTokenizer.from_pretrained`` with an error that names the setting."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"data.tokenizer={name_or_path!r} could not be loaded ({e}); pass a Hugging Face name (needs the hub or "
            "its cache) or a local folder with the BERT tokenizer files"
        ) from e


# ------------------------------------------------------------------------------------------------ datamodule
class RefCOCODataModule(L.LightningDataModule):
    """RefCOCO / RefCOCO+ / RefCOCOg for grounding (REC + RES), `refer` layout or TransVG split files.

    Args:
        root: folder holding ``refcoco/``, ``refcoco+/``, ``refcocog/`` and ``images/`` (docs/data.md#refcoco).
        dataset: ``refcoco`` | ``refcoco+`` | ``refcocog``.
        split_by: ``unc`` (refcoco, refcoco+) | ``umd`` | ``google`` (refcocog).
        image_dir: the COCO train2014 image folder (default ``<root>/images/mscoco/images/train2014``).
        image_size: side S of the square model input.
        max_query_len: token length L of the expressions (official 40).
        pad_to: ``longest`` (default) cuts each batch's tokens to its longest expression (the text tower then
            runs on fewer positions; identical results wherever padding is masked) | ``max_length`` keeps all
            ``max_query_len`` positions (needed by ``condition_pooling: mean_with_padding``, which averages the
            padding too, as the official code).
        tokenizer: Hugging Face tokenizer name or local folder (BERT uncased WordPiece).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        num_workers: DataLoader workers.
        resize: ``letterbox`` (keep aspect, pad) | ``stretch`` (official anisotropic resize).
        augment: training augmentation (train split only): a dict (``scale``, ``color_jitter``, ``hflip``; the
            demo), the string ``official`` (the official recipe, docs/official_settings.md#grounding-augmentation,
            :class:`cola.data.transforms.OfficialAugment`) or ``None``.
        format: ``refer`` | ``transvg``.
        split_root: folder of the TransVG split folders (``format=transvg``; default ``root``).
        train_split: split used for training.
        val_split: split used for validation / model selection.
        test_splits: splits evaluated at test time, in order (default: unc -> val testA testB, umd -> val test,
            google -> val).
        limit_per_split: keep only the first N samples of every split (debug runs).
        mean: normalisation mean (RGB, 0-1).
        std: normalisation std (RGB, 0-1).
        pin_memory: DataLoader ``pin_memory``.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        dataset: str = "refcoco",
        split_by: str = "unc",
        image_dir: str | Path | None = None,
        image_size: int = 448,
        max_query_len: int = 40,
        pad_to: str = "longest",
        tokenizer: str = "bert-base-uncased",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        resize: str = "letterbox",
        augment: Mapping[str, Any] | str | None = None,
        format: str = "refer",
        split_root: str | Path | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_splits: Sequence[str] | None = None,
        limit_per_split: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if root is None or str(root) == "":
            raise ValueError(
                f"data.root must be the folder holding {dataset}/ and images/, got {root!r}; {DATASETS_HELP}"
            )
        if dataset not in DATASETS:
            raise ValueError(f"data.dataset must be one of {list(DATASETS)}, got {dataset!r}")
        if split_by not in DATASETS[dataset]:
            raise ValueError(
                f"data.split_by={split_by!r} does not exist for data.dataset={dataset!r}; "
                f"{dataset} has split_by {list(DATASETS[dataset])}"
            )
        if format not in FORMATS:
            raise ValueError(f"data.format must be one of {list(FORMATS)}, got {format!r}")
        if pad_to not in PAD_MODES:
            raise ValueError(f"data.pad_to must be one of {list(PAD_MODES)}, got {pad_to!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"data.resize must be one of {list(RESIZE_MODES)}, got {resize!r}")
        for key, value in (("image_size", image_size), ("max_query_len", max_query_len), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"data.{key} must be a positive integer, got {value!r}")
        if max_query_len < 3:
            raise ValueError(f"data.max_query_len must be >= 3 ([CLS] token [SEP]), got {max_query_len}")
        if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
            raise ValueError(f"data.eval_batch_size must be a positive integer or null, got {eval_batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be an integer >= 0, got {num_workers!r}")
        if limit_per_split is not None and (not isinstance(limit_per_split, int) or limit_per_split < 1):
            raise ValueError(f"data.limit_per_split must be a positive integer or null, got {limit_per_split!r}")
        if isinstance(test_splits, str):
            test_splits = [test_splits]
        test_splits = list(test_splits) if test_splits is not None else list(DEFAULT_TEST_SPLITS[split_by])
        if not test_splits:
            raise ValueError("data.test_splits must name at least one split (or be null for the defaults)")

        self.root = Path(root)
        self.dataset = dataset
        self.split_by = split_by
        self.image_dir = Path(image_dir) if image_dir is not None else default_image_dir(self.root)
        self.image_size = image_size
        self.max_query_len = max_query_len
        self.pad_to = pad_to
        self.tokenizer_name = str(tokenizer)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.resize = resize
        self.augment = AugmentConfig.from_dict(augment)
        self.format = format
        self.split_root = Path(split_root) if split_root is not None else self.root
        self.train_split = train_split
        self.val_split = val_split
        self.test_splits = test_splits
        self.limit_per_split = limit_per_split
        self.mean, self.std = tuple(mean), tuple(std)
        self.pin_memory = pin_memory
        # fail on bad mean/std/image_size now rather than at the first batch
        self.eval_transform = GroundingTransform(image_size=image_size, resize=resize, mean=self.mean, std=self.std)
        self.train_transform = GroundingTransform(
            image_size=image_size, resize=resize, augment=self.augment, mean=self.mean, std=self.std
        )
        self._index: dict[str, list[GroundingSample]] | None = None
        self._tokenizer: Any = None
        self.train_dataset: RefCOCODataset | None = None
        self.val_dataset: RefCOCODataset | None = None
        self.test_datasets: list[RefCOCODataset] = []

    # ----------------------------------------------------------------------------------------- index
    @property
    def splits(self) -> list[str]:
        """The splits this module reads: train, val and the test splits, without repeats."""
        return list(dict.fromkeys([self.train_split, self.val_split, *self.test_splits]))

    def validate(self) -> None:
        """Reads and checks the annotation files and that every referenced image exists (cached).

        Raises:
            FileNotFoundError: files or images are missing (lists the expected paths / the first missing images).
            ValueError: a file is malformed, or a requested split does not exist.
        """
        if self._index is not None:
            return
        if self.format == "refer":
            index = read_refer(self.root, self.dataset, self.split_by, image_dir=self.image_dir)
            unknown = [s for s in self.splits if s not in index]
            if unknown:
                raise ValueError(
                    f"split(s) {unknown} (data.train_split / val_split / test_splits) do not exist in "
                    f"{refer_paths(self.root, self.dataset, self.split_by)['refs']}; it has {sorted(index)}"
                )
            index = {s: index[s] for s in self.splits}
        else:
            paths = {s: transvg_path(self.split_root, self.dataset, self.split_by, s) for s in self.splits}
            absent = [p for p in paths.values() if not p.is_file()]
            if absent or not self.image_dir.is_dir():
                listing = "\n".join(f"  {p}{'  <- missing' if p in absent else ''}" for p in paths.values())
                image_note = "" if self.image_dir.is_dir() else "  <- missing"
                raise FileNotFoundError(
                    f"TransVG split files for dataset={self.dataset} split_by={self.split_by} not found "
                    f"(data.split_root={self.split_root}); expected:\n{listing}\n  {self.image_dir}/{image_note}\n"
                    + DATASETS_HELP
                )
            index = {s: read_transvg(p, s, image_dir=self.image_dir) for s, p in paths.items()}
        empty = [s for s, samples in index.items() if not samples]
        if empty:
            raise ValueError(f"split(s) {empty} of {self.dataset} ({self.split_by}) have no samples")
        images = list(dict.fromkeys(s.image_path for samples in index.values() for s in samples))
        missing = [p for p in images if not p.is_file()]
        if missing:
            listed = "\n".join(f"  {p}" for p in missing[:MAX_LISTED])
            raise FileNotFoundError(
                f"{len(missing)} of the {len(images)} images referenced by {self.dataset} ({self.split_by}; splits "
                f"{self.splits}) are missing from {self.image_dir}, e.g.:\n{listed}\n"
                f"Point data.image_dir at the COCO train2014 folder; {DATASETS_HELP}"
            )
        if self.limit_per_split is not None:
            index = {s: samples[: self.limit_per_split] for s, samples in index.items()}
        self._index = index
        log.info(
            "%s (%s, %s): %s samples",
            self.dataset,
            self.split_by,
            self.format,
            ", ".join(f"{s} {len(v)}" for s, v in index.items()),
        )

    @property
    def num_skipped(self) -> int:
        """Distinct samples skipped at load time because their image could not be read (counted in this process).

        A sample counts once however often it was skipped: in every validation pass, and in both the validation
        and the test loader when the validation split is also a test split.
        """
        datasets = [self.train_dataset, self.val_dataset, *self.test_datasets]
        return len({(d.samples[i].split, i) for d in datasets if d is not None for i in d.skipped})

    @property
    def split_sizes(self) -> dict[str, int]:
        """Number of samples per split (after ``limit_per_split``); runs :meth:`validate`."""
        self.validate()
        assert self._index is not None
        return {s: len(v) for s, v in self._index.items()}

    def samples(self, split: str) -> list[GroundingSample]:
        """The index of one split (runs :meth:`validate`)."""
        self.validate()
        assert self._index is not None
        if split not in self._index:
            raise ValueError(f"split {split!r} is not loaded; loaded splits: {list(self._index)}")
        return self._index[split]

    def floor_metrics(self) -> dict[str, float]:
        """The floor a model must clear: ``acc@0.5`` of one constant box for every sample, ignoring image and text.

        The box is the mean training box in relative image coordinates (x0/W, y0/H, x1/W, y1/H), scaled to each
        evaluated image. Returns ``{"<split>/acc@0.5_fixed_box": acc}`` for the val and test splits, or ``{}``
        when image sizes are not in the annotations (TransVG files). Reads the annotations only (no image).
        """
        from cola.metrics.grounding import box_iou_xyxy

        def relative(samples: list[GroundingSample]) -> tuple[torch.Tensor, torch.Tensor] | None:
            if not samples or any(x.height is None or x.width is None for x in samples):
                return None
            xywh = torch.tensor([x.bbox for x in samples], dtype=torch.float64)  # (N, 4)
            size = torch.tensor([[x.width, x.height] * 2 for x in samples], dtype=torch.float64)
            return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) / size, size  # xyxy relative

        train = relative(self.samples(self.train_split))
        if train is None:
            return {}
        mean_box = train[0].mean(0)  # (4,)
        out: dict[str, float] = {}
        for split in dict.fromkeys([self.val_split, *self.test_splits]):
            evaluated = relative(self.samples(split))
            if evaluated is None:
                return {}
            target, size = evaluated
            iou = box_iou_xyxy(mean_box.expand_as(target) * size, target * size)  # (N,) the same relative box
            out[f"{split}/acc@0.5_fixed_box"] = float((iou >= 0.5).double().mean())
        return out

    # ----------------------------------------------------------------------------------------- lightning
    def prepare_data(self) -> None:
        self.validate()

    def setup(self, stage: str | None = None) -> None:
        self.validate()
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        if self.train_dataset is None:
            self.train_dataset = self._dataset(self.train_split, train=True)
            self.val_dataset = self._dataset(self.val_split, train=False)
            self.test_datasets = [self._dataset(s, train=False) for s in self.test_splits]

    def _dataset(self, split: str, *, train: bool) -> RefCOCODataset:
        return RefCOCODataset(
            self.samples(split),
            transform=self.train_transform if train else self.eval_transform,
            tokenizer=self._tokenizer,
            max_query_len=self.max_query_len,
        )

    def _loader(self, dataset: RefCOCODataset | None, *, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("RefCOCODataModule.setup() must run before the dataloaders are requested")
        kwargs = dict(
            num_workers=self.num_workers,
            collate_fn=collate_grounding if self.pad_to == "max_length" else collate_grounding_longest,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )
        if train:  # shuffled per epoch from the seed; resumes mid-epoch at the exact next batch
            return ResumableDataLoader(
                dataset, batch_size=self.batch_size, sampler=ResumableRandomSampler(dataset), **kwargs
            )
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per split of :attr:`test_splits`, in that order."""
        if not self.test_datasets:
            raise RuntimeError("RefCOCODataModule.setup() must run before the dataloaders are requested")
        return [self._loader(d, train=False) for d in self.test_datasets]
