"""The streaming engine: one path from any source to scored windows and events.

A source writes blocks into a :class:`~streamtag.ringbuffer.RingBuffer`; the
engine reads them on the caller's thread and, for each block:

1. downmixes to mono and rejects NaN or infinite samples, naming the position;
2. resamples to the model's rate with soxr's streaming resampler (its output
   does not depend on how the input is chunked, and equals the whole-file
   resampling :func:`streamtag.audio.load_audio` does for training);
3. pushes the result through the :class:`~streamtag.frontend.Frontend`;
4. cuts a window of ``window_frames`` frames every ``hop_frames`` frames and
   scores all windows of the block in one batch;
5. smooths each class over time and tracks events (:mod:`streamtag.events`).

Window ``i`` ends at frame ``t = window_frames - 1 + i * hop_frames``, so it
covers model-rate samples ``[(t - window_frames + 1) * hop, t * hop + n_fft)``:
its times in seconds of the input come from those sample positions, never
from a clock. If a live source drops audio, the engine closes open events at
the gap and starts a new stretch at the position where audio resumes, so times
after a gap stay exact too. A window's score describes one moment in it, the
part the network was trained to describe (``model.score_at``: its centre for
most models, its last frames for one trained without look-ahead); events are
placed there. At the end of a stretch the smoothing filter's lagging values
are flushed and the last speaks for the audio after it, so an event sounding
to the end of a recording lasts to its end.

A caller that has the audio in its own hands (the Python API's streams, a
server's connections) pushes blocks instead: :meth:`Engine.open`,
:meth:`Engine.push`, :meth:`Engine.close` run the same steps without a ring or
a thread. A server with many streams of one model pushes with ``score=False``
and scores the windows of all of them in one network call per tick
(:meth:`Engine.score_together`); each stream's scores, events and times are
the same as when it is tagged alone.

The engine knows nothing of screens or file formats: sinks receive
:class:`WindowScores` and :class:`~streamtag.events.Event` objects through
callbacks, and a dashboard on another thread reads :meth:`Engine.snapshot`.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Callable, Iterable

import numpy as np
import soxr

from streamtag.audio import check_finite, check_stream_format, to_mono
from streamtag.errors import NonFiniteAudioError, StreamtagError
from streamtag.events import Decoding, Event, EventTracker, Smoother
from streamtag.frontend import Frontend
from streamtag.ringbuffer import ArrivalMarks, RingBuffer
from streamtag.scorer import CHUNK_FRAMES, WindowScorer
from streamtag.sources import Source, as_float_samples

CLIP_LEVEL = 0.999  # |sample| at or above this is taken as clipped (16-bit full scale is 0.99997)

OnWindow = Callable[["WindowScores"], None]
OnEvent = Callable[[str, Event], None]  # ("open" | "close", event)


@dataclasses.dataclass(frozen=True)
class WindowScores:
    """One scored window. ``start``/``end`` are seconds of the input, ``at`` the
    moment its score describes (its centre for most models); ``arrival`` and
    ``done`` are ``time.perf_counter()`` stamps of when its last sample entered
    the ring and when its scores were ready."""

    index: int
    start: float
    end: float
    at: float
    scores: np.ndarray  # (C,) probabilities from the model
    smoothed: np.ndarray  # (C,) after per-class smoothing
    arrival: float
    done: float

    @property
    def latency(self) -> float:
        return self.done - self.arrival


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a dashboard shows, copied at one instant. Latencies are (p50, p99)
    in seconds over the recent past, NaN before any measurement."""

    source: str
    classes: list[str]
    running: bool
    seconds: float  # input seconds read so far
    windows: int
    scores: np.ndarray  # newest window's probabilities
    smoothed: np.ndarray  # newest smoothed probabilities
    active: list[Event]  # events open now
    level_dbfs: float  # RMS level of the newest block
    peak_dbfs: float  # highest absolute sample of the newest block
    clipped_samples: int  # input samples at full scale so far (CLIP_LEVEL): the input is clipping
    frames: np.ndarray  # (history, n_mels) newest log-mel frames, oldest first
    latency: dict[str, tuple[float, float]]  # "frontend", "model", "end_to_end"
    dropped_samples: int
    overflows: int
    buffer_fill: float


