"""The engine: one path for every source, exact times, events, gaps and errors.

Two stand-in models make the checks exact: :class:`ProjectionModel` scores
each window on its own in float64 (so batching cannot change a bit), and
:class:`EnergyModel` says how much of a window is loud in low or high bands
(so a scene built here has events whose times are known). The real model
file is used for the end-to-end check against the offline path.
"""

from __future__ import annotations

import io
import struct
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from streamtag.audio import load_audio
from streamtag.engine import Engine
from streamtag.errors import NonFiniteAudioError, TruncatedAudioError
from streamtag.events import EventTracker, Smoother
from streamtag.features import FeatureSpec
from streamtag.frontend import compute_features, cut_windows
from streamtag.sources import ArraySource, FileSource, PacedSource, RawSource, Source, WavStreamSource

SPEC = FeatureSpec()
SR = SPEC.sample_rate


class ProjectionModel:
    """Sigmoid of a fixed random projection of each window, computed window by window."""

    def __init__(self, n_classes: int = 3, thresholds: float = 0.5, hop_frames: int = 4):
        self.classes = [f"class{i}" for i in range(n_classes)]
        self.spec, self.window_frames, self.hop_frames = SPEC, 41, hop_frames
        self.thresholds = np.full(n_classes, thresholds, dtype=np.float32)
        self.weights = np.random.default_rng(0).standard_normal((n_classes, 2 * SPEC.n_mels * 41)) / 3000
        self.seen: list[np.ndarray] = []

    def predict(self, windows: np.ndarray) -> np.ndarray:
        self.seen.append(windows.copy())
        flat = windows.reshape(len(windows), -1).astype(np.float64)
        z = np.stack([self.weights @ (w + 50.0) for w in flat])
        return (1 / (1 + np.exp(-z))).astype(np.float32)


class EnergyModel:
    """'low' / 'high': the fraction of a window's frames whose loudest band
    below ~900 Hz / above ~3.4 kHz reaches -40 dB."""

    classes = ["low", "high"]
    spec, window_frames, hop_frames = SPEC, 41, 1
    thresholds = np.array([0.5, 0.5], dtype=np.float32)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        logmel = windows[:, 0]  # (n, n_mels, frames)
        low = (logmel[:, :15].max(axis=1) >= -40).mean(axis=1)
        high = (logmel[:, 40:].max(axis=1) >= -40).mean(axis=1)
        return np.stack([low, high], axis=1).astype(np.float32)


def tone(t: np.ndarray, freq: float, on: float, off: float) -> np.ndarray:
    """A sine from ``on`` to ``off`` seconds with 10 ms raised-cosine edges (no clicks)."""
    ramp = 0.01
    gain = np.clip(np.minimum(t - on, off - t) / ramp, 0, 1)
    return 0.5 * np.sin(2 * np.pi * freq * t) * (0.5 - 0.5 * np.cos(np.pi * gain))


