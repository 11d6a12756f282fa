"""Learning shown above the floor, for the audio-visual tasks: AVE, AVS S4, AVS MS3 and AVQA.

Each task trains the real tiny towers (random ViT + AST, and BERT for AVQA) end to end on a learnable split of its
synthetic set (the held-out splits hold the events / sounding objects / answers that training shows), with
``peft=cola`` and, where the comparison holds, once more with ``peft=frozen`` (towers frozen, the same heads train)
under the same seed and data order. The tests assert that CoLA beats the split's floor (``floor_metrics()``: the
majority class, the fixed mask, the per-type majority answer) and the frozen run, each by a margin below the
smallest gap measured over seeds 0-4 (the spread is in each test's docstring; ``python -m
tests.tasks.test_av_learning ave|s4|ms3|avqa [SEEDS]`` re-measures it).

What holds, and what does not (measurements in the docstrings):

- AVE: CoLA beats both the majority floor and the frozen run (fast suite, ~45-80 s with the set's generation).
- AVS S4 / MS3: CoLA beats the fixed-mask floors, but NOT the frozen run reliably: the mask decoder learns the
  synthetic shapes from the frozen random patch tokens as well. Floor only; a frozen model passes these too.
- AVQA: CoLA beats both, but only after 32 epochs (~2-3 min): marked slow.

A task's two runs are shared by its assertions (module-scoped fixtures). The training samples are read once through
the task's data module (its dataset and collate) and served from memory; evaluation uses the data module's own val
and test loaders.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import AUDIO_FRAMES, AV_IMAGE, compose_cfg, fit_and_test, heldout, make_ave, timed_runs
from tests.tasks.test_av_tasks import make_avs

METHODS = ("cola", "frozen")


# ----------------------------------------------------------------------------------------------------------- AVE
AVE_SET = dict(num_videos=24, seed=0, num_categories=4)  # 16 / 4 / 4 videos; every test event occurs in training
AVE_LR = {"lr_adapters": 3e-3, "lr_heads": 3e-3}
AVE_EPOCHS = 24
AVE_MARGIN = {"floor": 0.5, "frozen": 0.05}


def build_ave_set(root: Path) -> Path:
    from cola.data.ave_prepare import prepare_ave
    from cola.data.synthetic import make_synthetic_ave

    make_synthetic_ave(root, **AVE_SET)
    prepare_ave(root, workers=1, progress=False)
    return root


def ave_run(method: str, root: Path, tmp_path: Path, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(val and test metrics, floor metrics) of one AVE run (batch 2, 29-way per-second classification)."""
    from cola.data.ave import AVEDataModule

    dm = AVEDataModule(root=root, image_size=AV_IMAGE, batch_size=2, audio_target_frames=AUDIO_FRAMES)
    task = make_ave(method, seed=seed, val_split=dm.val_split, test_splits=dm.test_splits, **AVE_LR)
    return fit_and_test(task, dm, tmp_path, epochs=AVE_EPOCHS, seed=seed), dm.floor_metrics()


@pytest.fixture(scope="module")
def ave_learnable(tmp_path_factory) -> Path:
    return build_ave_set(tmp_path_factory.mktemp("ave_learnable") / "AVE_Dataset")


@pytest.fixture(scope="module")
def ave_runs(ave_learnable, tmp_path_factory) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    return {m: ave_run(m, ave_learnable, tmp_path_factory.mktemp(f"ave_{m}")) for m in METHODS}


