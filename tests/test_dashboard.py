"""The live dashboard, rendered to a recorded console of fixed size from a scripted stream.

A stand-in model makes the stream's story exact: ``low`` is how much of a
window is loud below ~900 Hz, ``high`` the same above ~3.4 kHz, ``never``
stays at zero. The scripted input (44.1 kHz, so the engine resamples) is
quiet noise, a 300 Hz tone from 1.5 to 3.0 s, a 6 kHz tone from 2.5 to 4.0 s
and a clipped burst at 4.5 s. The dashboard is drawn from the engine's own
snapshots at chosen moments of the stream, and what it shows must follow.
"""

from __future__ import annotations

import io
import math
import re
import threading
import time

import numpy as np
import pytest
from rich.console import Console

from streamtag.dashboard import (
    HISTORY_FRAMES,
    ClassBars,
    Dashboard,
    EventLog,
    Setup,
    Spectrogram,
    session_table,
    show,
)
from streamtag.engine import Engine
from streamtag.events import Event
from streamtag.features import FeatureSpec
from streamtag.sources import ArraySource, PacedSource

SPEC = FeatureSpec()
RATE = 44100


class BandModel:
    classes = ["low", "high", "never"]
    spec, window_frames, hop_frames = SPEC, 41, 4
    thresholds = np.array([0.5, 0.5, 0.5], dtype=np.float32)
    name, device = "bands", "cpu"

    def predict(self, windows: np.ndarray) -> np.ndarray:
        logmel = windows[:, 0]
        low = (logmel[:, :15].max(axis=1) >= -40).mean(axis=1)
        high = (logmel[:, 40:].max(axis=1) >= -40).mean(axis=1)
        return np.stack([low, high, np.zeros_like(low)], axis=1).astype(np.float32)


