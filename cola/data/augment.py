"""Grounding training augmentation: the mapping recipe (:class:`AugmentConfig`) and the official one
(:class:`OfficialAugment`); :class:`cola.data.transforms.GroundingTransform` applies them before its resize.

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
from torchvision.transforms.v2 import functional as TF

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


def uniform(lo: float, hi: float) -> float:
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


def resize_sample(
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
        return resize_sample(img, mask, box, max(1, round(height * ratio)), max(1, round(width * ratio)))

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
        img, mask, box = resize_sample(img, mask, box, max(1, round(height * ratio)), max(1, round(width * ratio)))
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
            img = ops[i](img, uniform(1 - j, 1 + j))
        return img
