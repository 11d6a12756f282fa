"""RefCOCO / RefCOCO+ / RefCOCOg referring-expression data (REC boxes + RES masks): the dataset, its collate
functions and the DataModule. The annotation formats (`refer` layout, TransVG split files, COCO segmentations)
are read by :mod:`cola.data.refer`; the layout is described there and in docs/data.md#refcoco.

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

Length (~440 lines): the dataset, its two collate functions and the DataModule, whose constructor documents
25 arguments; the annotation readers live in :mod:`cola.data.refer`, image I/O in :mod:`cola.data.images`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from cola.boxes import box_iou_xyxy, box_xywh_to_xyxy
from cola.data import images
from cola.data.base import CoLADataModule, check_int
from cola.data.refer import (
    DATASETS,
    DATASETS_HELP,
    FORMATS,
    MAX_LISTED,
    GroundingSample,
    box_mask,
    default_image_dir,
    read_refer,
    read_splits,
    read_transvg,
    segmentation_to_mask,
)
from cola.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RESIZE_MODES, AugmentConfig, GroundingTransform
from cola.dicts import check_choice

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DEFAULT_TEST_SPLITS",
    "FORMATS",
    "GroundingSample",
    "RefCOCODataModule",
    "RefCOCODataset",
    "box_mask",
    "collate_grounding",
    "collate_grounding_longest",
    "default_image_dir",
    "load_image",
    "load_tokenizer",
    "read_refer",
    "read_transvg",
    "segmentation_to_mask",
]

DEFAULT_TEST_SPLITS: dict[str, list[str]] = {
    "unc": ["val", "testA", "testB"],
    "umd": ["val", "test"],
    "google": ["val"],
}
STACKED_KEYS = ("pixel_values", "input_ids", "attention_mask", "box", "mask", "orig_box")
PAD_MODES = ("longest", "max_length")


def load_image(path: str | Path) -> Image.Image:
    """:func:`cola.data.images.load_image` with where RefCOCO comes from in the not-found message."""
    return images.load_image(path, hint=DATASETS_HELP)


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
class RefCOCODataModule(CoLADataModule):
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
        """Long because it takes and validates the DataModule's 25 documented arguments, nothing else."""
        super().__init__()
        _check_choices(root=root, dataset=dataset, split_by=split_by, format=format, pad_to=pad_to, resize=resize)
        check_int("image_size", image_size)
        check_int("max_query_len", max_query_len)
        self.set_loader_args(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            limit_per_split=limit_per_split,
        )
        if max_query_len < 3:
            raise ValueError(f"data.max_query_len must be >= 3 ([CLS] token [SEP]), got {max_query_len}")
        if isinstance(test_splits, str):
            test_splits = [test_splits]
        test_splits = list(test_splits) if test_splits is not None else list(DEFAULT_TEST_SPLITS[split_by])
        if not test_splits:
            raise ValueError("data.test_splits must name at least one split (or be null for the defaults)")

        self.root = Path(root)
        self.dataset_name = dataset
        self.split_by = split_by
        self.image_dir = Path(image_dir) if image_dir is not None else default_image_dir(self.root)
        self.image_size = image_size
        self.max_query_len = max_query_len
        self.pad_to = pad_to
        self.tokenizer_name = str(tokenizer)
        self.resize = resize
        self.augment = AugmentConfig.from_dict(augment)
        self.format = format
        self.split_root = Path(split_root) if split_root is not None else self.root
        self.train_split = train_split
        self.val_split = val_split
        self.test_splits = test_splits
        self.mean, self.std = tuple(mean), tuple(std)
        self.pin_memory = pin_memory
        # fail on bad mean/std/image_size now rather than at the first batch
        self.eval_transform = GroundingTransform(image_size=image_size, resize=resize, mean=self.mean, std=self.std)
        self.train_transform = GroundingTransform(
            image_size=image_size, resize=resize, augment=self.augment, mean=self.mean, std=self.std
        )
        self._index: dict[str, list[GroundingSample]] | None = None
        self._tokenizer: Any = None

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
        index = read_splits(
            self.format,
            self.root,
            self.dataset_name,
            self.split_by,
            self.splits,
            image_dir=self.image_dir,
            split_root=self.split_root,
        )
        empty = [s for s, samples in index.items() if not samples]
        if empty:
            raise ValueError(f"split(s) {empty} of {self.dataset_name} ({self.split_by}) have no samples")
        images = list(dict.fromkeys(s.image_path for samples in index.values() for s in samples))
        missing = [p for p in images if not p.is_file()]
        if missing:
            listed = "\n".join(f"  {p}" for p in missing[:MAX_LISTED])
            raise FileNotFoundError(
                f"{len(missing)} of the {len(images)} images referenced by {self.dataset_name} ({self.split_by}; splits "
                f"{self.splits}) are missing from {self.image_dir}, e.g.:\n{listed}\n"
                f"Point data.image_dir at the COCO train2014 folder; {DATASETS_HELP}"
            )
        if self.limit_per_split is not None:
            index = {s: samples[: self.limit_per_split] for s, samples in index.items()}
        self._index = index
        log.info(
            "%s (%s, %s): %s samples",
            self.dataset_name,
            self.split_by,
            self.format,
            ", ".join(f"{s} {len(v)}" for s, v in index.items()),
        )

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

    def split_floor_metrics(self, split: str) -> dict[str, float]:
        """The floor a model must clear: ``acc@0.5`` of one constant box for every sample, ignoring image and text.

        The box is the mean training box in relative image coordinates (x0/W, y0/H, x1/W, y1/H), scaled to each
        evaluated image. Returns ``{"<split>/acc@0.5_fixed_box": acc}``, or ``{}`` when image sizes are not in
        the annotations (TransVG files). Reads the annotations only (no image).
        """
        train = _relative_boxes(self.samples(self.train_split))
        evaluated = _relative_boxes(self.samples(split))
        if train is None or evaluated is None:
            return {}
        mean_box = train[0].mean(0)  # (4,)
        target, size = evaluated
        iou = box_iou_xyxy(mean_box.expand_as(target) * size, target * size)  # (N,) the same relative box
        return {f"{split}/acc@0.5_fixed_box": float((iou >= 0.5).double().mean())}

    # ----------------------------------------------------------------------------------------- datasets
    def build_dataset(self, split: str, *, train: bool) -> RefCOCODataset:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return RefCOCODataset(
            self.samples(split),
            transform=self.train_transform if train else self.eval_transform,
            tokenizer=self._tokenizer,
            max_query_len=self.max_query_len,
        )

    def collate(self) -> Callable[[Sequence[dict[str, Any] | None]], dict[str, Any] | None]:
        return collate_grounding if self.pad_to == "max_length" else collate_grounding_longest


