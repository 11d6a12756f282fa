"""data.audio_channel: a multi-channel wav becomes the mono waveform by its channel 0 (``first``, the official AVE
and AVS loaders) or its channel mean (``mean``); the AVE preparation keeps every channel so the loader can choose,
and a folder an older preparation downmixed warns once under ``first`` and is rewritten by a rerun."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from cola.data.audio import audio_clip_features, load_audio
from cola.data.av import AVDataModule, AVInputs
from cola.data.ave import AVEDataModule, AVEDataset, prepared_channels
from cola.data.ave_prepare import prepare_ave, prepare_videos
from cola.data.avs import AVSDataModule
from tests.conftest import compose_cfg

SR = 16000
BAD_CHANNEL = r"data\.audio_channel must be one of \['first', 'mean'\], got 'left'"
LEFT_HZ, RIGHT_HZ = 440.0, 1250.0  # a different tone in each channel of the test videos
VIDEO_IDS = {"train": "stereoTrain1", "val": "stereoVal001", "test": "stereoTest01"}


def _stereo(seconds: float, rate: int) -> np.ndarray:
    """(N, 2) float32: a 440 Hz tone on the left, a quieter 1250 Hz tone on the right."""
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * LEFT_HZ * t), 0.2 * np.sin(2 * np.pi * RIGHT_HZ * t)], axis=1).astype(
        np.float32
    )


def _peak_hz(wave: np.ndarray, rate: int = SR) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(wave))) * rate / wave.shape[0])


def write_stereo_mp4(path: Path, seconds: int = 10) -> None:
    """A small mp4 (32 x 32 at 4 fps) whose stereo AAC track (44.1 kHz) has a different tone in each channel; the
    muxing follows tests/data/test_ave.py's short video, whose channels are equal."""
    audio = np.ascontiguousarray(_stereo(seconds, 44100).T)  # (2, N) planar
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("mpeg4", rate=4)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        au = out.add_stream("aac", rate=44100, layout="stereo")
        for i in range(4 * seconds):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 5 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                out.mux(packet)
        for k in range(0, audio.shape[1], 1024):
            piece = np.ascontiguousarray(audio[:, k : k + 1024])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 44100, k
            for packet in au.encode(frame):
                out.mux(packet)
        for stream in (vs, au):
            for packet in stream.encode(None):
                out.mux(packet)


@pytest.fixture(scope="module")
def stereo_ave(tmp_path_factory) -> Path:
    """A three-video AVE release (one row per split) of stereo videos, prepared once."""
    root = tmp_path_factory.mktemp("stereo_ave") / "AVE_Dataset"
    (root / "AVE").mkdir(parents=True)
    for video_id in VIDEO_IDS.values():
        write_stereo_mp4(root / "AVE" / f"{video_id}.mp4")
    for split, video_id in VIDEO_IDS.items():
        (root / f"{split}Set.txt").write_text(f"Church bell&{video_id}&good&2&8\n")
    report = prepare_ave(root, workers=1, progress=False)
    assert report["prepared"] == 3 and report["audio_channels"] == "source"
    return root


# ------------------------------------------------------------------------------------------------ reading
def test_first_reads_channel_0_and_mean_the_average(tmp_path):
    stereo = _stereo(1.0, SR)
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, SR, subtype="FLOAT")  # float samples: the comparison is exact
    torch.testing.assert_close(load_audio(path, channel="first"), torch.from_numpy(stereo[:, 0]), rtol=0, atol=0)
    torch.testing.assert_close(load_audio(path, channel="mean"), torch.from_numpy(stereo.mean(axis=1)))
    torch.testing.assert_close(load_audio(path), load_audio(path, channel="mean"), rtol=0, atol=0)  # the default
    assert _peak_hz(load_audio(path, channel="first").numpy()) == pytest.approx(LEFT_HZ, abs=1)


def test_first_then_resamples_channel_0(tmp_path):
    stereo = _stereo(1.0, 44100)
    sf.write(tmp_path / "stereo.wav", stereo, 44100, subtype="FLOAT")
    sf.write(tmp_path / "left.wav", stereo[:, 0], 44100, subtype="FLOAT")
    first = load_audio(tmp_path / "stereo.wav", channel="first")
    assert first.shape == (SR,)
    torch.testing.assert_close(first, load_audio(tmp_path / "left.wav"), rtol=0, atol=0)


