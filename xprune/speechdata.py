"""Synthesised vowels with a known ground truth on their spectrograms.

Vowel recognition from synthetic speech, generated from a seed (nothing is
downloaded). Each utterance is a source-filter vowel (Fant 1960; the cascade
formant synthesiser of Klatt 1980): a glottal pulse train at the speaker's
pitch, with jitter and shimmer, through second-order resonators at the vowel's
first three formants, placed at a random time inside a recording of background
noise. The formant frequencies are the average measurements of American English
vowels by Peterson and Barney (1952, "Control methods used in a study of the
vowels", JASA 24, table II) for men, women and children, scaled per speaker.

The label is carried by the formants, so each utterance has a ground-truth
mask on its log-mel spectrogram: the mel bands around F1 and F2 during the
frames where the vowel sounds. It makes the plausibility of an attribution map
measurable (:mod:`xprune.metrics.plausibility`).

The spectrogram is ``torch.stft`` with a Hann window and a mel filterbank of
Slaney's formula (Slaney 1998, Auditory Toolbox; librosa's default), in
:func:`mel_filterbank` and :func:`log_mel_spectrogram`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import lfilter
from torch import Tensor

from ._validation import check_positive_int

__all__ = ["FORMANTS", "PITCH", "VOWELS", "SpeechData", "hz_to_mel", "log_mel_spectrogram",
           "make_vowel_dataset", "mel_filterbank", "mel_to_hz", "synthesise_vowel"]

#: The ten vowels, by the h_d words Peterson and Barney recorded them in.
VOWELS = ("heed", "hid", "head", "had", "hod", "hawed", "hood", "who'd", "hud", "heard")

#: Average F1, F2, F3 in Hz (Peterson and Barney 1952, table II), per speaker group.
FORMANTS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "men": ((270, 2290, 3010), (390, 1990, 2550), (530, 1840, 2480), (660, 1720, 2410),
            (730, 1090, 2440), (570, 840, 2410), (440, 1020, 2240), (300, 870, 2240),
            (640, 1190, 2390), (490, 1350, 1690)),
    "women": ((310, 2790, 3310), (430, 2480, 3070), (610, 2330, 2990), (860, 2050, 2850),
              (850, 1220, 2810), (590, 920, 2710), (470, 1160, 2680), (370, 950, 2670),
              (760, 1400, 2780), (500, 1640, 1960)),
    "children": ((370, 3200, 3730), (530, 2730, 3600), (690, 2610, 3570), (1010, 2320, 3320),
                 (1030, 1370, 3170), (680, 1060, 3180), (560, 1410, 3310), (430, 1170, 3260),
                 (850, 1590, 3360), (560, 1820, 2160)),
}

#: Typical fundamental frequency in Hz per group (Peterson and Barney's averages, rounded).
PITCH = {"men": 132.0, "women": 223.0, "children": 264.0}

_BANDWIDTHS = (60.0, 90.0, 150.0)  # formant bandwidths in Hz (Klatt 1980's defaults, rounded)


def hz_to_mel(f: Tensor | float) -> Tensor:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f = torch.as_tensor(f, dtype=torch.float64)
    linear = f * 3.0 / 200.0
    log_step = math.log(6.4) / 27.0
    return torch.where(f >= 1000.0, 15.0 + torch.log(f.clamp_min(1e-12) / 1000.0) / log_step,
                       linear)


def mel_to_hz(m: Tensor | float) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(m, dtype=torch.float64)
    log_step = math.log(6.4) / 27.0
    return torch.where(m >= 15.0, 1000.0 * torch.exp(log_step * (m - 15.0)), m * 200.0 / 3.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, *, f_min: float = 0.0,
                   f_max: float | None = None) -> Tensor:
    """Triangular mel filters with Slaney's area normalisation, shape (n_mels, n_fft // 2 + 1).

    Filter m rises from mel point m to m + 1 and falls to m + 2, the
    ``n_mels + 2`` points evenly spaced in mel between ``f_min`` and ``f_max``
    (default: Nyquist), and is scaled by ``2 / (f_{m+2} - f_m)`` so that every
    filter has the same area. Equal to ``librosa.filters.mel(htk=False,
    norm="slaney")``. float64.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    points = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)),
                                      n_mels + 2, dtype=torch.float64))
    widths = points.diff()
    ramps = points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = torch.minimum(lower, upper).clamp_min(0.0)
    return weights * (2.0 / (points[2:] - points[:-2]))[:, None]


