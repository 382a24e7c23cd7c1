"""From a sequence of window scores to sound events with onsets and offsets.

Two steps, each per class and each causal, so they run as the scores arrive:

1. :class:`Smoother` averages the last ``k`` windows' probabilities. A moving
   average lags: its value describes the middle of the windows it averages,
   so that is the time it is attributed to. Event times stay exact instead of
   drifting late by the smoothing.
2. :class:`EventTracker` turns smoothed scores into events: a class turns on
   when its score reaches its threshold and off when it falls below the
   threshold minus the hysteresis (so a score hovering at the threshold does
   not chatter), and an event shorter than the minimum duration is dropped.

Times are whatever the caller attributes each score to; the engine gives
seconds of the input, computed from sample positions.
"""

from __future__ import annotations

import dataclasses

import numpy as np


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
    """Moving average of the last ``k`` score vectors, and the time it describes.

    :meth:`push` takes consecutive windows' scores and the times of their
    centres, and returns each window's average over it and the ``k - 1`` before
    it, with the mean centre of the windows averaged. At a stream start fewer
    than ``k`` windows are averaged. Each average is summed afresh, oldest
    first, so it is the same to the bit however the windows are split into
    calls (a file read in large blocks and the same audio live agree exactly).
    """

    def __init__(self, n_classes: int, k: int = 1):
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"smoothing length must be a positive int, got {k!r}")
        self.n_classes, self.k = n_classes, int(k)
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
        n = len(scores)
        stacked = np.concatenate([self._scores, scores])
        times = np.concatenate([self._centres, centres])
        total, time_total = stacked[:n].copy(), times[:n].copy()
        for lag in range(1, self.k):
            total += stacked[lag:lag + n]
            time_total += times[lag:lag + n]
        count = np.minimum(self._seen + 1 + np.arange(n), self.k)
        self._scores, self._centres = stacked[n:], times[n:]
        self._seen += n
        return (total / count[:, None]).astype(np.float32), time_total / count


class EventTracker:
    """Per-class on/off state with hysteresis and a minimum duration.

    :meth:`update` takes the smoothed scores of consecutive spans
    ``[start, end)`` and returns what changed as ``(span, kind, event)`` with
    ``kind`` ``"open"`` or ``"close"``, in the order a span-by-span pass would
    report them. A class becomes a candidate when its score reaches ``on``; the
    candidate opens as an event once it has lasted ``min_duration`` and closes
    at the end of its last span at or above ``off``. A candidate that falls
    below ``off`` before lasting ``min_duration`` is dropped without a trace.
    """

    def __init__(self, classes: list[str], on: np.ndarray, off: np.ndarray, min_duration: float = 0.0):
        self.classes = list(classes)
        n = len(self.classes)
        self.on = np.broadcast_to(np.asarray(on, dtype=np.float64), (n,)).copy()
        self.off = np.broadcast_to(np.asarray(off, dtype=np.float64), (n,)).copy()
        if (self.off > self.on).any():
            raise ValueError("off thresholds must not exceed on thresholds")
        if min_duration < 0:
            raise ValueError(f"min_duration must be >= 0, got {min_duration}")
        self.min_duration = float(min_duration)
        self.reset()

    def reset(self) -> None:
        n = len(self.classes)
        self._live = np.zeros(n, dtype=bool)  # candidate or open
        self._open = np.zeros(n, dtype=bool)  # lasted min_duration: reported as open
        self._onset = np.zeros(n)
        self._offset = np.zeros(n)
        self._peak = np.zeros(n)

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
                    lasted = i + int(np.searchsorted(ends[i:stop] - self._onset[c], self.min_duration))
                    if lasted < stop:  # it opens at span `lasted`, with what it knew then
                        self._open[c] = True
                        self._offset[c] = ends[lasted]
                        self._peak[c] = max(self._peak[c], s[i:lasted + 1].max())
                        changes.append((lasted, "open", self._event(c, closed=False)))
                self._offset[c] = ends[stop - 1]
                self._peak[c] = max(self._peak[c], s[i:stop].max())
            if stop == n:
                break
            if self._open[c]:
                changes.append((stop, "close", self._event(c, closed=True)))
            self._live[c] = self._open[c] = False
            i = stop + 1
        return changes

    def close_all(self) -> list[tuple[str, Event]]:
        """End of stream (or of a stretch of it): close open events at their
        last span; drop candidates that never lasted long enough."""
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
