"""``data.augment: official``: the official grounding training augmentation
(docs/official_settings.md#grounding-augmentation) and its plumbing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from cola.data.transforms import (
    AugmentConfig,
    GroundingTransform,
    OfficialAugment,
    boxes_to_original,
    mentions_position,
    swap_left_right,
)
from cola.models.encoders import minilm_path
from tests.conftest import REFCOCO_IMAGE, make_dm, mask_bbox

SIZE = 128  # model input side of the transform tests
BOX = (200, 150, 360, 330)  # x0, y0, x1, y1 of the target rectangle in the 640 x 480 image
TARGET = (220, 40, 40)


def scene() -> tuple[Image.Image, torch.Tensor, torch.Tensor]:
    """A 640 x 480 image (smooth gradient background, a red rectangle target), its xyxy box and bool mask."""
    h, w = 480, 640
    ys, xs = np.mgrid[0:h, 0:w]
    pixels = np.stack([xs * 200 // w, ys * 200 // h, np.full((h, w), 90)], axis=-1).astype(np.uint8)
    x0, y0, x1, y1 = BOX
    pixels[y0:y1, x0:x1] = TARGET
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return Image.fromarray(pixels), torch.tensor(BOX, dtype=torch.float32), mask


def run(aug: OfficialAugment, text: str, seed: int, image_size: int = SIZE) -> dict:
    image, box, mask = scene()
    torch.manual_seed(seed)
    return GroundingTransform(image_size=image_size, augment=aug)(image, box, mask, text)


def box_pixels(out: dict, size: int = SIZE) -> torch.Tensor:
    """The output box as xyxy pixels of the input frame."""
    b = out["box"]
    return torch.cat([b[:2] - b[2:] / 2, b[:2] + b[2:] / 2]) * size


# ------------------------------------------------------------------------------------------------ config
def test_official_string_builds_the_official_config():
    aug = AugmentConfig.from_dict("official")
    assert isinstance(aug, OfficialAugment) and aug == OfficialAugment() and aug.active
    assert aug.p_resize_branch == 0.5 and aug.long_sides == (448, 416, 384, 352, 320, 288, 256)
    assert aug.short_sides == (400, 500, 600) and aug.crop_range == (384, 600)
    assert (aug.color_jitter, aug.p_color, aug.hflip) == (0.4, 0.8, 0.5)
    assert aug.spatial_words == ("left", "right", "top", "bottom", "middle")
    assert isinstance(GroundingTransform(image_size=SIZE, augment="official").augment, OfficialAugment)
    # the mapping form (the demo default) is unchanged
    demo = AugmentConfig.from_dict({"scale": [0.8, 1.0], "color_jitter": 0.2, "hflip": 0.5})
    assert demo == AugmentConfig(scale=(0.8, 1.0), color_jitter=0.2, hflip=0.5)


@pytest.mark.parametrize("value", ["crop", "Official", ""])
def test_other_strings_are_rejected(value):
    with pytest.raises(ValueError) as err:
        AugmentConfig.from_dict(value)
    msg = str(err.value)
    assert "data.augment" in msg and repr(value) in msg
    assert "mapping" in msg and "null" in msg and "'official'" in msg


def test_bad_string_is_rejected_by_the_datamodule(synthetic_refcoco):
    with pytest.raises(ValueError, match=r"data\.augment='flip'.*mapping.*null.*'official'"):
        make_dm(synthetic_refcoco, minilm_path(), augment="flip")
    with pytest.raises(ValueError, match=r"data\.augment must be a mapping"):
        make_dm(synthetic_refcoco, minilm_path(), augment=[0.5])


@pytest.mark.parametrize(
    "kwargs", [{"p_color": 1.5}, {"long_sides": ()}, {"crop_range": (600, 384)}, {"color_jitter": 1.0}]
)
def test_bad_official_fields_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        OfficialAugment(**kwargs)


def test_spatial_words_are_whole_words():
    assert mentions_position("the man on the left")
    assert mentions_position("Top shelf") and mentions_position("guy in the middle") and mentions_position("right")
    assert mentions_position("bottom-left corner")
    # a substring test, as the official code: "leftmost" keeps the crop away too (and "bright" counts, as there)
    assert mentions_position("the leftmost man") and mentions_position("topmost shelf")
    assert mentions_position("bright lamp")
    assert not mentions_position("the red car")


# ------------------------------------------------------------------------------------------------ branches
def test_spatial_expressions_always_take_the_resize_branch():
    aug = OfficialAugment(p_resize_branch=0.0)  # without a spatial word this would always crop
    for seed in range(50):
        out = run(aug, "the man on the left", seed)
        assert out["meta"]["augment"]["branch"] == "resize"
    for seed in range(5):
        assert run(aug, "the red car", seed)["meta"]["augment"]["branch"] == "crop"


def test_other_expressions_take_both_branches():
    branches = [run(OfficialAugment(), "the red car", seed)["meta"]["augment"]["branch"] for seed in range(40)]
    assert set(branches) == {"resize", "crop"}
    assert 8 <= branches.count("crop") <= 32


def test_long_side_is_one_of_the_allowed_sizes():
    aug = OfficialAugment()
    for text in ("the man on the left", "the red car"):
        for seed in range(25):
            meta = run(aug, text, seed)["meta"]
            assert max(meta["augment"]["frame_size"]) in aug.long_sides
            assert meta["orig_size"] == (480, 640)
            assert max(meta["resized_size"]) == SIZE  # then the normal letterbox to the input size


def test_crop_branch_keeps_the_whole_box():
    aug = OfficialAugment(p_resize_branch=0.0, p_color=0.0, hflip=0.0)
    _, _, mask = scene()
    cropped = 0
    for seed in range(30):
        out = run(aug, "the red car", seed, image_size=448)
        meta = out["meta"]
        assert meta["augment"]["branch"] == "crop"
        fh, fw = meta["augment"]["frame_size"]
        cropped += abs(fh / fw - 480 / 640) > 0.02  # the window changed the aspect ratio: a real crop
        # the box still covers the same object pixels: all of the mask lies inside it (up to resampling)
        m = out["mask"]
        x0, y0, x1, y1 = box_pixels(out, 448).tolist()
        inside = m[max(0, int(y0) - 1) : int(np.ceil(y1)) + 1, max(0, int(x0) - 1) : int(np.ceil(x1)) + 1]
        assert m.sum() > 0 and inside.sum() == m.sum()
        torch.testing.assert_close(mask_bbox(m), box_pixels(out, 448), atol=1.5, rtol=0)
        # nothing of the object was cut away: the box keeps the rectangle's aspect ratio and the mask fills it
        assert (x1 - x0) / (y1 - y0) == pytest.approx((BOX[2] - BOX[0]) / (BOX[3] - BOX[1]), rel=0.03)
        assert float(m.sum()) == pytest.approx((x1 - x0) * (y1 - y0), rel=0.05)
        # the target colour sits inside the box: the box's interior is the red rectangle
        px = out["pixel_values"]
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        red = px[:, cy, cx]
        assert red[0] > red[1] and red[0] > red[2]
    assert cropped > 5
    assert int(mask.sum()) == (BOX[2] - BOX[0]) * (BOX[3] - BOX[1])


@pytest.mark.parametrize(
    ("height", "width", "box"),
    [
        (600, 800, (10.0, 20.0, 100.0, 90.0)),  # near the top-left corner
        (600, 800, (700.0, 500.0, 800.0, 600.0)),  # touching the bottom-right border
        (600, 1000, (100.0, 50.0, 900.0, 550.0)),  # wider than any crop window: the fallback grows the window
        (400, 500, (0.0, 0.0, 500.0, 400.0)),  # the whole image (smaller than the crop range)
        (600, 800, (800.0, 10.0, 800.0, 10.0)),  # zero area at the right border
        (500, 500, (120.3, 77.7, 380.9, 401.2)),  # fractional coordinates
    ],
)
def test_crop_window_contains_the_box(height, width, box):
    aug = OfficialAugment()
    box_t = torch.tensor(box)
    torch.manual_seed(0)
    for _ in range(40):
        x0, y0, w, h = aug.crop_window(height, width, box_t)
        assert 0 <= x0 and 0 <= y0 and x0 + w <= width and y0 + h <= height
        assert x0 <= box[0] and y0 <= box[1] and box[2] <= x0 + w and box[3] <= y0 + h
        lo, hi = aug.crop_range
        if box[2] - box[0] <= min(lo, width):  # no fallback needed: the drawn size stays in the range
            assert min(lo, width) <= w <= min(hi, width)


# ------------------------------------------------------------------------------------------------ colour, flip
def test_colour_jitter_changes_pixels_only():
    geometric = run(OfficialAugment(color_jitter=0.0, hflip=0.0), "the red car", 3)
    off = run(OfficialAugment(p_color=0.0, hflip=0.0), "the red car", 3)
    on = run(OfficialAugment(p_color=1.0, hflip=0.0), "the red car", 3)
    assert torch.equal(off["pixel_values"], geometric["pixel_values"])
    for out in (off, on):
        assert torch.equal(out["box"], geometric["box"]) and torch.equal(out["mask"], geometric["mask"])
        assert out["meta"] == geometric["meta"]
    h, w = on["meta"]["resized_size"]
    assert not torch.allclose(on["pixel_values"][:, :h, :w], geometric["pixel_values"][:, :h, :w], atol=1e-3)


def test_colour_jitter_probability():
    aug = OfficialAugment(p_color=0.8, color_jitter=0.4)
    img = torch.rand(3, 20, 30)
    torch.manual_seed(0)
    changed = sum(not torch.equal(aug.color(img), img) for _ in range(200))
    assert 140 <= changed <= 180


def test_flip_mirrors_box_mask_and_swaps_words():
    text = "the man on the left"
    plain = run(OfficialAugment(hflip=0.0, p_color=0.0), text, 7)
    flip = run(OfficialAugment(hflip=1.0, p_color=0.0), text, 7)
    assert plain["meta"]["augment"] == flip["meta"]["augment"]  # same geometry: the flip is drawn after it
    assert flip["text"] == swap_left_right(text) == "the man on the right" and plain["text"] == text
    assert flip["meta"]["flipped"] and not plain["meta"]["flipped"]
    h, w = flip["meta"]["resized_size"]
    torch.testing.assert_close(
        flip["pixel_values"][:, :h, :w], plain["pixel_values"][:, :h, :w].flip(-1), atol=1e-4, rtol=0
    )
    assert torch.equal(flip["mask"][:h, :w], plain["mask"][:h, :w].flip(-1))
    p, f = box_pixels(plain), box_pixels(flip)
    torch.testing.assert_close(f, torch.stack([w - p[2], p[1], w - p[0], p[3]]), atol=1e-3, rtol=0)
    torch.testing.assert_close(mask_bbox(flip["mask"]), f, atol=1.5, rtol=0)


def test_same_torch_seed_same_sample():
    """The draws come from torch's global generator (seeded per worker by Lightning), not python/numpy."""
    outs = []
    for other in (1, 2):
        random.seed(other)
        np.random.seed(other)
        outs.append(run(OfficialAugment(), "the red car", 11))
    assert torch.equal(outs[0]["pixel_values"], outs[1]["pixel_values"]) and outs[0]["meta"] == outs[1]["meta"]