def stream(seconds: float = 5.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    x = np.random.default_rng(0).standard_normal(len(t)) * 1e-4
    x += 0.5 * np.sin(2 * np.pi * 300 * t) * ((t >= 1.5) & (t < 3.0))
    x += 0.5 * np.sin(2 * np.pi * 6000 * t) * ((t >= 2.5) & (t < 4.0))
    burst = (t >= 4.5) & (t < 4.55)
    x[burst] = np.sign(np.sin(2 * np.pi * 200 * t[burst]))  # full scale: clipping
    return x.astype(np.float32)


def setup_for(engine: Engine, duration: float | None = 5.0) -> Setup:
    return Setup(source="scripted", source_rate=RATE, model_name="bands", model_rate=SPEC.sample_rate,
                 compute="CPU", thresholds=engine.tracker.on.copy(), hop_seconds=engine.hop_seconds,
                 duration=duration)


def screens(moments, width=80, height=24, thresholds=None):
    """Run the scripted stream and draw the dashboard when the input first
    reaches each of ``moments`` (seconds); also once after the end."""
    engine = Engine(BandModel(), thresholds=thresholds, history_frames=HISTORY_FRAMES, read_seconds=0.02)
    log = EventLog()
    now = {"t": 0.0}
    board = Dashboard(engine.snapshot, setup_for(engine), log, clock=lambda: now["t"])
    pending, shots = sorted(moments), {}

    def draw(at):
        console = Console(width=width, height=height, record=True, file=io.StringIO(), color_system="truecolor")
        console.print(board)
        shots[at] = (console.export_text(), engine.snapshot(), console)

    def on_window(window):
        now["t"] = window.end
        while pending and window.end >= pending[0]:
            draw(pending.pop(0))

    summary = engine.run(ArraySource(stream(), RATE), on_window=on_window, on_event=log)
    draw("end")
    return shots, log, summary


QUIET, LOW, BOTH, CLIPPED = 1.0, 2.3, 3.5, 4.6  # moments of the story: input seconds


@pytest.fixture(scope="module")
def story():
    return screens([QUIET, LOW, BOTH, CLIPPED])


def bar_line(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if re.search(rf"│ [● ] {label} ", line))


def figure(line: str) -> float:
    """The score at the end of a class's bar."""
    return float(re.search(r" (\d\.\d\d) │", line)[1])


def test_fits_80_by_24_with_every_panel(story):
    shots, _, _ = story
    for text, _, _ in shots.values():
        lines = text.splitlines()
        assert len(lines) == 24 and max(len(line) for line in lines) == 80
        for title in ("classes", "events", "input level", "log-mel", "health"):
            assert title in text
        for label in BandModel.classes:
            assert bar_line(text, label)


def test_bars_follow_the_scores_and_mark_active_classes(story):
    shots, _, _ = story
    quiet, low, both = shots[QUIET][0], shots[LOW][0], shots[BOTH][0]
    for text, snap in ((quiet, shots[QUIET][1]), (low, shots[LOW][1]), (both, shots[BOTH][1])):
        for c, label in enumerate(BandModel.classes):
            assert figure(bar_line(text, label)) == pytest.approx(float(snap.smoothed[c]), abs=0.005)
    assert figure(bar_line(quiet, "low")) == 0 and "●" not in bar_line(quiet, "low")
    assert figure(bar_line(low, "low")) > 0.5 and "● low" in bar_line(low, "low")
    assert "● high" not in bar_line(low, "high")
    assert "● high" in bar_line(both, "high") and "● never" not in bar_line(both, "never")
    # the bar's length is the score: more filled cells for the louder class
    assert bar_line(low, "low").count("█") > bar_line(low, "high").count("█")


def test_threshold_marker_sits_at_the_threshold():
    shots, _, _ = screens([LOW], thresholds=[0.25, 0.5, 0.75])
    text = shots[LOW][0]
    starts = {label: bar_line(text, label).index(label) + 6 for label in BandModel.classes}  # name column: 5 + 1
    marks = {label: bar_line(text, label).index("┃") - starts[label] for label in BandModel.classes}
    width = re.search(r" \d\.\d\d │", bar_line(text, "low")).start() - starts["low"]
    assert width > 20
    assert marks["low"] < marks["high"] < marks["never"]
    for label, threshold in zip(BandModel.classes, (0.25, 0.5, 0.75)):
        assert marks[label] == int(threshold * width)


def test_active_class_is_highlighted_in_green():
    bars = ClassBars(["a", "b"], np.array([0.9, 0.2], dtype=np.float32), np.array([0.5, 0.5]), {0})
    console = Console(width=40, file=io.StringIO(), color_system="truecolor")
    lines = console.render_lines(bars, console.options.update_dimensions(40, 2))
    name_style = {line[1].text.strip(): line[1].style for line in lines}
    assert name_style["a"].color.name == "green" and name_style["a"].bold
    assert name_style["b"] is None


def test_event_log_shows_open_then_closed_events(story):
    shots, log, _ = story
    low = shots[LOW][0]
    row = next(line for line in low.splitlines() if re.search(r"\d\d:\d\d:\d\d low ", line))
    assert "…" in row  # open: no offset yet
    final = shots["end"][0]
    closed = {e.label: e for e in log.closed}
    assert set(closed) == {"low", "high"}
    for label, event in closed.items():
        row = re.search(rf"\d\d:\d\d:\d\d {label} +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)s", final)
        onset, offset, score, duration = row.groups()
        assert float(onset) == pytest.approx(event.onset, abs=0.051)
        assert float(offset) == pytest.approx(event.offset, abs=0.051)
        assert float(score) == pytest.approx(event.score, abs=0.005)
        assert float(duration) == pytest.approx(event.duration, abs=0.051)
    assert 1.4 < closed["low"].onset < 1.8 and 2.9 < closed["low"].offset < 3.3
    # newest first: high opened after low
    assert final.index(" high ") < final.index(" low ", final.index("time"))


def test_level_meter_follows_the_input_and_warns_of_clipping(story):
    shots, _, _ = story

    def level(text):
        line = next(line for line in text.splitlines() if "dBFS" in line)
        return float(line.split("dBFS")[0].split()[-1]), "CLIP" in line, line

    quiet, tone, clipped = level(shots[QUIET][0]), level(shots[LOW][0]), level(shots[CLIPPED][0])
    assert quiet[0] == pytest.approx(shots[QUIET][1].level_dbfs, abs=0.05) and quiet[0] < -70
    assert tone[0] == pytest.approx(shots[LOW][1].level_dbfs, abs=0.05) and -10 < tone[0] < -8  # 0.5 sine: -9 dBFS
    assert tone[2].count("█") > quiet[2].count("█")
    assert not quiet[1] and not tone[1]
    assert clipped[1], "the burst at full scale must raise the clipping warning"
    assert shots[CLIPPED][1].clipped_samples > 0
    assert f"clipped {shots[CLIPPED][1].clipped_samples} samples" in shots[CLIPPED][0]


def test_clipping_warning_holds_for_two_seconds_then_clears():
    engine = Engine(BandModel())
    clock = {"t": 0.0}
    snap = engine.snapshot()
    board = Dashboard(lambda: snap, setup_for(engine), EventLog(), clock=lambda: clock["t"])
    assert not board._clipping(snap)
    snap = type(snap)(**{**snap.__dict__, "clipped_samples": 10})
    assert board._clipping(snap)
    clock["t"] = 1.9
    assert board._clipping(snap)
    clock["t"] = 2.1
    assert not board._clipping(snap)


def test_health_shows_latency_drops_rates_and_model(story):
    shots, _, _ = story
    text, snap, _ = shots[LOW]
    assert "44.1 → 22.05 kHz" in text and "bands on CPU" in text and "scripted" in text
    for name, label in (("frontend", "frontend"), ("model", "model"), ("end_to_end", "end-to-end")):
        line = next(line for line in text.splitlines() if f"│ {label} " in line and " ms" in line)
        p50, p99 = snap.latency[name]
        assert math.isfinite(p50) and p50 <= p99
        assert len(re.findall(r"\d+(?:\.\d)? ms", line)) == 2
    assert "dropped 0 · buffer" in text


def test_header_counts_time_windows_and_events(story):
    shots, _, summary = story
    header = [shots[m][0].splitlines()[0] for m in (QUIET, LOW, BOTH)]
    times = [re.search(r"(\d+):(\d\d\.\d) / 0:05.0", h) for h in header]
    assert all(times)
    seconds = [int(m[1]) * 60 + float(m[2]) for m in times]
    assert seconds == sorted(seconds) and seconds[0] == pytest.approx(QUIET, abs=0.15)
    windows = [int(re.search(r"(\d+) windows", h)[1]) for h in header]
    assert windows == sorted(windows) and windows[0] > 0
    assert "● live" in header[0]
    final = shots["end"][0].splitlines()[0]
    assert "■ ended" in final and f"{summary.windows} windows" in final and "2 events" in final


def test_spectrogram_shows_where_the_energy_is(story):
    shots, _, _ = story
    quiet, low, high = (Spectrogram(shots[m][1].frames).image(30, 8) for m in (QUIET, LOW, BOTH))
    assert quiet.shape == (16, 30)
    assert quiet.max() < 8  # dark: -80 dBFS noise
    assert low[-3:, -5:].max() >= 20 and low[:8, -5:].max() < 8  # the 300 Hz tone lights a bottom row only
    assert high[:8, -5:].max() >= 12  # the 6 kHz tone lights a row in the upper half
    assert np.array_equal(shots[QUIET][1].frames.shape, (HISTORY_FRAMES, SPEC.n_mels))
    lines = shots[LOW][0].splitlines()
    assert sum(line.count("▀") for line in lines) >= 28 * 8


def test_spectrogram_fills_any_panel_size():
    frames = np.linspace(-100, 20, 10 * 60, dtype=np.float32).reshape(10, 60)
    for width, height in ((3, 2), (30, 8), (40, 45)):
        image = Spectrogram(frames).image(width, height)
        assert image.shape == (2 * height, min(width, 5))
        assert image.min() >= 0 and image.max() <= 31
    console = Console(width=12, height=4, record=True, file=io.StringIO())
    console.print(Spectrogram(frames))
    lines = console.export_text().splitlines()
    assert len(lines) == 8 and all(len(line) == 12 for line in lines)  # left-padded where history is short


def test_larger_terminal_gives_more_room():
    shots, log, _ = screens([], width=140, height=45)
    small, _, _ = screens([])
    text = shots["end"][0]
    lines = text.splitlines()
    assert len(lines) == 45 and max(map(len, lines)) == 140
    assert sum(line.count("▀") for line in lines) > 3 * sum(line.count("▀") for line in small["end"][0].splitlines())
    assert len(bar_line(text, "low")) > len(bar_line(small["end"][0], "low"))


def test_many_classes_show_the_highest_scores():
    classes = [f"class{i:02d}" for i in range(50)]
    scores = np.linspace(0, 0.98, 50).astype(np.float32)
    bars = ClassBars(classes, scores, np.full(50, 0.5), set())
    assert bars.rows(15) == list(range(35, 50))
    engine = Engine(BandModel())
    snap = engine.snapshot()
    snap = type(snap)(**{**snap.__dict__, "classes": classes, "smoothed": scores, "scores": scores})
    setup = Setup("s", RATE, "m", SPEC.sample_rate, "CPU", np.full(50, 0.5), 0.1)
    console = Console(width=80, height=24, record=True, file=io.StringIO())
    console.print(Dashboard(lambda: snap, setup, EventLog()))
    text = console.export_text()
    assert "classes (top 15 of 50)" in text and "class49" in text and "class10 " not in text
    assert len(text.splitlines()) == 24


def test_too_small_terminal_says_so():
    engine = Engine(BandModel())
    console = Console(width=50, height=12, record=True, file=io.StringIO())
    console.print(Dashboard(engine.snapshot, setup_for(engine), EventLog()))
    assert "at least 60 x 16; this one is 50 x 12" in " ".join(console.export_text().split())


def test_event_log_replaces_open_entries_when_they_close():
    log = EventLog(size=3, clock=iter(range(100)).__next__)
    a = Event("a", 0, 1.0, 1.5, 0.7, closed=False)
    b = Event("b", 1, 1.2, 1.4, 0.6, closed=False)
    log("open", a)
    log("open", b)
    log("close", Event("a", 0, 1.0, 2.0, 0.9))
    assert [(e.event.label, e.event.closed, e.reported) for e in log.entries] == [("b", False, 1), ("a", True, 0)]
    assert [e.offset for e in log.closed] == [2.0]
    for i in range(5):
        log("open", Event("c", 2, 3.0 + i, 3.5 + i, 0.6, closed=False))
    assert len(log.entries) == 3


def test_session_table_sums_events_per_class():
    events = [Event("low", 0, 1.0, 2.0, 0.8), Event("low", 0, 3.0, 3.5, 0.9), Event("high", 1, 0.0, 0.4, 0.6)]
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(session_table(events, ["low", "high", "never"]))
    text = console.export_text()
    low = next(line for line in text.splitlines() if "low" in line)
    assert re.search(r"low\s+│\s+2 │\s+1.5 s │\s+1.0 s │ 0.90", low)
    assert "never" not in text


class FrozenTerminal(io.StringIO):
    """A terminal that stops accepting output while ``frozen`` is set."""

    def __init__(self):
        super().__init__()
        self.frozen, self.thawed = threading.Event(), threading.Event()
        self.blocked_writes = 0

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.frozen.is_set() and not self.thawed.is_set():
            self.blocked_writes += 1
            self.thawed.wait(30)
        return super().write(text)


def test_live_screen_redraws_while_the_engine_runs_and_never_holds_it_up():
    """While the dashboard's terminal hangs, the engine still tags all of a
    live stream in real time and drops nothing; the screen catches up later
    and the alternate screen is left at the end."""
    engine = Engine(BandModel(), history_frames=HISTORY_FRAMES)
    terminal = FrozenTerminal()
    console = Console(file=terminal, width=80, height=24, force_terminal=True, color_system="truecolor")
    source = PacedSource(stream(3.0), RATE, blocks=882, speed=3.0)
    frames_before_freeze = []

    def freeze_after_a_while(window):
        if window.end > 1.0 and not terminal.frozen.is_set():
            frames_before_freeze.append(terminal.getvalue().count("streamtag live"))
            terminal.frozen.set()

    finished = {}

    def thaw_when_done():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            snap = engine.snapshot()
            if terminal.frozen.is_set() and not snap.running and snap.windows:
                finished["engine"] = True
                break
            time.sleep(0.01)
        terminal.thawed.set()

    watcher = threading.Thread(target=thaw_when_done)
    watcher.start()
    events = []
    summary, log = show(engine, source, setup_for(engine, 3.0), console, on_window=freeze_after_a_while,
                        on_event=lambda k, e: events.append(k))
    watcher.join()
    assert finished.get("engine"), "the engine waited for the frozen terminal"
    assert terminal.blocked_writes >= 1, "the dashboard kept drawing while the engine ran"
    assert frames_before_freeze[0] >= 2, "the dashboard redrew while the first second of audio played"
    assert summary.dropped_samples == 0 and summary.seconds == 3.0 and summary.error is None
    assert [e.label for e in log.closed] == ["low"] and events.count("close") == 1
    out = terminal.getvalue()
    assert out.index("\x1b[?1049h") < out.rindex("streamtag live") < out.rindex("\x1b[?1049l")