def log_mel_spectrogram(waveforms: Tensor, *, sample_rate: int, n_fft: int = 256,
                        hop_length: int = 128, n_mels: int = 40) -> Tensor:
    """Log-mel power spectrogram of (N, S) waveforms: shape (N, 1, n_mels, frames), float32.

    Hann-windowed ``torch.stft`` (centred, reflect padding; ``frames = S //
    hop_length + 1``), power spectrum through :func:`mel_filterbank`, then
    ``log(1e-6 + mel power)``.
    """
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(waveforms.double(), n_fft, hop_length=hop_length, window=window,
                      center=True, pad_mode="reflect", return_complex=True)
    power = spec.abs() ** 2
    mel = mel_filterbank(sample_rate, n_fft, n_mels) @ power
    return torch.log(1e-6 + mel).float()[:, None]


def _resonator(x: np.ndarray, frequency: float, bandwidth: float, sample_rate: int
               ) -> np.ndarray:
    """Klatt's (1980) digital resonator: unit gain at 0 Hz, a peak at ``frequency``."""
    c = -math.exp(-2 * math.pi * bandwidth / sample_rate)
    b = 2 * math.exp(-math.pi * bandwidth / sample_rate) * math.cos(
        2 * math.pi * frequency / sample_rate)
    a = 1 - b - c
    return lfilter([a], [1.0, -b, -c], x)


