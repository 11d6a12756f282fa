"""Learning shown above the floor, for grounding (RefCOCO unc: box REC + mask RES).

The tiny random towers of :func:`tests.conftest.make_task` (2-block ViT at 56 px, a 4 x 4 patch grid; 2-layer BERT)
train end to end with ``peft=cola`` on a learnable split of a small synthetic RefCOCO set (every held-out target's
colour and shape, and every held-out expression's words, occur in training), and are scored on the held-out val,
testA and testB splits against two floors that ignore image and text: ``acc@0.5_fixed_box`` (the data module's
``floor_metrics()``: the mean training box) and ``miou_fixed_mask`` (computed here: that box, filled, as the mask;
the data module has no mask floor). ``python -m tests.tasks.test_grounding_learning [SEEDS]`` re-measures both
methods, ``peft=cola`` and ``peft=frozen`` (towers frozen, the same head trains), under the same seed and data order.

What holds, and what does not (measurements in the test's docstring): CoLA beats both floors, but NOT the frozen
run reliably: the fusion head reads every text token and every patch token, and learns the synthetic colours,
shapes and positions from the frozen random towers about as well (CoLA minus frozen on held-out acc@0.5 ranges
from below zero to above, seed by seed). So the test asserts the floors only, and a frozen model passes them too.

Tried to make the frozen run fail by construction: the head without fusion (``task.head.layers=0``: the head never
reads the text, so only CoLA's inter-modal path can tell it which object is meant). CoLA did not learn to use that
path at this budget: held-out acc@0.5 / miou, CoLA vs frozen, 16 epochs seed 0: 0.128 / 0.243 vs 0.145 / 0.243,
seed 1: 0.114 / 0.247 vs 0.119 / 0.253; 40 epochs at lr 3e-3 (both groups) seed 0: 0.102 / 0.262 vs 0.113 / 0.255
(2026-12-08, one thread). Both stay at what a text-blind model reaches.

The CoLA run is shared by the assertions (a module-scoped fixture). The training samples are read once through the
data module (its dataset and collate) and served from memory; evaluation uses its own val and test loaders.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TASK_IMAGE, fit_and_test, heldout, make_task, refcoco_datamodule, timed_runs

METHODS = ("cola", "frozen")
SPLITS = ("val", "testA", "testB")  # the RefCOCO (unc) held-out splits, scored as one unweighted mean
REFCOCO_SET = dict(num_images=100, seed=0)  # 2-3 objects per image, 1-2 expressions each
GROUNDING_LR = {"lr_adapters": 1e-3, "lr_heads": 3e-3}  # adapters at 3e-3: CoLA falls below the frozen run
# the spatial box head (soft-argmax of the [REG] attention) and box losses weighted as the mask losses: with the
# MLP box head at the official loss_alpha 0.1 (or 1.0), acc@0.5 stays near the fixed-box floor 0.064 (0.00-0.08)
HEAD = {"fusion_box": "spatial", "layers": 2}
LOSS_ALPHA = 1.0
EPOCHS = 16
BATCH = 8


def build_refcoco_set(root: Path) -> Path:
    from cola.data.synthetic import make_synthetic_refcoco

    return make_synthetic_refcoco(root, **REFCOCO_SET)


def fixed_mask_floor(dm) -> dict[str, float]:
    """``<split>/miou_fixed_mask``: the mask IoU of the fixed box's filled mask (the mean training box relative to
    the image, scaled to each image, as ``acc@0.5_fixed_box`` places it), scored at the original resolution with
    :class:`cola.metrics.MaskMIoU` as the task scores a model. Reads the annotations only."""
    from cola.data.refcoco import box_mask, segmentation_to_mask
    from cola.metrics import MaskMIoU

    train = dm.samples(dm.train_split)
    rel = torch.tensor(
        [[x / s.width, y / s.height, w / s.width, h / s.height] for s in train for x, y, w, h in [s.bbox]]
    )
    rx, ry, rw, rh = rel.double().mean(0).tolist()
    out = {}
    for split in SPLITS:
        metric = MaskMIoU()
        for s in dm.samples(split):
            pred = torch.from_numpy(
                box_mask((rx * s.width, ry * s.height, rw * s.width, rh * s.height), s.height, s.width)
            )
            target = torch.from_numpy(segmentation_to_mask(s.segmentation, s.height, s.width))
            metric.update([pred.float()], [target])
        out[f"{split}/miou_fixed_mask"] = float(metric.compute())
    return out


def grounding_run(method: str, root: Path, tmp_path: Path, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(val, testA and testB metrics, floor metrics) of one run (batch 8 expressions at 56 px)."""
    dm = refcoco_datamodule(root, image_size=TASK_IMAGE, batch_size=BATCH, eval_batch_size=32)
    task = make_task(
        method,
        seed=seed,
        val_split=dm.val_split,
        test_splits=dm.test_splits,
        head=HEAD,
        loss_alpha=LOSS_ALPHA,
        **GROUNDING_LR,
    )
    metrics = fit_and_test(task, dm, tmp_path, epochs=EPOCHS, seed=seed)
    return metrics, {**dm.floor_metrics(), **fixed_mask_floor(dm)}


@pytest.fixture(scope="module")
def refcoco_learnable(tmp_path_factory) -> Path:
    return build_refcoco_set(tmp_path_factory.mktemp("refcoco_learnable"))


