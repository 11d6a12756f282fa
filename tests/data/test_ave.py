"""AVE data: annotation parsing, labels, Kaldi fbank, synthetic release -> prepare_ave.py -> AVEDataModule."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from cola.data.audio import AudioReadError, audio_clip_features, kaldi_fbank, load_audio
from cola.data.ave import (
    AVE_CATEGORIES,
    BACKGROUND_INDEX,
    NUM_CLASSES,
    AVEDataModule,
    AVERow,
    category_order,
    collate_ave,
    parse_annotations,
    segment_labels,
)
from cola.data.ave_prepare import prepare_ave
from cola.data.synthetic import make_synthetic_ave

REPO = Path(__file__).resolve().parents[2]
RELEASE_ANNOTATIONS = REPO / "tests" / "fixtures" / "ave" / "Annotations.txt"


def _prepare_script():
    """``scripts/prepare_ave.py`` as a module, for its command-line tests."""
    spec = importlib.util.spec_from_file_location("prepare_ave_script", REPO / "scripts" / "prepare_ave.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ annotations
def test_release_annotations_parse():
    rows = parse_annotations(RELEASE_ANNOTATIONS)
    assert len(rows) == 4143
    assert len({r.video_id for r in rows}) == 4097
    assert tuple(category_order(rows)) == AVE_CATEGORIES
    assert len(AVE_CATEGORIES) == 28 and NUM_CLASSES == 29 and BACKGROUND_INDEX == 28
    zero = [r for r in rows if r.start == r.end]
    assert [(r.category, r.video_id, r.start, r.end) for r in zero] == [("Church bell", "VWi2ENBuTbw", 0, 0)]
    assert segment_labels(zero[0]).tolist() == [BACKGROUND_INDEX] * 10
    assert rows[0] == AVERow("Church bell", "RUhOCu3LNXM", "good", 0, 10, str(RELEASE_ANNOTATIONS), 1)
    assert {r.quality for r in rows} == {"good"}


def test_header_line_is_skipped(tmp_path):
    body = "Bark&abc&good&2&5\nCat&def&good&0&10\n"
    with_header = tmp_path / "with.txt"
    with_header.write_text("Category&VideoID&Quality&Start&End\n" + body)
    without = tmp_path / "without.txt"
    without.write_text("\n" + body.replace("\n", "\r\n"))  # a leading blank line and CRLF endings
    a, b = parse_annotations(with_header), parse_annotations(without)
    assert [(r.category, r.video_id, r.start, r.end) for r in a] == [("Bark", "abc", 2, 5), ("Cat", "def", 0, 10)]
    assert [(r.category, r.video_id, r.start, r.end) for r in b] == [
        (r.category, r.video_id, r.start, r.end) for r in a
    ]
    assert [r.line for r in a] == [2, 3] and [r.line for r in b] == [2, 3]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("Bark&abc&good&2", "expected 5 '&'-separated fields"),
        ("Bark&abc&good&two&5", "Start and End must be whole seconds"),
        ("Bark&abc&good&6&5", "0 <= Start <= End <= 10"),
        ("Bark&abc&good&0&11", "0 <= Start <= End <= 10"),
        ("&abc&good&0&1", "empty Category or VideoID"),
        ("Category&VideoID&Quality&Start&End", "Start and End must be whole seconds"),  # a header not on line 1
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, line, expected):
    path = tmp_path / "trainSet.txt"
    path.write_text(f"Bark&ok&good&0&10\n{line}\n")
    with pytest.raises(ValueError, match=expected) as info:
        parse_annotations(path)
    assert f"{path}, line 2" in str(info.value)


def test_segment_labels():
    bark = AVE_CATEGORIES.index("Bark")
    assert segment_labels(AVERow("Bark", "x", "good", 2, 5)).tolist() == [28, 28, bark, bark, bark, 28, 28, 28, 28, 28]
    assert segment_labels(AVERow("Mandolin", "x", "good", 0, 10)).tolist() == [27] * 10
    assert segment_labels(AVERow("Bark", "x", "good", 0, 0)).dtype == torch.int64
    with pytest.raises(ValueError, match="unknown AVE category 'Barking'"):
        segment_labels(AVERow("Barking", "x", "good", 0, 10, "f.txt", 3))


# ------------------------------------------------------------------------------------------------ audio
@pytest.mark.filterwarnings("ignore:At least one mel filter")  # transformers' note on its own filter bank
def test_kaldi_fbank_matches_ast_feature_extractor():
    from transformers import ASTFeatureExtractor

    extractor = ASTFeatureExtractor(do_normalize=False, max_length=98)  # numpy path (torchaudio is not installed)
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    waves = [
        rng.uniform(-1, 1, 16000).astype(np.float32),
        (0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(16000)).astype(np.float32),
    ]
    for wave in waves:
        ref = extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]  # (98, 128)
        ours = kaldi_fbank(torch.from_numpy(wave))
        assert ours.shape == (98, 128) and ours.dtype == torch.float32
        # float32 FFT vs numpy's float64 path; in float64 the two agree to rounding
        assert np.abs(ours.numpy() - ref).max() < 1e-3
        assert np.abs(kaldi_fbank(torch.from_numpy(wave).double()).numpy() - ref).max() < 1e-5
    batch = torch.from_numpy(np.stack(waves))  # (2, 16000)
    torch.testing.assert_close(kaldi_fbank(batch)[1], kaldi_fbank(batch[1]))
    assert kaldi_fbank(torch.zeros(100)).shape == (0, 128)


@pytest.mark.filterwarnings("ignore:At least one mel filter")
def test_audio_clip_features_match_ast_per_second():
    from transformers import ASTFeatureExtractor

    mean, std = -4.2677393, 4.5689974
    extractor = ASTFeatureExtractor(max_length=100, mean=mean, std=std)
    wave = np.random.default_rng(1).uniform(-0.5, 0.5, 40000).astype(np.float32)  # 2.5 s: the rest is padding
    feats = audio_clip_features(torch.from_numpy(wave), seconds=4, mean=mean, std=std)
    assert feats.shape == (4, 100, 128)
    padded = np.zeros(4 * 16000, dtype=np.float32)
    padded[:40000] = wave
    for s in range(4):
        ref = extractor(padded[s * 16000 : (s + 1) * 16000], sampling_rate=16000, return_tensors="np")["input_values"][
            0
        ]
        assert np.abs(feats[s].numpy() - ref).max() < 1e-3
    # frames 98, 99 are AST's zero padding, normalised
    torch.testing.assert_close(feats[:, 98:], torch.full((4, 2, 128), -mean / (2 * std)))
    assert audio_clip_features(torch.zeros(16000), seconds=1, target_frames=50).shape == (1, 50, 128)


def test_load_audio_stereo_44k_to_16k_mono(tmp_path):
    t = np.arange(44100 * 2) / 44100  # 2 s
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, 0.5 * tone], axis=1).astype(np.float32)  # (N, 2): the right channel is quieter
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo, 44100)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.shape == (32000,)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / wave.shape[0] - 440) < 1
    peak = np.abs(wave.numpy()[1000:-1000]).max()  # mean of the channels: 0.75 * 0.5
    assert abs(peak - 0.375) < 0.01
    with pytest.raises(ValueError, match=r"44100 Hz with 2 channel\(s\); expected 16000 Hz") as info:
        load_audio(path, allow_resample=False)
    assert str(path) in str(info.value)
    mono16k = tmp_path / "mono.wav"
    sf.write(mono16k, np.zeros(1600, np.float32), 16000)
    assert load_audio(mono16k, allow_resample=False).shape == (1600,)


def test_load_audio_errors(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav file")
    with pytest.raises(AudioReadError, match="bad.wav"):
        load_audio(bad)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")


# ------------------------------------------------------------------------------ synthetic + preparation
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Six synthetic videos (with the 0&0 row and a doubly annotated video), prepared once."""
    root = tmp_path_factory.mktemp("ave") / "AVE_Dataset"
    make_synthetic_ave(root, num_videos=6, seed=0, num_categories=4)
    report = prepare_ave(root, workers=1, progress=False)
    assert report["prepared"] == 6 and report["skipped"] == 0
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / "synthetic.json").read_text())