def test_ave_cola_learns_above_the_majority_floor_and_the_frozen_towers(ave_learnable, ave_runs):
    """AVE (4 categories; 16 training videos, 4 val + 4 test held out), 24 epochs of batch 2 at lr 3e-3. Held-out
    per-second accuracy (mean of val and test) over seeds 0-4: CoLA 0.95-0.99, frozen 0.48-0.90 (CoLA minus frozen
    0.075-0.51, the smallest on seed 0: 0.975 vs 0.90), majority floor 0.19. Margins: 0.05 over the frozen run, 0.5
    over the floor. With 16 epochs CoLA falls below the frozen run on seed 4 (test/acc 0.55 vs 0.65)."""
    from cola.data.ave import AVEDataModule

    dm = AVEDataModule(root=ave_learnable)
    dm.validate()
    trained = {r.category for r in dm.rows["train"]}
    assert {r.category for s in ("val", "test") for r in dm.rows[s]} <= trained  # a learnable split
    (cola, floor), (frozen, _) = ave_runs["cola"], ave_runs["frozen"]
    assert set(cola) == set(frozen) == {"val/acc", "test/acc"}
    assert set(floor) == {"val/acc_majority", "test/acc_majority"}
    assert heldout(cola, "acc") > heldout(floor, "acc_majority") + AVE_MARGIN["floor"], (cola, floor)
    assert heldout(cola, "acc") > heldout(frozen, "acc") + AVE_MARGIN["frozen"], (cola, frozen)


# ----------------------------------------------------------------------------------------------------------- AVS
AVS_SET = dict(num_s4=20, num_ms3=20, seed=0)  # 12 / 4 / 4 clips per subset, every category in training
AVS_LR = {"lr_adapters": 3e-3, "lr_heads": 3e-3}
AVS_EPOCHS = {"s4": 6, "ms3": 8}


def build_avs_set(root: Path) -> Path:
    from cola.data.synthetic import make_synthetic_avs

    return make_synthetic_avs(root, **AVS_SET)


def avs_run(
    subset: str, method: str, root: Path, tmp_path: Path, seed: int = 0
) -> tuple[dict[str, float], dict[str, float]]:
    """(val and test metrics, floor metrics) of one AVS run (batch 2 clips of 5 frames)."""
    from cola.data.avs import AVSDataModule

    dm = AVSDataModule(root=root, subset=subset, image_size=AV_IMAGE, batch_size=2, audio_target_frames=AUDIO_FRAMES)
    task = make_avs(method, seed=seed, val_split=dm.val_split, test_splits=dm.test_splits, **AVS_LR)
    return fit_and_test(task, dm, tmp_path, epochs=AVS_EPOCHS[subset], seed=seed), dm.floor_metrics()


@pytest.fixture(scope="module")
def avs_learnable(tmp_path_factory) -> Path:
    return build_avs_set(tmp_path_factory.mktemp("avs_learnable") / "AVSBench")


def _sounding_categories(root: Path, subset: str, split: str) -> set[str]:
    """The categories that sound in ``split`` of the synthetic set (its manifest, synthetic.json)."""
    clips = json.loads((root / "synthetic.json").read_text())["clips"]
    return {
        obj["category"]
        for clip in clips
        if clip["subset"] == subset and clip["split"] == split
        for flags in clip["sounding"]
        for obj, on in zip(clip["objects"], flags)
        if on
    }


AVS_FLOOR_MARGIN = {"miou": 0.08, "fscore": 0.25}