@pytest.fixture(scope="module")
def cola_run(refcoco_learnable, tmp_path_factory) -> tuple[dict[str, float], dict[str, float]]:
    return grounding_run("cola", refcoco_learnable, tmp_path_factory.mktemp("grounding_cola"))


def _targets(root: Path, dm, split: str) -> set[tuple[str, int]]:
    """The (colour, shape category) of every target of ``split`` (the set's manifest and instances.json)."""
    colours = json.loads((root / "synthetic.json").read_text())["colours"]
    categories = {
        a["id"]: a["category_id"] for a in json.loads((root / "refcoco" / "instances.json").read_text())["annotations"]
    }
    return {(colours[str(s.ann_id)], categories[s.ann_id]) for s in dm.samples(split)}


def test_refcoco_split_is_learnable(refcoco_learnable):
    """Every held-out target's (colour, shape) and every held-out expression word occur in training."""
    dm = refcoco_datamodule(refcoco_learnable, image_size=TASK_IMAGE)
    words = {s: {w for x in dm.samples(s) for w in x.expression.split()} for s in ("train", *SPLITS)}
    for split in SPLITS:
        assert _targets(refcoco_learnable, dm, split) <= _targets(refcoco_learnable, dm, "train"), split
        assert words[split] <= words["train"], (split, words[split] - words["train"])


FLOOR_MARGIN = {"acc@0.5": 0.03, "miou": 0.12}


@pytest.mark.parametrize(("metric", "floor_name"), [("acc@0.5", "acc@0.5_fixed_box"), ("miou", "miou_fixed_mask")])
def test_grounding_cola_learns_above_the_fixed_box_and_mask_floors(metric, floor_name, refcoco_learnable, cola_run):
    """RefCOCO unc on 100 synthetic images (257 training expressions; 38 + 45 + 37 held out in val, testA, testB),
    16 epochs of batch 8 at lr 1e-3 (adapters) / 3e-3 (head), the fusion head (width 32, 2 layers, spatial box
    head, conv mask head), box losses weighted 1.0. Held-out scores (unweighted mean of val, testA and testB) over
    seeds 0-4, CoLA vs frozen (one thread, the other core busy; wall s of the run, training and evaluation):

    ====  ====================  ====================  ======  ======
    seed  CoLA acc@0.5 / miou   frozen acc@0.5 / miou  CoLA s  frozen s
    ====  ====================  ====================  ======  ======
    0     0.173 / 0.318         0.148 / 0.303          36      15
    1     0.111 / 0.265         0.245 / 0.315          49      21
    2     0.177 / 0.359         0.197 / 0.329          44      17
    3     0.315 / 0.366         0.238 / 0.339          44      19
    4     0.257 / 0.349         0.223 / 0.303          39      18
    ====  ====================  ====================  ======  ======

    Floors: fixed box acc@0.5 0.064, fixed mask miou 0.087. CoLA minus floor: acc@0.5 0.047-0.25 (smallest on
    seed 1), miou 0.18-0.28 (seed 1). Margins: 0.03 (acc@0.5), 0.12 (miou). CoLA minus frozen: acc@0.5 -0.13 to
    +0.08, miou -0.05 to +0.05: not reliable, so this test asserts the floors only, and the frozen run clears these
    margins too on every seed. Attempts that did not change that (seed 0 unless said): adapters at lr 3e-3 (CoLA
    below frozen on seeds 0-1: acc@0.5 0.14 / 0.10 vs 0.15 / 0.25), and with the MLP box head 8-24 epochs at
    loss_alpha 0.1 or 1.0 (acc@0.5 0.00-0.08 for both methods, at the fixed-box floor)."""
    metrics, floor = cola_run
    assert set(metrics) == {f"{split}/{m}" for split in SPLITS for m in ("acc@0.5", "miou", "oiou")}
    assert set(floor) == {f"{split}/{m}" for split in SPLITS for m in ("acc@0.5_fixed_box", "miou_fixed_mask")}
    score, floor_score = heldout(metrics, metric, SPLITS), heldout(floor, floor_name, SPLITS)
    assert score > floor_score + FLOOR_MARGIN[metric], (metrics, floor)


# ----------------------------------------------------------------------------------------------------- calibration
def _calibrate(seeds: list[int], out: Path, methods: tuple[str, ...] = METHODS) -> None:
    """Prints, per seed and method, the held-out acc@0.5 and miou, the floors, every split's metrics and the wall
    time of the run (one thread)."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    root = out / f"refcoco{REFCOCO_SET['num_images']}"
    if not root.exists():
        build_refcoco_set(root)
    for seed, method, metrics, floor, seconds in timed_runs(grounding_run, root, out / "runs", seeds, methods):
        box, mask = heldout(metrics, "acc@0.5", SPLITS), heldout(metrics, "miou", SPLITS)
        fb, fm = heldout(floor, "acc@0.5_fixed_box", SPLITS), heldout(floor, "miou_fixed_mask", SPLITS)
        print(
            f"seed {seed} {method}: acc@0.5 {box:.3f} miou {mask:.3f} (floors {fb:.3f} {fm:.3f}) "
            f"{ {k: round(v, 3) for k, v in metrics.items()} } ({seconds:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":  # python -m tests.tasks.test_grounding_learning [SEEDS] [OUT] [METHODS]
    _calibrate(
        [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "0,1,2,3,4").split(",")],
        Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/cola_grounding_learning"),
        tuple((sys.argv[3] if len(sys.argv) > 3 else "cola,frozen").split(",")),
    )
