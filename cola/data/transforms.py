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

Training augmentation (``data.augment``, all optional):

- ``scale: [lo, hi]``: resize jitter; the resized image is ``u`` times the evaluation size, u ~ U(lo, hi) (the
  rest is padding);
- ``color_jitter: j``: brightness, contrast and saturation factors each ~ U(1 - j, 1 + j);
- ``hflip: p``: with probability p mirror image, box and mask and swap the whole WORDS left <-> right
  (and leftmost <-> rightmost) in the expression. The official code swaps substrings, which turns "bright"
  into "bleft"; here "bright" stays "bright"
  (docs/official_settings.md#deliberate-differences).

``data.augment: official`` selects instead the official recipe (docs/official_settings.md#grounding-augmentation;
:class:`OfficialAugment`, training split only, the eval transform is unchanged). Image, box and mask move
together through every step:

1. with probability ``p_resize_branch`` (0.5), and ALWAYS when the expression holds one of the whole words
   left/right/top/bottom/middle (a crop could cut away the context such words refer to), the *resize* branch:
   resize so the LONG side is one of 448, 416, ..., 256 (uniform). Otherwise the *crop* branch: resize the SHORT
   side to 400/500/600, crop a window with both sides drawn in [384, 600] (clipped to the image) placed so the
   whole target box stays inside (20 tries; then the drawn window grown to cover the box), then the resize
   branch's long-side resize. The official code only checks the box's top-left corner (against the wrong
   axes); here the whole box is kept;
2. with probability ``p_color`` (0.8) brightness, contrast and saturation jitter, factors ~ U(1 - 0.4, 1 + 0.4),
   in a random order (as the official code);
3. the horizontal flip (p 0.5) with the whole-word left <-> right swap above;

then the normal input resize (``data.resize``, letterbox or stretch) to S x S. The random numbers are drawn in
the order geometry, flip, colour, so switching the colour jitter off does not change a sample's geometry (the
colour jitter is applied after the flip, which it commutes with). The official branch's long sides are
absolute pixel sizes (the official ``imsize - 32 i`` for imsize 448), whatever ``data.image_size`` is. A
sample's ``meta`` then carries ``augment`` (``name``, ``branch`` ``resize``/``crop``, ``frame_size``: the
image size after step 1); :func:`boxes_to_original` and :func:`masks_to_original` refuse such meta, as the crop
is not recorded as invertible (only evaluation batches, never augmented, are mapped back).

Randomness comes from torch's global generator, which Lightning seeds per process and per data worker.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from cola.metrics.grounding import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("letterbox", "stretch")
# whole words swapped by the horizontal flip (keys are lower case; the match is case-insensitive)
LEFT_RIGHT_WORDS = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_LEFT_RIGHT = re.compile(r"\b(" + "|".join(LEFT_RIGHT_WORDS) + r")\b", re.IGNORECASE)
AUGMENT_KEYS = ("color_jitter", "hflip", "scale")
AUGMENT_PRESETS = ("official",)  # the string values of data.augment
SPATIAL_WORDS = ("left", "right", "top", "bottom", "middle")


