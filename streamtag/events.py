"""From a sequence of window scores to sound events with onsets and offsets.

Two steps, each per class and each causal, so they run as the scores arrive:

1. :class:`Smoother` takes the mean or the median of the last ``k`` windows'
   probabilities. Either lags: its value describes the middle of the windows
   it covers, so that is the time it is attributed to. Event times stay exact
   instead of drifting late by the smoothing. A median keeps an onset sharp
   where a mean ramps, and ignores a lone outlier window. At a stream's end
   the lag is paid back: the last windows' moments get values from the
   windows that remain (:meth:`Smoother.flush`).
2. :class:`EventTracker` turns smoothed scores into events: a class turns on
   when its score reaches its threshold and off when it falls below the
   threshold minus the hysteresis (so a score hovering at the threshold does
   not chatter), and an event shorter than the minimum duration is dropped.

Times are whatever the caller attributes each score to; the engine gives
seconds of the input, computed from sample positions.

:class:`Decoding` holds these steps' settings; a model file carries the ones
tuned on its validation scenes, and the engine uses them unless told otherwise.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FILTERS = ("mean", "median")


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How window scores become events: the filter (``"mean"`` or ``"median"``) over
    ``smooth`` seconds of windows, the ``hysteresis`` below a class's threshold at which
    its event ends, the shortest event kept, in seconds (one value, or one per class), and
    the longest gap below threshold an event bridges."""

    filter: str = "mean"
    smooth: float = 0.3
    hysteresis: float = 0.1
    min_duration: float | tuple[float, ...] = 0.25
    max_gap: float = 0.0  # seconds below threshold that an event bridges

    def __post_init__(self):
        if self.filter not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got {self.filter!r}")
        if not (isinstance(self.smooth, (int, float)) and 0 <= self.smooth <= 60):
            raise ValueError(f"smoothing must lie in 0-60 s, got {self.smooth!r}")
        if not (isinstance(self.hysteresis, (int, float)) and 0 <= self.hysteresis <= 1):
            raise ValueError(f"hysteresis must lie in [0, 1], got {self.hysteresis!r}")
        if not (isinstance(self.max_gap, (int, float)) and 0 <= self.max_gap <= 60):
            raise ValueError(f"the gap an event bridges must lie in 0-60 s, got {self.max_gap!r}")
        durations = np.atleast_1d(np.asarray(self.min_duration, dtype=np.float64))
        if durations.ndim != 1 or not len(durations) or not (np.isfinite(durations) & (durations >= 0)).all():
            raise ValueError(f"minimum durations must be seconds >= 0, got {self.min_duration!r}")
        if not isinstance(self.min_duration, (int, float)):
            object.__setattr__(self, "min_duration", tuple(float(d) for d in durations))

    def min_durations(self, n_classes: int) -> np.ndarray:
        """``(n_classes,)`` minimum durations."""
        durations = np.atleast_1d(np.asarray(self.min_duration, dtype=np.float64))
        if len(durations) not in (1, n_classes):
            raise ValueError(f"need 1 or {n_classes} minimum durations, got {len(durations)}")
        return np.broadcast_to(durations, (n_classes,)).copy()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"min_duration": self.min_duration if isinstance(self.min_duration, float)
                                           else list(self.min_duration)}

    @classmethod
    def from_dict(cls, d: dict) -> "Decoding":
        if not isinstance(d, dict) or set(d) - {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"decoding must be a dict of {', '.join(f.name for f in dataclasses.fields(cls))}")
        d = dict(d)
        if isinstance(d.get("min_duration"), list):
            d["min_duration"] = tuple(d["min_duration"])
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class Event:
    """One occurrence of a class: ``onset`` to ``offset`` seconds of the input.
    ``score`` is the highest smoothed probability it reached. While the event
    is still open, ``offset`` is the end of its latest span above the off
    threshold and ``closed`` is False."""

    label: str
    index: int
    onset: float
    offset: float
    score: float
    closed: bool = True

    @property
    def duration(self) -> float:
        return self.offset - self.onset


