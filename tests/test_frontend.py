"""The streaming frontend: any block sizes give the batch frames, bit for bit."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtag.errors import AudioError
from streamtag.features import FeatureSpec
from streamtag.frontend import Frontend, compute_features, cut_windows

SPEC = FeatureSpec()
RNG = np.random.default_rng(7)
AUDIO = (RNG.standard_normal(3 * SPEC.sample_rate) * 0.2).astype(np.float32)
BATCH = compute_features(AUDIO)


def stream(audio, sizes, frontend=None):
    frontend = frontend or Frontend(SPEC)
    out, pos, i = [], 0, 0
    while pos < audio.size:
        n = sizes[i % len(sizes)]
        out.append(frontend.push(audio[pos:pos + n]))
        pos += n
        i += 1
    return np.concatenate(out), frontend


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=30))
def test_streaming_in_any_block_sizes_equals_batch(sizes):
    frames, frontend = stream(AUDIO, sizes)
    np.testing.assert_array_equal(frames, BATCH)
    assert frontend.frames_emitted == len(BATCH)


def test_frames_already_returned_survive_many_later_pushes():
    """push() hands out rows of a slab and starts a new slab when one is used up, or a larger one
    for a large push: 15 s of audio (645 frames) in blocks that cross those boundaries, one of them
    longer than a slab, must still equal the batch frames once every push is done."""
    audio = (np.random.default_rng(11).standard_normal(15 * SPEC.sample_rate) * 0.2).astype(np.float32)
    sizes = [512] * 200 + [700 * SPEC.hop_length // 2] + [3333, 1, 4096]
    frames, frontend = stream(audio, sizes)
    np.testing.assert_array_equal(frames, compute_features(audio))
    assert frontend.frames_emitted == len(frames) == 1 + (audio.size - SPEC.n_fft) // SPEC.hop_length


def test_strided_input_is_read_as_its_values():
    wide = np.repeat(AUDIO, 2)
    np.testing.assert_array_equal(Frontend(SPEC).push(wide[::2]), BATCH)


def test_single_samples_and_empty_blocks():
    frontend = Frontend(SPEC)
    assert frontend.push(np.empty(0, np.float32)).shape == (0, 2, SPEC.n_mels)
    frames = np.concatenate([frontend.push(AUDIO[i:i + 1]) for i in range(SPEC.n_fft + 3 * SPEC.hop_length)])
    np.testing.assert_array_equal(frames, BATCH[:4])


def test_frames_are_emitted_as_soon_as_their_last_sample_arrives():
    frontend = Frontend(SPEC)
    assert len(frontend.push(AUDIO[: SPEC.n_fft - 1])) == 0
    assert len(frontend.push(AUDIO[SPEC.n_fft - 1: SPEC.n_fft])) == 1
    assert len(frontend.push(AUDIO[SPEC.n_fft: SPEC.n_fft + SPEC.hop_length - 1])) == 0
    assert len(frontend.push(AUDIO[SPEC.n_fft + SPEC.hop_length - 1: SPEC.n_fft + SPEC.hop_length])) == 1
    assert frontend.samples_pending == SPEC.n_fft - SPEC.hop_length


def test_decibels_match_log10_across_the_float64_range():
    from streamtag.frontend_kernel import _to_db

    rng = np.random.default_rng(3)
    energy = np.concatenate([np.exp(rng.uniform(np.log(1e-300), np.log(1e300), 100_000)),
                             [1.0, 2.0, 0.5, np.sqrt(2), np.nextafter(np.sqrt(2), 2), SPEC.amin, 1e-30, 1e30]])
    out = np.empty_like(energy)
    _to_db(energy, np.empty_like(energy), out)
    np.testing.assert_allclose(out, 10 * np.log10(energy), rtol=0, atol=1e-9)
    special = np.array([np.nan, np.inf, 1.0])
    _to_db(special, np.empty(3), out[:3])
    np.testing.assert_array_equal(out[:3], [np.nan, np.inf, 0.0])


def test_float64_and_int_like_input_is_accepted_as_float32():
    np.testing.assert_array_equal(Frontend(SPEC).push(AUDIO.astype(np.float64)), BATCH)


def test_push_rejects_non_mono_input():
    with pytest.raises(AudioError, match="1-D"):
        Frontend(SPEC).push(np.zeros((100, 2), np.float32))


@pytest.mark.parametrize("length", [41, 101])
def test_window_is_the_newest_frames(length):
    frontend = Frontend(SPEC, history=101)
    with pytest.raises(ValueError, match="frames emitted"):
        frontend.window(length)
    for cut in (int(2.5 * SPEC.sample_rate), 3 * SPEC.sample_rate):
        frontend.reset()
        frames = frontend.push(AUDIO[:cut])
        window = frontend.window(length)
        assert window.shape == (2, SPEC.n_mels, length)
        np.testing.assert_array_equal(window, frames[-length:].transpose(1, 2, 0))
    with pytest.raises(ValueError, match="window length"):
        frontend.window(102)


def test_window_after_the_ring_wraps_many_times():
    frontend = Frontend(SPEC, history=41)
    frames, _ = stream(AUDIO, [333], frontend)
    np.testing.assert_array_equal(frontend.window(41), BATCH[-41:].transpose(1, 2, 0))


def test_reset_starts_a_new_stream():
    frontend = Frontend(SPEC)
    frontend.push(RNG.standard_normal(5000).astype(np.float32))
    frontend.reset()
    np.testing.assert_array_equal(frontend.push(AUDIO), BATCH)


def test_cut_windows_strides_and_starts():
    windows, starts = cut_windows(BATCH, 41, 20)
    expected_starts = np.arange(0, len(BATCH) - 41 + 1, 20)
    np.testing.assert_array_equal(starts, expected_starts)
    assert windows.shape == (len(expected_starts), 2, SPEC.n_mels, 41)
    for w, s in zip(windows, starts):
        np.testing.assert_array_equal(w, BATCH[s:s + 41].transpose(1, 2, 0))


def test_cut_windows_drops_silent_windows():
    rate = SPEC.sample_rate
    audio = np.concatenate([np.zeros(2 * rate, np.float32), AUDIO[:rate]])
    frames = compute_features(audio)
    all_windows, all_starts = cut_windows(frames, 41, 10)
    kept, starts = cut_windows(frames, 41, 10, silence_db=-80.0)
    assert 0 < len(kept) < len(all_windows)
    silent = all_windows[:, 0].max(axis=(1, 2)) < -80.0
    np.testing.assert_array_equal(starts, all_starts[~silent])
    assert np.all(kept[:, 0].max(axis=(1, 2)) >= -80.0)


def test_cut_windows_short_input_and_bad_arguments():
    windows, starts = cut_windows(BATCH[:40], 41, 20)
    assert windows.shape == (0, 2, SPEC.n_mels, 41) and starts.size == 0
    with pytest.raises(ValueError, match="stride"):
        cut_windows(BATCH, 41, 0)
    with pytest.raises(ValueError, match="shape"):
        cut_windows(BATCH[:, 0], 41, 1)