def test_a_mono_file_reads_the_same_either_way(tmp_path):
    path = tmp_path / "mono.wav"
    sf.write(path, _stereo(0.5, SR)[:, 1], SR, subtype="FLOAT")
    torch.testing.assert_close(load_audio(path, channel="first"), load_audio(path, channel="mean"), rtol=0, atol=0)


def test_an_unknown_channel_raises_naming_the_key(tmp_path, stereo_ave):
    with pytest.raises(ValueError, match=BAD_CHANNEL):
        load_audio(tmp_path / "not_read.wav", channel="left")  # checked before the file
    with pytest.raises(ValueError, match=BAD_CHANNEL):
        AVEDataModule(root=stereo_ave, audio_channel="left")
    with pytest.raises(ValueError, match=BAD_CHANNEL):
        AVEDataset(stereo_ave, [], inputs=AVInputs(audio_channel="left"))


# ------------------------------------------------------------------------------------------------ prepare
def test_prepare_ave_keeps_the_two_channels_of_a_stereo_source(stereo_ave):
    wav, rate = sf.read(stereo_ave / "audio" / f"{VIDEO_IDS['train']}.wav")
    assert rate == SR and wav.shape == (10 * SR, 2)
    assert _peak_hz(wav[:, 0]) == pytest.approx(LEFT_HZ, abs=1)
    assert _peak_hz(wav[:, 1]) == pytest.approx(RIGHT_HZ, abs=1)
    assert (stereo_ave / "audio" / "channels.txt").read_text() == "source\n"
    assert prepared_channels(stereo_ave) == "source"
    assert json.loads((stereo_ave / "prepare_report.json").read_text())["audio_channels"] == "source"


def test_the_shared_driver_still_downmixes_by_default(stereo_ave, tmp_path):
    """MUSIC-AVQA's preparation calls prepare_videos without keep_channels: mono wavs, marked ``mean``."""
    mp4 = stereo_ave / "AVE" / f"{VIDEO_IDS['train']}.mp4"
    report = prepare_videos(tmp_path, [mp4], annotated=lambda: (set(), []), label="test", progress=False)
    assert report["prepared"] == 1 and report["audio_channels"] == "mean"
    mono, _ = sf.read(tmp_path / "audio" / f"{mp4.stem}.wav")
    stereo, _ = sf.read(stereo_ave / "audio" / f"{mp4.stem}.wav")
    assert mono.shape == (10 * SR,) and prepared_channels(tmp_path) == "mean"
    np.testing.assert_allclose(mono, stereo.mean(axis=1), atol=2 / 32768)  # 16-bit rounding, once or per channel


# ------------------------------------------------------------------------------------------- data modules
def _features(root: Path, split: str, channel: str) -> tuple[str, torch.Tensor]:
    dm = AVEDataModule(root=root, image_size=32, audio_channel=channel)
    dm.setup("fit")
    sample = dm.dataset(split)[0]
    return sample["video_id"], sample["input_values"]


def test_ave_datamodule_first_gives_the_features_of_channel_0(stereo_ave):
    video_id, first = _features(stereo_ave, "train", "first")
    wav, _ = sf.read(stereo_ave / "audio" / f"{video_id}.wav", dtype="float32")  # (N, 2)
    torch.testing.assert_close(first, audio_clip_features(torch.from_numpy(wav[:, 0].copy()), seconds=10))
    _, mean = _features(stereo_ave, "train", "mean")
    torch.testing.assert_close(mean, audio_clip_features(torch.from_numpy(wav.mean(axis=1)), seconds=10))
    assert (first - mean).abs().max() > 0.1  # the channels differ: the setting matters


def test_ave_datamodule_first_on_the_synthetic_set(ave_root):
    """The synthetic AVE's stereo (one gain per channel) keeps its channels through the preparation too."""
    video_id, first = _features(ave_root, "val", "first")
    wav, _ = sf.read(ave_root / "audio" / f"{video_id}.wav", dtype="float32")
    assert wav.shape == (10 * SR, 2)
    torch.testing.assert_close(first, audio_clip_features(torch.from_numpy(wav[:, 0].copy()), seconds=10))