def test_synthetic_release_layout(prepared):
    root = prepared
    for name in ("Annotations.txt", "trainSet.txt", "valSet.txt", "testSet.txt", "categories.txt", "ReadMe.txt"):
        assert (root / name).is_file(), name
    assert (root / "Annotations.txt").read_text().splitlines()[0] == "Category&VideoID&Quality&Start&End"
    rows = parse_annotations(root / "Annotations.txt")
    split_rows = [r for s in ("train", "val", "test") for r in parse_annotations(root / f"{s}Set.txt")]
    assert all("Category" not in (root / f"{s}Set.txt").read_text() for s in ("train", "val", "test"))
    assert sorted((r.category, r.video_id, r.start, r.end) for r in rows) == sorted(
        (r.category, r.video_id, r.start, r.end) for r in split_rows
    )
    assert len(rows) == 7 and len({r.video_id for r in rows}) == 6  # one id annotated twice
    assert any(r.start == r.end == 0 for r in rows)
    assert set(category_order(rows)) <= set(AVE_CATEGORIES[:4])
    assert (root / "categories.txt").read_text().splitlines() == list(AVE_CATEGORIES)
    mp4 = root / "AVE" / f"{rows[0].video_id}.mp4"
    with av.open(str(mp4)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name in ("h264", "mpeg4") and audio.codec_context.name == "aac"
        assert audio.rate == 44100 and audio.channels == 2
        assert abs(float(container.duration / av.time_base) - 10) < 0.2


def test_prepared_outputs_follow_annotations(prepared):
    root = prepared
    manifest = _manifest(root)
    for video in manifest["videos"]:
        vid = video["video_id"]
        wav, rate = sf.read(root / "audio" / f"{vid}.wav")
        assert rate == 16000 and wav.shape == (160000, 2)  # the source's stereo kept (data.audio_channel picks)
        rms = np.sqrt((wav.mean(axis=1).reshape(10, 16000) ** 2).mean(axis=1))  # (10,)
        colours = [manifest["categories"][o["category"]]["colour"] for o in video["objects"]]
        for t in range(10):
            event = video["start"] <= t < video["end"]
            assert (rms[t] > 0.05) == event, (vid, t, rms)
            frame = np.asarray(sf_image(root / "frames" / vid / f"{t}.jpg"), dtype=np.float32)  # (H, W, 3)
            for colour in colours:
                close = (np.abs(frame - np.asarray(colour, np.float32)).max(axis=-1) < 40).sum()
                assert (close > 30) == event, (vid, t, close)


def sf_image(path: Path):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def test_prepare_is_resumable(prepared, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".jpg", ".wav")}
    report = prepare_ave(root, workers=1, progress=False)
    assert report["prepared"] == 0 and report["skipped"] == 6
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing rewritten
    victim = _manifest(root)["videos"][2]["video_id"]
    (root / "audio" / f"{victim}.wav").unlink()
    (root / "frames" / ".tmp-leftover-1").mkdir()  # what an interrupted run leaves behind
    report = prepare_ave(root, workers=1, progress=False)
    assert report["prepared"] == 1 and report["skipped"] == 5
    assert (root / "audio" / f"{victim}.wav").is_file() and not (root / "frames" / ".tmp-leftover-1").exists()
    assert json.loads((root / "prepare_report.json").read_text())["skipped"] == 5


