"""AVSBench data: the synthetic generator writes the release layout and the DataModule reads it robustly."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import cola.data.synthetic.avs
from cola.data.audio import audio_clip_features, load_audio
from cola.data.avs import IMAGENET_MEAN, IMAGENET_STD, AVSDataModule, collate_avs

REPO = Path(__file__).resolve().parents[2]
NUM_S4, NUM_MS3 = 6, 5  # S4: 4/1/1 clips, clip 2 (train) is short and stereo; MS3: 3/1/1


gen = cola.data.synthetic.avs


@pytest.fixture(scope="module")
def avs_root(tmp_path_factory) -> Path:
    return gen.make_synthetic_avs(tmp_path_factory.mktemp("avs") / "AVSBench", num_s4=NUM_S4, num_ms3=NUM_MS3)


@pytest.fixture(scope="module")
def manifest(avs_root) -> dict:
    return {(c["subset"], c["video_id"]): c for c in json.loads((avs_root / "synthetic.json").read_text())["clips"]}


def _clips(manifest: dict, subset: str, split: str) -> list[dict]:
    return [c for (s, _), c in manifest.items() if s == subset and c["split"] == split]


def _dm(root: Path, subset: str, **kw) -> AVSDataModule:
    dm = AVSDataModule(root=root, subset=subset, **kw)
    dm.validate()
    return dm


def _sample(dm: AVSDataModule, split: str, video_id: str) -> dict:
    ds = dm.dataset(split)
    index = [c.video_id for c in ds.clips].index(video_id)
    return ds[index]


def _copy_subset(src: Path, dst: Path, subset: str) -> Path:
    folder = "Single-source" if subset == "s4" else "Multi-sources"
    shutil.copytree(src / folder, dst / folder)
    return dst


# ---------------------------------------------------------------------------------------------- generator
def test_generator_writes_the_release_layout(avs_root, manifest):
    s4 = avs_root / "Single-source"
    assert (s4 / "s4_meta_data.csv").read_text().splitlines()[0] == "name,start_time,category,split"
    for split in ("train", "val", "test"):
        clip = _clips(manifest, "s4", split)[0]
        name, cat = clip["video_id"], clip["category"]
        for k in range(1, 6):
            frame = s4 / "s4_data" / "visual_frames" / split / cat / name / f"{name}_{k}.png"
            with Image.open(frame) as img:
                assert (img.size, img.mode) == ((224, 224), "RGB")
            mask = s4 / "s4_data" / "gt_masks" / split / cat / name / f"{name}_{k}.png"
            assert mask.is_file() == (split != "train" or k == 1)  # the release annotates train frame 1 only
            if mask.is_file():
                with Image.open(mask) as img:
                    assert (img.size, img.mode) == ((224, 224), "L")
        assert (s4 / "s4_data" / "audio_wav" / split / cat / f"{name}.wav").is_file()

    ms3 = avs_root / "Multi-sources"
    assert (ms3 / "ms3_meta_data.csv").read_text().splitlines()[0] == "video_id,split"
    for split in ("train", "val", "test"):
        vid = _clips(manifest, "ms3", split)[0]["video_id"]
        for k in range(1, 6):
            assert (ms3 / "ms3_data" / "visual_frames" / vid / f"{vid}.mp4_{k}.png").is_file()
            assert (ms3 / "ms3_data" / "gt_masks" / split / vid / f"{vid}_{k}.png").is_file()
        assert (ms3 / "ms3_data" / "audio_wav" / split / f"{vid}.wav").is_file()
    counts = [len(_clips(manifest, "ms3", s)) for s in ("train", "val", "test")]
    assert counts == [3, 1, 1]


def test_generator_is_deterministic_atomic_and_refuses_foreign_folders(tmp_path):
    a = gen.make_synthetic_avs(tmp_path / "a", num_s4=3, num_ms3=3, seed=7)
    b = gen.make_synthetic_avs(tmp_path / "b", num_s4=3, num_ms3=3, seed=7)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temporary folder left behind
    assert gen.make_synthetic_avs(a, num_s4=3, num_ms3=3, seed=7) == a  # same parameters: kept
    with pytest.raises(FileExistsError, match="overwrite"):
        gen.make_synthetic_avs(a, num_s4=3, num_ms3=3, seed=8)
    with pytest.raises(ValueError, match="at least 3"):
        gen.make_synthetic_avs(tmp_path / "c", num_s4=2, num_ms3=3)


# ------------------------------------------------------------------------------------------ data module
def test_s4_batches_have_the_documented_shapes_and_mask_validity(avs_root):
    dm = _dm(avs_root, "s4", batch_size=2, eval_batch_size=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (2, 5, 3, 224, 224)
    assert batch["input_values"].shape == (2, 5, 100, 128)
    assert batch["masks"].shape == (2, 5, 224, 224) and batch["masks"].dtype == torch.float32
    assert set(batch["masks"].unique().tolist()) <= {0.0, 1.0}
    assert batch["mask_valid"].dtype == torch.bool
    assert batch["mask_valid"].tolist() == [[True, False, False, False, False]] * 2
    assert batch["masks"][:, 1:].sum() == 0 and batch["masks"][:, 0].sum() > 0
    assert len(batch["video_id"]) == 2 and torch.isfinite(batch["input_values"]).all()
    val = next(iter(dm.val_dataloader()))
    assert val["pixel_values"].shape[0] == 1 and val["mask_valid"].all()
    assert (val["masks"].flatten(2).sum(-1) > 0).all()  # S4: the sounding object is in every frame
    assert dm.val_split == "val" and dm.test_splits == ["test"]
    assert len(dm.test_dataloader()) == 1


def test_ms3_loads_with_all_masks_valid_and_empty_masks_as_zeros(avs_root, manifest):
    dm = _dm(avs_root, "ms3", batch_size=3)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (3, 5, 3, 224, 224)
    assert batch["input_values"].shape == (3, 5, 100, 128)
    assert batch["mask_valid"].all()
    # the generator makes the last second of the first clip of each split silent: an empty mask
    vid = _clips(manifest, "ms3", "train")[0]["video_id"]
    assert not any(manifest[("ms3", vid)]["sounding"][4])
    empty = Image.open(avs_root / "Multi-sources/ms3_data/gt_masks/train" / vid / f"{vid}_5.png")
    assert np.asarray(empty).max() == 0
    sample = _sample(dm, "train", vid)
    assert sample["masks"][4].sum() == 0 and sample["mask_valid"][4]
    assert sample["masks"].flatten(1).sum(-1).gt(0).tolist() == [any(s) for s in manifest[("ms3", vid)]["sounding"]]


@pytest.mark.parametrize("subset,image_size", [("s4", 224), ("ms3", 224), ("s4", 112)])
def test_mask_marks_the_sounding_object_and_pixels_show_it(avs_root, manifest, subset, image_size):
    dm = _dm(avs_root, subset, image_size=image_size)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    scale = image_size / 224
    checked = {True: 0, False: 0}
    for split in ("val", "test"):
        for clip in _clips(manifest, subset, split):
            sample = _sample(dm, split, clip["video_id"])
            images = sample["pixel_values"] * std + mean  # (5, 3, S, S) in 0-1
            for k in range(5):
                for obj, sounding in zip(clip["objects"], clip["sounding"][k]):
                    x, y = (int(v * scale) for v in obj["centres"][k])
                    assert sample["masks"][k, y, x].item() == float(sounding)
                    colour = torch.tensor(gen.CATEGORIES[obj["category"]][1]) / 255
                    assert torch.allclose(images[k, :, y, x], colour, atol=0.02)
                    checked[sounding] += 1
    assert checked[True] > 0 and checked[False] > 0


def test_stereo_and_short_wavs_are_downmixed_and_padded(avs_root, manifest):
    clip = next(c for c in _clips(manifest, "s4", "train") if c["duration"] < 4 and c["stereo"])
    wav = avs_root / "Single-source/s4_data/audio_wav/train" / clip["category"] / f"{clip['video_id']}.wav"
    info = sf.info(str(wav))
    assert info.channels == 2 and info.samplerate == 16000 and info.frames < 4 * 16000
    data, _ = sf.read(str(wav), dtype="float32")  # (N, 2)
    sample = _sample(_dm(avs_root, "s4"), "train", clip["video_id"])
    feats = sample["input_values"]  # (5, 100, 128)
    assert feats.shape == (5, 100, 128) and torch.isfinite(feats).all()
    expected = audio_clip_features(torch.from_numpy(data.mean(axis=1)), seconds=5)
    assert torch.allclose(feats, expected, atol=1e-3)  # downmix = channel mean
    silence = audio_clip_features(torch.zeros(5 * 16000), seconds=5)
    assert torch.allclose(feats[4], silence[4], atol=1e-4)  # second 5 is padding
    assert not torch.allclose(feats[0], silence[0], atol=1e-1)


def test_wav_at_another_rate_is_resampled(avs_root, manifest, tmp_path):
    root = _copy_subset(avs_root, tmp_path, "ms3")
    clip = _clips(manifest, "ms3", "val")[0]
    wav = root / "Multi-sources/ms3_data/audio_wav/val" / f"{clip['video_id']}.wav"
    data, sr = sf.read(str(wav), dtype="float32")
    mono = data.mean(axis=1) if data.ndim == 2 else data
    t_new = np.arange(int(len(mono) * 22050 / sr)) / 22050
    sf.write(str(wav), np.interp(t_new, np.arange(len(mono)) / sr, mono).astype(np.float32), 22050)
    dm = _dm(root, "ms3")
    sample = _sample(dm, "val", clip["video_id"])
    assert sample is not None and dm.num_skipped == 0
    assert sample["input_values"].shape == (5, 100, 128)
    reference = audio_clip_features(load_audio(avs_root / wav.relative_to(root)), seconds=5)
    assert (sample["input_values"] - reference).abs().mean() < 0.1  # same tones after resampling


# --------------------------------------------------------------------------------------------- failures
def test_missing_folders_raise_listing_the_expected_paths(tmp_path, avs_root):
    with pytest.raises(FileNotFoundError) as err:
        AVSDataModule(root=tmp_path / "nowhere", subset="s4").validate()
    msg = str(err.value)
    for part in ("s4_meta_data.csv", "s4_data/visual_frames", "s4_data/audio_wav", "s4_data/gt_masks"):
        assert str(tmp_path / "nowhere" / "Single-source" / part) in msg
    assert "does not exist" in msg
    root = _copy_subset(avs_root, tmp_path / "partial", "ms3")
    shutil.rmtree(root / "Multi-sources/ms3_data/gt_masks")
    with pytest.raises(FileNotFoundError, match=r"MISSING .*ms3_data/gt_masks"):
        AVSDataModule(root=root, subset="ms3").validate()


def test_csv_without_a_required_column_names_file_and_columns(tmp_path, avs_root):
    root = _copy_subset(avs_root, tmp_path, "s4")
    meta = root / "Single-source/s4_meta_data.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(["name,start_time,cat,split", *lines[1:]]) + "\n")
    with pytest.raises(ValueError) as err:
        AVSDataModule(root=root, subset="s4").validate()
    msg = str(err.value)
    assert str(meta) in msg and "['category']" in msg and "['name', 'category', 'split']" in msg


def test_rows_with_missing_files_are_dropped_with_one_warning(tmp_path, avs_root, caplog):
    root = _copy_subset(avs_root, tmp_path, "ms3")
    meta = root / "Multi-sources/ms3_meta_data.csv"
    meta.write_text(meta.read_text() + "ghost_a,train\nghost_b,test\n")
    gone = next(iter(sorted((root / "Multi-sources/ms3_data/audio_wav/train").glob("*.wav"))))
    gone.unlink()
    with caplog.at_level(logging.WARNING, logger="cola.data.avs"):
        dm = _dm(root, "ms3")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "dropped 3 of 7" in warnings[0] and "ghost_a" in warnings[0] and gone.stem in warnings[0]
    assert dm.num_dropped == 3
    assert [len(dm.clips[s]) for s in ("train", "val", "test")] == [2, 1, 1]


def test_corrupt_png_and_wav_are_skipped_and_counted(tmp_path, avs_root, manifest, caplog):
    root = _copy_subset(avs_root, tmp_path, "ms3")
    train = [c["video_id"] for c in _clips(manifest, "ms3", "train")]
    frame = root / "Multi-sources/ms3_data/visual_frames" / train[0] / f"{train[0]}.mp4_3.png"
    frame.write_bytes(frame.read_bytes()[:60])  # truncated png
    (root / "Multi-sources/ms3_data/audio_wav/train" / f"{train[1]}.wav").write_bytes(b"RIFF not a wav at all")
    dm = _dm(root, "ms3", batch_size=2)
    with caplog.at_level(logging.WARNING, logger="cola.data.avs"):
        seen = [vid for batch in dm.train_dataloader() if batch is not None for vid in batch["video_id"]]
    assert sorted(seen) == [train[2]]
    assert dm.num_skipped == 2 and set(dm.dataset("train").skipped) == {train[0], train[1]}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert train[0] in messages and train[1] in messages
    assert collate_avs([None, None]) is None


def test_mask_png_in_rgb_or_palette_mode_counts_any_nonzero_pixel(tmp_path, avs_root, manifest):
    root = _copy_subset(avs_root, tmp_path, "ms3")
    clip = _clips(manifest, "ms3", "test")[0]
    vid = clip["video_id"]
    k = next(i for i, s in enumerate(clip["sounding"]) if any(s))
    path = root / "Multi-sources/ms3_data/gt_masks/test" / vid / f"{vid}_{k + 1}.png"
    fg = np.asarray(Image.open(path)) > 0
    rgb = np.zeros((*fg.shape, 3), dtype=np.uint8)
    rgb[fg] = (0, 0, 1)  # a dark, non-zero colour
    Image.fromarray(rgb).save(path)
    sample = _sample(_dm(root, "ms3"), "test", vid)
    assert torch.equal(sample["masks"][k].bool(), torch.from_numpy(fg))


def test_options_select_on_limit_and_invalid_values(avs_root, manifest):
    dm = _dm(avs_root, "s4", select_on="test")
    test_ids = {c["video_id"] for c in _clips(manifest, "s4", "test")}
    assert dm.val_split == "test" and set(next(iter(dm.val_dataloader()))["video_id"]) <= test_ids
    assert len(_dm(avs_root, "s4", limit_per_split=1).dataset("train")) == 1
    with pytest.raises(ValueError, match=r"\['s4', 'ms3'\].*'s5'"):
        AVSDataModule(root=avs_root, subset="s5")
    with pytest.raises(ValueError, match=r"select_on must be one of \['val', 'test'\]"):
        AVSDataModule(root=avs_root, subset="s4", select_on="train")


def test_augment_flips_frames_and_masks_together(avs_root, manifest):
    dm = _dm(avs_root, "s4", augment=True)
    vid = _clips(manifest, "s4", "train")[0]["video_id"]
    plain = _sample(_dm(avs_root, "s4"), "train", vid)
    flips = 0
    torch.manual_seed(0)
    for _ in range(8):
        s = _sample(dm, "train", vid)
        flipped = torch.equal(s["masks"], plain["masks"].flip(-1))
        assert flipped or torch.equal(s["masks"], plain["masks"])
        expected = plain["pixel_values"].flip(-1) if flipped else plain["pixel_values"]
        assert torch.equal(s["pixel_values"], expected)
        flips += flipped
    assert 0 < flips < 8
    assert dm.dataset("val").augment is False
