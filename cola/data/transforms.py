"""Grounding transforms: resize image + box + mask together, augment, normalise, and map predictions back.

The forward transform (:class:`GroundingTransform`) turns one original sample (PIL image, xyxy box in pixels,
(H, W) mask, expression) into the model's square input frame and records in ``meta`` everything needed to
undo it, so that evaluation runs at each image's ORIGINAL resolution
(docs/metrics.md#grounding):
:func:`boxes_to_original` and :func:`masks_to_original` are the exact inverses of the geometry.

Resize modes (``data.resize``):

- ``letterbox`` (default): scale so the longer side equals the input size S, keep the aspect ratio, and pad the
  bottom and right to S x S. The image keeps its top-left corner at the origin, so the input frame is the
  original frame times one scale factor (plus the padding, which maps back to nothing).
- ``stretch``: resize anisotropically to S x S, the official (TransVG-style) resize. Box IoU is invariant to it,
  mask IoU is not (docs/official_settings.md#deliberate-differences).

Pixels are normalised with the ImageNet mean/std and the padding is 0 *after* normalisation (the mean colour).

Training augmentation (``data.augment``, a mapping or ``official``) lives in :mod:`cola.data.augment`;
its random draws use torch's global generator, which Lightning seeds per process and per data worker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cola.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh
from cola.data.augment import (
    AUGMENT_PRESETS,
    AugmentConfig,
    OfficialAugment,
    mentions_position,
    resize_sample,
    swap_left_right,
    uniform,
)
from cola.data.images import IMAGENET_MEAN, IMAGENET_STD
from cola.dicts import check_choice

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESIZE_MODES",
    "AUGMENT_PRESETS",
    "AugmentConfig",
    "GroundingTransform",
    "OfficialAugment",
    "boxes_to_original",
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "masks_to_original",
    "mentions_position",
    "swap_left_right",
]

RESIZE_MODES = ("letterbox", "stretch")


class GroundingTransform:
    """Resize (+ augmentation) of one grounding sample into the square input frame.

    Args:
        image_size: side S of the square model input.
        resize: ``letterbox`` (keep aspect, pad bottom/right) or ``stretch`` (anisotropic to S x S).
        augment: training augmentation (``data.augment``: a mapping, :class:`AugmentConfig`, ``official`` or
            :class:`OfficialAugment`); ``None`` or an inactive config gives the deterministic eval transform.
        mean: per-channel mean used for normalisation (RGB, 0-1 scale).
        std: per-channel std used for normalisation.
    """

    def __init__(
        self,
        *,
        image_size: int,
        resize: str = "letterbox",
        augment: AugmentConfig | OfficialAugment | Mapping[str, Any] | str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        check_choice("data.resize", resize, RESIZE_MODES)
        if int(image_size) < 1:
            raise ValueError(f"data.image_size must be a positive integer, got {image_size!r}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"data.mean and data.std need 3 values (RGB, std > 0), got {list(mean)} and {list(std)}")
        self.image_size = int(image_size)
        self.resize = resize
        self.augment = (
            augment if isinstance(augment, (AugmentConfig, OfficialAugment)) else AugmentConfig.from_dict(augment)
        )
        self.mean = torch.tensor([float(m) for m in mean]).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(3, 1, 1)

    def geometry(self, height: int, width: int, scale: float = 1.0) -> dict[str, Any]:
        """Size of the resized image inside the S x S input for an original (height, width) image."""
        size = self.image_size
        if self.resize == "letterbox":
            factor = size * scale / max(height, width)
            new_h, new_w = round(height * factor), round(width * factor)
        else:
            new_h = new_w = round(size * scale)
        new_h, new_w = min(size, max(1, new_h)), min(size, max(1, new_w))
        return {"orig_size": (int(height), int(width)), "input_size": size, "resized_size": (new_h, new_w)}

    def __call__(
        self, image: Image.Image | torch.Tensor, box_xyxy: torch.Tensor, mask: torch.Tensor, text: str
    ) -> dict[str, Any]:
        """Transforms one sample.

        Args:
            image: PIL image or (3, H, W) uint8 tensor at original resolution.
            box_xyxy: (4,) box in original pixels (x0, y0, x1, y1).
            mask: (H, W) bool/0-1 mask at original resolution.
            text: the expression (already lower-cased by the dataset).

        Returns:
            ``pixel_values`` (3, S, S) float normalised, ``box`` (4,) normalised cx, cy, w, h in the input
            frame, ``mask`` (S, S) float 0/1, ``text`` (left/right swapped when flipped) and ``meta``
            (``orig_size`` (H, W), ``input_size`` S, ``resized_size`` (h, w), ``flipped``), what
            :func:`boxes_to_original` / :func:`masks_to_original` need.
        """
        img = TF.pil_to_tensor(image.convert("RGB")) if isinstance(image, Image.Image) else image  # (3, H, W) uint8
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"image must be RGB (3, H, W), got shape {tuple(img.shape)}")
        height, width = img.shape[-2:]
        if tuple(mask.shape) != (height, width):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the image size {(height, width)}")
        aug = self.augment
        if isinstance(aug, OfficialAugment):
            return self._official(aug, img, box_xyxy, mask, text)
        meta = self.geometry(height, width, uniform(*aug.scale))
        new_h, new_w = meta["resized_size"]
        sx, sy = new_w / width, new_h / height

        img = TF.resize(img, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        # bilinear + threshold keeps the resized mask's extent where the resized box puts it (nearest shifts it)
        m = mask.to(torch.float32)[None]  # (1, H, W)
        m = TF.resize(m, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)[0] >= 0.5
        box = torch.as_tensor(box_xyxy, dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])  # resized frame

        flipped = aug.hflip > 0 and float(torch.rand(())) < aug.hflip
        if flipped:
            img, m = img.flip(-1), m.flip(-1)
            box = torch.stack([new_w - box[2], box[1], new_w - box[0], box[3]])
            text = swap_left_right(text)
        img = img.to(torch.float32) / 255.0  # (3, h, w) in [0, 1]
        if aug.color_jitter > 0:
            j = aug.color_jitter
            img = TF.adjust_brightness(img, uniform(1 - j, 1 + j))
            img = TF.adjust_contrast(img, uniform(1 - j, 1 + j))
            img = TF.adjust_saturation(img, uniform(1 - j, 1 + j))
        meta["flipped"] = bool(flipped)
        return self._pack(img, m, box, text, meta)

    def _official(
        self, aug: OfficialAugment, img: torch.Tensor, box_xyxy: torch.Tensor, mask: torch.Tensor, text: str
    ) -> dict[str, Any]:
        """The official recipe (docs/official_settings.md#grounding-augmentation): geometry branch, colour jitter, flip,
        then the input resize."""
        height, width = img.shape[-2:]
        box = torch.as_tensor(box_xyxy, dtype=torch.float32)
        img, m, box, branch = aug.geometry(img, mask.to(torch.float32), box, text)
        frame_h, frame_w = img.shape[-2:]
        flipped = aug.hflip > 0 and float(torch.rand(())) < aug.hflip  # drawn before the colour jitter
        if flipped:
            img, m = img.flip(-1), m.flip(-1)
            box = torch.stack([frame_w - box[2], box[1], frame_w - box[0], box[3]])
            text = swap_left_right(text)
        img = img.to(torch.float32) / 255.0 if not img.is_floating_point() else img
        img = aug.color(img).clamp(0, 1)  # (3, h, w) in [0, 1]; commutes with the flip

        meta = self.geometry(frame_h, frame_w)
        new_h, new_w = meta["resized_size"]
        img, m, box = resize_sample(img, m, box, new_h, new_w)
        meta.update(
            orig_size=(int(height), int(width)),
            flipped=bool(flipped),
            augment={"name": "official", "branch": branch, "frame_size": (int(frame_h), int(frame_w))},
        )
        return self._pack(img, m >= 0.5, box, text, meta)

    def _pack(
        self, img: torch.Tensor, m: torch.Tensor, box: torch.Tensor, text: str, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """Normalises and pads the resized (3, h, w) image in [0, 1], its (h, w) mask and xyxy box to S x S."""
        new_h, new_w = meta["resized_size"]
        size = self.image_size
        pixels = (img - self.mean) / self.std  # (3, h, w)
        pixel_values = torch.zeros(3, size, size)
        pixel_values[:, :new_h, :new_w] = pixels  # letterbox: pad bottom/right with 0 (= the mean colour)
        mask_out = torch.zeros(size, size)
        mask_out[:new_h, :new_w] = m.to(torch.float32)
        box = torch.minimum(box.clamp(min=0), torch.tensor([new_w, new_h, new_w, new_h], dtype=torch.float32))
        return {
            "pixel_values": pixel_values,
            "box": box_xyxy_to_cxcywh(box) / size,  # (4,) normalised in the input frame
            "mask": mask_out,
            "text": text,
            "meta": meta,
        }


def _geometry_tensors(meta: Sequence[Mapping[str, Any]], device: torch.device) -> dict[str, torch.Tensor]:
    augmented = [m["augment"]["name"] for m in meta if m.get("augment")]
    if augmented:
        raise ValueError(
            f"cannot map predictions back through the {augmented[0]!r} training augmentation (its crop and "
            "rescale are not invertible); map only evaluation batches (data.augment applies to the train split)"
        )

    def col(fn) -> torch.Tensor:
        return torch.tensor([fn(m) for m in meta], dtype=torch.float32, device=device)

    return {
        "size": col(lambda m: m["input_size"]),
        "orig_h": col(lambda m: m["orig_size"][0]),
        "orig_w": col(lambda m: m["orig_size"][1]),
        "new_h": col(lambda m: m["resized_size"][0]),
        "new_w": col(lambda m: m["resized_size"][1]),
        "flipped": torch.tensor([bool(m.get("flipped", False)) for m in meta], device=device),
    }


def boxes_to_original(boxes_cxcywh_norm: torch.Tensor, meta: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Maps boxes from the input frame back to each original image.

    Args:
        boxes_cxcywh_norm: (B, 4) normalised cx, cy, w, h in the S x S input frame (the model's output).
        meta: the batch's per-sample ``meta`` dicts (from :class:`GroundingTransform`).

    Returns:
        (B, 4) x0, y0, x1, y1 in pixels of the original images, clipped to each image (a flip is undone).
    """
    if boxes_cxcywh_norm.ndim != 2 or boxes_cxcywh_norm.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, 4) cx, cy, w, h, got shape {tuple(boxes_cxcywh_norm.shape)}")
    if len(meta) != boxes_cxcywh_norm.shape[0]:
        raise ValueError(f"got {boxes_cxcywh_norm.shape[0]} boxes but {len(meta)} meta entries")
    g = _geometry_tensors(meta, boxes_cxcywh_norm.device)
    xyxy = box_cxcywh_to_xyxy(boxes_cxcywh_norm.float()) * g["size"][:, None]  # (B, 4) input-frame pixels
    x0, y0, x1, y1 = xyxy.unbind(-1)
    fx0 = torch.where(g["flipped"], g["new_w"] - x1, x0)
    fx1 = torch.where(g["flipped"], g["new_w"] - x0, x1)
    sx, sy = g["new_w"] / g["orig_w"], g["new_h"] / g["orig_h"]
    out = torch.stack([fx0 / sx, y0 / sy, fx1 / sx, y1 / sy], dim=-1)  # (B, 4)
    limit = torch.stack([g["orig_w"], g["orig_h"], g["orig_w"], g["orig_h"]], dim=-1)  # (B, 4)
    return torch.minimum(out.clamp(min=0), limit)


def masks_to_original(probs: torch.Tensor, meta: Sequence[Mapping[str, Any]]) -> list[torch.Tensor]:
    """Maps mask probabilities from the input frame back to each original image.

    Args:
        probs: (B, S, S) probabilities (or logits; the map is linear) in the input frame.
        meta: the batch's per-sample ``meta`` dicts.

    Returns:
        A list of B float tensors (H_i, W_i): the padding removed, the flip undone, resized bilinearly.
    """
    if probs.ndim != 3:
        raise ValueError(f"probs must be (B, S, S), got shape {tuple(probs.shape)}")
    if len(meta) != probs.shape[0]:
        raise ValueError(f"got {probs.shape[0]} masks but {len(meta)} meta entries")
    out = []
    for p, m in zip(probs.float(), meta, strict=True):
        new_h, new_w = m["resized_size"]
        height, width = m["orig_size"]
        crop = p[:new_h, :new_w]  # (h, w) without the padding
        if m.get("flipped", False):
            crop = crop.flip(-1)
        full = F.interpolate(crop[None, None], size=(int(height), int(width)), mode="bilinear", align_corners=False)
        out.append(full[0, 0])  # (H, W)
    return out
