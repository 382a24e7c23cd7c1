"""The feature definition: FeatureSpec, and frames that match librosa and the delta formula."""

import dataclasses
import json

import librosa
import numpy as np
import pytest

from streamtag.errors import SpecError
from streamtag.features import FeatureSpec, hann_periodic, mel_filterbank
from streamtag.frontend import compute_features

SPEC = FeatureSpec()


def signals():
    rng = np.random.default_rng(1)
    t = np.arange(3 * SPEC.sample_rate) / SPEC.sample_rate
    chirp = 0.5 * np.sin(2 * np.pi * (100 + 1500 * t) * t)
    gated = rng.standard_normal(t.size) * (np.sin(2 * np.pi * 2 * t) > 0) * 0.3
    quiet = rng.standard_normal(t.size) * 1e-4
    yield "noise", (rng.standard_normal(t.size) * 0.1).astype(np.float32)
    yield "chirp", chirp.astype(np.float32)
    yield "gated noise with digital silence", gated.astype(np.float32)
    yield "quiet noise", quiet.astype(np.float32)


def test_defaults_are_piczaks():
    assert (SPEC.sample_rate, SPEC.n_fft, SPEC.hop_length, SPEC.n_mels) == (22050, 1024, 512, 60)
    assert SPEC.fmax_hz == 11025.0
    assert SPEC.floor_db == pytest.approx(-100.0)
    assert SPEC.delta == "causal9"


def test_spec_is_frozen_and_round_trips_through_json():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SPEC.n_mels = 40
    other = FeatureSpec(n_mels=40, fmax=8000.0)
    assert FeatureSpec.from_json(other.to_json()) == other
    assert json.loads(other.to_json())["n_mels"] == 40
    assert other.digest() != SPEC.digest()
    assert FeatureSpec().digest() == SPEC.digest()


@pytest.mark.parametrize("bad", [
    dict(sample_rate=0), dict(n_fft=8), dict(n_fft=1000), dict(n_fft=16384), dict(hop_length=0), dict(hop_length=2048), dict(n_mels=0),
    dict(fmin=-1.0), dict(fmax=20000.0), dict(fmin=5000.0, fmax=4000.0), dict(window="hamming"),
    dict(mel_scale="htk"), dict(amin=0.0), dict(amin=1e-320), dict(amin=float("nan")), dict(delta="centred"),
])
def test_invalid_spec_values_raise_spec_error(bad):
    with pytest.raises(SpecError, match="invalid FeatureSpec|only the Slaney"):
        FeatureSpec(**bad)


def test_from_dict_rejects_unknown_fields_and_bad_json():
    with pytest.raises(SpecError, match="unknown FeatureSpec fields: colour"):
        FeatureSpec.from_dict({**SPEC.to_dict(), "colour": "blue"})
    with pytest.raises(SpecError, match="not valid JSON"):
        FeatureSpec.from_json("{not json")
    with pytest.raises(SpecError, match="JSON object"):
        FeatureSpec.from_dict([1, 2])


def test_filterbank_matches_librosa():
    for spec in (SPEC, FeatureSpec(n_mels=128, fmin=50.0, fmax=8000.0)):
        ours = mel_filterbank(spec)
        theirs = librosa.filters.mel(sr=spec.sample_rate, n_fft=spec.n_fft, n_mels=spec.n_mels,
                                     fmin=spec.fmin, fmax=spec.fmax_hz, htk=False, norm="slaney", dtype=np.float64)
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_window_is_periodic_hann():
    np.testing.assert_allclose(hann_periodic(1024), librosa.filters.get_window("hann", 1024, fftbins=True), atol=1e-12)


@pytest.mark.parametrize("name,audio", list(signals()))
def test_logmel_matches_librosa(name, audio):
    frames = compute_features(audio)
    power = librosa.feature.melspectrogram(y=audio.astype(np.float64), sr=SPEC.sample_rate, n_fft=SPEC.n_fft,
                                           hop_length=SPEC.hop_length, window="hann", center=False,
                                           n_mels=SPEC.n_mels, power=2.0)
    expected = librosa.power_to_db(power, ref=1.0, amin=SPEC.amin, top_db=None).T
    assert frames.shape == (1 + (audio.size - SPEC.n_fft) // SPEC.hop_length, 2, SPEC.n_mels)
    assert frames.dtype == np.float32
    np.testing.assert_allclose(frames[:, 0], expected, atol=2e-3, rtol=0)


def reference_causal_delta(logmel: np.ndarray) -> np.ndarray:
    """d[t] = sum_{n=1..4} n * (x[t-4+n] - x[t-4-n]), with x[t<0] = x[0] (plain numpy, no shared code)."""
    padded = np.concatenate([np.repeat(logmel[:1], 8, axis=0), logmel.astype(np.float64)])
    delta = np.zeros_like(padded)
    for t in range(8, len(padded)):
        delta[t] = sum(n * (padded[t - 4 + n] - padded[t - 4 - n]) for n in range(1, 5))
    return delta[8:]


@pytest.mark.parametrize("name,audio", list(signals()))
def test_delta_matches_the_causal_formula(name, audio):
    frames = compute_features(audio)
    np.testing.assert_allclose(frames[:, 1], reference_causal_delta(frames[:, 0]), atol=1e-3, rtol=1e-5)
    assert np.all(frames[0, 1] == 0.0), "an edge-padded history has zero delta in the first frame"


def test_delta_needs_no_look_ahead():
    """Frame t's delta is final when frame t is emitted: later audio never changes it."""
    audio = next(signals())[1]
    short = compute_features(audio[: SPEC.sample_rate])
    full = compute_features(audio)
    np.testing.assert_array_equal(full[: len(short)], short)