@pytest.mark.parametrize("subset", ["s4", "ms3"])
def test_avs_cola_learns_above_the_fixed_mask_floor(subset, avs_learnable, tmp_path):
    """AVS, 12 training clips per subset (S4: frame 1 annotated; MS3: all 5), batch 2 at lr 3e-3, 6 (S4) and 8
    (MS3) epochs. Test scores over seeds 0-4 (``python -m tests.tasks.test_av_learning s4|ms3``), CoLA vs frozen:

    - S4: miou 0.14-0.38 (fixed-mask floor 0.0), fscore 0.48-0.58 (floor 0.094); frozen miou 0.00-0.28, fscore
      0.41-0.54. CoLA minus frozen: miou -0.08 to +0.38, fscore -0.03 to +0.15.
    - MS3: miou 0.26-0.44 (floor 0.10), fscore 0.48-0.54 (floor 0.106); frozen miou 0.10-0.41, fscore 0.40-0.56.
      CoLA minus frozen: miou -0.09 to +0.33, fscore -0.07 to +0.14.

    Margins over the floor: 0.08 (miou), 0.25 (fscore). CoLA does NOT beat the frozen towers reliably here, nor
    after 24 epochs on 24 S4 clips in a plain AdamW loop (miou 0.24-0.38 vs 0.29-0.38 over seeds 0-2): the decoder
    learns from the frozen random patch tokens, and neither run uses the audio to pick the sounding object yet. So
    this test asserts the floor only, and a frozen model passes it too (it clears these margins on 4 of 5 seeds)."""
    assert _sounding_categories(avs_learnable, subset, "test") <= _sounding_categories(avs_learnable, subset, "train")
    res, floor = avs_run(subset, "cola", avs_learnable, tmp_path)
    assert set(res) == {f"{split}/{m}" for split in ("val", "test") for m in ("miou", "fscore")}
    assert set(floor) == {f"{split}/{m}_fixed_mask" for split in ("val", "test") for m in ("miou", "fscore")}
    for metric, margin in AVS_FLOOR_MARGIN.items():
        assert res[f"test/{metric}"] > floor[f"test/{metric}_fixed_mask"] + margin, (res, floor)


# ---------------------------------------------------------------------------------------------------------- AVQA
AVQA_SET = dict(num_videos=60, seed=0)  # 36 / 12 / 12 videos of 2 s, 4 questions each (144 / 48 / 48)
AVQA_OVERRIDES = [
    "task.module.d_model=64",
    "optim.lr_adapters=1e-3",  # at 3e-3 (16 epochs) CoLA stays at or below the floor: held-out acc 0.31-0.41
    "optim.lr_heads=3e-3",
    "data.num_workers=0",
]
AVQA_EPOCHS = 32


def build_avqa_set(root: Path) -> Path:
    from cola.data.synthetic import build_synthetic_avqa

    return build_synthetic_avqa(root, **AVQA_SET)