def _check_choices(*, root: Any, dataset: str, split_by: str, format: str, pad_to: str, resize: str) -> None:
    """Raises ``ValueError`` naming the ``data.*`` key, the value and the choices for a bad choice."""
    if root is None or str(root) == "":
        raise ValueError(f"data.root must be the folder holding {dataset}/ and images/, got {root!r}; {DATASETS_HELP}")
    check_choice("data.dataset", dataset, DATASETS)
    if split_by not in DATASETS[dataset]:
        raise ValueError(
            f"data.split_by={split_by!r} does not exist for data.dataset={dataset!r}; "
            f"{dataset} has split_by {list(DATASETS[dataset])}"
        )
    for key, value, choices in (
        ("format", format, FORMATS),
        ("pad_to", pad_to, PAD_MODES),
        ("resize", resize, RESIZE_MODES),
    ):
        check_choice(f"data.{key}", value, choices)


def _relative_boxes(samples: list[GroundingSample]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(boxes (N, 4) xyxy relative to the image size, sizes (N, 4) as W, H, W, H)``; ``None`` when a sample has
    no image size in its annotation (TransVG) or there is no sample."""
    if not samples or any(x.height is None or x.width is None for x in samples):
        return None
    xyxy = box_xywh_to_xyxy(torch.tensor([x.bbox for x in samples], dtype=torch.float64))  # (N, 4)
    size = torch.tensor([[x.width, x.height] * 2 for x in samples], dtype=torch.float64)  # (N, 4)
    return xyxy / size, size