def scene(rate: int, seconds: float = 4.0) -> np.ndarray:
    """Quiet noise; a 300 Hz tone from 1.0 to 2.5 s; a 6 kHz tone from 2.0 to 3.0 s."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).standard_normal(len(t)) * 1e-4
    return (noise + tone(t, 300, 1.0, 2.5) + tone(t, 6000, 2.0, 3.0)).astype(np.float32)


def run(engine: Engine, source: Source, **kwargs):
    windows, events = [], []
    summary = engine.run(source, on_window=windows.append, on_event=lambda k, e: events.append((k, e)), **kwargs)
    return summary, windows, [e for k, e in events if k == "close"]


class ChunkyStream(io.RawIOBase):
    def __init__(self, data: bytes, seed: int = 0):
        self.data, self.pos, self.rng = data, 0, np.random.default_rng(seed)

    def readable(self) -> bool:
        return True

    def read1(self, n: int = -1) -> bytes:
        piece = self.data[self.pos:self.pos + min(int(self.rng.integers(1, 5000)), n)]
        self.pos += len(piece)
        return piece

    read = read1


def test_file_wav_pipe_raw_pipe_and_live_give_identical_scores(tmp_path):
    """The same 44.1 kHz stereo audio four ways; also identical to the offline
    (training) features of the file."""
    rate = 44100
    stereo = np.stack([scene(rate, 3.0), 0.5 * scene(rate, 3.0)[::-1]], axis=1)
    path = tmp_path / "scene.wav"
    sf.write(path, stereo, rate, subtype="PCM_16")
    wav = bytearray(path.read_bytes())
    at = wav.index(b"data") + 4
    wav[at:at + 4] = struct.pack("<I", 0xFFFFFFFF)  # as arecord / sox write to a pipe
    pcm = bytes(wav[at + 4:])
    decoded, _ = sf.read(path, dtype="float32", always_2d=True)
    sources = {
        "file": FileSource(path),
        "wav pipe": WavStreamSource(ChunkyStream(bytes(wav), seed=1)),
        "raw pipe": RawSource(ChunkyStream(pcm, seed=2), rate, 2, "s16"),
        "live": PacedSource(decoded, rate, blocks=[441, 1000, 37, 2048], speed=8),
    }
    results = {}
    for name, source in sources.items():
        model = ProjectionModel()
        summary, windows, events = run(Engine(model, ring_seconds=30), source)
        assert summary.error is None and summary.dropped_samples == 0, name
        results[name] = (np.stack([w.scores for w in windows]), [(w.start, w.end) for w in windows],
                         np.concatenate(model.seen), events)
    reference = results["file"]
    offline, starts = cut_windows(compute_features(load_audio(path, SR)), 41, 4)
    np.testing.assert_array_equal(reference[2], offline)  # what training sees
    assert [s for s, _ in reference[1]] == list(starts * SPEC.hop_length / SR)
    for name, (scores, times, windows, events) in results.items():
        np.testing.assert_array_equal(scores, reference[0], err_msg=name)
        assert times == reference[1], name
        assert events == reference[3], name
    assert len(reference[0]) == (compute_features(load_audio(path, SR)).shape[0] - 41) // 4 + 1


@pytest.mark.parametrize("rate", [22050, 44100])
def test_hand_checked_scene_with_one_frame_hop(rate):
    engine = Engine(EnergyModel(), hop_frames=1, smooth=0, hysteresis=0.0, min_duration=0.1)
    summary, windows, events = run(engine, ArraySource(scene(rate), rate))
    found = sorted((e.label, e.onset, e.offset) for e in events)
    assert [label for label, _, _ in found] == ["high", "low"]
    truth = {"low": (1.0, 2.5), "high": (2.0, 3.0)}
    frame = SPEC.hop_length / SR
    for label, onset, offset in found:
        assert abs(onset - truth[label][0]) <= 1.5 * frame, (label, onset)
        assert abs(offset - truth[label][1]) <= 1.5 * frame, (label, offset)
        # times sit on the sample grid: a window centre (a whole number of hops) minus half a hop
        assert abs((onset * SR + 256) / 512 - round((onset * SR + 256) / 512)) < 1e-6
    assert summary.windows == len(windows) == (int(4.0 * SR) - 1024) // 512 + 1 - 40


def test_hand_checked_scene_with_default_hop_smoothing_and_min_duration():
    engine = Engine(EnergyModel(), hop_frames=4, smooth=0.3, hysteresis=0.2, min_duration=0.25)
    assert engine.smooth_windows == 3
    _, _, events = run(engine, ArraySource(scene(22050), 22050))
    found = {e.label: (e.onset, e.offset) for e in events}
    assert len(events) == 2
    # The score is the loud fraction of a ~0.95 s window, so it crosses 0.5 when the
    # window's centre crosses a tone edge: onsets land on the truth. The event ends
    # only when the score falls below 0.5 - 0.2, i.e. 0.2 windows after the tone.
    hop, late = engine.hop_seconds, 0.2 * SPEC.seconds(40) + SPEC.n_fft / SR / 5
    assert abs(found["low"][0] - 1.0) <= hop and abs(found["low"][1] - (2.5 + late)) <= hop
    assert abs(found["high"][0] - 2.0) <= hop and abs(found["high"][1] - (3.0 + late)) <= hop


def test_a_score_is_placed_at_the_moment_the_model_describes():
    """A model trained to describe its windows' ends (no look-ahead) has each score, and so its
    events, placed there: the same scores as a centre model's, times later by the same amount."""
    audio = scene(22050)
    centre = run(Engine(EnergyModel(), hop_frames=1, smooth=0, hysteresis=0.0, min_duration=0.1),
                 ArraySource(audio, 22050))
    late = EnergyModel()
    late.score_at = 0.9
    ending = run(Engine(late, hop_frames=1, smooth=0, hysteresis=0.0, min_duration=0.1), ArraySource(audio, 22050))
    for w in centre[1]:
        assert w.at == pytest.approx((w.start + w.end) / 2, abs=1e-9)
    shift = 0.4 * ((41 - 1) * SPEC.hop_length + SPEC.n_fft) / SR
    for a, b in zip(centre[1], ending[1]):
        np.testing.assert_array_equal(a.scores, b.scores)
        assert (a.start, a.end) == (b.start, b.end) and b.at == pytest.approx(a.at + shift, abs=1e-9)
    assert len(centre[2]) == len(ending[2]) == 2
    for a, b in zip(centre[2], ending[2]):
        assert a.label == b.label
        assert b.onset == pytest.approx(a.onset + shift, abs=1e-9) and b.offset == pytest.approx(a.offset + shift,
                                                                                                abs=1e-9)


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_an_event_sounding_at_the_end_lasts_to_the_end_of_the_recording(smooth):
    """No window is centred in a recording's last half window, so its last score speaks for it: the tone
    that runs to the end gives an event that ends with the audio, while the score-by-score spans stop
    half a window short. With a 1-s median, whose values lag half a second, the values it owed the last
    windows are flushed first, so a tone that stops 0.7 s before the end keeps its own offset."""
    t = np.arange(4 * SR) / SR
    quiet = np.random.default_rng(0).standard_normal(len(t)) * 1e-4
    to_end = (quiet + tone(t, 300, 1.0, 4.5) + tone(t, 6000, 1.5, 2.5)).astype(np.float32)
    engine = Engine(EnergyModel(), hop_frames=4, smooth=smooth, filter="median", hysteresis=0.0, min_duration=0.1)
    _, windows, events = run(engine, ArraySource(to_end, SR))
    found = {e.label: (e.onset, e.offset) for e in events}
    assert set(found) == {"low", "high"}
    assert found["low"][1] == 4.0 and windows[-1].at + engine.hop_seconds / 2 < 3.6
    assert abs(found["high"][1] - 2.5) <= engine.hop_seconds and abs(found["low"][0] - 1.0) <= engine.hop_seconds
    _, _, events = run(engine, ArraySource((quiet + tone(t, 300, 1.0, 3.3)).astype(np.float32), SR))
    assert [e.label for e in events] == ["low"] and abs(events[0].offset - 3.3) <= engine.hop_seconds