def avqa_run(method: str, root: Path, tmp_path: Path, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(val and test metrics, floor metrics) of one AVQA run: ``task=avqa peft=<method>`` composed as train.py
    does, with the tiny test towers (ViT, AST, BERT), built by the harness (batch 8 questions of 2 segments)."""
    from hydra.utils import instantiate

    from cola import harness

    cfg = compose_cfg(["task=avqa", f"peft={method}", f"data.root={root}", f"seed={seed}", *AVQA_OVERRIDES])
    dm = instantiate(cfg.data, _convert_="all")
    dm.validate()
    L.seed_everything(seed, workers=True)  # the towers' and heads' initialisation
    task = harness.build_module(cfg, harness.build_encoder(cfg), dm)
    return fit_and_test(task, dm, tmp_path, epochs=AVQA_EPOCHS, seed=seed), dm.floor_metrics()


@pytest.fixture(scope="module")
def avqa_learnable(tmp_path_factory) -> Path:
    return build_avqa_set(tmp_path_factory.mktemp("avqa_learnable") / "avqa")


@pytest.fixture(scope="module")
def avqa_runs(avqa_learnable, tmp_path_factory) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
    return {m: avqa_run(m, avqa_learnable, tmp_path_factory.mktemp(f"avqa_{m}")) for m in METHODS}


# one question is 1/96 of the held-out mean (48 val + 48 test): 0.005 asks for at least one question above the floor
AVQA_MARGIN = {"floor": 0.005, "frozen": 0.1}


@pytest.mark.slow
def test_avqa_cola_learns_above_the_majority_floor_and_the_frozen_towers(avqa_learnable, avqa_runs):
    """AVQA (36 training videos, 144 questions; 12 + 12 held out), ``peft=cola`` (rank 16) vs ``peft=frozen``, 32
    epochs of batch 8 at lr 1e-3 (adapters) / 3e-3 (head). Held-out accuracy (mean of val and test, 48 questions
    each, so one question is 0.0104) over seeds 0-4: CoLA 0.416-0.53, frozen 0.21-0.28 (CoLA minus frozen
    0.19-0.25), per-type majority floor 0.406 (CoLA minus floor 0.010-0.13: 1 to 12 of 96 questions; the smallest
    on seed 3, re-measured on 2026-12-08 with one thread on an idle machine: val 0.354, test 0.479, 94 s). Margins:
    0.1 over the frozen run, 0.005 over the floor (at least one question). The frozen run stays below the floor:
    with CLS pooling the frozen random BERT cannot tell the questions apart, the adapters learn to.

    Slow, because no cheaper recipe clears the floor on every seed. Measured (one thread, the other core busy):
    16 epochs at lr 2e-3 (adapters) / 3e-3 (head), 37-59 s per CoLA run and 8-17 s per frozen run, gives CoLA
    0.458 / 0.427 / 0.417 / 0.291 / 0.489 on seeds 0-4 against frozen 0.239 / 0.261 / 0.261 / 0.209 / 0.250: always
    0.08 or more above the frozen towers, but seed 3 falls below the per-type floor (0.406) and even below the
    input-blind floor (every question answered "yes": 0.302). 24 epochs at 2e-3 leave seed 3 at 0.323; 16 epochs
    at 3e-3 reach 0.31-0.41."""
    from cola.data.avqa_annotations import SPLIT_FILES, parse_questions

    questions = {s: parse_questions(avqa_learnable / name) for s, name in SPLIT_FILES.items()}
    held_out = [q for s in ("val", "test") for q in questions[s]]
    vocabulary = {q.answer for q in questions["train"]}
    # a learnable split: every type is trained, and all but 3 of the 96 held-out answers ("flute" for "what kind of
    # instrument is the leftest/rightest", never a training answer) are in the train vocabulary
    assert sum(q.answer not in vocabulary for q in held_out) <= 3
    assert {q.type_index for q in held_out} <= {q.type_index for q in questions["train"]}
    (cola, floor), (frozen, _) = avqa_runs["cola"], avqa_runs["frozen"]
    assert {"val/acc", "test/acc"} <= set(cola) and {"val/acc_majority", "test/acc_majority"} == set(floor)
    assert heldout(cola, "acc") > heldout(floor, "acc_majority") + AVQA_MARGIN["floor"], (cola, floor)
    assert heldout(cola, "acc") > heldout(frozen, "acc") + AVQA_MARGIN["frozen"], (cola, frozen)


# ----------------------------------------------------------------------------------------------------- calibration
def _calibrate(task: str, seeds: list[int], out: Path) -> None:
    """Prints the per-seed test metrics of both methods and the wall time of each run."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "ave": (build_ave_set, "AVE_Dataset", ave_run),
        "s4": (build_avs_set, "AVSBench", partial(avs_run, "s4")),
        "ms3": (build_avs_set, "AVSBench", partial(avs_run, "ms3")),
        "avqa": (build_avqa_set, "avqa", avqa_run),
    }
    build, name, run = builders[task]
    root = out / task.replace("ms3", "s4") / name  # one AVSBench holds both subsets
    if not root.exists():
        build(root)
    for seed, method, metrics, floor, seconds in timed_runs(run, root, out / "runs", seeds, METHODS):
        shown = {k: round(v, 3) for k, v in {**metrics, **floor}.items()}
        print(f"{task} seed {seed} {method}: {shown} ({seconds:.1f} s)", flush=True)


if __name__ == "__main__":  # python -m tests.tasks.test_av_learning TASK [SEEDS] [OUT]
    _calibrate(
        sys.argv[1],
        [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "0,1,2,3,4").split(",")],
        Path(sys.argv[3] if len(sys.argv) > 3 else "/tmp/cola_av_learning"),
    )