def swap_left_right(text: str) -> str:
    """Swaps the whole words left <-> right and leftmost <-> rightmost, keeping an initial capital.

    Substrings are left alone: "bright", "leftover" and "copyright" are unchanged; "left-hand" becomes
    "right-hand" (the hyphen is a word boundary).
    """

    def repl(m: re.Match[str]) -> str:
        word = m.group(1)
        new = LEFT_RIGHT_WORDS[word.lower()]
        if word.isupper() and len(word) > 1:
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _LEFT_RIGHT.sub(repl, text)


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings (``data.augment``); the defaults change nothing.

    Attributes:
        scale: (lo, hi) range of the resize jitter factor, 0 < lo <= hi <= 1.
        color_jitter: strength j of the brightness/contrast/saturation jitter, 0 <= j < 1.
        hflip: probability of the horizontal flip (with the left/right word swap).
    """

    scale: tuple[float, float] = (1.0, 1.0)
    color_jitter: float = 0.0
    hflip: float = 0.0

    @classmethod
    def from_dict(cls, augment: Mapping[str, Any] | str | None) -> AugmentConfig | OfficialAugment:
        """Validates ``data.augment`` and builds the config.

        Args:
            augment: a mapping with keys ``scale``, ``color_jitter``, ``hflip`` (the demo augmentation), ``None``
                (no augmentation) or the string ``official`` (:class:`OfficialAugment`,
                docs/official_settings.md#grounding-augmentation).

        Raises:
            ValueError: another string or type, an unknown key or a value out of range (names ``data.augment``).
        """
        if augment is None:
            return cls()
        if isinstance(augment, str):
            if augment == "official":
                return OfficialAugment()
            raise ValueError(
                f"data.augment={augment!r} is not a known augmentation; choices: a mapping with keys "
                f"{list(AUGMENT_KEYS)}, null, or {' or '.join(repr(p) for p in AUGMENT_PRESETS)}"
            )
        if not isinstance(augment, Mapping):
            raise ValueError(
                f"data.augment must be a mapping with keys {list(AUGMENT_KEYS)}, null, or "
                f"{' or '.join(repr(p) for p in AUGMENT_PRESETS)}, got {augment!r}"
            )
        unknown = sorted(set(augment) - set(AUGMENT_KEYS))
        if unknown:
            raise ValueError(f"data.augment has unknown key(s) {unknown}; valid keys: {list(AUGMENT_KEYS)}")
        scale = augment.get("scale") or (1.0, 1.0)
        if isinstance(scale, (int, float)):
            scale = (float(scale), float(scale))
        scale = tuple(float(s) for s in scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"data.augment.scale must be [lo, hi] with 0 < lo <= hi <= 1, got {list(scale)}")
        jitter = float(augment.get("color_jitter") or 0.0)
        if not 0 <= jitter < 1:
            raise ValueError(f"data.augment.color_jitter must be in [0, 1), got {jitter}")
        hflip = float(augment.get("hflip") or 0.0)
        if not 0 <= hflip <= 1:
            raise ValueError(f"data.augment.hflip must be a probability in [0, 1], got {hflip}")
        return cls(scale=scale, color_jitter=jitter, hflip=hflip)

    @property
    def active(self) -> bool:
        return self.scale != (1.0, 1.0) or self.color_jitter > 0 or self.hflip > 0


def _uniform(lo: float, hi: float) -> float:
    return lo if lo == hi else lo + (hi - lo) * float(torch.rand(()))


def _randint(lo: int, hi: int) -> int:
    """An integer ~ U{lo, ..., hi} (both included) from torch's global generator."""
    return lo if lo >= hi else int(torch.randint(lo, hi + 1, ()))


def _choice(values: Sequence[int]) -> int:
    return values[0] if len(values) == 1 else values[int(torch.randint(len(values), ()))]


def mentions_position(text: str, words: Sequence[str] = SPATIAL_WORDS) -> bool:
    """Whether the lower-cased ``text`` contains one of ``words`` as a substring, as the official check does.

    A substring test errs on the safe side: "leftmost" or "topmost" keep the crop away from expressions whose
    meaning depends on the whole image (it also catches "bright" for "right", as the official code does).
    """
    low = text.lower()
    return any(w.lower() in low for w in words)


def _resize_sample(
    img: torch.Tensor, mask: torch.Tensor, box: torch.Tensor, new_h: int, new_w: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Resizes a (3, H, W) image, a soft (H, W) float mask and an xyxy box together (bilinear, antialiased)."""
    height, width = img.shape[-2:]
    img = TF.resize(img, [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    mask = TF.resize(mask[None], [new_h, new_w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)[0]
    scale = torch.tensor([new_w / width, new_h / height, new_w / width, new_h / height], dtype=torch.float32)
    return img, mask, box * scale


@dataclass(frozen=True)
class OfficialAugment:
    """The official grounding training augmentation (``data.augment: official``,
    docs/official_settings.md#grounding-augmentation).

    See the module docstring for the recipe; the defaults are the official values.

    Attributes:
        p_resize_branch: probability of the resize branch for expressions without a spatial word.
        long_sides: long sides (pixels) the resize branch draws from (uniformly).
        short_sides: short sides (pixels) the crop branch first resizes to (uniformly).
        crop_range: (lo, hi) range of each side of the crop window, clipped to the image.
        color_jitter: strength j of the brightness/contrast/saturation jitter, factors ~ U(1 - j, 1 + j).
        p_color: probability of applying the colour jitter.
        hflip: probability of the horizontal flip (with the whole-word left/right swap).
        spatial_words: whole words that force the resize branch (matched on the lower-cased expression).
        max_crop_tries: window sizes drawn before the last drawn window is grown to cover the box.
    """

    p_resize_branch: float = 0.5
    long_sides: tuple[int, ...] = (448, 416, 384, 352, 320, 288, 256)
    short_sides: tuple[int, ...] = (400, 500, 600)
    crop_range: tuple[int, int] = (384, 600)
    color_jitter: float = 0.4
    p_color: float = 0.8
    hflip: float = 0.5
    spatial_words: tuple[str, ...] = SPATIAL_WORDS
    max_crop_tries: int = 20

    def __post_init__(self) -> None:
        for name in ("long_sides", "short_sides", "crop_range", "spatial_words"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("p_resize_branch", "p_color", "hflip"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"OfficialAugment.{name} must be a probability in [0, 1], got {value}")
        for name in ("long_sides", "short_sides"):
            sides = getattr(self, name)
            if not sides or any(not isinstance(v, int) or v < 1 for v in sides):
                raise ValueError(f"OfficialAugment.{name} must be positive integers, got {list(sides)}")
        lo_hi = self.crop_range
        if len(lo_hi) != 2 or not all(isinstance(v, int) for v in lo_hi) or not 1 <= lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"OfficialAugment.crop_range must be integers [lo, hi], 1 <= lo <= hi, got {list(lo_hi)}")
        if not 0 <= self.color_jitter < 1:
            raise ValueError(f"OfficialAugment.color_jitter must be in [0, 1), got {self.color_jitter}")
        if self.max_crop_tries < 1:
            raise ValueError(f"OfficialAugment.max_crop_tries must be >= 1, got {self.max_crop_tries}")

    @property
    def active(self) -> bool:
        return True

    def resize_long_side(
        self, img: torch.Tensor, mask: torch.Tensor, box: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Resizes so the long side is one of :attr:`long_sides` (uniform)."""
        height, width = img.shape[-2:]
        ratio = _choice(self.long_sides) / max(height, width)
        return _resize_sample(img, mask, box, max(1, round(height * ratio)), max(1, round(width * ratio)))

    def crop_window(self, height: int, width: int, box: torch.Tensor) -> tuple[int, int, int, int]:
        """A random (x0, y0, w, h) window of a (height, width) image holding the whole xyxy ``box``.

        Both sides are drawn in :attr:`crop_range` (clipped to the image) and the window is placed uniformly
        among the positions that contain the box; after :attr:`max_crop_tries` draws without such a position the
        last drawn window grows to the box's extent (always possible: the box lies inside the image).
        """
        lo, hi = self.crop_range
        bx0, by0, bx1, by1 = (float(v) for v in box)
        # the box's pixel extent, within the image (a box outside it has zero extent at its edge)
        need_x0 = min(max(math.floor(bx0), 0), width)
        need_y0 = min(max(math.floor(by0), 0), height)
        need_x1 = max(min(math.ceil(bx1), width), need_x0)
        need_y1 = max(min(math.ceil(by1), height), need_y0)
        for attempt in range(self.max_crop_tries + 1):
            w = _randint(min(lo, width), min(hi, width))
            h = _randint(min(lo, height), min(hi, height))
            if attempt == self.max_crop_tries:  # fall back: grow the window to cover the box
                w, h = max(w, need_x1 - need_x0), max(h, need_y1 - need_y0)
            x_lo, x_hi = max(0, need_x1 - w), min(need_x0, width - w)
            y_lo, y_hi = max(0, need_y1 - h), min(need_y0, height - h)
            if x_lo <= x_hi and y_lo <= y_hi:
                return _randint(x_lo, x_hi), _randint(y_lo, y_hi), w, h
        raise AssertionError("unreachable: the grown window always holds the box")

    def geometry(
        self, img: torch.Tensor, mask: torch.Tensor, box: torch.Tensor, text: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        """Step 1: the resize or the crop branch.

        Args:
            img: (3, H, W) image (uint8 or float).
            mask: (H, W) float mask (kept soft; the caller thresholds after its last resize).
            box: (4,) xyxy box in pixels of ``img``.
            text: the expression (a spatial word forces the resize branch).

        Returns:
            the image, mask and box in the new frame, and the branch taken (``resize`` or ``crop``).
        """
        resize = mentions_position(text, self.spatial_words) or float(torch.rand(())) < self.p_resize_branch
        if resize:
            return (*self.resize_long_side(img, mask, box), "resize")
        height, width = img.shape[-2:]
        ratio = _choice(self.short_sides) / min(height, width)
        img, mask, box = _resize_sample(img, mask, box, max(1, round(height * ratio)), max(1, round(width * ratio)))
        x0, y0, w, h = self.crop_window(img.shape[-2], img.shape[-1], box)
        img, mask = img[:, y0 : y0 + h, x0 : x0 + w], mask[y0 : y0 + h, x0 : x0 + w]
        box = box - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        box = torch.minimum(box.clamp(min=0), torch.tensor([w, h, w, h], dtype=torch.float32))
        return (*self.resize_long_side(img, mask, box), "crop")

    def color(self, img: torch.Tensor) -> torch.Tensor:
        """Step 2: with probability :attr:`p_color` brightness, contrast and saturation in a random order.

        Args:
            img: (3, H, W) float image in [0, 1].
        """
        j = self.color_jitter
        if j <= 0 or self.p_color <= 0 or float(torch.rand(())) >= self.p_color:
            return img
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
        for i in torch.randperm(3).tolist():
            img = ops[i](img, _uniform(1 - j, 1 + j))
        return img


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
        if resize not in RESIZE_MODES:
            raise ValueError(f"data.resize must be one of {list(RESIZE_MODES)}, got {resize!r}")
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
        meta = self.geometry(height, width, _uniform(*aug.scale))
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
            img = TF.adjust_brightness(img, _uniform(1 - j, 1 + j))
            img = TF.adjust_contrast(img, _uniform(1 - j, 1 + j))
            img = TF.adjust_saturation(img, _uniform(1 - j, 1 + j))
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
        img, m, box = _resize_sample(img, m, box, new_h, new_w)
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
