"""The ``streamtag live`` dashboard: rich renderables drawn from engine snapshots.

The engine tags audio on the caller's thread and never waits for the screen.
Rich's :class:`~rich.live.Live` refreshes on a thread of its own, and each
refresh renders a fresh :meth:`~streamtag.engine.Engine.snapshot` (a copy
taken under a lock the engine holds for microseconds) and the
:class:`EventLog`, whose tuple the engine's event callback replaces whole, so
the screen reads it without any lock. A slow terminal therefore delays the
next frame of the picture, never the audio. What the two threads do share is
the interpreter: a frame is a few milliseconds of Python (the panels yield
segments themselves and the boxes are drawn here, not with rich's Layout and
Panel), and while the dashboard shows, the interpreter hands over to a waiting
thread after 1 ms instead of 5, so the engine never waits long for it.

The layout is fixed, fits 80 x 24, and gives larger terminals' room to the
class bars, the event log and the spectrogram::

    streamtag live  ● live 0:12.4 / 0:20.0   531 windows   3 events   Ctrl-C stops
    ╭ classes ─────────────────────────────╮╭ input level ─────────╮
    │ siren          ████████████┃▌   0.71 │╰──────────────────────╯
    │ car_horn       ██          ┃    0.12 │╭ log-mel ─────────────╮
    ╰──────────────────────────────────────╯│ ▀▀▀▀ (newest right)  │
    ╭ events ──────────────────────────────╮╰──────────────────────╯
    │ time     label    onset offset ...   │╭ health ──────────────╮
    ╰──────────────────────────────────────╯╰──────────────────────╯
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from itertools import groupby
from typing import Callable

import numpy as np
from rich.color import Color
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from streamtag.engine import Engine, Snapshot, Summary
from streamtag.events import Event
from streamtag.sources import Source

GIL_SWITCH = 0.001  # s: how long the engine's thread may wait for the interpreter while a frame is drawn (5 ms by
# default); drawing holds it for a few milliseconds, the audio path should not wait that long each time it wakes
REFRESH_PER_SECOND = 15  # frames a second wanted (>= 10 needed); each waits for a moment between blocks
MIN_WIDTH, MIN_HEIGHT = 60, 16  # below this the panels cannot show their figures
CLIP_HOLD = 2.0  # seconds the clipping warning stays after the last clipped sample
LEVEL_FLOOR = -60.0  # dBFS at the left end of the level meter
SPECTRUM_DB = (-50.0, 20.0)  # log-mel dB shown black (quiet street noise is -40) and brightest (a loud sound)
FRAMES_PER_COLUMN = 2  # spectrogram columns are 46 ms apart: a 28-column panel shows 1.3 s
SPECTROGRAM_MAX = (64, 20)  # columns and rows at most: every cell costs, and 20 rows show all 60 bands
HISTORY_FRAMES = FRAMES_PER_COLUMN * SPECTROGRAM_MAX[0]  # log-mel frames the engine keeps for it

_EIGHTHS = " ▏▎▍▌▋▊▉"
_INFERNO = [(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
            (250, 193, 39), (252, 255, 164)]


def _palette(stops: list[tuple[int, int, int]], n: int) -> list[Color]:
    """``n`` colours interpolated along ``stops``, dark to bright."""
    rgb = np.array(stops, dtype=np.float64)
    at = np.linspace(0, len(stops) - 1, n)
    lo = np.minimum(at.astype(int), len(stops) - 2)
    mix = (at - lo)[:, None]
    values = np.rint(rgb[lo] * (1 - mix) + rgb[lo + 1] * mix).astype(int)
    return [Color.from_rgb(*v) for v in values]


_COLOURS = _palette(_INFERNO, 32)


# -- what the screen shows besides snapshots ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    """What stays fixed for a session, shown beside the live figures."""

    source: str  # device or file name
    source_rate: int  # Hz the source delivers
    model_name: str
    model_rate: int  # Hz the model's features are computed at
    compute: str  # where the network runs: "CPU", "CUDA (NVIDIA H100)"
    thresholds: np.ndarray  # (C,) score at which each class's event starts
    hop_seconds: float  # between windows
    duration: float | None = None  # seconds of input, when known (a file, the scene)


@dataclasses.dataclass(frozen=True)
class LogEntry:
    event: Event  # as last reported: open (offset still growing) or closed
    reported: float  # time.time() when it opened


class EventLog:
    """The engine's event changes, newest first, for the screen, and every
    closed event of the session for its summary.

    Call it as the engine's ``on_event``. The engine's thread replaces
    :attr:`entries` with a new tuple and the screen's thread reads whichever
    tuple is there: no lock, so neither ever waits for the other.
    """

    def __init__(self, size: int = 200, clock: Callable[[], float] = time.time):
        self.size, self.clock = size, clock
        self.entries: tuple[LogEntry, ...] = ()
        self.closed: list[Event] = []
        self.opened = 0  # events so far, open ones included

    def __call__(self, kind: str, event: Event) -> None:
        entries = self.entries
        self.opened += kind == "open"
        if kind == "close":
            self.closed.append(event)
            for i, entry in enumerate(entries):
                if not entry.event.closed and entry.event.index == event.index and entry.event.onset == event.onset:
                    self.entries = entries[:i] + (LogEntry(event, entry.reported),) + entries[i + 1:]
                    return
        self.entries = (LogEntry(event, self.clock()),) + entries[:self.size - 1]


# -- formatting --------------------------------------------------------------------


def _clock(seconds: float) -> str:
    """Input time as m:ss.s (h:mm:ss past an hour)."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def _ms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    ms = seconds * 1e3
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"


