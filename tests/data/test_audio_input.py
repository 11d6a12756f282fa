"""data.audio_input: the official ``pad`` input (fbank zero-padded to AST's 1024 frames, positional grid
untouched) next to ``interpolate`` (fbank padded to audio_target_frames, grid interpolated), for AVE and AVS."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf.errors import InterpolationResolutionError
from transformers import ASTConfig, ASTModel

from cola.data.audio import (
    AST_FRAMES,
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    audio_clip_features,
    audio_frames,
    check_audio_setting,
    clip_frames,
    kaldi_fbank,
    load_audio,
    window_starts,
)
from cola.data.ave import AVEDataModule
from cola.data.avs import AVSDataModule
from cola.models.encoders import ast_grid, build_ast
from tests.conftest import compose_cfg, fast_dev_trainer

REPO = Path(__file__).resolve().parents[2]
SR = 16000
TINY_AST = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
BAD_INPUT = r"data\.audio_input must be one of \['pad', 'interpolate'\], got 'zeros'"


def _wave(seconds: float, seed: int = 0) -> torch.Tensor:
    """A fixed synthetic waveform: a gliding tone, noise and a DC offset, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    w = 0.4 * torch.sin(2 * math.pi * (300 + 200 * t) * t) + 0.05 * torch.randn(t.shape, generator=g) + 0.02
    return w.clamp(-1, 1)


def _old_interpolate(w: torch.Tensor, seconds: int, target: int = 100) -> torch.Tensor:
    """The features before data.audio_input existed: consecutive seconds, fbank zero-padded, then normalised."""
    total = seconds * SR
    w = w[:total]
    w = torch.nn.functional.pad(w, (0, total - w.shape[0]))
    fbank = kaldi_fbank(w.view(seconds, SR))
    fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target - fbank.shape[1]))
    return (fbank - AUDIOSET_MEAN) / (2.0 * AUDIOSET_STD)


# ---------------------------------------------------------------------------------------------- features
@pytest.mark.parametrize("length_s", [10.0, 7.3, 11.0])  # exact, short (zero-padded), long (cut)
def test_interpolate_is_unchanged_bit_for_bit(length_s):
    w = _wave(length_s)
    reference = _old_interpolate(w, 10)
    default_call = audio_clip_features(w, seconds=10)  # the call the data modules made before
    explicit = audio_clip_features(w, seconds=10, audio_input="interpolate", clip_seconds=1.0, windows="seconds")
    auto = audio_clip_features(w, seconds=10, audio_input="interpolate", windows=None)
    assert default_call.shape == (10, 100, 128)
    assert torch.equal(default_call, reference) and torch.equal(explicit, reference) and torch.equal(auto, reference)


def test_pad_is_the_normalised_fbank_then_zeros_to_1024_frames():
    w = _wave(3.0)
    interp = audio_clip_features(w, seconds=3, audio_input="interpolate")  # (3, 100, 128)
    pad = audio_clip_features(w, seconds=3, audio_input="pad", windows="seconds")  # (3, 1024, 128)
    n = clip_frames(1.0)
    assert n == 98 and pad.shape == (3, AST_FRAMES, 128) and pad.dtype == torch.float32
    assert torch.equal(pad[:, :n], interp[:, :n])  # the clip's own frames are the same normalised fbank
    assert torch.count_nonzero(pad[:, n:]) == 0  # official: zeros after normalisation
    # interpolate pads before normalising (AST's loader): its two padded frames hold -mean / (2 std)
    torch.testing.assert_close(interp[:, n:], torch.full_like(interp[:, n:], -AUDIOSET_MEAN / (2 * AUDIOSET_STD)))
    assert torch.count_nonzero(pad[:, :n]) == pad[:, :n].numel()