@dataclasses.dataclass(frozen=True)
class Summary:
    """What one :meth:`Engine.run` did."""

    source: str
    sample_rate: int
    seconds: float  # input seconds read (dropped ones included)
    windows: int
    events: int
    dropped_samples: int
    gaps: int
    overflows: int
    stopped: bool  # ended by stop() or max_seconds rather than by the end of the input
    clip_scores: np.ndarray | None  # mean window probabilities (probability voting), None without windows
    wall_seconds: float
    error: StreamtagError | None  # what cut the input short (truncation, NaN samples), after tagging what came

    @property
    def dropped_seconds(self) -> float:
        return self.dropped_samples / self.sample_rate


class LatencyLog:
    """The last ``size`` durations of one kind, for percentiles without growth."""

    def __init__(self, size: int = 1000):
        self._values = np.full(size, np.nan)
        self._count = 0

    def add(self, seconds: float) -> None:
        self._values[self._count % len(self._values)] = seconds
        self._count += 1

    def extend(self, seconds: np.ndarray) -> None:
        size = len(self._values)
        seconds = seconds[-size:]
        self._values[(self._count + np.arange(len(seconds))) % size] = seconds
        self._count += len(seconds)

    def values(self) -> np.ndarray:
        """The durations kept (the last ``size``), in no particular order."""
        return self._values[:min(self._count, len(self._values))].copy()

    def percentiles(self) -> tuple[float, float]:
        if not self._count:
            return math.nan, math.nan
        p50, p99 = np.nanpercentile(self._values, [50, 99])
        return float(p50), float(p99)


