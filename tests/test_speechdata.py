"""Synthesised vowels: formants where Peterson and Barney's table puts them, a mel filterbank
equal to librosa's, ground-truth masks on the formant energy, learnable well above chance."""

import numpy as np
import pytest
import torch
from scipy.linalg import solve_toeplitz

from xprune.speechdata import (
    FORMANTS,
    VOWELS,
    hz_to_mel,
    log_mel_spectrogram,
    make_vowel_dataset,
    mel_filterbank,
    mel_to_hz,
    synthesise_vowel,
)


def lpc_formants(y, sample_rate, order=8):
    """Formant frequencies by linear prediction (autocorrelation method): the angles of the
    predictor's complex poles with bandwidth below 500 Hz."""
    y = y * np.hamming(len(y))
    r = np.correlate(y, y, "full")[len(y) - 1:len(y) + order + 1]
    a = solve_toeplitz(r[:-1], r[1:])
    poles = np.roots(np.r_[1.0, -a])
    poles = poles[np.imag(poles) > 0]
    freq = np.angle(poles) * sample_rate / (2 * np.pi)
    bandwidth = -np.log(np.abs(poles)) * sample_rate / np.pi
    return np.sort(freq[(bandwidth < 500) & (freq > 150)])


@pytest.mark.parametrize("group", sorted(FORMANTS))
def test_formants_are_where_the_table_puts_them(group):
    """A sustained vowel at 60 Hz (harmonics dense enough to trace the envelope), analysed by
    LPC: F1, F2 and F3 within 5% of Peterson and Barney's averages, for all ten vowels."""
    for vowel, table in zip(VOWELS, FORMANTS[group], strict=True):
        y = synthesise_vowel(table, pitch=60.0, duration=1.0, jitter=0.0, shimmer=0.0)
        found = lpc_formants(y[2000:6000], 8000)
        for f in table:
            assert np.min(np.abs(found - f)) / f < 0.05, (group, vowel, f, found)


def test_mel_filterbank_equals_librosa():
    librosa = pytest.importorskip("librosa")
    for sr, n_fft, n_mels in ((8000, 256, 40), (16000, 512, 64), (8000, 512, 20)):
        ours = mel_filterbank(sr, n_fft, n_mels).numpy()
        ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, dtype=np.float64)
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-14)
    f = torch.tensor([0.0, 200.0, 999.0, 1000.0, 3000.0])
    torch.testing.assert_close(mel_to_hz(hz_to_mel(f)), f.double())
    torch.testing.assert_close(hz_to_mel(torch.tensor([200.0, 1000.0])),
                               torch.tensor([3.0, 15.0], dtype=torch.float64))


@pytest.fixture(scope="module")
def data():
    return make_vowel_dataset(400, seed=1)


def test_reproducible_balanced_and_shaped(data):
    assert data.spectrograms.shape == (400, 1, 40, 63) and data.waveforms.shape == (400, 8000)
    assert data.labels.bincount().tolist() == [40] * 10
    again = make_vowel_dataset(400, seed=1)
    assert torch.equal(again.waveforms, data.waveforms) and torch.equal(again.mask, data.mask)
    assert not torch.equal(make_vowel_dataset(400, seed=2).waveforms, data.waveforms)
    torch.testing.assert_close(
        data.spectrograms[:3],
        log_mel_spectrogram(data.waveforms[:3], sample_rate=8000))


def test_the_mask_covers_the_formant_energy(data):
    """In the frames where the vowel sounds, the masked bands (near F1 and F2) hold more
    log-mel energy than the other bands in every utterance, by e^2 (8.7 dB) on average; a mask
    shifted by a fifth of the spectrum holds less; no mask outside those frames."""
    spec = data.spectrograms[:, 0]
    sounding = data.mask.any(dim=1)  # (n, frames)
    assert bool(sounding.any(dim=1).all())
    gaps, shifted_gaps = [], []
    for i in range(len(data)):
        frames = spec[i][:, sounding[i]]
        bands = data.mask[i][:, sounding[i]]
        gaps.append(float(frames[bands].mean() - frames[~bands].mean()))
        off = bands.roll(8, dims=0)
        shifted_gaps.append(float(frames[off].mean() - frames[~off].mean()))
    assert min(gaps) > 0 and np.mean(gaps) > 2.0
    assert np.mean(shifted_gaps) < 0.5 * np.mean(gaps)
    # 0.3-0.6 s of a 1 s recording, hop 16 ms: between 15 and 40 frames
    lengths = sounding.sum(dim=1)
    assert int(lengths.min()) >= 15 and int(lengths.max()) <= 40


def test_learnable_well_above_chance(data):
    """Logistic regression on each band's mean and max log-mel energy: well above 10% chance."""
    from sklearn.linear_model import LogisticRegression

    spec = data.spectrograms[:, 0]
    features = torch.cat([spec.mean(dim=-1), spec.amax(dim=-1)], dim=1).numpy()
    clf = LogisticRegression(max_iter=3000).fit(features[:300], data.labels[:300].numpy())
    assert clf.score(features[300:], data.labels[300:].numpy()) >= 0.8


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`sample_rate` above 7600 Hz"):
        make_vowel_dataset(10, sample_rate=6000)
    with pytest.raises(ValueError, match="`vowels` to be a non-empty subset"):
        make_vowel_dataset(10, vowels=("hat",))
    with pytest.raises(ValueError, match="`duration` > 0"):
        make_vowel_dataset(10, duration=0)
    with pytest.raises(ValueError, match="`n`"):
        make_vowel_dataset(0)


def test_vowels_split_and_the_speech_models():
    """The registered 'vowels' data: a stratified split of standardised spectrograms with the
    test recordings' masks; the spectrogram CNN and the frame GRU map them to 10 logits and
    learn from them (2 epochs on 600 recordings: well above the 10% chance)."""
    from xprune.data import load_dataset
    from xprune.models import FrameGRU, SpectrogramCNN, evaluate, train

    split = load_dataset("vowels", seed=0, n=600)
    assert split.x_train.shape == (360, 1, 40, 63) and split.n_classes == 10
    assert split.rationale_test.shape == (120, 40, 63) and split.rationale_test.dtype == torch.bool
    assert abs(float(split.x_train.mean())) < 1e-4 and abs(float(split.x_train.std()) - 1) < 1e-3
    assert split.y_test.bincount().tolist() == [12] * 10
    for cls in (SpectrogramCNN, FrameGRU):
        torch.manual_seed(0)
        model = cls()
        assert model(split.x_test[:3]).shape == (3, 10)
        train(model, split.x_train, split.y_train, epochs=2, seed=0)
        assert evaluate(model, split.x_test, split.y_test)["accuracy"] > 0.3, cls.__name__