def test_random_model_events_match_the_offline_path(random_model_file):
    from streamtag.modelfile import load_model

    model = load_model(random_model_file, device="cpu")
    noise = 0.05 * np.random.default_rng(3).standard_normal(6 * 22050)
    audio = (scene(22050, 6.0) + noise).astype(np.float32)
    engine = Engine(model, hop_frames=4, smooth=0.3, hysteresis=0.05, min_duration=0.2)
    summary, windows, events = run(engine, ArraySource(audio, 22050, block=3000))

    offline, starts = cut_windows(compute_features(audio), 41, 4)
    scores = model.predict(offline)
    np.testing.assert_allclose(np.stack([w.scores for w in windows]), scores, atol=1e-5)
    smoother = Smoother(len(model.classes), 3)
    tracker = EventTracker(model.classes, model.thresholds, model.thresholds - 0.05, 0.2)
    expected = []
    half = 4 * 512 / 22050 / 2
    for start, p in zip(starts, scores):  # one window at a time; the engine takes them as each read completes them
        centre = (start * 512 + (start + 40) * 512 + 1024) / 2 / 22050
        smoothed, c = smoother.push(p[None], [centre])
        expected += [e for _, k, e in tracker.update(c - half, c + half, smoothed) if k == "close"]
    # the values the filter owed the last windows, the last of them to the end of the recording
    owed, times = smoother.flush()
    edges = np.concatenate([c + half, (times[1:] + times[:-1]) / 2, [len(audio) / 22050]])
    expected += [e for _, k, e in tracker.update(edges[:-1], edges[1:], owed) if k == "close"]
    expected += [e for _, e in tracker.close_all()]
    assert expected, "the scene should give the random model something to detect"
    assert [(e.label, e.onset, e.offset) for e in events] == [(e.label, e.onset, e.offset) for e in expected]
    np.testing.assert_allclose(summary.clip_scores, scores.mean(axis=0), atol=1e-5)


