"""Audio loading: every format libsndfile reads, any rate and channel count, and clear errors."""

import csv

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import butter, resample_poly, sosfiltfilt

from streamtag.audio import check_finite, load_audio
from streamtag.errors import (
    AudioError,
    AudioNotFoundError,
    EmptyAudioError,
    NonFiniteAudioError,
    NotAudioError,
    TruncatedAudioError,
)

RATE = 22050


def tone(rate, seconds=1.0, freq=1000.0, channels=1, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def peak_hz(x, rate):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


@pytest.mark.parametrize("fmt,subtype,tol", [
    ("WAV", "PCM_U8", 1e-2), ("WAV", "PCM_16", 1e-4), ("WAV", "PCM_24", 1e-6), ("WAV", "PCM_32", 1e-6),
    ("WAV", "FLOAT", 1e-7), ("WAV", "DOUBLE", 1e-7), ("FLAC", "PCM_16", 1e-4), ("FLAC", "PCM_24", 1e-6),
])
def test_lossless_formats_load_exactly(tmp_path, fmt, subtype, tol):
    x = tone(RATE)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, x, RATE, format=fmt, subtype=subtype)
    y = load_audio(path, RATE)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=tol)


def test_ogg_vorbis_loads(tmp_path):
    path = tmp_path / "clip.ogg"
    sf.write(path, tone(RATE), RATE, format="OGG", subtype="VORBIS")
    y = load_audio(path, RATE)
    assert abs(len(y) - RATE) <= 1
    assert abs(peak_hz(y, RATE) - 1000.0) < 5


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000, 96000])
def test_any_rate_is_resampled_keeping_duration_and_pitch(tmp_path, rate):
    path = tmp_path / "clip.wav"
    sf.write(path, tone(rate, seconds=2.0, freq=1234.0), rate, subtype="FLOAT")
    y = load_audio(path, RATE)
    assert abs(len(y) - 2 * RATE) <= 1
    assert abs(peak_hz(y, RATE) - 1234.0) < 2
    assert np.sqrt(np.mean(y[RATE // 2:-RATE // 2] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


def test_channels_are_averaged(tmp_path):
    left, right = tone(RATE, freq=500.0), tone(RATE, freq=3000.0, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right, np.zeros_like(left)], axis=1), RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path, RATE), (left + right) / 3, atol=1e-7)


def test_missing_file(tmp_path):
    with pytest.raises(AudioNotFoundError, match="no such file"):
        load_audio(tmp_path / "nope.wav")
    assert issubclass(AudioNotFoundError, FileNotFoundError)


def test_not_audio(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not samples\n" * 20)
    with pytest.raises(NotAudioError, match="not a readable audio file"):
        load_audio(path)
    (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(NotAudioError, match="not a readable audio file"):
        load_audio(tmp_path / "noise.bin")
    with pytest.raises(NotAudioError, match="directory"):
        load_audio(tmp_path)


def test_empty(tmp_path):
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="file is empty"):
        load_audio(zero_bytes)
    no_frames = tmp_path / "noframes.wav"
    sf.write(no_frames, np.zeros(0, np.float32), RATE)
    with pytest.raises(EmptyAudioError, match="holds no samples"):
        load_audio(no_frames)


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "PCM_24"), ("FLAC", "PCM_16"), ("OGG", "VORBIS")])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated(tmp_path, fmt, subtype, keep):
    whole = tmp_path / f"whole.{fmt.lower()}"
    sf.write(whole, tone(RATE, seconds=3.0), RATE, format=fmt, subtype=subtype)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(TruncatedAudioError, match="truncated|cut short"):
        load_audio(cut)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_name_their_position(tmp_path, bad):
    x = tone(RATE).astype(np.float32)
    x[12345] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, x, RATE, subtype="FLOAT")
    with pytest.raises(NonFiniteAudioError, match="position 12345") as info:
        load_audio(path)
    assert info.value.position == 12345


def test_check_finite_reports_stream_position():
    block = np.zeros((100, 2), np.float32)
    block[40, 1] = np.nan
    with pytest.raises(NonFiniteAudioError, match=r"position 1040 \(0\.104 s\)"):
        check_finite(block, offset=1000, rate=10000)
    check_finite(np.ones(10, np.float32))


@pytest.mark.parametrize("values, bad", [
    ([1.0, np.inf, -np.inf, 2.0], 1),  # infinities of both signs: their sum is NaN
    ([-np.inf, 0.0], 0),
    ([0.0, 0.0, np.nan], 2),
])
def test_check_finite_finds_every_kind_of_bad_sample(values, bad):
    with pytest.raises(NonFiniteAudioError, match=f"position {bad}\\b"):
        check_finite(np.array(values, np.float32))


def test_check_finite_accepts_finite_samples_whose_sum_overflows():
    check_finite(np.full(4, 1e308))  # float64 samples: the quick sum is infinite, every sample is finite
    check_finite(np.full(4, np.finfo(np.float32).max, np.float32))


def test_all_errors_are_audio_errors_and_value_errors():
    for cls in (AudioNotFoundError, NotAudioError, EmptyAudioError, TruncatedAudioError, NonFiniteAudioError):
        assert issubclass(cls, AudioError) and issubclass(cls, ValueError)


def test_real_urbansound8k_flac_clips(us8k_dir):
    with open(us8k_dir / "metadata" / "UrbanSound8K.csv") as f:
        rows = list(csv.DictReader(f))[:25]
    for row in rows:
        path = us8k_dir / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
        y = load_audio(path, RATE)
        info = sf.info(path)
        assert info.samplerate == RATE and info.format == "FLAC"
        assert len(y) == info.frames, "no resampling at the native rate"
        assert abs(len(y) / RATE - (float(row["end"]) - float(row["start"]))) < 0.01
        assert np.all(np.isfinite(y)) and np.abs(y).max() <= 1.0


def test_real_esc10_ogg_clips_are_resampled(esc10_dir):
    paths = sorted((esc10_dir / "audio").glob("*.ogg"))[:20]
    assert paths
    for path in paths:
        info = sf.info(path)
        assert info.samplerate == 44100
        y = load_audio(path, RATE)
        assert abs(len(y) - info.frames * RATE / 44100) <= 1
        native, _ = sf.read(path, dtype="float64")
        # an independent polyphase resampler agrees below 9 kHz (their filters differ only near 11 kHz)
        reference = resample_poly(native, 1, 2)[:len(y)]
        lowpass = butter(8, 9000, fs=RATE, output="sos")
        ours, theirs = sosfiltfilt(lowpass, y)[1000:-1000], sosfiltfilt(lowpass, reference)[1000:-1000]
        assert np.sum((ours - theirs) ** 2) <= 1e-3 * np.sum(theirs ** 2) + 1e-9