class Smoother:
    """Moving mean (or median) of the last ``k`` score vectors, and the time it describes.

    :meth:`push` takes consecutive windows' scores and the times of their
    centres, and returns each window's mean (median) over it and the ``k - 1``
    before it, with the mean centre of those windows. At a stream start fewer
    than ``k`` windows are taken, and at its end :meth:`flush` gives the
    values the last windows' moments are still owed, from fewer and fewer of
    them. Each value is computed afresh, oldest first, so it is the same to
    the bit however the windows are split into calls (a file read in large
    blocks and the same audio live agree exactly).
    """

    def __init__(self, n_classes: int, k: int = 1, kind: str = "mean"):
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"smoothing length must be a positive int, got {k!r}")
        if kind not in FILTERS:
            raise ValueError(f"filter must be one of {', '.join(FILTERS)}, got {kind!r}")
        self.n_classes, self.k, self.kind = n_classes, int(k), kind
        self.reset()

    def reset(self) -> None:
        self._scores = np.zeros((self.k - 1, self.n_classes))  # the last k - 1 windows; zeros before the start
        self._centres = np.zeros(self.k - 1)
        self._seen = 0

    def push(self, scores: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``scores`` ``(n, C)`` and ``centres`` ``(n,)`` of the next ``n`` windows; returns
        the smoothed scores, float32 ``(n, C)``, and the times they describe ``(n,)``."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1, self.n_classes)
        centres = np.asarray(centres, dtype=np.float64).reshape(-1)
        n, k = len(scores), self.k
        stacked = np.concatenate([self._scores, scores])
        times = np.concatenate([self._centres, centres])
        time_total = times[:n].copy()
        for lag in range(1, k):
            time_total += times[lag:lag + n]
        count = np.minimum(self._seen + 1 + np.arange(n), k)
        if self.kind == "median" and k > 1:
            # each window's rows (n, k, C), then the median of its real ones (the last `count`: placeholders
            # precede the stream's start) as np.median computes it: the middle value, or the mean of the
            # middle two. Sorting these few values directly is 5-20x faster than np.median (nanmedian) here.
            rows, width = stacked.strides
            windows = np.lib.stride_tricks.as_strided(stacked, (n, k, self.n_classes), (rows, rows, width),
                                                      writeable=False)
            if count[0] == k:
                smoothed = _middle(np.sort(windows, axis=1), k)
            else:
                smoothed = np.stack([_middle(np.sort(w[k - c:], axis=0)[None], c)[0]
                                     for w, c in zip(windows, count.tolist())])
        else:
            total = stacked[:n].copy()
            for lag in range(1, k):
                total += stacked[lag:lag + n]
            smoothed = total / count[:, None]
        self._scores, self._centres = stacked[n:], times[n:]
        self._seen += n
        return smoothed.astype(np.float32), time_total / count

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        """At the end of a stream, the values the last windows' own moments never got (each value
        describes the middle of the windows it covers, so the last ``k // 2`` or so are still owed):
        the mean (median) of the windows the last value covered less its oldest, then less the next,
        down to the last window alone, with the mean centre of those, float32 ``(m, C)`` and ``(m,)``,
        ``m <= k - 1``. Then :meth:`reset`."""
        held = max(min(self._seen, self.k) - 1, 0)  # the last value covered min(seen, k) windows
        rows, centres = self._scores[len(self._scores) - held:], self._centres[len(self._centres) - held:]
        reduce = np.median if self.kind == "median" else np.mean
        values = np.array([reduce(rows[a:], axis=0) for a in range(held)], dtype=np.float32).reshape(
            held, self.n_classes)
        times = np.array([centres[a:].mean() for a in range(held)])
        self.reset()
        return values, times

    def flush_spans(self, start: float, end: float, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`flush` as spans that cover a stream's rest, from ``start`` (the end of the last
        value's span) to ``end``, split halfway between the values' moments; ``last`` (the last
        value) covers it alone where none is owed (``k`` 1). Values ``(m, C)``, edges ``(m + 1,)``."""
        values, times = self.flush()
        if not len(values):
            values, times = np.asarray(last, dtype=np.float32).reshape(1, self.n_classes), np.array([start])
        return values, np.concatenate([[start], (times[1:] + times[:-1]) / 2, [end]])


def _middle(ordered: np.ndarray, count: int) -> np.ndarray:
    """The median of ``count`` values sorted along axis 1."""
    half = count // 2
    return ordered[:, half] if count % 2 else (ordered[:, half - 1] + ordered[:, half]) / 2


class EventTracker:
    """Per-class on/off state with hysteresis, a minimum duration (one, or one per class)
    and a gap an event may bridge.

    :meth:`update` takes the smoothed scores of consecutive spans
    ``[start, end)`` and returns what changed as ``(span, kind, event)`` with
    ``kind`` ``"open"`` or ``"close"``, in the order a span-by-span pass would
    report them. A class becomes a candidate when its score reaches ``on``; the
    candidate opens as an event once it has lasted ``min_duration`` and closes
    at the end of its last span at or above ``off``. A candidate that falls
    below ``off`` before lasting ``min_duration`` is dropped without a trace.
    With ``max_gap`` > 0, an event whose score falls below ``off`` and reaches
    ``on`` again within ``max_gap`` seconds goes on as one event (a dog that
    barks three times in one recording is one event, as annotators mark it);
    its close is then reported ``max_gap`` later, when the gap has lasted.
    """

    def __init__(self, classes: list[str], on: np.ndarray, off: np.ndarray, min_duration=0.0, max_gap: float = 0.0):
        self.classes = list(classes)
        n = len(self.classes)
        self.on = np.broadcast_to(np.asarray(on, dtype=np.float64), (n,)).copy()
        self.off = np.broadcast_to(np.asarray(off, dtype=np.float64), (n,)).copy()
        if (self.off > self.on).any():
            raise ValueError("off thresholds must not exceed on thresholds")
        durations = np.asarray(min_duration, dtype=np.float64)
        if durations.ndim > 1 or durations.size not in (1, n) or not (durations >= 0).all():
            raise ValueError(f"min_duration must be one value or one per class, each >= 0, got {min_duration}")
        self.min_duration = np.broadcast_to(durations, (n,)).copy()  # per class
        if not max_gap >= 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        self.max_gap = float(max_gap)
        self.reset()

    def reset(self) -> None:
        n = len(self.classes)
        self._live = np.zeros(n, dtype=bool)  # candidate or open
        self._open = np.zeros(n, dtype=bool)  # lasted min_duration: reported as open
        self._onset = np.zeros(n)
        self._offset = np.zeros(n)
        self._peak = np.zeros(n)
        self._gap = np.zeros(n, dtype=bool)  # live, but below off since its offset: it may yet resume

    def update(self, starts: np.ndarray, ends: np.ndarray, scores: np.ndarray) -> list[tuple[int, str, Event]]:
        """Take ``scores`` ``(n, C)`` of the spans ``[starts[i], ends[i])``, in time
        order; return the changes as ``(i, kind, event)``, by span, then by class."""
        starts = np.asarray(starts, dtype=np.float64).reshape(-1)
        ends = np.asarray(ends, dtype=np.float64).reshape(-1)
        scores = np.asarray(scores, dtype=np.float64).reshape(len(ends), len(self.classes))
        changes = []
        for c in np.flatnonzero(self._live | (scores >= self.on).any(axis=0)):
            changes += self._update_class(int(c), starts, ends, scores[:, c])
        changes.sort(key=lambda change: (change[0], change[2].index))  # at most one change per span and class
        return changes

    def _update_class(self, c: int, starts: np.ndarray, ends: np.ndarray, s: np.ndarray) -> list:
        """One class through the spans, a run of spans at or above ``off`` at a time."""
        changes = []
        i, n = 0, len(s)
        while i < n:
            if self._gap[c]:  # in a gap: resumes if the score reaches `on` within max_gap, else ends at the offset
                above = np.flatnonzero(s[i:] >= self.on[c])
                if len(above) and starts[i + int(above[0])] - self._offset[c] <= self.max_gap:
                    self._gap[c] = False
                    i += int(above[0])  # the same event goes on from here
                else:
                    beyond = i + int(np.searchsorted(starts[i:] - self._offset[c], self.max_gap, side="right"))
                    if beyond >= n:
                        break  # the gap outlasts these spans: undecided until the next ones
                    if self._open[c]:
                        changes.append((beyond, "close", self._event(c, closed=True)))
                    self._live[c] = self._open[c] = self._gap[c] = False
                    i = beyond
                    continue
            if not self._live[c]:
                above = np.flatnonzero(s[i:] >= self.on[c])
                if not len(above):
                    break
                i += int(above[0])  # a candidate starts here (and its score is >= on >= off)
                self._live[c] = True
                self._onset[c], self._peak[c] = starts[i], s[i]
            below = np.flatnonzero(s[i:] < self.off[c])
            stop = i + int(below[0]) if len(below) else n  # the run is spans i .. stop - 1
            if stop > i:
                if not self._open[c]:
                    lasted = i + int(np.searchsorted(ends[i:stop] - self._onset[c], self.min_duration[c]))
                    if lasted < stop:  # it opens at span `lasted`, with what it knew then
                        self._open[c] = True
                        self._offset[c] = ends[lasted]
                        self._peak[c] = max(self._peak[c], s[i:lasted + 1].max())
                        changes.append((lasted, "open", self._event(c, closed=False)))
                self._offset[c] = ends[stop - 1]
                self._peak[c] = max(self._peak[c], s[i:stop].max())
            if stop == n:
                break
            if self.max_gap > 0:  # the event ends only if the gap lasts
                self._gap[c] = True
            else:
                if self._open[c]:
                    changes.append((stop, "close", self._event(c, closed=True)))
                self._live[c] = self._open[c] = False
            i = stop + 1
        return changes

    def close_all(self) -> list[tuple[str, Event]]:
        """End of stream (or of a stretch of it): close open events at their
        last span above ``off``; drop candidates that never lasted long enough."""
        changes = [("close", self._event(c, closed=True)) for c in np.flatnonzero(self._open)]
        self.reset()
        return changes

    @property
    def active(self) -> list[Event]:
        """Events open right now."""
        return [self._event(c, closed=False) for c in np.flatnonzero(self._open)]

    def _event(self, c: int, closed: bool) -> Event:
        return Event(self.classes[c], int(c), float(self._onset[c]), float(self._offset[c]), float(self._peak[c]),
                     closed)
