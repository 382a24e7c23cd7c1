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
from collections import deque

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

    :meth:`push` takes one window's scores and the time of the window's centre
    and returns the smoothed scores with the mean centre of the windows
    averaged. At a stream start fewer than ``k`` windows are averaged.
    """

    def __init__(self, n_classes: int, k: int = 1):
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"smoothing length must be a positive int, got {k!r}")
        self.n_classes, self.k = n_classes, int(k)
        self.reset()

    def reset(self) -> None:
        self._scores: deque[np.ndarray] = deque(maxlen=self.k)
        self._times: deque[float] = deque(maxlen=self.k)
        self._sum = np.zeros(self.n_classes)  # running sums of what the deques hold: O(1) per window
        self._time_sum = 0.0

    def push(self, scores: np.ndarray, centre: float) -> tuple[np.ndarray, float]:
        scores = np.asarray(scores, dtype=np.float64)
        if len(self._scores) == self.k:
            self._sum -= self._scores[0]
            self._time_sum -= self._times[0]
        self._scores.append(scores)
        self._times.append(centre)
        self._sum += scores
        self._time_sum += centre
        n = len(self._scores)
        return (np.maximum(self._sum, 0.0) / n).astype(np.float32), self._time_sum / n  # no -1e-17 from rounding


class EventTracker:
    """Per-class on/off state with hysteresis and a minimum duration.

    :meth:`update` takes the smoothed scores of one span ``[start, end)`` and
    returns what changed as ``("open", event)`` and ``("close", event)`` pairs.
    A class becomes a candidate when its score reaches ``on``; the candidate
    opens as an event once it has lasted ``min_duration`` and closes at the end
    of its last span at or above ``off``. A candidate that falls below ``off``
    before lasting ``min_duration`` is dropped without a trace.
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

    def update(self, start: float, end: float, scores: np.ndarray) -> list[tuple[str, Event]]:
        scores = np.asarray(scores, dtype=np.float64)
        changes = []
        for c in np.flatnonzero(self._live | (scores >= self.on)):
            s = scores[c]
            if not self._live[c]:
                self._live[c] = True
                self._onset[c], self._peak[c] = start, s
            elif s < self.off[c]:
                if self._open[c]:
                    changes.append(("close", self._event(c, closed=True)))
                self._live[c] = self._open[c] = False
                continue
            self._offset[c] = end
            self._peak[c] = max(self._peak[c], s)
            if not self._open[c] and end - self._onset[c] >= self.min_duration:
                self._open[c] = True
                changes.append(("open", self._event(c, closed=False)))
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
