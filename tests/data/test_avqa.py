"""MUSIC-AVQA data: question files (real format), templating, vocabulary, types, synthetic release ->
prepare_avqa.py -> AVQADataModule, and the bad inputs AVE is tested with (missing files, bad JSON, unknown video,
unreadable frames)."""

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
from PIL import Image

from cola.data.avqa import (
    REAL_VIDEO_DIR,
    SINGLE_VIDEO_DIR,
    SYNTHETIC_VIDEO_DIR,
    SYNTHETIC_VIDEO_DIR_CORRECTED,
    AVQADataModule,
    collate_avqa,
    segment_seconds,
)
from cola.data.avqa_annotations import (
    NUM_TYPES,
    QUESTION_TYPES,
    TYPE_KEYS,
    AVQAQuestion,
    answer_vocabulary,
    fill_template,
    majority_answers,
    parse_questions,
    question_words,
)
from cola.data.avqa_prepare import find_videos, folder_summary, prepare_avqa
from cola.data.synthetic import make_synthetic_avqa
from cola.data.synthetic.avqa import INSTRUMENTS, SLOTS
from cola.models import minilm_path

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "avqa" / "avqa-val.json"
SECONDS = 3


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dm(root: Path, **kwargs) -> AVQADataModule:
    return AVQADataModule(root=root, tokenizer=minilm_path(), image_size=32, **kwargs)


# ------------------------------------------------------------------------------------------ question files
def test_release_format_parses_with_its_quirks():
    qs = parse_questions(FIXTURE)
    assert len(qs) == 8 and all(isinstance(q, AVQAQuestion) for q in qs)
    assert [q.text for q in qs] == [
        "How many musical instruments were heard throughout the video",
        "Is the acoustic guitar on the left louder than the piano on the right",
        "How many sounding violin in the video",  # full-width ？ dropped
        "Are there flute and cello sound",  # trailing space, then ?
        "Is the erhu in the video always playing",
        "Is the erhu in the video always playing",
        "Where is the performance",
        "Which instrument makes sounds after the electric bass",
    ]
    assert qs[1].templ_values == ("acoustic_guitar", "left", "piano", "right")
    assert [q.type_key for q in qs][:3] == ["audio_counting", "audiovisual_comparative", "audiovisual_counting"]
    assert qs[2].video_id == "sa00000202" and qs[0].question_id == 5 and qs[0].answer == "two"
    # a question_id listed twice with different answers: two samples, as in the official loader
    assert [(q.question_id, q.answer, q.index) for q in qs if q.question_id == 21] == [(21, "yes", 4), (21, "no", 5)]
    assert qs[5].where() == f"{FIXTURE}, entry 5 (question_id 21)"


def test_official_templating_words():
    # every word holding '<' is replaced whole, in order; the question mark goes first (as the official loader)
    assert question_words("Is the <Object> on the <LR>?", ["cello", "left"]) == [
        "Is",
        "the",
        "cello",
        "on",
        "the",
        "left",
    ]
    assert question_words("Where is the <FL> sounding instrument? ", ["first"])[-3:] == [
        "first",
        "sounding",
        "instrument",
    ]
    assert question_words("Is there a <Object>?", ["drum"]) == ["Is", "there", "a", "drum"]
    assert fill_template("What is the <TH> instrument that comes in?", ["first"]).endswith("instrument that comes in")
    assert fill_template("Is the <Object> louder", ["acoustic_guitar"]) == "Is the acoustic guitar louder"
    with pytest.raises(ValueError, match=r"has 2 placeholder\(s\) but templ_values has 1"):
        question_words("Is the <Object> louder than the <Object>?", ["cello"])


def test_types_vocabulary_and_majority():
    assert NUM_TYPES == 9 and len(TYPE_KEYS) == 9
    assert TYPE_KEYS == (
        "audio_counting",
        "audio_comparative",
        "visual_counting",
        "visual_location",
        "audiovisual_existential",
        "audiovisual_counting",
        "audiovisual_location",
        "audiovisual_comparative",
        "audiovisual_temporal",
    )
    assert QUESTION_TYPES[4] == ("Audio-Visual", "Existential")
    qs = parse_questions(FIXTURE)
    assert answer_vocabulary(qs) == ["two", "no", "one", "yes", "indoor", "drum"]  # first appearance
    majority = majority_answers(qs)
    assert majority[0] == "two"  # audio counting: "two" and "yes" once each, "two" seen first
    assert majority[4] == "yes" and majority[3] == "indoor" and 1 not in majority  # tie, first; absent type