def test_avs_datamodule_first_gives_the_features_of_channel_0(avs_root):
    dm = AVSDataModule(root=avs_root, subset="s4", image_size=32, audio_channel="first")
    dm.setup("fit")
    dataset = dm.dataset("val")
    index = next(i for i, clip in enumerate(dataset.clips) if sf.info(clip.wav).channels == 2)
    wav, _ = sf.read(dataset.clips[index].wav, dtype="float32")
    expected = audio_clip_features(torch.from_numpy(wav[:, 0].copy()), seconds=5)
    torch.testing.assert_close(dataset[index]["input_values"], expected)


# ------------------------------------------------------------------------------ folders of older versions
def _downmix_like_the_older_preparation(root: Path) -> None:
    for wav in (root / "audio").glob("*.wav"):
        data, rate = sf.read(wav, dtype="float32")
        sf.write(wav, data.mean(axis=1), rate, subtype="PCM_16")
    (root / "audio" / "channels.txt").unlink()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "cola.data.ave"]


def test_first_on_a_downmixed_folder_warns_once_and_a_rerun_rewrites_it(stereo_ave, tmp_path, caplog):
    root = tmp_path / "old"
    shutil.copytree(stereo_ave, root)
    _downmix_like_the_older_preparation(root)
    assert prepared_channels(root) == "mean"
    with caplog.at_level(logging.WARNING):
        dm = AVEDataModule(root=root, image_size=32, audio_channel="first")
        dm.setup("fit")
        dm.setup("test")  # validated once: no second warning
    (warning,) = _warnings(caplog)
    assert str(root / "audio") in warning and "older preparation" in warning
    assert f"python scripts/prepare_ave.py {root}" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        AVEDataModule(root=root, image_size=32, audio_channel="mean").setup("fit")
    assert _warnings(caplog) == []  # mean reads a mono wav as the older code did

    report = prepare_ave(root, workers=1, progress=False)  # the rerun decodes the downmixed videos again
    assert report["prepared"] == 3 and report["skipped"] == 0 and report["audio_channels"] == "source"
    assert sf.info(root / "audio" / f"{VIDEO_IDS['val']}.wav").channels == 2 and prepared_channels(root) == "source"
    again = prepare_ave(root, workers=1, progress=False)
    assert again["prepared"] == 0 and again["skipped"] == 3
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        AVEDataModule(root=root, image_size=32, audio_channel="first").setup("fit")
    assert _warnings(caplog) == []


def test_a_downmixed_wav_that_cannot_be_rewritten_keeps_the_folder_marked_mean(stereo_ave, tmp_path, caplog):
    root = tmp_path / "old"
    shutil.copytree(stereo_ave, root)
    _downmix_like_the_older_preparation(root)
    sf.write(root / "audio" / "noVideoHere.wav", np.zeros(10 * SR, np.float32), SR)  # its mp4 is gone
    with caplog.at_level(logging.WARNING):
        report = prepare_ave(root, workers=1, progress=False)
    assert report["prepared"] == 3 and report["audio_channels"] == "mean" and prepared_channels(root) == "mean"
    assert "could not be written again" in caplog.text and "noVideoHere" in caplog.text


# --------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["task=ave"], "mean"),
        (["task=avs_s4"], "mean"),
        (["task=avs_ms3"], "mean"),
        (["task=avqa"], "mean"),
        (["experiment=main_ave"], "first"),
        (["experiment=main_avs_s4"], "first"),
        (["experiment=main_avs_ms3"], "first"),
    ],
)
def test_config_audio_channel(overrides, expected):
    cfg = compose_cfg(overrides, tiny=False)
    assert cfg.data.audio_channel == expected


def test_every_av_datamodule_takes_audio_channel():
    """AVQA passes its keyword arguments to AVDataModule, so it takes (and checks) the key as AVE and AVS."""
    from cola.data.avqa import AVQADataModule

    for cls in (AVEDataModule, AVSDataModule, AVQADataModule):
        assert issubclass(cls, AVDataModule)
    with pytest.raises(ValueError, match=BAD_CHANNEL):
        AVQADataModule(root="unused", audio_channel="left")
