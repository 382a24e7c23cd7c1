"""Event logic on scripted score sequences, checked by hand.

Each score is attributed to the span [i, i + 1) (seconds), so onsets and
offsets can be read straight off the script.
"""

from __future__ import annotations

import numpy as np
import pytest

from streamtag.events import Event, EventTracker, Smoother


def run_script(tracker: EventTracker, script: list[list[float]], close: bool = True):
    """Feed one score vector per second; return every change as (kind, label, onset, offset)."""
    changes = []
    for i, scores in enumerate(script):
        changes += tracker.update(float(i), float(i + 1), np.array(scores))
    if close:
        changes += tracker.close_all()
    return [(kind, e.label, e.onset, e.offset) for kind, e in changes]


def test_hysteresis_keeps_one_event_through_a_dip():
    tracker = EventTracker(["dog"], on=[0.5], off=[0.3])
    script = [[0.1], [0.6], [0.4], [0.35], [0.55], [0.2], [0.1]]
    assert run_script(tracker, script) == [("open", "dog", 1.0, 2.0), ("close", "dog", 1.0, 5.0)]


def test_without_hysteresis_the_same_scores_chatter():
    tracker = EventTracker(["dog"], on=[0.5], off=[0.5])
    script = [[0.1], [0.6], [0.4], [0.35], [0.55], [0.2], [0.1]]
    assert run_script(tracker, script) == [("open", "dog", 1.0, 2.0), ("close", "dog", 1.0, 2.0),
                                           ("open", "dog", 4.0, 5.0), ("close", "dog", 4.0, 5.0)]


def test_minimum_duration_drops_blips_and_opens_late_but_dated_early():
    tracker = EventTracker(["siren"], on=[0.5], off=[0.4], min_duration=2.5)
    script = [[0.9], [0.9], [0.1],  # 2 s: too short, dropped
              [0.8], [0.7], [0.6], [0.5], [0.1]]  # 4 s: opens once it has lasted 2.5 s (at 6 s), dated from 3 s
    changes = []
    for i, scores in enumerate(script):
        changes.append([(k, e.onset, e.offset) for k, e in tracker.update(i, i + 1, np.array(scores))])
    assert changes == [[], [], [], [], [], [("open", 3.0, 6.0)], [], [("close", 3.0, 7.0)]]


def test_classes_are_independent_and_the_score_is_the_peak():
    tracker = EventTracker(["a", "b"], on=[0.5, 0.8], off=[0.4, 0.7])
    script = [[0.6, 0.75], [0.7, 0.85], [0.3, 0.9], [0.2, 0.72], [0.1, 0.1]]
    events = []
    for i, scores in enumerate(script):
        events += [e for kind, e in tracker.update(i, i + 1, np.array(scores)) if kind == "close"]
    assert events == [Event("a", 0, 0.0, 2.0, 0.7), Event("b", 1, 1.0, 4.0, 0.9)]


def test_close_all_ends_open_events_and_forgets_candidates():
    tracker = EventTracker(["a", "b"], on=[0.5, 0.5], off=[0.4, 0.4], min_duration=2.0)
    tracker.update(0, 1, np.array([0.9, 0.1]))
    tracker.update(1, 2, np.array([0.9, 0.1]))
    tracker.update(2, 3, np.array([0.9, 0.9]))  # "b" is only a candidate: 1 s so far
    assert [e.label for e in tracker.active] == ["a"]
    assert [(k, e.label, e.onset, e.offset, e.closed) for k, e in tracker.close_all()] == [
        ("close", "a", 0, 3, True)]
    assert tracker.active == []
    assert tracker.update(3, 4, np.array([0.1, 0.1])) == []


def test_threshold_exactly_reached_turns_on():
    tracker = EventTracker(["a"], on=[0.5], off=[0.5])
    assert run_script(tracker, [[0.5], [0.49]]) == [("open", "a", 0.0, 1.0), ("close", "a", 0.0, 1.0)]


def test_smoother_averages_the_last_k_and_dates_them_by_their_middle():
    smoother = Smoother(2, k=3)
    outs = [smoother.push(np.array(s), c) for s, c in
            [([0.0, 1.0], 10.0), ([0.3, 1.0], 11.0), ([0.6, 0.4], 12.0), ([0.9, 0.1], 13.0)]]
    np.testing.assert_allclose(outs[0][0], [0.0, 1.0])
    np.testing.assert_allclose(outs[1][0], [0.15, 1.0], rtol=1e-6)
    np.testing.assert_allclose(outs[3][0], [0.6, 0.5], rtol=1e-6)
    assert [c for _, c in outs] == [10.0, 10.5, 11.0, 12.0]
    smoother.reset()
    np.testing.assert_allclose(smoother.push(np.array([0.2, 0.2]), 20.0)[0], [0.2, 0.2])


def test_smoothing_one_window_is_the_identity():
    smoother = Smoother(3, k=1)
    scores = np.array([0.123456, 0.5, 0.999], dtype=np.float32)
    smoothed, centre = smoother.push(scores, 4.25)
    np.testing.assert_array_equal(smoothed, scores)
    assert centre == 4.25


def test_bad_settings():
    with pytest.raises(ValueError):
        EventTracker(["a"], on=[0.5], off=[0.6])
    with pytest.raises(ValueError):
        EventTracker(["a"], on=[0.5], off=[0.4], min_duration=-1)
    with pytest.raises(ValueError):
        Smoother(2, k=0)