def _entry(**change):
    entry = {
        "video_id": "00000001",
        "question_id": 7,
        "type": '["Audio", "Counting"]',
        "question_content": "Is there a <Object> sound?",
        "templ_values": '["violin"]',
        "question_deleted": 0,
        "anser": "yes",
    }
    entry.update(change)
    return {k: v for k, v in entry.items() if v is not ...}


@pytest.mark.parametrize(
    "entry, expected",
    [
        (_entry(anser=...), r"missing field\(s\) \['anser'\]"),
        (_entry(type='["Audio", "Dancing"]'), r"unknown question type \['Audio', 'Dancing'\]"),
        (_entry(type="Audio Counting"), "type must be a list of strings"),
        (_entry(type='["Audio"]'), r"type must hold \[modality, type\]"),
        (_entry(templ_values='["violin", "left"]'), r"1 placeholder\(s\) but templ_values has 2"),
        (_entry(templ_values="violin"), "templ_values must be a list of strings"),
        (_entry(question_id="7"), "question_id must be an integer, got '7'"),
        (_entry(video_id=1), "video_id must be a non-empty string, got 1"),
        (_entry(anser=""), "anser must be a non-empty string"),
        ("not an object", "expected an object with the fields"),
    ],
)
def test_malformed_entries_name_file_entry_and_field(tmp_path, entry, expected):
    path = tmp_path / "avqa-train.json"
    path.write_text(json.dumps([_entry(), entry]))
    with pytest.raises(ValueError, match=expected) as info:
        parse_questions(path)
    assert f"{path}, entry 1" in str(info.value)


def test_bad_json_and_missing_file(tmp_path):
    path = tmp_path / "avqa-val.json"
    path.write_text('[{"video_id": "1",')
    with pytest.raises(ValueError, match=r"avqa-val.json: not a valid JSON file"):
        parse_questions(path)
    path.write_text('{"video_id": "1"}')
    with pytest.raises(ValueError, match="expected a JSON list of questions, got dict"):
        parse_questions(path)
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        parse_questions(tmp_path / "nowhere.json")


def test_segments_follow_the_official_stride():
    assert segment_seconds(60, 10) == list(range(0, 60, 6))  # official feature[::6]
    assert segment_seconds(3, 3) == [0, 1, 2] and segment_seconds(60, 1) == [0]


# ------------------------------------------------------------------------------- synthetic + preparation
@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("avqa") / "MUSIC-AVQA"
    make_synthetic_avqa(root, num_videos=8, questions_per_video=4, seconds=SECONDS, seed=0)
    report = prepare_avqa(root, seconds=SECONDS, workers=1, progress=False)
    assert report["prepared"] == 8 and report["seconds"] == SECONDS and report["dataset"] == "MUSIC-AVQA"
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / "synthetic.json").read_text())


def _oracle(scene: dict, q: AVQAQuestion) -> str | None:
    """The answer of a few templates recomputed from the scene (None: template not checked here)."""
    objs = scene["objects"]
    counts = ("zero", "one", "two", "three", "four")
    if q.content == "Where is the performance?":
        return scene["background"]
    if q.content.startswith("How many musical instruments were heard"):
        return counts[sum(o["sounding"] for o in objs)]
    if q.content.startswith("How many types of musical instruments appeared"):
        return counts[sum(o["slot"] is not None for o in objs)]
    if q.content == "Is this sound from the instrument in the video?":
        return "no" if any(o["slot"] is None for o in objs) else "yes"
    if q.content == "Where is the <LL> instrument?":
        return max((o for o in objs if o["slot"] and o["sounding"]), key=lambda o: o["level"])["slot"]
    return None