def _rates(source: int, model: int) -> str:
    """The source's sample rate and the model's, in kHz: "48 → 22.05 kHz"."""
    return f"{source / 1000:g} kHz" if source == model else f"{source / 1000:g} → {model / 1000:g} kHz"


# -- the panels --------------------------------------------------------------------
#
# Each panel yields Segments itself, cut to the width rich offers: a dashboard
# redrawn many times a second cannot afford rich's general Table and Text
# layout (as much as the rest of the frame for the event table alone), and
# fixed columns read better anyway.

_GREEN = Style.parse("bold green")
_BOLD = Style.parse("bold")
_DIM = Style.parse("dim")
_HEAD = Style.parse("bold dim")
_KEY = Style.parse("cyan")
_ALERT = Style.parse("bold red")
_WARN = Style.parse("yellow")
_CLIP = Style.parse("bold white on red")
_UNLIT = Style.parse("grey35")


def _fit(text: str, width: int) -> str:
    """``text`` padded, or cut with an ellipsis, to ``width`` cells."""
    if len(text) > width:
        return text[:width - 1] + "…" if width > 0 else ""
    return f"{text:<{width}}"


class ClassBars:
    """One bar per class: smoothed probability, a marker at the class's
    threshold, the name highlighted while its event is open. When the panel
    has fewer rows than classes, the highest-scoring classes are shown."""

    def __init__(self, classes: list[str], scores: np.ndarray, thresholds: np.ndarray, active: set[int]):
        self.classes, self.scores, self.thresholds, self.active = classes, scores, thresholds, active

    def rows(self, height: int) -> list[int]:
        n = len(self.classes)
        if n <= height:
            return list(range(n))
        return sorted(np.argsort(-self.scores, kind="stable")[:height].tolist())

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        name_width = max(4, min(max(map(len, self.classes)), 18, width // 2 - 4))
        bar_width = max(4, width - name_width - 8)  # "● " name " " bar " 0.00"
        for c in self.rows(options.height or len(self.classes)):
            p, threshold, on = float(self.scores[c]), float(self.thresholds[c]), c in self.active
            colour = "green" if on else "yellow" if p >= threshold else "cyan"
            yield Segment("● " if on else "  ", _GREEN)
            yield Segment(_fit(self.classes[c], name_width) + " ", _GREEN if on else None)
            yield from _bar(p, threshold, bar_width, colour)
            yield Segment(f" {p:4.2f}", _BOLD if on else None)
            yield Segment.line()


def _bar(p: float, threshold: float, width: int, colour: str) -> list[Segment]:
    """A bar in eighths of a cell on a dark track, with ┃ where the threshold lies."""
    p = min(max(p, 0.0), 1.0)
    full, part = divmod(round(p * width * 8), 8)
    cells = "█" * full + (_EIGHTHS[part] if part else "")
    cells += " " * (width - len(cells))
    mark = min(width - 1, int(threshold * width))
    fill = Style.parse(f"{colour} on grey15")
    marker = Style.parse(f"bold bright_white on {colour if mark < full else 'grey15'}")
    return [Segment(cells[:mark], fill), Segment("┃", marker), Segment(cells[mark + 1:], fill)]


class EventList:
    """Recent events, newest first; open ones in green, their offset still to come.
    Columns: wall-clock time it opened, label, onset and offset in seconds of
    the input, peak score, duration."""

    def __init__(self, entries: tuple[LogEntry, ...], active: list[Event]):
        self.entries = entries
        self.current = {(e.index, e.onset): e for e in active}

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width, rows = options.max_width, max(1, (options.height or len(self.entries) + 1) - 1)
        label = max(4, width - 35)  # time 8, onset 6, offset 6, score 5, duration 5, five gaps
        yield Segment(f"{'time':<8} {_fit('label', label)} {'onset':>6} {'offset':>6} {'score':>5} {'dur':>5}"[:width],
                      _HEAD)
        yield Segment.line()
        if not self.entries:
            yield Segment(_fit(" " * 9 + "no events yet", width), _DIM)
            yield Segment.line()
        for entry in self.entries[:rows]:
            e = entry.event if entry.event.closed else self.current.get((entry.event.index, entry.event.onset),
                                                                       entry.event)
            offset = f"{e.offset:6.1f}" if e.closed else "     …"
            line = (f"{time.strftime('%H:%M:%S', time.localtime(entry.reported))} {_fit(e.label, label)} "
                    f"{e.onset:6.1f} {offset} {e.score:5.2f} {e.duration:4.1f}s")
            yield Segment(line[:width], None if e.closed else _GREEN)
            yield Segment.line()


class LevelMeter:
    """RMS level in dBFS on a -60..0 scale (green, yellow from -18 dBFS, red
    from -6), the block's peak as a tick, and a warning while clipping."""

    def __init__(self, rms_dbfs: float, peak_dbfs: float, clipping: bool):
        self.rms, self.peak, self.clipping = rms_dbfs, peak_dbfs, clipping

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        figure = f" {self.rms:5.1f} dBFS" if math.isfinite(self.rms) else "  -inf dBFS"
        width = max(4, options.max_width - len(figure) - 5)

        def cell(db: float) -> int:
            return round((min(max(db, LEVEL_FLOOR), 0.0) - LEVEL_FLOOR) / -LEVEL_FLOOR * width)

        lit = cell(self.rms) if math.isfinite(self.rms) else 0
        peak = cell(self.peak) - 1 if math.isfinite(self.peak) else -1
        for i in range(width):
            db = LEVEL_FLOOR + (i + 0.5) / width * -LEVEL_FLOOR
            zone = "red" if db >= -6 else "yellow" if db >= -18 else "green"
            if i < lit:
                yield Segment("█", Style.parse(zone))
            elif i == peak:
                yield Segment("▏", Style.parse(f"bold {zone}"))
            else:
                yield Segment("·", _UNLIT)
        yield Segment(figure, _BOLD)
        yield Segment(" CLIP" if self.clipping else "     ", _CLIP if self.clipping else None)
        yield Segment.line()


class Spectrogram:
    """The newest log-mel frames as coloured half blocks: each character is
    two bands (▀: the upper as foreground, the lower as background), low
    frequencies at the bottom, the newest frame at the right. Bands are
    averaged (or repeated) to fit the height; each column is the loudest of
    ``FRAMES_PER_COLUMN`` frames, so short clicks stay visible."""

    def __init__(self, frames: np.ndarray, db_range: tuple[float, float] = SPECTRUM_DB):
        self.frames, self.db_range = frames, db_range

    def image(self, width: int, height: int) -> np.ndarray:
        """(2 * height, columns) palette indices, row 0 the highest band."""
        frames, n_mels = self.frames, self.frames.shape[1]
        columns = min(width, len(frames) // FRAMES_PER_COLUMN)
        recent = frames[len(frames) - columns * FRAMES_PER_COLUMN:]
        db = recent.reshape(columns, FRAMES_PER_COLUMN, n_mels).max(axis=1)  # (columns, n_mels)
        starts = np.floor(np.linspace(0, n_mels, 2 * height, endpoint=False)).astype(int)
        counts = np.diff(np.append(starts, n_mels)).clip(min=1)
        bands = np.add.reduceat(db, starts, axis=1) / counts  # a repeated start gives that one band: upsampling
        lo, hi = self.db_range
        level = np.clip((bands - lo) / (hi - lo), 0.0, 1.0)
        return np.rint(level * (len(_COLOURS) - 1)).astype(int).T[::-1]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width, height = options.max_width, options.height or 8
        image = self.image(width, height)
        blank = " " * (width - image.shape[1])
        for y in range(height):
            if blank:
                yield Segment(blank, _STYLES[0][0])
            for (top, bottom), run in groupby(zip(image[2 * y].tolist(), image[2 * y + 1].tolist())):
                yield Segment("▀" * len(list(run)), _STYLES[top][bottom])  # one segment per run of a colour
            yield Segment.line()


_STYLES = [[Style(color=top, bgcolor=bottom) for bottom in _COLOURS] for top in _COLOURS]


class Health:
    """How late the tags are, whether audio was lost, and where it comes from and is computed."""

    def __init__(self, snapshot: Snapshot, setup: Setup):
        self.snapshot, self.setup = snapshot, setup

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        s, setup, width = self.snapshot, self.setup, options.max_width

        def row(key: str, key_width: int, *parts: tuple[str, Style | None]) -> RenderResult:
            yield Segment(f"{key:<{key_width}} ", _KEY)
            room = max(1, width - key_width - 1)
            for text, style in parts:
                yield Segment(_fit(text, room) if len(text) > room else text, style)
                room -= len(text)
                if room <= 0:
                    break
            yield Segment.line()

        yield Segment(f"{'latency':<10} {'p50':>7} {'p99':>7}"[:width], _HEAD)
        yield Segment.line()
        for name, label in (("frontend", "frontend"), ("model", "model"), ("end_to_end", "end-to-end")):
            p50, p99 = s.latency[name]
            yield from row(label, 10, (f"{_ms(p50):>7} {_ms(p99):>7}", None))
        yield from row("dropped", 7, (f"{s.dropped_samples}", _ALERT if s.dropped_samples else None),
                       (f" · buffer {s.buffer_fill:.0%}", _WARN if s.buffer_fill > 0.5 else None),
                       (f" · {s.overflows} overflows" if s.overflows else "", _ALERT))
        yield from row("input", 7, (setup.source, None))
        yield from row("rates", 7, (_rates(setup.source_rate, setup.model_rate), None))
        yield from row("model", 7, (f"{setup.model_name} on {setup.compute}", None))


# -- the whole screen --------------------------------------------------------------


class Dashboard:
    """The whole screen, rendered from a fresh snapshot every time it is drawn,
    so rich's Live can refresh it from its own thread as often as it likes.

    ``snapshot`` is usually :meth:`Engine.snapshot`; tests pass scripted ones.
    ``clock`` (monotonic seconds) times the clipping warning's hold.
    """

    def __init__(self, snapshot: Callable[[], Snapshot], setup: Setup, log: EventLog,
                 clock: Callable[[], float] = time.monotonic):
        self.snapshot, self.setup, self.log, self.clock = snapshot, setup, log, clock
        self._clipped, self._clipped_at = 0, -math.inf

    def _clipping(self, s: Snapshot) -> bool:
        now = self.clock()
        if s.clipped_samples > self._clipped:
            self._clipped_at = now
        self._clipped = s.clipped_samples
        return now - self._clipped_at < CLIP_HOLD

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width, height = options.max_width, options.height or console.height
        if width < MIN_WIDTH or height < MIN_HEIGHT:
            yield Text(f"The dashboard needs a terminal of at least {MIN_WIDTH} x {MIN_HEIGHT}; "
                       f"this one is {width} x {height}.", style="bold yellow")
            return
        for line in self.lines(self.snapshot(), console, width, height):
            yield from line
            yield Segment.line()

    def lines(self, s: Snapshot, console: Console, width: int, height: int) -> list[list[Segment]]:
        """The screen as ``height`` lines of ``width`` cells: a header, then
        two columns of boxed panels. The boxes are drawn here rather than with
        rich's Layout and Panel, which pass every segment through several more
        layers: a third of the cost of a frame."""
        setup = self.setup
        clipping = self._clipping(s)
        body = height - 1
        class_rows = min(len(s.classes), body - 2 - 6)  # leave the event log 3 rows at least
        shown = "" if class_rows == len(s.classes) else f" (top {class_rows} of {len(s.classes)})"
        active = {e.index for e in s.active}
        right = min(max(30, width * 3 // 8), SPECTROGRAM_MAX[0] + 2)
        left = width - right
        spectrogram_rows = min(body - 3 - 10, SPECTROGRAM_MAX[1] + 2)
        health_rows = body - 3 - spectrogram_rows
        left_column = (
            _box(console, ClassBars(s.classes, s.smoothed, setup.thresholds, active), left, class_rows + 2,
                 f"classes{shown}", f"every {setup.hop_seconds:.2f} s · ┃ threshold")
            + _box(console, EventList(self.log.entries, s.active), left, body - class_rows - 2, "events"))
        right_column = (
            _box(console, LevelMeter(s.level_dbfs, s.peak_dbfs, clipping), right, 3, "input level",
                 f"clipped {s.clipped_samples} samples" if s.clipped_samples else "",
                 _BORDER_ALERT if clipping else _BORDER)
            + _box(console, Spectrogram(s.frames), right, spectrogram_rows, "log-mel", padding=0)
            + _box(console, Health(s, setup), right, health_rows, "health"))
        return [self._header(s, width)] + [a + b for a, b in zip(left_column, right_column)]

    def _header(self, s: Snapshot, width: int) -> list[Segment]:
        state = " ● live " if s.running else " ■ ended "
        position = _clock(s.seconds) + (f" / {_clock(self.setup.duration)}" if self.setup.duration else "")
        info = f"{position}   {s.windows} windows   {self.log.opened} events"
        hint = "Ctrl-C stops "
        title = " streamtag live "
        room = width - len(title) - len(state) - len(hint)
        return [Segment(title, _TITLE_BAR), Segment(state, _GREEN if s.running else _BOLD),
                Segment(_fit(info, room), None), Segment(hint, _DIM)]


_BORDER = Style.parse("blue")
_BORDER_ALERT = Style.parse("red")
_TITLE_BAR = Style.parse("bold reverse")


def _box(console: Console, renderable, width: int, height: int, title: str, subtitle: str = "",
         border: Style = _BORDER, padding: int = 1) -> list[list[Segment]]:
    """``renderable`` in a rounded box of exactly ``width`` x ``height`` cells,
    the title at the top left and the subtitle at the bottom right."""
    inner = width - 2 - 2 * padding
    lines = console.render_lines(renderable, console.options.update_dimensions(inner, height - 2), pad=True)
    title = _fit(title, max(0, width - 6)).rstrip()
    subtitle = _fit(subtitle, max(0, width - 6)).rstrip()
    top = [Segment("╭─ ", border), Segment(title, _BOLD), Segment(" " + "─" * (width - len(title) - 5) + "╮", border)]
    tail = f" {subtitle} ─╯" if subtitle else "─╯"
    bottom = [Segment("╰" + "─" * (width - 1 - len(tail)) + tail, border)]
    side = " " * padding
    return [top] + [[Segment("│" + side, border), *line, Segment(side + "│", border)] for line in lines] + [bottom]


def show(engine: Engine, source: Source, setup: Setup, console: Console, *, on_window=None, on_event=None,
         max_seconds: float | None = None, refresh_per_second: float = REFRESH_PER_SECOND) -> tuple[Summary, EventLog]:
    """Run ``source`` through ``engine`` with the dashboard on ``console``'s
    alternate screen, which is left (the terminal restored) however the run
    ends, Ctrl-C included. ``on_window`` and ``on_event`` are passed on to the
    engine (every event change also goes to the returned log)."""
    log = EventLog()

    def events(kind: str, event: Event) -> None:
        log(kind, event)
        if on_event is not None:
            on_event(kind, event)

    dashboard = Dashboard(engine.snapshot, setup, log)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH)
    done = threading.Event()

    def redraw(live: Live) -> None:
        period = 1.0 / refresh_per_second
        while not done.wait(0.7 * period):
            # then draw just after the engine has caught up with its input (within the rest of the period, live
            # blocks come every 23 ms), so that the few milliseconds a frame holds the interpreter fall between
            # blocks rather than on a window's way to its scores
            engine.wait_caught_up(timeout=period)
            live.refresh()

    try:
        # our own drawing thread rather than rich's auto-refresh, whose thread Live.stop() does not join: one
        # still drawing when the process exits dies in the middle of numpy's C++ and aborts the process
        with Live(dashboard, console=console, screen=True, auto_refresh=False, redirect_stdout=False,
                  redirect_stderr=False) as live:
            drawer = threading.Thread(target=redraw, args=(live,), name="streamtag-dashboard", daemon=True)
            drawer.start()
            try:
                summary = engine.run(source, on_window=on_window, on_event=events, max_seconds=max_seconds)
            finally:
                done.set()
                drawer.join()
    finally:
        sys.setswitchinterval(switch)
    return summary, log


def session_table(events: list[Event], classes: list[str]) -> Table:
    """What a session found, per class in the model's order: how many events,
    their total and longest duration, and the highest score reached."""
    table = Table(title="events this session", title_justify="left", title_style="bold")
    table.add_column("class")
    for name in ("events", "total", "longest", "peak"):
        table.add_column(name, justify="right")
    for c, label in enumerate(classes):
        mine = [e for e in events if e.index == c]
        if mine:
            durations = [e.duration for e in mine]
            table.add_row(label, str(len(mine)), f"{sum(durations):.1f} s", f"{max(durations):.1f} s",
                          f"{max(e.score for e in mine):.2f}")
    return table