def test_augmented_meta_is_not_mapped_back():
    out = run(OfficialAugment(), "the red car", 0)
    with pytest.raises(ValueError, match="official"):
        boxes_to_original(out["box"][None], [out["meta"]])


# ------------------------------------------------------------------------------------------------ datamodule
def test_official_composes_through_the_datamodule(synthetic_refcoco):
    dm = make_dm(synthetic_refcoco, minilm_path(), augment="official")
    assert isinstance(dm.augment, OfficialAugment)
    assert dm.eval_transform.augment == AugmentConfig()  # evaluation is unchanged
    dm.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, REFCOCO_IMAGE, REFCOCO_IMAGE) and batch["mask"].shape == (
        4,
        REFCOCO_IMAGE,
        REFCOCO_IMAGE,
    )
    for box, mask, meta in zip(batch["box"], batch["mask"], batch["meta"]):
        assert meta["augment"]["name"] == "official" and meta["augment"]["branch"] in ("resize", "crop")
        assert max(meta["augment"]["frame_size"]) in OfficialAugment().long_sides
        xyxy = torch.cat([box[:2] - box[2:] / 2, box[:2] + box[2:] / 2]) * REFCOCO_IMAGE
        torch.testing.assert_close(mask_bbox(mask), xyxy, atol=1.5, rtol=0)
    val = next(iter(dm.val_dataloader()))
    assert all("augment" not in m for m in val["meta"])