def test_synthetic_release_layout(prepared):
    root = prepared
    scenes = {v["video_id"]: v for v in _manifest(root)["videos"]}
    checked = 0
    for name in ("avqa-train.json", "avqa-val.json", "avqa-test.json"):
        raw = json.loads((root / name).read_text())
        assert raw and all(
            list(e)
            == ["video_id", "question_id", "type", "question_content", "templ_values", "question_deleted", "anser"]
            for e in raw
        )
        assert all(isinstance(e["type"], str) and isinstance(e["templ_values"], str) for e in raw)
        for q in parse_questions(root / name):
            assert scenes[q.video_id]["split"] == name[5:-5]
            expected = _oracle(scenes[q.video_id], q)
            checked += expected is not None
            assert expected in (None, q.answer), (q, scenes[q.video_id])
    assert checked >= 5
    first = next(iter(scenes.values()))
    with av.open(str(root / first["folder"] / f"{first['video_id']}.mp4")) as container:
        assert container.streams.audio[0].rate == 44100 and container.streams.audio[0].channels == 2
        assert abs(float(container.duration / av.time_base) - SECONDS) < 0.2


def test_videos_are_split_over_both_release_folders_and_all_prepared(prepared):
    """The release's two folders, as it names them (MUCIS, sic): numeric ids in the real one, ``sa`` ids in the
    synthetic one; the question files name exactly these videos and every one of them is prepared."""
    videos = _manifest(prepared)["videos"]
    stems = {d: sorted(p.stem for p in (prepared / d).glob("*.mp4")) for d in (REAL_VIDEO_DIR, SYNTHETIC_VIDEO_DIR)}
    assert {d for d in stems if stems[d]} == {REAL_VIDEO_DIR, SYNTHETIC_VIDEO_DIR}
    assert not (prepared / SYNTHETIC_VIDEO_DIR_CORRECTED).exists() and not (prepared / SINGLE_VIDEO_DIR).exists()
    assert all(len(v) == 8 and v.isdigit() for v in stems[REAL_VIDEO_DIR])
    assert all(v.startswith("sa") and len(v) == 10 and v[2:].isdigit() for v in stems[SYNTHETIC_VIDEO_DIR])
    assert {d: sorted(v["video_id"] for v in videos if v["folder"] == d) for d in stems} == stems
    annotated = {q.video_id for n in ("train", "val", "test") for q in parse_questions(prepared / f"avqa-{n}.json")}
    assert annotated == {v for ids in stems.values() for v in ids}  # json video_id == file stem, both folders
    report = json.loads((prepared / "prepare_report.json").read_text())
    assert report["video_folders"] == {d: len(ids) for d, ids in stems.items()}
    assert report["prepared"] == len(annotated) and report["annotated_without_video"] == [] == report["unreadable"]
    for video_id in annotated:
        assert (prepared / "audio" / f"{video_id}.wav").is_file()
        assert sorted(p.name for p in (prepared / "frames" / video_id).iterdir()) == [f"{t}.jpg" for t in range(3)]
    dm = _dm(prepared)
    dm.validate()
    assert dm.num_dropped == 0 and sum(len(qs) for qs in dm.index.values()) == sum(
        len(parse_questions(prepared / f"avqa-{n}.json")) for n in ("train", "val", "test")
    )


@pytest.mark.parametrize("synthetic_dir", [SYNTHETIC_VIDEO_DIR, SYNTHETIC_VIDEO_DIR_CORRECTED, SINGLE_VIDEO_DIR])
def test_every_accepted_video_folder_is_found(prepared, tmp_path, synthetic_dir):
    """The misspelt synthetic folder of the release, its correct spelling, and one folder of every video."""
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)  # prepared already: the preparation below only finds and skips
    real, synthetic = (len(list((root / d).glob("*.mp4"))) for d in (REAL_VIDEO_DIR, SYNTHETIC_VIDEO_DIR))
    (root / SYNTHETIC_VIDEO_DIR).rename(root / synthetic_dir)
    if synthetic_dir == SINGLE_VIDEO_DIR:  # everything in one folder
        for mp4 in (root / REAL_VIDEO_DIR).glob("*.mp4"):
            mp4.rename(root / SINGLE_VIDEO_DIR / mp4.name)
        (root / REAL_VIDEO_DIR).rmdir()
    assert len(find_videos(root)) == 8
    report = prepare_avqa(root, seconds=SECONDS, workers=1, progress=False)
    assert report["skipped"] == 8 and report["annotated_without_video"] == []
    expected = (
        {SINGLE_VIDEO_DIR: 8} if synthetic_dir == SINGLE_VIDEO_DIR else {REAL_VIDEO_DIR: real, synthetic_dir: synthetic}
    )
    assert report["video_folders"] == expected
    assert folder_summary(report) == ", ".join(
        [*(f"{d}: {n} videos" for d, n in expected.items()), "prepared 8", "unreadable 0", "missing 0"]
    )


