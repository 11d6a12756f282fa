"""Audio loading and the Kaldi-compatible log-mel features AST expects (docs/data.md#audio-features).

Audio Spectrogram Transformer (AST, Gong et al. 2021) was trained on ``torchaudio.compliance.kaldi.fbank``
features of 16 kHz audio in [-1, 1]: 25 ms Hann windows every 10 ms, per-frame DC removal, pre-emphasis 0.97,
power spectrum of a 512-point FFT, 128 triangular filters on the Kaldi mel scale ``mel = 1127 ln(1 + f / 700)``
between 20 Hz and Nyquist, and the natural log floored at float32 ``eps``; no dither, no energy term (so
``htk_compat`` changes nothing). :func:`kaldi_fbank` computes exactly that in torch (torchaudio is not a
dependency); a test compares it with transformers' ``ASTFeatureExtractor`` (numpy path).

The audio-visual tasks feed AST one clip per video second (AVE) or per frame (AVS):
:func:`audio_clip_features` cuts ``count`` windows of ``clip_seconds`` from a waveform, computes each
window's fbank and normalises it ``(x - mean) / (2 std)`` as AST does. Two inputs (``data.audio_input``):

- ``interpolate`` (the task files' default, fast on CPU): every clip's fbank (98 frames for 1 s) is
  zero-padded or cropped to ``target_frames`` (``data.audio_target_frames``, 100) *before* normalisation (as
  AST's own loader), and the AST's positional grid is interpolated down to that length
  (``model.audio.max_length`` = ``data.audio_target_frames``).
- ``pad`` (the official CoLA input): every clip's fbank is normalised and *then* zero-padded (pad value 0,
  after normalisation, as the official AVE and AVS loaders) or cropped to :data:`AST_FRAMES` = 1024 frames,
  the length the AST was pretrained on, so its positional embeddings stay untouched
  (``model.audio.max_length`` = 1024; :func:`audio_frames` gives the AST length of a data setting).

Window placement (``windows``): ``seconds`` puts clip t at second t (``[t, t + clip_seconds)``, zero-padded
past the end; with 1-s clips the waveform's consecutive seconds); ``official`` spreads the clips as the
official loaders: starts ``linspace(0, N - sr (clip_seconds + 0.1), count)`` truncated to integer samples
(``N`` the waveform's length) and ``int(sr clip_seconds)`` samples each. For a 10-s AVE video of 1-s clips
that is every 15,822.2 samples (clip 9 starts at 8.9 s, not 9 s); for a 5-s AVSBench clip of 1.95-s windows
(the official AVS length, 193 frames each) the starts are 0, 0.7375, 1.475, 2.2125 and 2.95 s. The default
follows the input: ``official`` with ``pad``, ``seconds`` with ``interpolate``. The official loaders also
subtract the waveform's mean first; Kaldi's per-frame DC removal makes that a no-op, so it is not repeated.

Channels (``data.audio_channel``): a multi-channel file becomes one waveform by ``mean`` (the channels
averaged) or ``first`` (channel 0 only, what the official AVE and AVS loaders feed ``kaldi.fbank``, whose
default ``channel=-1`` reads channel 0; their downmix line is commented out). Mono files read the same either way.

The defaults ``mean = -4.27``, ``std = 4.57`` are AST's AudioSet statistics (``ASTFeatureExtractor``:
-4.2677393, 4.5689974); a dataset's own statistics can be passed instead (``data.audio_mean``,
``data.audio_std``).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from cola.dicts import check_choice

SAMPLE_RATE = 16000
AUDIOSET_MEAN = -4.27  # AST's AudioSet fbank mean (ASTFeatureExtractor: -4.2677393)
AUDIOSET_STD = 4.57  # AST's AudioSet fbank std (ASTFeatureExtractor: 4.5689974)
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Kaldi's default lowest filter edge
LOG_FLOOR = float(torch.finfo(torch.float32).eps)  # Kaldi/torchaudio clamp before the log
FRAME_LENGTH_MS, FRAME_SHIFT_MS = 25, 10  # AST's fbank window and hop
AST_FRAMES = 1024  # the pretrained AST's input length (10.24 s; positional grid 12 x 101 patches)
AUDIO_INPUTS = ("pad", "interpolate")  # data.audio_input
AUDIO_WINDOWS = ("seconds", "official")  # data.audio_windows (null: official with pad, seconds with interpolate)
AUDIO_CHANNELS = ("first", "mean")  # data.audio_channel: channel 0, or the channels averaged
OFFICIAL_MARGIN_S = 0.1  # the official loaders keep the last window this far from the end


class AudioReadError(ValueError):
    """An audio file exists but cannot be decoded (the message names the file)."""


# ------------------------------------------------------------------------------------------------ loading
def check_audio_channel(channel: str) -> str:
    """``channel`` when it is one of :data:`AUDIO_CHANNELS`; else ``ValueError`` naming ``data.audio_channel``."""
    return check_choice("data.audio_channel", channel, AUDIO_CHANNELS)


def load_audio(
    path: str | Path, *, sample_rate: int = SAMPLE_RATE, allow_resample: bool = True, channel: str = "mean"
) -> torch.Tensor:
    """Reads an audio file as a float32 mono waveform in [-1, 1] at ``sample_rate``.

    Multi-channel audio becomes one channel as ``channel`` says: ``mean`` averages the channels, ``first`` keeps
    channel 0 (the official AVE/AVS loaders' input). Another sample rate is converted with a polyphase filter
    (``scipy.signal.resample_poly``), or rejected when ``allow_resample`` is False.

    Args:
        path: the audio file (anything libsndfile reads: wav, flac, ogg, ...).
        sample_rate: the rate the caller needs.
        allow_resample: convert other rates (True) or raise (False).
        channel: ``mean`` (default) or ``first``; both read a mono file as it is.

    Returns:
        ``(num_samples,)`` float32 tensor.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AudioReadError: the file cannot be decoded.
        ValueError: an unknown ``channel``, or the file's rate differs from ``sample_rate`` and ``allow_resample``
            is False.
    """
    check_audio_channel(channel)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioReadError(f"cannot read audio file {path}: {err}") from err
    channels = data.shape[1]
    if channels == 0:
        raise AudioReadError(f"audio file {path} has no channels")
    mono = data.mean(axis=1) if channels > 1 and channel == "mean" else data[:, 0]  # (N,)
    if rate != sample_rate:
        if not allow_resample:
            raise ValueError(
                f"audio file {path} is {rate} Hz with {channels} channel(s); expected {sample_rate} Hz "
                f"(any channel count) and allow_resample=False"
            )
        from scipy.signal import resample_poly

        g = math.gcd(int(rate), int(sample_rate))
        mono = resample_poly(mono, sample_rate // g, int(rate) // g).astype(np.float32)
        np.clip(mono, -1.0, 1.0, out=mono)  # the anti-aliasing filter can overshoot full scale slightly
    return torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))


# ---------------------------------------------------------------------------------------------- features
def _kaldi_mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    """Kaldi's mel scale: ``1127 ln(1 + f / 700)``."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log1p(freq / 700.0)
    return 1127.0 * math.log1p(freq / 700.0)


@functools.lru_cache(maxsize=8)
def kaldi_mel_banks(num_mel_bins: int, fft_length: int, sample_rate: int) -> torch.Tensor:
    """Kaldi's triangular mel filters (triangles in mel space), ``(num_mel_bins, fft_length // 2 + 1)``.

    Filter edges are equally spaced in mel between 20 Hz and Nyquist; the Nyquist FFT bin gets weight 0 (as
    Kaldi, which drops it). Cached: treat the returned tensor as read-only.
    """
    num_fft_bins = fft_length // 2
    mel_low, mel_high = _kaldi_mel(LOW_FREQ), _kaldi_mel(sample_rate / 2.0)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    b = torch.arange(num_mel_bins, dtype=torch.float64).unsqueeze(1)  # (M, 1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _kaldi_mel(torch.arange(num_fft_bins, dtype=torch.float64) * (sample_rate / fft_length)).unsqueeze(0)
    up = (mel - left) / (center - left)  # (M, F)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # (M, F)
    return torch.nn.functional.pad(banks, (0, 1)).to(torch.float32)  # (M, F + 1)


def kaldi_fbank(
    waveform: torch.Tensor,
    *,
    sample_rate: int = SAMPLE_RATE,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25,
    frame_shift_ms: float = 10,
) -> torch.Tensor:
    """Kaldi-compatible log-mel filterbank, as ``torchaudio.compliance.kaldi.fbank`` with AST's settings.

    Settings: ``htk_compat=True, window_type='hanning', dither=0, use_energy=False``, snip edges (only whole
    frames), DC removal and pre-emphasis 0.97 per frame, power spectrum, natural log floored at float32 eps.

    Args:
        waveform: ``(N,)`` samples in [-1, 1], or ``(..., N)`` for a batch of equally long waveforms.
        sample_rate: the waveform's rate in Hz.
        num_mel_bins: number of mel filters.
        frame_length_ms: window length in milliseconds.
        frame_shift_ms: hop in milliseconds.

    Returns:
        ``(T, num_mel_bins)`` (or ``(..., T, num_mel_bins)``) with ``T = 1 + (N - window) // shift`` frames
        (0 when ``N`` is shorter than one window), in the waveform's float dtype (float32 for integer input).
    """
    if waveform.ndim < 1:
        raise ValueError("waveform must have shape (N,) or (..., N), got a scalar")
    if not waveform.is_floating_point():
        waveform = waveform.to(torch.float32)
    window_size = int(sample_rate * frame_length_ms * 0.001)
    window_shift = int(sample_rate * frame_shift_ms * 0.001)
    if window_size < 2 or window_shift < 1:
        raise ValueError(
            f"frame_length_ms={frame_length_ms} and frame_shift_ms={frame_shift_ms} at {sample_rate} Hz give a "
            f"window of {window_size} and a shift of {window_shift} samples; expected at least 2 and 1"
        )
    fft_length = 1 << (window_size - 1).bit_length()  # next power of two, as Kaldi's round_to_power_of_two
    lead, n = waveform.shape[:-1], waveform.shape[-1]
    if n < window_size:
        return waveform.new_zeros((*lead, 0, num_mel_bins))
    frames = waveform.unfold(-1, window_size, window_shift)  # (..., T, W)
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove DC offset
    # pre-emphasis with the first sample replicated, as Kaldi: x[0] <- x[0] - 0.97 x[0]
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # (..., T, W)
    frames = frames - PREEMPHASIS * previous
    window = torch.hann_window(window_size, periodic=False, dtype=frames.dtype, device=frames.device)  # (W,)
    frames = frames * window
    power = torch.fft.rfft(frames, n=fft_length).abs().pow(2)  # (..., T, fft_length // 2 + 1)
    banks = kaldi_mel_banks(num_mel_bins, fft_length, sample_rate).to(power.device, power.dtype)  # (M, F + 1)
    mel = power @ banks.T  # (..., T, M)
    return mel.clamp_min(LOG_FLOOR).log()


def check_audio_input(audio_input: str) -> str:
    """``audio_input`` when it is one of :data:`AUDIO_INPUTS`; else ``ValueError`` naming ``data.audio_input``."""
    return check_choice("data.audio_input", audio_input, AUDIO_INPUTS)


def audio_frames(audio_input: str, target_frames: int) -> int:
    """The fbank frames per clip, i.e. the AST ``max_length``, of a data setting.

    ``pad`` -> :data:`AST_FRAMES` (1024, the pretrained grid, untouched); ``interpolate`` -> ``target_frames``
    (the grid interpolated to it). Behind ``${cola.audio_frames:...}`` in ``configs/model/*.yaml``.
    """
    check_audio_input(audio_input)
    return AST_FRAMES if audio_input == "pad" else int(target_frames)


def check_audio_setting(audio_input: str, clip_seconds: float, target_frames: int) -> int:
    """Checks a data module's audio keys and returns its frames per clip (the AST ``max_length`` it needs).

    Raises:
        ValueError: an unknown ``audio_input``, a non-positive ``clip_seconds``, or clips whose fbank would
            not fit the frames (more than 1024 with ``pad``, more than ``target_frames`` with ``interpolate``,
            whose silent crop would drop audio) or be empty (under 25 ms).
    """
    frames = audio_frames(audio_input, int(target_frames))
    if not float(clip_seconds) > 0:
        raise ValueError(f"data.audio_clip_seconds must be positive, got {clip_seconds!r}")
    have = clip_frames(float(clip_seconds))
    if not 1 <= have <= frames:
        fit = (
            "the 1024 frames of data.audio_input=pad" if audio_input == "pad" else f"data.audio_target_frames={frames}"
        )
        hint = "" if audio_input == "pad" or have < 1 else f"; set data.audio_target_frames >= {have}"
        raise ValueError(
            f"data.audio_clip_seconds={clip_seconds} gives {have} fbank frames per clip, which do not fit {fit} "
            f"(1 to {frames} frames: clips of 0.025 to {0.025 + (frames - 1) * 0.01:.3f} s){hint}"
        )
    return frames


def clip_samples(clip_seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples in one clip: ``int(sample_rate * clip_seconds)`` (as the official loaders; 31,200 for 1.95 s)."""
    return int(sample_rate * clip_seconds)


def clip_frames(clip_seconds: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Fbank frames of one clip (25 ms windows every 10 ms, whole frames only): 98 for 1 s, 193 for 1.95 s."""
    window = int(sample_rate * FRAME_LENGTH_MS * 0.001)
    shift = int(sample_rate * FRAME_SHIFT_MS * 0.001)
    n = clip_samples(clip_seconds, sample_rate)
    return 0 if n < window else 1 + (n - window) // shift


def resolve_windows(windows: str | None, audio_input: str) -> str:
    """The window placement of a setting: ``windows``, or (``None``) ``official`` with pad, ``seconds`` else.

    Raises:
        ValueError: an unknown ``windows`` or ``audio_input``.
    """
    check_audio_input(audio_input)
    if windows is None:
        return "official" if audio_input == "pad" else "seconds"
    if windows not in AUDIO_WINDOWS:
        raise ValueError(f"data.audio_windows must be one of {list(AUDIO_WINDOWS)} or null, got {windows!r}")
    return windows


def window_starts(
    num_samples: int, count: int, *, clip_seconds: float = 1.0, sample_rate: int = SAMPLE_RATE, windows: str
) -> list[int]:
    """First sample of each of ``count`` clips in a waveform of ``num_samples`` (see the module docstring).

    ``seconds``: ``t * sample_rate``. ``official``: ``linspace(0, num_samples - sample_rate (clip_seconds +
    0.1), count)`` truncated to integers, clamped at 0 for waveforms shorter than one clip plus the margin.
    """
    check_choice("windows", windows, AUDIO_WINDOWS)
    if windows == "seconds":
        return [t * sample_rate for t in range(count)]
    stop = num_samples - sample_rate * (clip_seconds + OFFICIAL_MARGIN_S)  # float, as the official loaders
    starts = np.linspace(0, max(stop, 0.0), num=count, dtype=int)
    return [int(x) for x in starts]


def audio_clip_features(
    waveform: torch.Tensor,
    *,
    seconds: int,
    sample_rate: int = SAMPLE_RATE,
    target_frames: int = 100,
    mean: float = AUDIOSET_MEAN,
    std: float = AUDIOSET_STD,
    audio_input: str = "interpolate",
    clip_seconds: float = 1.0,
    windows: str | None = None,
) -> torch.Tensor:
    """AST inputs of a video: one normalised fbank per clip (see the module docstring).

    The waveform is first zero-padded to ``seconds`` seconds when shorter (with ``seconds`` windows it is
    also cut there). Each of the ``seconds`` clips (``clip_seconds`` long, placed by ``windows``; 98 frames
    for 1 s at 16 kHz) gives an fbank that is, for ``audio_input``:

    - ``interpolate``: zero-padded or cropped to ``target_frames``, then normalised ``(x - mean) / (2 std)``
      (padding before normalisation, as AST's loader);
    - ``pad``: normalised, then zero-padded or cropped to :data:`AST_FRAMES` (1024) frames (padding with 0
      after normalisation, as the official CoLA AVE/AVS loaders); ``target_frames`` is not used.

    Args:
        waveform: ``(N,)`` mono samples in [-1, 1] at ``sample_rate``.
        seconds: number of clips (video seconds for AVE, frames for AVS).
        sample_rate: the waveform's rate in Hz.
        target_frames: frames per clip with ``interpolate`` (AST ``max_length``).
        mean: fbank mean (default AudioSet's, from AST).
        std: fbank std (default AudioSet's, from AST).
        audio_input: ``interpolate`` (default) or ``pad``.
        clip_seconds: length of one clip (1.0; the official AVS windows are 1.95).
        windows: ``seconds`` | ``official`` | ``None`` (``official`` with pad, ``seconds`` with interpolate).

    Returns:
        ``(seconds, T, 128)`` float32 with ``T = audio_frames(audio_input, target_frames)``.

    One procedure (decode, resample, cut the clips, fbank, normalise, pad or interpolate) kept in one piece so each
    step's order matches the official loaders; most of its length is this docstring.
    """
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be mono with shape (N,), got {tuple(waveform.shape)}")
    if seconds < 1 or target_frames < 1:
        raise ValueError(f"seconds and target_frames must be positive, got {seconds} and {target_frames}")
    if std <= 0:
        raise ValueError(f"audio std must be positive, got {std}")
    windows = resolve_windows(windows, audio_input)
    length = clip_samples(clip_seconds, sample_rate)
    if clip_frames(clip_seconds, sample_rate) < 1:
        raise ValueError(f"audio_clip_seconds={clip_seconds} is shorter than one fbank window ({FRAME_LENGTH_MS} ms)")
    total = seconds * sample_rate
    waveform = waveform.to(torch.float32)
    if windows == "seconds":
        waveform = waveform[:total]
    if waveform.shape[0] < total:
        waveform = torch.nn.functional.pad(waveform, (0, total - waveform.shape[0]))
    starts = window_starts(
        waveform.shape[0], seconds, clip_seconds=clip_seconds, sample_rate=sample_rate, windows=windows
    )
    end = starts[-1] + length
    if waveform.shape[0] < end:  # windows past the end read zeros
        waveform = torch.nn.functional.pad(waveform, (0, end - waveform.shape[0]))
    if windows == "seconds" and length == sample_rate:
        clips = waveform[:total].view(seconds, sample_rate)  # (S, sr): consecutive seconds
    else:
        clips = torch.stack([waveform[s : s + length] for s in starts])  # (S, L)
    fbank = kaldi_fbank(clips, sample_rate=sample_rate)  # (S, T0, 128)
    if audio_input == "pad":
        # official CoLA order: normalise, then pad with zeros (0 in normalised units) / crop to 1024 frames
        return _fit_frames((fbank - mean) / (2.0 * std), AST_FRAMES)
    return (_fit_frames(fbank, target_frames) - mean) / (2.0 * std)  # AST's order: pad with zeros, normalise


def _fit_frames(fbank: torch.Tensor, frames: int) -> torch.Tensor:
    """``(S, T0, M)`` -> ``(S, frames, M)``: zero-pads at the end or keeps the first ``frames``."""
    have = fbank.shape[1]
    if have < frames:
        return torch.nn.functional.pad(fbank, (0, 0, 0, frames - have))
    return fbank[:, :frames]