class BurstySource(Source):
    """A live source that stalls: it hands over ``first`` frames, waits until
    the engine has read them, then delivers the rest at once, far more than
    the ring holds, so the oldest of it is dropped."""

    live = True

    def __init__(self, samples: np.ndarray, rate: int, first: int):
        self.samples, self.sample_rate, self.channels, self.first = samples[:, None], rate, 1, first
        self.name = "bursty"

    def start(self, ring):
        def produce():
            ring.write_nowait(self.samples[:self.first])
            while ring.position < self.first:
                time.sleep(0.001)
            ring.write_nowait(self.samples[self.first:])
            ring.close()

        threading.Thread(target=produce, daemon=True).start()


@pytest.mark.parametrize("read_seconds", [0.25, 16.0])  # a read larger than the ring must not enlarge it
def test_dropped_audio_is_counted_and_times_stay_exact_after_the_gap(read_seconds):
    audio = scene(SR, 6.0)
    engine = Engine(ProjectionModel(thresholds=0.0), ring_seconds=2.0, read_seconds=read_seconds, smooth=0,
                    min_duration=0)
    summary, windows, events = run(engine, BurstySource(audio, SR, first=int(1.5 * SR)))
    assert summary.gaps == 1
    assert summary.dropped_samples == int(2.5 * SR)  # 4.5 s arrived at once into a 2 s ring
    assert summary.seconds == 6.0
    before = [w for w in windows if w.start < 1.5]
    after = [w for w in windows if w.start >= 1.5]
    assert before and after and max(w.end for w in before) <= 1.5
    assert after[0].start == 4.0  # the new stretch starts exactly where audio resumed
    assert [(w.start - 4.0) * SR / 512 for w in after[:3]] == pytest.approx([0.0, 4.0, 8.0], abs=1e-9)
    # every class is always on: each gets one event before the gap and one after
    assert len(events) == 6
    assert all(e.offset <= 1.5 for e in events[:3]) and all(e.onset >= 4.0 for e in events[3:])
    # the last score of each stretch speaks for the rest of it: events end where the audio stopped or ended
    assert [e.offset for e in events] == pytest.approx([1.5] * 3 + [6.0] * 3)


def test_nan_is_rejected_with_its_position_after_tagging_what_came_before():
    audio = scene(SR, 3.0)
    audio[40_000] = np.nan
    summary, windows, _ = run(Engine(ProjectionModel()), ArraySource(audio, SR, block=4096))
    assert isinstance(summary.error, NonFiniteAudioError)
    assert summary.error.position == 40_000 and "position 40000" in str(summary.error)
    assert summary.seconds == 40_000 / SR
    assert windows and windows[-1].end <= 40_000 / SR


def test_truncated_stream_is_tagged_as_far_as_it_goes():
    audio = scene(SR, 3.0)
    buf = io.BytesIO()
    sf.write(buf, audio, SR, subtype="PCM_16", format="WAV")
    raw = buf.getvalue()[:-1001]  # ends mid-sample: 500 whole samples and a byte short
    summary, windows, _ = run(Engine(ProjectionModel()), WavStreamSource(io.BytesIO(raw)))
    assert isinstance(summary.error, TruncatedAudioError)
    assert summary.seconds == (len(audio) - 501) / SR
    full = (compute_features(audio[:len(audio) - 501]).shape[0] - 41) // 4 + 1
    assert summary.windows == len(windows) == full