def synthesise_vowel(formants: tuple[float, float, float], *, pitch: float, duration: float,
                     sample_rate: int = 8000, jitter: float = 0.01, shimmer: float = 0.05,
                     rng: np.random.Generator | None = None) -> np.ndarray:
    """One voiced vowel: a glottal pulse train through three formant resonators.

    Parameters
    ----------
    formants : (F1, F2, F3) in Hz
    pitch : float
        Fundamental frequency in Hz.
    duration : float
        Seconds.
    jitter, shimmer : float
        Relative standard deviation of each glottal period and pulse amplitude.
    rng : numpy Generator, optional
        For jitter and shimmer; default a generator seeded with 0.

    Returns
    -------
    ndarray of shape (round(duration * sample_rate),), float64
        Peak amplitude 1.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    n = int(round(duration * sample_rate))
    period = sample_rate / pitch
    count = int(n / (period * (1 - 5 * jitter))) + 2  # more pulses than can fit
    times = rng.uniform(0, period) + np.concatenate(
        [[0.0], np.cumsum(period * (1.0 + jitter * rng.standard_normal(count - 1)))])
    times = times[times < n].astype(np.int64)
    source = np.zeros(n)
    source[times] = 1.0 + shimmer * rng.standard_normal(times.shape[0])
    # the glottal pulse's spectral tilt: two one-pole low-passes (-12 dB/octave)
    source = lfilter([1.0], [1.0, -0.95], lfilter([1.0], [1.0, -0.95], source))
    y = source
    for f, bw in zip(formants, _BANDWIDTHS, strict=True):
        y = _resonator(y, f, bw, sample_rate)
    y = np.diff(y, prepend=0.0)  # radiation at the lips: +6 dB/octave
    return y / max(np.abs(y).max(), 1e-12)


@dataclass(frozen=True)
class SpeechData:
    """Synthesised vowel utterances, their spectrograms and ground-truth masks.

    Attributes
    ----------
    waveforms : Tensor of shape (n, samples), float32
    spectrograms : Tensor of shape (n, 1, n_mels, frames), float32
        Log-mel power (:func:`log_mel_spectrogram`).
    labels : Tensor of shape (n,), int64
        Index into ``class_names`` (:data:`VOWELS`).
    mask : Tensor of shape (n, n_mels, frames), bool
        The ground truth: mel bands whose centre lies within a bandwidth-wide
        band around the utterance's F1 or F2, during the frames of the vowel.
    formants : Tensor of shape (n, 3), float64
        The F1, F2, F3 used, in Hz (after the speaker's scaling).
    pitch : Tensor of shape (n,), float64
    groups : tuple of str
        "men", "women" or "children", per utterance.
    sample_rate : int
    class_names : tuple of str
    """

    waveforms: Tensor
    spectrograms: Tensor
    labels: Tensor
    mask: Tensor
    formants: Tensor
    pitch: Tensor
    groups: tuple[str, ...]
    sample_rate: int
    class_names: tuple[str, ...] = VOWELS

    def __len__(self) -> int:
        return self.labels.shape[0]


def make_vowel_dataset(n: int = 2000, *, seed: int = 0, sample_rate: int = 8000,
                       duration: float = 1.0, vowels: tuple[str, ...] = VOWELS,
                       snr_db: float = 20.0, n_mels: int = 40, n_fft: int = 256,
                       hop_length: int = 128) -> SpeechData:
    """Generate ``n`` vowel utterances, balanced over ``vowels``, with their formant masks.

    Each utterance lasts ``duration`` seconds: noise throughout, and a vowel of
    0.3 to 0.6 of the duration at a random onset. The speaker group is drawn
    uniformly; the speaker scales the group's formants by a factor in
    [0.88, 1.12] (vocal-tract length) and each formant by a further +-5%, and
    the pitch by [0.85, 1.15]. White noise is added at ``snr_db`` relative to
    the vowel's power.

    Parameters
    ----------
    n : int
        Utterances (>= 1); labels cycle through ``vowels`` before a seeded shuffle.
    seed : int
        The same seed gives the same waveforms, spectrograms, labels and masks.
    vowels : tuple of str
        A subset of :data:`VOWELS`, in the order that defines the labels.

    Returns
    -------
    SpeechData

    Raises
    ------
    ValueError
        For ``n`` < 1, an unknown vowel, a ``sample_rate`` whose Nyquist
        frequency is not above the highest F3 (3,730 Hz), or a non-positive
        ``duration``.
    """
    check_positive_int(n, "n")
    check_positive_int(sample_rate, "sample_rate")
    if sample_rate / 2 <= 3800:
        raise ValueError(f"Expected `sample_rate` above 7600 Hz, so that every formant lies "
                         f"below the Nyquist frequency, got {sample_rate}.")
    if not duration > 0:
        raise ValueError(f"Expected `duration` > 0 seconds, got {duration!r}.")
    unknown = [v for v in vowels if v not in VOWELS]
    if unknown or not vowels:
        raise ValueError(f"Expected `vowels` to be a non-empty subset of {VOWELS}, got "
                         f"{vowels!r}.")
    rng = np.random.default_rng(seed)
    samples = int(round(duration * sample_rate))
    labels = np.arange(n) % len(vowels)
    rng.shuffle(labels)
    groups = tuple(rng.choice(list(FORMANTS), size=n).tolist())
    waves = np.zeros((n, samples))
    formants = np.zeros((n, 3))
    pitches = np.zeros(n)
    spans = np.zeros((n, 2), dtype=np.int64)
    for i in range(n):
        table = FORMANTS[groups[i]][VOWELS.index(vowels[labels[i]])]
        tract = rng.uniform(0.88, 1.12)
        formants[i] = np.array(table) * tract * rng.uniform(0.95, 1.05, size=3)
        pitches[i] = PITCH[groups[i]] * rng.uniform(0.85, 1.15)
        length = int(samples * rng.uniform(0.3, 0.6))
        onset = int(rng.integers(0, samples - length + 1))
        vowel = synthesise_vowel(tuple(formants[i]), pitch=pitches[i],
                                 duration=length / sample_rate, sample_rate=sample_rate,
                                 rng=rng)
        # a 20 ms raised-cosine fade in and out, so the vowel has no click at its edges
        fade = min(length // 2, int(0.02 * sample_rate))
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
        vowel[:fade] *= ramp
        vowel[length - fade:] *= ramp[::-1]
        noise_power = np.mean(vowel ** 2) / 10 ** (snr_db / 10)
        waves[i] = rng.standard_normal(samples) * math.sqrt(noise_power)
        waves[i, onset:onset + length] += vowel
        spans[i] = onset, onset + length
    waveforms = torch.from_numpy(waves).float()
    spectrograms = log_mel_spectrogram(waveforms, sample_rate=sample_rate, n_fft=n_fft,
                                       hop_length=hop_length, n_mels=n_mels)
    mask = _formant_mask(torch.from_numpy(formants), torch.from_numpy(spans),
                         spectrograms.shape[-1], sample_rate=sample_rate, n_mels=n_mels,
                         hop_length=hop_length)
    return SpeechData(waveforms, spectrograms, torch.from_numpy(labels).long(), mask,
                      torch.from_numpy(formants), torch.from_numpy(pitches), groups,
                      sample_rate, tuple(vowels))


def _formant_mask(formants: Tensor, spans: Tensor, frames: int, *, sample_rate: int,
                  n_mels: int, hop_length: int) -> Tensor:
    """(n, n_mels, frames) bool: mel bands near F1 or F2, in the frames of the vowel.

    A band belongs to a formant when its centre frequency lies within
    ``max(bandwidth, half the band's own width)`` of it, so that a formant
    always covers at least its nearest band.
    """
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(0.0)), float(hz_to_mel(sample_rate / 2)),
                                     n_mels + 2, dtype=torch.float64))
    centres, half_width = edges[1:-1], (edges[2:] - edges[:-2]) / 2
    bands = torch.zeros(formants.shape[0], n_mels, dtype=torch.bool)
    for k in range(2):
        reach = torch.maximum(torch.tensor(_BANDWIDTHS[k], dtype=torch.float64), half_width)
        bands |= (centres[None] - formants[:, k:k + 1]).abs() <= reach[None]
    frame_times = torch.arange(frames, dtype=torch.float64) * hop_length
    sounding = (frame_times[None] >= spans[:, :1]) & (frame_times[None] < spans[:, 1:])
    return bands[:, :, None] & sounding[:, None, :]