class Engine:
    """Tags audio from any :class:`~streamtag.sources.Source` with one model.

    ``model`` is a :class:`~streamtag.modelfile.TaggerModel` (or anything with
    its ``classes``, ``spec``, ``window_frames``, ``hop_frames``,
    ``thresholds`` and ``predict``; ``score_at`` is 0.5 when it has none).
    ``hop_frames`` defaults to the model's; ``thresholds`` (one value or one per class) to the model's; the decoding
    settings (``smooth``, ``hysteresis``, ``min_duration``, ``filter``, ``max_gap``: see
    :class:`~streamtag.events.Decoding`) to those the model file carries (tuned
    on its validation scenes), else Decoding's defaults. A class's event ends
    when its smoothed score drops below ``threshold - hysteresis``.
    ``smooth`` and ``min_duration`` (one value or one per class) are in seconds; ``ring_seconds`` is how much
    audio a live source may get ahead of the engine before the oldest is dropped;
    ``read_seconds`` is the most audio taken from the ring at once: a read takes
    only what has already arrived, so a large value adds no latency live, while
    a file's windows get scored in large batches (16 s makes batches of ~170
    windows at the default model's hop, where the dense layers' matrix products
    run ~1.6x faster per window than at 4 s; live, a read is at most half the ring).
    ``meters`` keeps what only a dashboard shows (the input's level, peak and
    clipping, the last ``history_frames`` log-mel frames, the latency
    percentiles); a server's many streams go without.
    """

    def __init__(self, model, *, hop_frames: int | None = None, thresholds=None, smooth: float | None = None,
                 hysteresis: float | None = None, min_duration=None, filter: str | None = None,
                 max_gap: float | None = None,
                 ring_seconds: float = 10.0, read_seconds: float = 16.0, history_frames: int = 101,
                 meters: bool = True):
        self.model = model
        # a TaggerModel's scorer computes each frame's first layer once; anything with predict(windows) works too
        self._scorer = model.scorer() if hasattr(model, "scorer") else WindowScorer(model)
        self.spec = model.spec
        self.classes = list(model.classes)
        self.window_frames = int(model.window_frames)
        self.score_at = float(getattr(model, "score_at", 0.5))  # where in a window the moment it describes lies
        self.hop_frames = int(model.hop_frames if hop_frames is None else hop_frames)
        if self.hop_frames < 1:
            raise StreamtagError(f"hop must be at least 1 frame, got {self.hop_frames}")
        on = np.asarray(model.thresholds if thresholds is None else thresholds, dtype=np.float64)
        on = np.broadcast_to(on, (len(self.classes),))
        if not ((on >= 0) & (on <= 1)).all():
            raise StreamtagError("thresholds must lie in [0, 1]")
        decoding = getattr(model, "decoding", None) or Decoding()
        try:
            asked = {k: v for k, v in dict(filter=filter, smooth=smooth, hysteresis=hysteresis,
                                           min_duration=min_duration, max_gap=max_gap).items() if v is not None}
            self.decoding = dataclasses.replace(decoding, **asked)
            min_durations = self.decoding.min_durations(len(self.classes))
        except ValueError as exc:
            raise StreamtagError(str(exc)) from None
        self.hop_seconds = self.spec.seconds(self.hop_frames)
        self.smooth_windows = max(1, round(self.decoding.smooth / self.hop_seconds))
        self.tracker = EventTracker(self.classes, on, np.maximum(on - self.decoding.hysteresis, 0.0), min_durations,
                                    self.decoding.max_gap)
        self.smoother = Smoother(len(self.classes), self.smooth_windows, self.decoding.filter)
        self.frontend = Frontend(self.spec, history=1)
        self.frontend.push(np.zeros(self.spec.n_fft, dtype=np.float32))  # load the compiled kernel (~0.8 s) now,
        # not in the first live window, where it would be the end-to-end latency's p99 for minutes; reset below
        self.ring_seconds, self.read_seconds = ring_seconds, read_seconds
        self.latency = {name: LatencyLog() for name in ("frontend", "model", "end_to_end")}
        self.meters = meters
        self._frames = np.full((history_frames if meters else 1, self.spec.n_mels), self.spec.floor_db,
                               dtype=np.float32)
        self._lock = threading.Lock()
        self._caught_up = threading.Condition()  # notified each time the engine has dealt with all it read
        self._reads = 0
        self._stopping = False
        self._running = False
        self._ring: RingBuffer | None = None
        self._source: Source | None = None
        self._reset_run()

    # -- public --------------------------------------------------------------

    def run(self, source: Source, on_window: OnWindow | None = None, on_event: OnEvent | None = None,
            max_seconds: float | None = None) -> Summary:
        """Tag ``source`` to its end, until :meth:`stop`, or for ``max_seconds``
        of input, and say what happened. A fault of the input found part-way (a
        truncated stream, NaN samples) does not raise: everything before it is
        tagged, open events are closed, and it is returned as ``Summary.error``.
        A source that cannot start raises. Can be called again for the next source."""
        self._begin(source.name, source.sample_rate, on_window, on_event)
        self._source = source
        rate = source.sample_rate
        read = max(1, int(self.read_seconds * rate))
        if source.live:  # the ring's size bounds how far behind live audio the engine may fall; a read is half of it
            capacity = max(int(self.ring_seconds * rate), 2)
            read = min(read, capacity // 2)
        else:
            capacity = 2 * read
        ring = self._ring = RingBuffer(capacity, source.channels)
        self._arrivals = ring.arrivals
        limit = None if max_seconds is None else max(0, round(max_seconds * rate))
        block = np.empty((read, source.channels), dtype=np.float32)
        error: StreamtagError | None = None
        stopped = False
        t0 = time.perf_counter()
        self._stopping, self._running = False, True
        try:
            source.start(ring)  # a device that cannot open raises here, after the finally below
            while True:
                if self._stopping and not stopped:  # take what already arrived, then end
                    source.stop()
                    ring.cancel()
                    stopped = True
                n, position = ring.read(block, timeout=0.05)
                if n == 0:
                    if ring.finished or stopped:
                        break
                    continue
                if limit is not None and position + n >= limit:
                    if limit > position:
                        self._feed(block[:limit - position], position)
                    stopped = True
                    break
                self._feed(block[:n], position)
                with self._caught_up:
                    self._reads += 1
                    self._caught_up.notify_all()
            if not stopped and ring.error is not None:
                if not isinstance(ring.error, StreamtagError):
                    raise ring.error  # a bug, not the input's fault
                error = ring.error
        except NonFiniteAudioError as exc:
            error = exc
        finally:
            source.stop()
            ring.cancel()
            self._running = False
        self._stopped = stopped
        self._end_stretch()
        return self._summary(time.perf_counter() - t0, error, ring.dropped, source.overflows)

    def open(self, sample_rate: int, channels: int = 1, name: str = "stream", on_window: OnWindow | None = None,
             on_event: OnEvent | None = None) -> None:
        """Start a stream whose audio the caller pushes (:meth:`push`) at
        ``sample_rate`` Hz with ``channels`` channels; :meth:`close` ends it.
        ``on_window`` and ``on_event`` are called from :meth:`push` as in :meth:`run`."""
        sample_rate, channels = check_stream_format(sample_rate, channels)
        self._begin(name, sample_rate, on_window, on_event)
        self._channels = channels
        self._arrivals = ArrivalMarks(64)
        self._position = 0  # input frames pushed or skipped
        self._dropped = 0
        self._opened = time.perf_counter()
        self._running = True

    def push(self, block: np.ndarray, score: bool = True, arrival: float | None = None) -> None:
        """Tag the stream's next ``block`` of samples, ``(frames, channels)`` (or
        ``(frames,)`` for one channel): float in [-1, 1], or int16, int32 or uint8
        (:func:`~streamtag.sources.as_float_samples`). With ``score=False`` the
        windows it completes wait for :meth:`score_pending` or
        :meth:`score_together` (their events and callbacks come then).
        ``arrival`` is the ``perf_counter()`` time the block arrived (now by
        default), from which latency is measured. Raises
        :class:`~streamtag.errors.NonFiniteAudioError` on a NaN or infinite
        sample after tagging what came before it; the stream stays usable."""
        if self._arrivals is None or self._source is not None:
            raise StreamtagError("push() needs a stream started with open()")
        block = as_float_samples(block, self._channels)
        if not len(block):
            return
        self._arrivals.mark(self._position + len(block), arrival)
        position, self._position = self._position, self._position + len(block)
        try:
            self._feed(block, position, defer=not score)
        except NonFiniteAudioError:
            self._position = self._read_frames  # what follows the bad sample is not tagged: a gap
            self._dropped += position + len(block) - self._read_frames
            raise

    def skip(self, frames: int) -> None:
        """``frames`` frames of the stream were lost before the next block (a
        client too slow to keep up, a network gap): events open now close, the
        next block starts a new stretch at its true time, and the loss counts
        in the summary's ``dropped_samples``."""
        if frames < 0:
            raise StreamtagError(f"cannot skip {frames} frames")
        self._position += int(frames)
        self._dropped += int(frames)

    @property
    def pending_windows(self) -> int:
        """Windows cut but not yet scored (pushed with ``score=False``)."""
        return sum(len(ends) for ends in self._pending_ends)

    def score_pending(self) -> None:
        """Score the windows pushed with ``score=False`` now, alone."""
        if self._pending_frames:
            frames, ends = self._take_pending()
            t0 = time.perf_counter()
            self._finish(ends, self._scorer.push(frames, ends), t0)

    @staticmethod
    def score_together(engines: list["Engine"]) -> int:
        """Score the waiting windows of ``engines`` (streams of one model) in one
        network call, then decode each stream's as :meth:`push` would have; the
        number of windows scored. Each stream's scores equal those it gets alone
        up to float rounding (about 1e-6)."""
        ready = [e for e in engines if e._pending_frames]
        if not ready:
            return 0
        taken = [e._take_pending() for e in ready]
        started = time.perf_counter()
        scores = type(ready[0]._scorer).push_together([e._scorer for e in ready], [f for f, _ in taken],
                                                      [ends for _, ends in taken])
        for engine, (_, ends), s in zip(ready, taken, scores):
            engine._finish(ends, s, started)
        return sum(len(ends) for _, ends in taken)

    def close(self) -> Summary:
        """End a pushed stream: score what waits, flush the resampler, close
        open events; what the stream did."""
        if self._arrivals is None or self._source is not None:
            raise StreamtagError("close() needs a stream started with open()")
        self._end_stretch()
        self._running = False
        summary = self._summary(time.perf_counter() - self._opened, None, self._dropped, 0)
        self._arrivals = None
        return summary

    def stop(self) -> None:
        """Ask :meth:`run` to end soon: audio already received is still tagged
        and open events are closed. Safe from a signal handler or another thread."""
        self._stopping = True

    def wait_caught_up(self, timeout: float) -> bool:
        """Wait until the engine has dealt with its next read of audio, or ``timeout``
        seconds; say whether it did. Live, that is the moment the engine has the
        longest until its next block: another thread that holds the interpreter
        for a while (the dashboard drawing a frame) delays the audio path least
        if it starts then."""
        with self._caught_up:
            reads = self._reads
            return self._caught_up.wait_for(lambda: self._reads != reads, timeout)

    def snapshot(self) -> Snapshot:
        """The current state, for a dashboard polling from another thread."""
        ring, source = self._ring, self._source
        latency = {name: log.percentiles() for name, log in self.latency.items()}  # outside the lock the engine takes
        with self._lock:
            return Snapshot(
                source=self._name,
                classes=self.classes,
                running=self._running,
                seconds=self._read_frames / self._rate if self._rate else 0.0,
                windows=self._windows,
                scores=self._last_scores,
                smoothed=self._last_smoothed,
                active=self.tracker.active,
                level_dbfs=self._level_dbfs,
                peak_dbfs=self._peak_dbfs,
                clipped_samples=self._clipped,
                frames=np.roll(self._frames, -self._frames_slot, axis=0),
                latency=latency,
                dropped_samples=ring.dropped if ring else self._dropped,
                overflows=source.overflows if source else 0,
                buffer_fill=ring.fill if ring else 0.0,
            )

    # -- one run -------------------------------------------------------------

    def _begin(self, name: str, rate: int, on_window: OnWindow | None, on_event: OnEvent | None) -> None:
        self._reset_run()
        self._name, self._rate = name, rate
        self._on_window, self._on_event = on_window, on_event
        self._resampler = None if rate == self.spec.sample_rate else soxr.ResampleStream(
            rate, self.spec.sample_rate, 1, dtype="float32", quality="VHQ")

    def _reset_run(self) -> None:
        n = len(self.classes)
        self._name, self._rate = "", 0
        self._source, self._ring, self._arrivals = None, None, None
        self._dropped = 0
        self._pending_frames: list[np.ndarray] = []  # frames cut with score=False, and the windows they end
        self._pending_ends: list[np.ndarray] = []
        self._read_frames = 0  # input frames read, i.e. the position after the newest block
        self._windows = 0
        self._events = 0
        self._gaps = 0
        self._stopped = False
        self._score_sum = np.zeros(n, dtype=np.float64)
        self._last_scores = np.zeros(n, dtype=np.float32)
        self._last_smoothed = np.zeros(n, dtype=np.float32)
        self._level_dbfs = self._peak_dbfs = -math.inf
        self._clipped = 0
        with self._lock:
            self._frames[:] = self.spec.floor_db
            self._frames_slot = 0
        self._resampler = None
        self._on_window: OnWindow | None = None
        self._on_event: OnEvent | None = None
        with self._lock:
            self.tracker.reset()
        self._start_stretch(0)

    def _start_stretch(self, position: int) -> None:
        """Begin a stretch of contiguous audio at input frame ``position``."""
        self._stretch_start = position  # input frame where this stretch begins
        self._model_samples = 0  # model-rate samples pushed in this stretch
        self._stretch_windows = 0
        self._scored_until = 0.0  # input seconds: the end of the span the latest score speaks for
        self._next_end = self.window_frames - 1  # frame index (in the stretch) the next window ends at
        self._scorer.reset()
        self.frontend.reset()
        self.smoother.reset()
        if self._resampler is not None:
            self._resampler.clear()

    def _feed(self, block: np.ndarray, position: int, defer: bool = False) -> None:
        if position != self._read_frames:  # audio was dropped: what follows is a new stretch
            self._end_stretch()
            self._gaps += 1
            self._start_stretch(position)
        mono = to_mono(block)
        try:
            check_finite(mono, offset=position, rate=self._rate, where=self._name)
        except NonFiniteAudioError as exc:
            mono = mono[:exc.position - position]  # tag what came before the bad sample
            self._read_frames = exc.position
            self._process(mono)
            self.score_pending()
            raise
        self._read_frames = position + len(mono)
        self._process(mono, defer=defer)
        if not self.meters:
            return
        # the meters after the scores: live, each numpy call costs tens of us while the caches are cold
        rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64)))) if len(mono) else 0.0
        self._level_dbfs = 20 * math.log10(rms) if rms > 0 else -math.inf
        magnitude = np.abs(block)  # before the downmix: one clipping channel is enough to distort
        peak = float(magnitude.max()) if len(block) else 0.0
        self._peak_dbfs = 20 * math.log10(peak) if peak > 0 else -math.inf
        self._clipped += int(np.count_nonzero(magnitude >= CLIP_LEVEL))

    def _process(self, mono: np.ndarray, last: bool = False, defer: bool = False) -> None:
        """Resample, frame, cut and score the windows ``mono`` completes; with
        ``defer``, keep the frames and windows for a later scoring instead."""
        t0 = time.perf_counter()
        x = mono if self._resampler is None else self._resampler.resample_chunk(mono, last=last)
        frames = self.frontend.push(x)
        if self.meters:
            self.latency["frontend"].add(time.perf_counter() - t0)
        self._model_samples += len(x)
        if not len(frames):
            return
        ends = np.arange(self._next_end, self.frontend.frames_emitted, self.hop_frames)
        if len(ends):
            self._next_end = int(ends[-1]) + self.hop_frames
        if defer or self._pending_frames:  # behind windows already waiting, never ahead of them
            self._pending_frames.append(frames)
            self._pending_ends.append(ends)
            if not defer or sum(len(f) for f in self._pending_frames) > CHUNK_FRAMES:
                self.score_pending()  # a bound on what a stream may hold back
        else:
            t1 = time.perf_counter()
            self._finish(ends, self._scorer.push(frames, ends), t1)  # (len(ends), C)
        if not self.meters:
            return
        with self._lock:  # the dashboard's spectrogram, after the scores for the same reason as the meters
            for frame in frames[-len(self._frames):, 0]:
                self._frames[self._frames_slot] = frame
                self._frames_slot = (self._frames_slot + 1) % len(self._frames)

    def _take_pending(self) -> tuple[np.ndarray, np.ndarray]:
        frames, ends = self._pending_frames, self._pending_ends
        self._pending_frames, self._pending_ends = [], []
        return (frames[0] if len(frames) == 1 else np.concatenate(frames),
                ends[0] if len(ends) == 1 else np.concatenate(ends))

    def _finish(self, ends: np.ndarray, scores: np.ndarray, started: float) -> None:
        """Decode the scores of the windows ending at ``ends``, scored since ``started``."""
        done = time.perf_counter()
        if len(ends):
            if self.meters:
                self.latency["model"].add(done - started)
            self._score(ends, scores, done)

    def _score(self, ends: np.ndarray, scores: np.ndarray, done: float) -> None:
        spec, rate = self.spec, self._rate
        t0 = self._stretch_start / rate  # input seconds where the stretch begins
        sr = spec.sample_rate
        half_hop = self.hop_seconds / 2
        stops = ends * spec.hop_length + spec.n_fft  # model-rate samples of the stretch
        last_inputs = self._stretch_start + (stops * rate + sr - 1) // sr - 1  # ceil, in integers
        arrivals = self._arrivals.times(last_inputs)
        firsts = stops - ((self.window_frames - 1) * spec.hop_length + spec.n_fft)
        ats = t0 + (firsts + self.score_at * (stops - firsts)) / sr  # the moments the scores describe
        smoothed, centres = self.smoother.push(scores, ats)
        if self.meters:
            self.latency["end_to_end"].extend(done - arrivals)
        # summed in window order, so a clip's mean does not depend on how its windows were split into reads
        self._score_sum = self._score_sum + scores[0] if len(scores) == 1 else \
            np.cumsum(np.concatenate([self._score_sum[None], scores]), axis=0)[-1]
        with self._lock:
            self._last_scores, self._last_smoothed = scores[-1], smoothed[-1]
            changes = self.tracker.update(centres - half_hop, centres + half_hop, smoothed)
        self._stretch_windows += len(scores)
        self._scored_until = float(centres[-1] + half_hop)
        if self._on_window is None:
            self._windows += len(scores)
            self._emit(change[1:] for change in changes)
            return
        caused: dict[int, list[tuple[str, Event]]] = {}
        for i, kind, event in changes:
            caused.setdefault(i, []).append((kind, event))
        for i, (start, stop, at, p, q, arrival) in enumerate(zip((t0 + firsts / sr).tolist(),
                                                                 (t0 + stops / sr).tolist(), ats.tolist(),
                                                                 scores, smoothed, arrivals.tolist())):
            self._on_window(WindowScores(self._windows, start, stop, at, p, q, arrival, done))
            self._windows += 1
            self._emit(caused.get(i, ()))  # after the window that caused them

    def _emit(self, changes: Iterable[tuple[str, Event]]) -> None:
        for kind, event in changes:
            self._events += kind == "close"
            if self._on_event is not None:
                self._on_event(kind, event)

    def _end_stretch(self) -> None:
        """The audio of this stretch is complete: flush the resampler, score a
        clip shorter than one window as if padded with silence, flush the
        smoother and let its last value speak for the rest of the stretch,
        close events."""
        self.score_pending()
        if self._resampler is not None and self._read_frames > self._stretch_start:
            self._process(np.empty(0, dtype=np.float32), last=True)
        if self._stretch_windows == 0 and self._model_samples > 0:
            need = (self.window_frames - 1) * self.spec.hop_length + self.spec.n_fft - self._model_samples
            resampler, self._resampler = self._resampler, None  # the padding is at the model's rate already
            self._process(np.zeros(max(need, 0), dtype=np.float32))
            self._resampler = resampler
        end = self._read_frames / self._rate if self._rate else 0.0
        with self._lock:
            changes = []
            if self._stretch_windows and end > self._scored_until:
                # the smoothed scores owed to the last windows' moments (the filter's lag), each over the
                # windows from its moment on; then, as no window is centred in the stretch's last half window
                # (0.47 s at 41 frames), the last of them speaks for it: an event still sounding lasts to the
                # end (soundscapes place many events to end exactly with the recording)
                values, edges = self.smoother.flush_spans(self._scored_until, end, self._last_smoothed)
                changes = [change[1:] for change in self.tracker.update(edges[:-1], edges[1:], values)]
            changes += self.tracker.close_all()
        self._emit(changes)

    def _summary(self, wall: float, error: StreamtagError | None, dropped: int, overflows: int) -> Summary:
        return Summary(
            source=self._name, sample_rate=self._rate, seconds=self._read_frames / self._rate,
            windows=self._windows, events=self._events, dropped_samples=dropped, gaps=self._gaps,
            overflows=overflows, stopped=self._stopped,
            clip_scores=(self._score_sum / self._windows).astype(np.float32) if self._windows else None,
            wall_seconds=wall, error=error)