def test_a_missed_folder_shows_in_the_summary(prepared, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    synthetic = sorted(p.stem for p in (root / SYNTHETIC_VIDEO_DIR).glob("*.mp4"))
    shutil.rmtree(root / SYNTHETIC_VIDEO_DIR)
    report = prepare_avqa(root, seconds=SECONDS, workers=1, progress=False)
    assert report["annotated_without_video"] == synthetic
    assert folder_summary(report) == (
        f"{REAL_VIDEO_DIR}: {8 - len(synthetic)} videos, {SYNTHETIC_VIDEO_DIR}: not found, "
        f"prepared {8 - len(synthetic)}, unreadable 0, missing {len(synthetic)}"
    )
    (root / SYNTHETIC_VIDEO_DIR_CORRECTED).mkdir()  # both spellings, one id in each: which one is meant?
    shutil.copy(
        root / REAL_VIDEO_DIR / f"{_manifest(root)['videos'][0]['video_id']}.mp4", root / SYNTHETIC_VIDEO_DIR_CORRECTED
    )
    with pytest.raises(ValueError, match="is in two folders"):
        find_videos(root)
    shutil.rmtree(root / SYNTHETIC_VIDEO_DIR_CORRECTED)
    shutil.rmtree(root / REAL_VIDEO_DIR)
    with pytest.raises(FileNotFoundError, match=f"expected the release's {REAL_VIDEO_DIR} and {SYNTHETIC_VIDEO_DIR}"):
        find_videos(root)


def test_prepared_frames_and_tones_follow_the_scene(prepared):
    for video in _manifest(prepared)["videos"]:
        vid = video["video_id"]
        wav, rate = sf.read(prepared / "audio" / f"{vid}.wav")
        assert rate == 16000 and wav.shape == (SECONDS * 16000,)
        for t in range(SECONDS):
            spectrum = np.abs(np.fft.rfft(wav[t * 16000 : (t + 1) * 16000]))  # 1 Hz bins
            frame = np.asarray(Image.open(prepared / "frames" / vid / f"{t}.jpg").convert("RGB"), np.float32)
            for o in video["objects"]:
                style = INSTRUMENTS[o["instrument"]]
                tone = spectrum[int(style["tone_hz"]) - 3 : int(style["tone_hz"]) + 4].max()
                assert (tone > 100) == (o["sounding"] and t >= o["onset"]), (vid, t, o, tone)
                if o["slot"] is not None:
                    x = int(SLOTS[o["slot"]] * frame.shape[1])
                    patch = frame[:, max(0, x - 6) : x + 6]
                    assert (np.abs(patch - np.asarray(style["colour"])).max(-1) < 50).sum() > 20, (vid, t, o)


def test_make_synthetic_is_deterministic_and_guarded(tmp_path):
    a = make_synthetic_avqa(tmp_path / "a", num_videos=3, seed=3)
    b = make_synthetic_avqa(tmp_path / "b", num_videos=3, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 + 4 and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert make_synthetic_avqa(a, num_videos=3, seed=3) == a
    with pytest.raises(FileExistsError, match="overwrite"):
        make_synthetic_avqa(a, num_videos=4, seed=3)
    with pytest.raises(ValueError, match="num_videos must be at least 3"):
        make_synthetic_avqa(tmp_path / "c", num_videos=2)
    with pytest.raises(ValueError, match="seconds must be in 2..60, got 1"):
        make_synthetic_avqa(tmp_path / "c", seconds=1)
    assert not (tmp_path / "c").exists()


def test_prepare_reports_unreadable_and_resumes(tmp_path, caplog):
    root = tmp_path / "MUSIC-AVQA"
    make_synthetic_avqa(root, num_videos=3, seed=1)
    (root / "MUSIC-AVQA-videos-Real" / "99999999.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with open(root / "avqa-val.json") as f:
        val = json.load(f)
    val.append({**val[0], "video_id": "99999999", "question_id": 999})  # a question on the broken video
    (root / "avqa-val.json").write_text(json.dumps(val))
    report = prepare_avqa(root, seconds=2, workers=1, progress=False)
    assert report["videos"] == 4 and report["prepared"] == 3
    assert [e["video_id"] for e in report["unreadable"]] == ["99999999"]
    assert not (root / "frames" / "99999999").exists()
    victim = _manifest(root)["videos"][0]["video_id"]
    (root / "audio" / f"{victim}.wav").unlink()
    (root / "frames" / ".tmp-leftover-1").mkdir()  # what an interrupted run leaves behind
    again = prepare_avqa(root, seconds=2, workers=1, progress=False)
    assert again["prepared"] == 1 and again["skipped"] == 2 and not (root / "frames" / ".tmp-leftover-1").exists()
    # the data module drops the broken video's question with one warning, before training
    with caplog.at_level(logging.WARNING, logger="cola.data.avqa"):
        dm = _dm(root)
        dm.validate()
    assert dm.num_dropped == 1 and "dropped 1 of" in caplog.text and "99999999" in caplog.text


def test_prepare_cli_and_bad_roots(prepared, tmp_path, capsys):
    prepare_mod = _script("prepare_avqa")
    assert prepare_mod.main([str(tmp_path / "nowhere"), "--no-progress"]) == 2
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    assert prepare_mod.main([str(root), "--workers", "1", "--seconds", str(SECONDS), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "MUSIC-AVQA prepared in" in out and "8 videos, 0 prepared now, 8 already prepared" in out
    folders = [v["folder"] for v in _manifest(root)["videos"]]
    real, synthetic = folders.count(REAL_VIDEO_DIR), folders.count(SYNTHETIC_VIDEO_DIR)
    assert real and synthetic and real + synthetic == 8
    assert out.splitlines()[-1] == (  # the last line: what each video folder held
        f"{REAL_VIDEO_DIR}: {real} videos, {SYNTHETIC_VIDEO_DIR}: {synthetic} videos, prepared 8, unreadable 0, missing 0"
    )
    assert prepare_mod.main([str(root), "--seconds", "0", "--no-progress"]) == 2
    make_mod = _script("make_synthetic_avqa")
    assert make_mod.main([str(tmp_path / "made"), "--num-videos", "3", "--seconds", "2"]) == 0
    assert (tmp_path / "made" / "avqa-train.json").is_file()
    assert make_mod.main([str(tmp_path / "made"), "--num-videos", "4"]) == 2


# ------------------------------------------------------------------------------------------- datamodule
def test_datamodule_batches_match_the_question_files(prepared):
    dm = _dm(prepared, batch_size=3, eval_batch_size=4)
    dm.setup("fit")
    dm.setup("test")
    assert dm.seconds == [0, 1, 2] and dm.answers == answer_vocabulary(parse_questions(prepared / "avqa-train.json"))
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (3, SECONDS, 3, 32, 32) and batch["input_values"].shape == (
        3,
        SECONDS,
        100,
        128,
    )
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"][:, 0].eq(101).all()
    assert batch["attention_mask"].sum(1).max() == batch["input_ids"].shape[1]  # cut to the longest question
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader()[0])):
        qs = parse_questions(prepared / f"avqa-{split}.json")
        got = [
            (v, i, l, t)
            for b in loader
            for v, i, l, t in zip(b["video_id"], b["question_id"], b["labels"].tolist(), b["question_type"].tolist())
        ]
        expected = [
            (q.video_id, q.question_id, dm.answers.index(q.answer) if q.answer in dm.answers else -1, q.type_index)
            for q in qs
        ]
        assert got == expected
    full = _dm(prepared, num_segments=2, pad_to="max_length", max_question_len=24)
    full.setup("fit")
    sample = collate_avqa([full.dataset("val")[0]], pad_to="max_length")
    assert full.seconds == [0, 1] and sample["input_ids"].shape == (1, 24) and sample["pixel_values"].shape[1] == 2


def test_segments_are_the_sampled_seconds(prepared):
    dm = _dm(prepared, num_segments=2, video_seconds=SECONDS)
    dm.validate()
    assert dm.seconds == [0, 1]
    ds = dm.dataset("val")
    q = ds.questions[0]
    item = ds[0]
    from cola.data.audio import audio_clip_features, load_audio

    wave = load_audio(prepared / "audio" / f"{q.video_id}.wav")
    torch.testing.assert_close(item["input_values"], audio_clip_features(wave[:32000], seconds=2, windows="seconds"))
    assert item["labels"].dtype == torch.int64 and int(item["question_type"]) == q.type_index


def test_floor_is_the_majority_answer_per_type(prepared):
    dm = _dm(prepared)
    floors = dm.floor_metrics()
    majority = majority_answers(parse_questions(prepared / "avqa-train.json"))
    for split in ("val", "test"):
        qs = parse_questions(prepared / f"avqa-{split}.json")
        assert floors[f"{split}/acc_majority"] == pytest.approx(
            sum(q.answer == majority.get(q.type_index) for q in qs) / len(qs)
        )


def test_unreadable_frames_are_skipped_and_counted(prepared, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root)
    val = parse_questions(root / "avqa-val.json")
    broken = val[0].video_id
    (root / "frames" / broken / "1.jpg").write_bytes(b"not a jpeg")
    dm = _dm(root, eval_batch_size=64)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="cola.data.avqa"):
        (batch,) = list(dm.val_dataloader())
    kept = [q for q in val if q.video_id != broken]
    assert batch is None if not kept else batch["question_id"] == [q.question_id for q in kept]
    assert dm.num_skipped == len(val) - len(kept) and "skipping question" in caplog.text
    majority = majority_answers(dm.index["train"])
    expected = sum(q.answer == majority.get(q.type_index) for q in kept) / len(kept)
    assert dm.split_floor_metrics("val") == {"val/acc_majority": pytest.approx(expected)}  # skipped ones left out


def test_unknown_video_and_answer(prepared, tmp_path, caplog):
    root = tmp_path / "copy"
    shutil.copytree(prepared, root, ignore=shutil.ignore_patterns("MUSIC-AVQA-videos-Real"))
    test = json.loads((root / "avqa-test.json").read_text())
    test.append({**test[0], "video_id": "00000000", "question_id": 1000})  # no such video
    test.append({**test[0], "question_id": 1001, "anser": "bagpipe"})  # an answer the train file lacks
    (root / "avqa-test.json").write_text(json.dumps(test))
    dm = _dm(root)
    with caplog.at_level(logging.WARNING, logger="cola.data.avqa"):
        dm.setup("test")
    assert dm.num_dropped == 1 and "00000000" in caplog.text and "answer the train file lacks" in caplog.text
    assert dm.dataset("test")[len(test) - 2]["labels"].item() == -1  # counted wrong, never trained on
    val = json.loads((root / "avqa-val.json").read_text())
    (root / "avqa-val.json").write_text(json.dumps([{**e, "video_id": "00000000"} for e in val]))
    with pytest.raises(ValueError, match=r"no usable question in split 'val' .*avqa-val.json"):
        _dm(root).validate()


def test_layout_and_argument_errors(prepared, tmp_path):
    root = tmp_path / "release"
    make_synthetic_avqa(root, num_videos=3, seed=2)
    with pytest.raises(FileNotFoundError) as info:
        _dm(root).validate()
    assert f"python scripts/prepare_avqa.py {root}" in str(info.value) and "MUSIC-AVQA-videos-Real" in str(info.value)
    (root / "avqa-val.json").unlink()
    with pytest.raises(FileNotFoundError, match="missing question file .*avqa-val.json"):
        _dm(root).validate()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _dm(tmp_path / "nowhere").validate()
    bad_json = tmp_path / "bad"
    shutil.copytree(prepared, bad_json, ignore=shutil.ignore_patterns("MUSIC-AVQA-videos-Real"))
    (bad_json / "avqa-train.json").write_text("[")
    with pytest.raises(ValueError, match="avqa-train.json: not a valid JSON file"):
        _dm(bad_json).validate()
    with pytest.raises(ValueError, match=r"data.num_segments=4 exceeds the 3 prepared seconds"):
        _dm(prepared, num_segments=4).validate()
    with pytest.raises(ValueError, match=r"distinct answers but data.num_answers=2"):
        _dm(prepared, num_answers=2).validate()
    with pytest.raises(ValueError, match="data.augment must be false"):
        _dm(prepared, augment=True)
    with pytest.raises(ValueError, match="data.audio_windows must be seconds or null for MUSIC-AVQA, got 'official'"):
        _dm(prepared, audio_windows="official")
    with pytest.raises(ValueError, match="data.pad_to must be one of"):
        _dm(prepared, pad_to="shortest")