def test_two_frames_per_second_go_to_their_own_folder(prepared, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    before = {p: p.read_bytes() for p in (root / "frames").rglob("*.jpg")}
    report = prepare_ave(root, workers=1, frames_per_second=2, progress=False)
    assert report["prepared"] == 6 and report["frames_per_second"] == 2
    video = next(v for v in _manifest(root)["videos"] if v["kind"] == "event" and 0 < v["start"])
    folder = root / "frames_2fps" / video["video_id"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{t}_{k}.jpg" for t in range(10) for k in range(2))
    assert {p: p.read_bytes() for p in (root / "frames").rglob("*.jpg")} == before  # 1 fps frames untouched
    colour = np.asarray(_manifest(root)["categories"][video["objects"][0]["category"]]["colour"], np.float32)
    for t in range(10):
        for k in range(2):
            frame = np.asarray(sf_image(folder / f"{t}_{k}.jpg"), dtype=np.float32)
            visible = (np.abs(frame - colour).max(axis=-1) < 40).sum() > 30
            assert visible == (video["start"] <= t < video["end"]), (t, k)


def test_corrupt_and_short_videos_are_reported(tmp_path):
    root = tmp_path / "AVE_Dataset"
    make_synthetic_ave(root, num_videos=3, seed=1)
    (root / "AVE" / "brokenvideo.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    # a 4-s video: frames of seconds 4..9 repeat the last one, its audio is zero-padded
    short_id = "shortvideo1"
    with av.open(str(root / "AVE" / f"{short_id}.mp4"), "w", format="mp4") as out:
        vs = out.add_stream("mpeg4", rate=4)
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        au = out.add_stream("aac", rate=44100, layout="stereo")
        for i in range(16):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i, np.uint8), format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                out.mux(packet)
        for k in range(0, 4 * 44100, 1024):
            n = min(1024, 4 * 44100 - k)
            frame = av.AudioFrame.from_ndarray(np.full((2, n), 0.1, np.float32), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 44100, k
            for packet in au.encode(frame):
                out.mux(packet)
        for stream in (vs, au):
            for packet in stream.encode(None):
                out.mux(packet)
    report = prepare_ave(root, workers=2, progress=False)  # the process pool path
    assert report["videos"] == 5 and report["prepared"] == 4
    assert [e["video_id"] for e in report["unreadable"]] == ["brokenvideo"]
    assert not (root / "frames" / "brokenvideo").exists() and not (root / "audio" / "brokenvideo.wav").exists()
    (short,) = report["short"]
    assert short["video_id"] == short_id and short["padded_frames"] == [4, 5, 6, 7, 8, 9]
    assert 3.8 < short["audio_seconds"] < 4.2
    wav, _ = sf.read(root / "audio" / f"{short_id}.wav")
    assert wav.shape == (160000, 2) and np.all(wav[5 * 16000 :] == 0) and np.abs(wav[16000:48000]).min() > 0.05
    last = np.asarray(sf_image(root / "frames" / short_id / "3.jpg"))
    for t in range(4, 10):
        assert np.array_equal(np.asarray(sf_image(root / "frames" / short_id / f"{t}.jpg")), last)
    # a rerun keeps the short entry of the skipped video and retries the broken one
    again = prepare_ave(root, workers=1, progress=False)
    assert again["skipped"] == 4 and [s["video_id"] for s in again["short"]] == [short_id]
    assert [e["video_id"] for e in again["unreadable"]] == ["brokenvideo"]

    # the data module drops rows of the unreadable video with one warning, before training
    with open(root / "trainSet.txt", "a") as f:
        f.write("Bark&brokenvideo&good&0&10\n")
    dm = AVEDataModule(root=root, image_size=32)
    logger = logging.getLogger("cola.data.ave")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        dm.setup("fit")
    finally:
        logger.removeHandler(handler)
    assert dm.num_dropped == 1
    (warning,) = [r for r in records if r.levelno == logging.WARNING]
    assert "dropped 1 of" in warning.getMessage() and "brokenvideo" in warning.getMessage()


def test_prepare_cli(prepared, tmp_path, capsys):
    prepare_mod = _prepare_script()
    assert prepare_mod.main([str(tmp_path / "nowhere"), "--no-progress"]) == 2
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    assert prepare_mod.main([str(root), "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "6 videos, 0 prepared now, 6 already prepared" in out and "prepare_report.json" in out


def test_make_synthetic_is_deterministic_and_guarded(tmp_path):
    a = make_synthetic_ave(tmp_path / "a", num_videos=3, seed=3)
    b = make_synthetic_ave(tmp_path / "b", num_videos=3, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 + 7
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert make_synthetic_ave(a, num_videos=3, seed=3) == a  # same parameters: kept
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_ave(a, num_videos=4, seed=3)
    with pytest.raises(ValueError, match="num_videos must be at least 3"):
        make_synthetic_ave(tmp_path / "c", num_videos=2)
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.tmp-*"))


# ------------------------------------------------------------------------------------------- datamodule
def test_datamodule_batches_match_annotations(prepared):
    dm = AVEDataModule(root=prepared, batch_size=2, eval_batch_size=3, image_size=32, augment=True)
    dm.setup("fit")
    dm.setup("test")
    assert dm.val_split == "val" and dm.test_splits == ["test"] and dm.eval_splits == ["val", "test"]
    assert dm.num_dropped == 0
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (2, 10, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_values"].shape == (2, 10, 100, 128)
    assert batch["labels"].shape == (2, 10) and batch["labels"].dtype == torch.int64
    assert ((batch["labels"] >= 0) & (batch["labels"] < NUM_CLASSES)).all()
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()[0])):
        rows = parse_annotations(prepared / f"{split}Set.txt")
        got = [(vid, lab.tolist()) for b in loader for vid, lab in zip(b["video_id"], b["labels"])]
        assert got == [(r.video_id, segment_labels(r).tolist()) for r in rows]
    # one sample per row: the doubly annotated video gives two samples with different labels
    train = dm.dataset("train")
    double = next(v for v in _manifest(prepared)["videos"] if v["kind"] == "double")
    samples = [train[i] for i, r in enumerate(train.rows) if r.video_id == double["video_id"]]
    assert len(samples) == 2 and not torch.equal(samples[0]["labels"], samples[1]["labels"])
    torch.testing.assert_close(samples[0]["input_values"], samples[1]["input_values"])
    zero = next(v for v in _manifest(prepared)["videos"] if v["kind"] == "zero")
    (row,) = [r for r in train.rows if r.video_id == zero["video_id"]]
    assert train[train.rows.index(row)]["labels"].tolist() == [BACKGROUND_INDEX] * 10


def test_select_on_test_and_limit(prepared):
    dm = AVEDataModule(root=prepared, select_on="test", limit_per_split=1, image_size=32)
    dm.setup("fit")
    assert dm.val_split == "test" and dm.eval_splits == ["test"]
    (batch,) = list(dm.val_dataloader())
    assert batch["video_id"] == [parse_annotations(prepared / "testSet.txt")[0].video_id]
    assert len(dm.dataset("train")) == 1
    with pytest.raises(ValueError, match="select_on must be one of"):
        AVEDataModule(root=prepared, select_on="train")


def test_corrupt_prepared_files_are_skipped_not_fatal(prepared, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    val_rows = parse_annotations(root / "valSet.txt")
    (root / "frames" / val_rows[0].video_id / "3.jpg").write_bytes(b"not a jpeg")
    train_rows = parse_annotations(root / "trainSet.txt")
    broken = train_rows[0].video_id
    (root / "audio" / f"{broken}.wav").write_bytes(b"RIFF garbage")
    dm = AVEDataModule(root=root, eval_batch_size=8, image_size=32)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="cola.data.ave"):
        val_batches = list(dm.val_dataloader())
        train = dm.dataset("train")
        batch = collate_ave([train[i] for i in range(len(train))])
    assert len(val_rows) == 1 and val_batches == [None]  # a batch with nothing left collates to None
    expected = [r.video_id for r in train_rows if r.video_id != broken]
    assert batch["video_id"] == expected and batch["labels"].shape == (len(expected), 10)
    skipped = 1 + len(train_rows) - len(expected)  # every row of the broken video is skipped
    assert dm.num_skipped == skipped and caplog.text.count("skipping video") == skipped
    assert "AudioReadError" in caplog.text and "UnidentifiedImageError" in caplog.text


def test_unprepared_root_names_the_prepare_command(tmp_path):
    root = tmp_path / "AVE_Dataset"
    make_synthetic_ave(root, num_videos=3, seed=2)
    with pytest.raises(FileNotFoundError) as info:
        AVEDataModule(root=root).validate()
    assert f"python scripts/prepare_ave.py {root}" in str(info.value)
    (root / "valSet.txt").unlink()
    with pytest.raises(FileNotFoundError, match="valSet.txt"):
        AVEDataModule(root=root).validate()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        AVEDataModule(root=tmp_path / "nowhere").validate()


def test_unknown_category_in_split_file(prepared, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root, ignore=shutil.ignore_patterns("AVE"))
    with open(root / "testSet.txt", "a") as f:
        f.write("Dog&abcdefghijk&good&0&10\n")
    with pytest.raises(ValueError, match=r"testSet.txt, line \d+: unknown AVE category 'Dog'"):
        AVEDataModule(root=root).validate()
