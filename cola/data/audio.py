"""Audio loading and the Kaldi-compatible log-mel features AST expects (SPEC §7, "Audio features").

Audio Spectrogram Transformer (AST, Gong et al. 2021) was trained on ``torchaudio.compliance.kaldi.fbank``
features of 16 kHz audio in [-1, 1]: 25 ms Hann windows every 10 ms, per-frame DC removal, pre-emphasis 0.97,
power spectrum of a 512-point FFT, 128 triangular filters on the Kaldi mel scale ``mel = 1127 ln(1 + f / 700)``
between 20 Hz and Nyquist, and the natural log floored at float32 ``eps``; no dither, no energy term (so
``htk_compat`` changes nothing). :func:`kaldi_fbank` computes exactly that in torch (torchaudio is not a
dependency); a test compares it with transformers' ``ASTFeatureExtractor`` (numpy path).

The audio-visual tasks feed AST one 1-s clip per video second: :func:`audio_clip_features` cuts a waveform
into ``seconds`` clips (16,000 samples, 98 frames each), pads every clip's fbank to ``target_frames`` (AST's
``max_length``, 100) with zeros and normalises ``(x - mean) / (2 std)`` as AST does. The defaults
``mean = -4.27``, ``std = 4.57`` are AST's AudioSet statistics (``ASTFeatureExtractor``: -4.2677393,
4.5689974); a dataset's own statistics can be passed instead (``data.audio_mean``, ``data.audio_std``).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

SAMPLE_RATE = 16000
AUDIOSET_MEAN = -4.27  # AST's AudioSet fbank mean (ASTFeatureExtractor: -4.2677393)
AUDIOSET_STD = 4.57  # AST's AudioSet fbank std (ASTFeatureExtractor: 4.5689974)
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Kaldi's default lowest filter edge
LOG_FLOOR = float(torch.finfo(torch.float32).eps)  # Kaldi/torchaudio clamp before the log


class AudioReadError(ValueError):
    """An audio file exists but cannot be decoded (the message names the file)."""


# ------------------------------------------------------------------------------------------------ loading
def load_audio(path: str | Path, *, sample_rate: int = SAMPLE_RATE, allow_resample: bool = True) -> torch.Tensor:
    """Reads an audio file as a float32 mono waveform in [-1, 1] at ``sample_rate``.

    Multi-channel audio is downmixed by averaging the channels. Another sample rate is converted with a
    polyphase filter (``scipy.signal.resample_poly``), or rejected when ``allow_resample`` is False.

    Args:
        path: the audio file (anything libsndfile reads: wav, flac, ogg, ...).
        sample_rate: the rate the caller needs.
        allow_resample: convert other rates (True) or raise (False).

    Returns:
        ``(num_samples,)`` float32 tensor.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AudioReadError: the file cannot be decoded.
        ValueError: its rate differs from ``sample_rate`` and ``allow_resample`` is False.
    """
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
    mono = data.mean(axis=1) if channels > 1 else data[:, 0]  # (N,)
    if rate != sample_rate:
        if not allow_resample:
            raise ValueError(
                f"audio file {path} is {rate} Hz with {channels} channel(s); expected {sample_rate} Hz "
                f"(mono, or any channel count to downmix) and allow_resample=False"
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


def audio_clip_features(
    waveform: torch.Tensor,
    *,
    seconds: int,
    sample_rate: int = SAMPLE_RATE,
    target_frames: int = 100,
    mean: float = AUDIOSET_MEAN,
    std: float = AUDIOSET_STD,
) -> torch.Tensor:
    """Per-second AST inputs: one normalised fbank per 1-s clip.

    The waveform is cut to ``seconds`` seconds (zero-padded when shorter) and split into 1-s clips; each
    clip's fbank (98 frames at 16 kHz) is zero-padded or cropped to ``target_frames`` and normalised as AST:
    ``(x - mean) / (2 * std)`` (padding happens before normalisation, as AST's loader).

    Args:
        waveform: ``(N,)`` mono samples in [-1, 1] at ``sample_rate``.
        seconds: number of 1-s clips.
        sample_rate: the waveform's rate in Hz.
        target_frames: frames per clip (AST ``max_length``).
        mean: fbank mean (default AudioSet's, from AST).
        std: fbank std (default AudioSet's, from AST).

    Returns:
        ``(seconds, target_frames, 128)`` float32.
    """
    if waveform.ndim != 1:
        raise ValueError(f"waveform must be mono with shape (N,), got {tuple(waveform.shape)}")
    if seconds < 1 or target_frames < 1:
        raise ValueError(f"seconds and target_frames must be positive, got {seconds} and {target_frames}")
    if std <= 0:
        raise ValueError(f"audio std must be positive, got {std}")
    total = seconds * sample_rate
    waveform = waveform.to(torch.float32)[:total]
    if waveform.shape[0] < total:
        waveform = torch.nn.functional.pad(waveform, (0, total - waveform.shape[0]))
    fbank = kaldi_fbank(waveform.view(seconds, sample_rate), sample_rate=sample_rate)  # (S, T0, 128)
    frames = fbank.shape[1]
    if frames < target_frames:
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - frames))  # (S, T, 128)
    else:
        fbank = fbank[:, :target_frames]
    return (fbank - mean) / (2.0 * std)