def test_official_window_placement_ave_and_avs():
    # AVE, 10 s, ten 1-s clips: linspace(0, 160000 - 17600, 10) truncated (clip 9 starts at 8.9 s)
    ave = window_starts(10 * SR, 10, clip_seconds=1.0, windows="official")
    assert ave == [0, 15822, 31644, 47466, 63288, 79111, 94933, 110755, 126577, 142400]
    assert window_starts(10 * SR, 10, windows="seconds") == [t * SR for t in range(10)]
    # AVS, 5 s, five 1.95-s windows (31,200 samples, 193 frames each)
    avs = window_starts(5 * SR, 5, clip_seconds=1.95, windows="official")
    assert avs == [0, 11800, 23600, 35400, 47200] and clip_frames(1.95) == 193
    assert window_starts(5 * SR, 5, clip_seconds=1.0, windows="official") == [0, 15600, 31200, 46800, 62400]
    assert window_starts(SR, 1, clip_seconds=1.0, windows="official") == [0]  # shorter than clip + margin

    w = _wave(5.0, seed=1)
    feats = audio_clip_features(w, seconds=5, audio_input="pad", clip_seconds=1.95)  # windows: official (auto)
    assert feats.shape == (5, AST_FRAMES, 128)
    for k, start in enumerate(avs):
        expected = (kaldi_fbank(w[start : start + 31200]) - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)  # (193, 128)
        assert torch.equal(feats[k, :193], expected)
        assert torch.count_nonzero(feats[k, 193:]) == 0
    ave_feats = audio_clip_features(_wave(10.0), seconds=10, audio_input="pad")
    assert torch.equal(
        ave_feats[9, :98], (kaldi_fbank(_wave(10.0)[142400 : 142400 + SR]) - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    )


def test_official_waveform_mean_subtraction_is_a_no_op():
    """The official loaders subtract the waveform's mean; Kaldi's per-frame DC removal already does that."""
    w = _wave(2.0) + 0.1
    torch.testing.assert_close(kaldi_fbank(w - w.mean()), kaldi_fbank(w), atol=1e-3, rtol=0)


def test_bad_audio_settings_raise():
    w = _wave(1.0)
    with pytest.raises(ValueError, match=BAD_INPUT):
        audio_clip_features(w, seconds=1, audio_input="zeros")
    with pytest.raises(ValueError, match=BAD_INPUT):
        audio_frames("zeros", 100)
    with pytest.raises(ValueError, match=r"data\.audio_windows must be one of \['seconds', 'official'\] or null"):
        audio_clip_features(w, seconds=1, windows="centre")
    with pytest.raises(ValueError, match=r"193 fbank frames.*data\.audio_target_frames=100.*>= 193"):
        check_audio_setting("interpolate", 1.95, 100)
    assert check_audio_setting("interpolate", 1.95, 200) == 200 and check_audio_setting("pad", 1.95, 100) == 1024
    with pytest.raises(ValueError, match=r"the 1024 frames of data\.audio_input=pad"):
        check_audio_setting("pad", 11.0, 100)
    with pytest.raises(ValueError, match="must be positive"):
        check_audio_setting("pad", 0, 100)
    for dm_cls, kw in ((AVEDataModule, {}), (AVSDataModule, {"subset": "s4"})):
        with pytest.raises(ValueError, match=BAD_INPUT):
            dm_cls(root="/nonexistent", audio_input="zeros", **kw)
        with pytest.raises(ValueError, match="audio_target_frames >= 193"):
            dm_cls(root="/nonexistent", audio_clip_seconds=1.95, **kw)


# ------------------------------------------------------------------------------------------ AST + config
@pytest.mark.parametrize("task", ["ave", "avs_s4", "avs_ms3"])
def test_config_resolves_ast_max_length_from_the_data_keys(task):
    cfg = compose_cfg([f"task={task}"])
    assert cfg.data.audio_input == "interpolate" and cfg.data.audio_clip_seconds == 1.0  # task defaults unchanged
    assert cfg.data.audio_windows is None and cfg.model.audio.max_length == cfg.data.audio_target_frames == 100
    assert compose_cfg([f"task={task}", "data.audio_input=pad"]).model.audio.max_length == AST_FRAMES
    pad_ast = compose_cfg([f"task={task}", "data.audio_input=pad", "model=dinov2_ast"], tiny=False)
    assert pad_ast.model.audio.max_length == AST_FRAMES
    assert compose_cfg([f"task={task}", "data.audio_target_frames=200"]).model.audio.max_length == 200
    with pytest.raises(InterpolationResolutionError, match=BAD_INPUT):
        _ = compose_cfg([f"task={task}", "data.audio_input=zeros"]).model.audio.max_length


def test_config_without_audio_data_keys_still_resolves():
    cfg = compose_cfg(["task=refcoco"])  # a grounding task: no data.audio_* keys
    assert cfg.model.audio.max_length == 100


def test_pad_ast_has_the_untouched_1024_frame_grid():
    cfg = compose_cfg(["task=ave", "data.audio_input=pad"])
    model = instantiate(cfg.model.audio).model  # cola.models.Tower around the transformers ASTModel
    reference = ASTModel(ASTConfig(**{**cfg.model.audio.tiny, "max_length": AST_FRAMES, "num_mel_bins": 128}))
    f, t = ast_grid(model.config)
    assert model.config.max_length == AST_FRAMES and (f, t) == (12, 101)
    assert model.embeddings.position_embeddings.shape == reference.embeddings.position_embeddings.shape
    assert model.embeddings.position_embeddings.shape[1] == 2 + 12 * 101


def test_pretrained_ast_keeps_its_position_embeddings_with_pad(tmp_path):
    torch.manual_seed(0)
    src = build_ast(tiny=TINY_AST, max_length=AST_FRAMES)  # an AST "pretrained" on 10.24-s inputs
    with torch.no_grad():
        src.embeddings.position_embeddings.normal_()
    src.save_pretrained(tmp_path)
    pad = build_ast(name_or_path=str(tmp_path), max_length=audio_frames("pad", 100)).eval()
    assert torch.equal(pad.embeddings.position_embeddings, src.embeddings.position_embeddings)
    out = pad(audio_clip_features(_wave(1.0), seconds=1, audio_input="pad")).last_hidden_state
    assert out.shape == (1, 2 + 12 * 101, 32) and torch.isfinite(out).all()
    interp = build_ast(name_or_path=str(tmp_path), max_length=audio_frames("interpolate", 100))
    assert interp.embeddings.position_embeddings.shape == (1, 2 + 12 * 9, 32)  # interpolated to 100 frames


# ----------------------------------------------------------------------------------------- data modules
def test_ave_datamodule_pad_batches(ave_root):
    dm = AVEDataModule(root=ave_root, image_size=56, batch_size=2, audio_input="pad")
    assert dm.inputs.audio_frames == AST_FRAMES and dm.inputs.audio_windows == "official"
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_values"].shape == (2, 10, AST_FRAMES, 128) and batch["pixel_values"].shape[:2] == (2, 10)
    assert torch.count_nonzero(batch["input_values"][:, :, 98:]) == 0
    ds = dm.dataset("train")
    row = ds.rows[0]
    wav = load_audio(ave_root / "audio" / f"{row.video_id}.wav")
    torch.testing.assert_close(ds[0]["input_values"], audio_clip_features(wav, seconds=10, audio_input="pad"))
    interp = AVEDataModule(root=ave_root, image_size=56, batch_size=2)
    assert interp.inputs.audio_frames == 100 and interp.dataset("train")[0]["input_values"].shape == (10, 100, 128)


@pytest.mark.parametrize(("subset", "clip_seconds", "frames"), [("s4", 1.95, 193), ("ms3", 1.0, 98)])
def test_avs_datamodule_pad_batches(avs_root, subset, clip_seconds, frames):
    dm = AVSDataModule(
        root=avs_root, subset=subset, image_size=56, batch_size=2, audio_input="pad", audio_clip_seconds=clip_seconds
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_values"].shape == (2, 5, AST_FRAMES, 128) and batch["masks"].shape == (2, 5, 56, 56)
    values = batch["input_values"]
    assert torch.count_nonzero(values[:, :, frames:]) == 0 and torch.count_nonzero(values[:, :, frames - 1]) > 0
    clip = dm.dataset("train").clips[0]
    expected = audio_clip_features(load_audio(clip.wav), seconds=5, audio_input="pad", clip_seconds=clip_seconds)
    torch.testing.assert_close(dm.dataset("train")[0]["input_values"], expected)


def test_ave_training_step_with_a_tiny_pad_ast(ave_root, tmp_path):
    """The tiny towers run one fit/test batch on 1024-frame clips (12 x 101 patches)."""
    from cola.models import DualEncoder, build_tower, family_out_splits, family_targets
    from cola.tasks.av_classification import AVEClassificationTask

    dm = AVEDataModule(root=ave_root, image_size=28, batch_size=1, audio_input="pad")
    torch.manual_seed(0)
    vision = build_tower(family="vit", name="vit_small_patch14_dinov2", img_size=28, embed_dim=32, depth=2, num_heads=2)
    audio = build_tower(family="ast", tiny=TINY_AST, max_length=audio_frames("pad", 100))
    peft = {"method": "lora", "rank": 2, "alpha": 4, "condition_pooling": "cls"}
    encoder = DualEncoder(
        {"vision": vision, "audio": audio},
        peft=dict(peft),
        targets={"vision": family_targets("vit"), "audio": family_targets("ast", ["qkv", "proj"])},
        out_splits={"vision": family_out_splits("vit")},
        anchor=None,
    )
    task = AVEClassificationTask(encoder, d_model=16, dropout=0.0, val_split=dm.val_split, test_splits=dm.test_splits)
    trainer = fast_dev_trainer(tmp_path)
    trainer.fit(task, datamodule=dm)
    (res,) = trainer.test(task, datamodule=dm, verbose=False)
    assert 0.0 <= res["test/acc"] <= 1.0