def test_stop_closes_open_events_and_max_seconds_cuts_exactly():
    engine = Engine(ProjectionModel(thresholds=0.0), smooth=0, min_duration=0)
    audio = np.tile(scene(SR, 4.0), 15)  # longer than a first read plus a full ring: stop() must leave some
    windows, closed = [], []

    def on_window(w):
        windows.append(w)
        if len(windows) == 5:
            engine.stop()

    summary = engine.run(ArraySource(audio, SR, block=2048), on_window=on_window,
                         on_event=lambda k, e: closed.append(e) if k == "close" else None)
    assert summary.stopped and summary.seconds < 60.0
    last = windows[-1]
    assert len(closed) == 3
    # open events close where the audio read ends: the last score speaks for what came after its own span
    assert summary.seconds > (last.start + last.end) / 2 + engine.hop_seconds / 2
    assert all(e.offset == pytest.approx(summary.seconds) for e in closed)
    summary = engine.run(ArraySource(audio, SR), max_seconds=1.0)
    assert summary.stopped and summary.seconds == 1.0


def test_clip_shorter_than_a_window_is_scored_once():
    model = ProjectionModel()
    summary, windows, _ = run(Engine(model), ArraySource(scene(SR, 0.3), SR))
    assert summary.windows == 1 and summary.clip_scores is not None
    assert windows[0].start == 0.0 and windows[0].end == (40 * 512 + 1024) / SR
    assert np.all(model.seen[0][0, 0, :, -1] == SPEC.floor_db)  # padded with silence


def test_snapshot_while_running_live():
    engine = Engine(ProjectionModel())
    snapshots = []
    thread = threading.Thread(target=engine.run, args=(PacedSource(scene(SR, 2.0), SR, blocks=1024, speed=4),))
    thread.start()
    while thread.is_alive():
        snapshots.append(engine.snapshot())
        time.sleep(0.02)
    thread.join()
    running = [s for s in snapshots if s.running and s.windows > 0]
    assert running, "the dashboard should have seen the engine at work"
    s = running[-1]
    assert s.frames.shape == (101, SPEC.n_mels) and s.frames.dtype == np.float32
    assert s.scores.shape == s.smoothed.shape == (3,)
    assert np.isfinite(s.level_dbfs) and s.level_dbfs < 0
    p50, p99 = s.latency["end_to_end"]
    assert 0 <= p50 <= p99
    assert s.dropped_samples == 0 and 0 <= s.buffer_fill <= 1
    assert [x.seconds for x in running] == sorted(x.seconds for x in running)
    final = engine.snapshot()
    assert not final.running and final.seconds == 2.0
    # the newest frames are the signal's log-mel, oldest first, after silence for the 16 not yet seen
    frames = compute_features(scene(SR, 2.0))[:, 0]
    assert len(frames) == 85
    np.testing.assert_array_equal(final.frames[16:], frames)
    assert np.all(final.frames[:16] == SPEC.floor_db)


def test_wait_caught_up_returns_after_each_read_and_times_out_without_audio():
    engine = Engine(ProjectionModel())
    assert not engine.wait_caught_up(timeout=0.05), "nothing is running: no read to wait for"
    source = PacedSource(scene(SR, 1.0), SR, blocks=2048, speed=1)  # a block every 93 ms
    thread = threading.Thread(target=engine.run, args=(source,))
    thread.start()
    woken = []
    while thread.is_alive():
        if engine.wait_caught_up(timeout=0.5):
            woken.append(engine.snapshot().seconds)
    thread.join()
    assert len(woken) >= 5, "each block read wakes a waiter"
    assert woken == sorted(woken) and woken[-1] > 0
    assert not engine.wait_caught_up(timeout=0.05)


def test_a_source_that_cannot_start_raises_and_leaves_the_engine_reusable():
    from streamtag.errors import DeviceError

    class Unplugged(Source):
        name, sample_rate, channels, live = "unplugged", 48000, 1, True

        def start(self, ring):
            raise DeviceError("cannot open unplugged")

    engine = Engine(ProjectionModel())
    with pytest.raises(DeviceError):
        engine.run(Unplugged())
    assert not engine.snapshot().running
    assert engine.run(ArraySource(scene(SR, 1.0), SR)).windows == 1
