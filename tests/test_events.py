"""Event logic on scripted score sequences, checked by hand.

Each score is attributed to the span [i, i + 1) (seconds), so onsets and
offsets can be read straight off the script.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtag.events import Event, EventTracker, Smoother


def step(tracker: EventTracker, i: int, scores) -> list[tuple[str, Event]]:
    """The changes of span [i, i + 1) alone, as (kind, event)."""
    return [(kind, e) for _, kind, e in tracker.update([i], [i + 1], np.array([scores]))]


def run_script(tracker: EventTracker, script: list[list[float]], close: bool = True):
    """Feed one score vector per second, one at a time, and all at once to a
    fresh copy; check both agree; return every change as (kind, label, onset, offset)."""
    changes = []
    for i, scores in enumerate(script):
        changes += step(tracker, i, scores)
    twin = EventTracker(tracker.classes, tracker.on, tracker.off, tracker.min_duration)
    n = len(script)
    assert [(kind, e) for _, kind, e in twin.update(np.arange(n), np.arange(1, n + 1), np.array(script))] == changes
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
        changes.append([(k, e.onset, e.offset) for k, e in step(tracker, i, scores)])
    assert changes == [[], [], [], [], [], [("open", 3.0, 6.0)], [], [("close", 3.0, 7.0)]]


def test_classes_are_independent_and_the_score_is_the_peak():
    tracker = EventTracker(["a", "b"], on=[0.5, 0.8], off=[0.4, 0.7])
    script = [[0.6, 0.75], [0.7, 0.85], [0.3, 0.9], [0.2, 0.72], [0.1, 0.1]]
    events = []
    for i, scores in enumerate(script):
        events += [e for kind, e in step(tracker, i, scores) if kind == "close"]
    assert events == [Event("a", 0, 0.0, 2.0, 0.7), Event("b", 1, 1.0, 4.0, 0.9)]


def test_close_all_ends_open_events_and_forgets_candidates():
    tracker = EventTracker(["a", "b"], on=[0.5, 0.5], off=[0.4, 0.4], min_duration=2.0)
    tracker.update([0, 1, 2], [1, 2, 3], np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.9]]))  # "b": a candidate, 1 s
    assert [e.label for e in tracker.active] == ["a"]
    assert [(k, e.label, e.onset, e.offset, e.closed) for k, e in tracker.close_all()] == [
        ("close", "a", 0, 3, True)]
    assert tracker.active == []
    assert step(tracker, 3, [0.1, 0.1]) == []


def test_threshold_exactly_reached_turns_on():
    tracker = EventTracker(["a"], on=[0.5], off=[0.5])
    assert run_script(tracker, [[0.5], [0.49]]) == [("open", "a", 0.0, 1.0), ("close", "a", 0.0, 1.0)]


def test_smoother_averages_the_last_k_and_dates_them_by_their_middle():
    smoother = Smoother(2, k=3)
    smoothed, centres = smoother.push(np.array([[0.0, 1.0], [0.3, 1.0], [0.6, 0.4]]), [10.0, 11.0, 12.0])
    later, later_centre = smoother.push(np.array([[0.9, 0.1]]), [13.0])
    np.testing.assert_allclose(smoothed[0], [0.0, 1.0])
    np.testing.assert_allclose(smoothed[1], [0.15, 1.0], rtol=1e-6)
    np.testing.assert_allclose(later[0], [0.6, 0.5], rtol=1e-6)
    assert centres.tolist() + later_centre.tolist() == [10.0, 10.5, 11.0, 12.0]
    smoother.reset()
    np.testing.assert_allclose(smoother.push(np.array([[0.2, 0.2]]), [20.0])[0], [[0.2, 0.2]])


@pytest.mark.parametrize("k", [2, 5, 10, 11])
def test_the_median_filter_is_numpy_s_median_over_the_windows_so_far(k):
    """The median is taken by sorting the few values directly (a server runs it per stream and window);
    it must be exactly np.median's, placeholders before the stream's start left out (nanmedian)."""
    scores = np.random.default_rng(k).random((40, 6))
    padded = np.concatenate([np.full((k - 1, 6), np.nan), scores])
    expected = np.nanmedian(np.lib.stride_tricks.sliding_window_view(padded, k, axis=0), axis=-1)
    smoother = Smoother(6, k, "median")
    got = np.concatenate([smoother.push(scores[a:b], np.arange(a, b))[0] for a, b in ((0, 1), (1, 3), (3, 40))])
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@pytest.mark.parametrize("kind", ["mean", "median"])
def test_flush_gives_the_values_owed_to_the_last_windows_from_fewer_and_fewer_of_them(kind):
    reduce = np.median if kind == "median" else np.mean
    scores = np.random.default_rng(1).random((9, 3))
    smoother = Smoother(3, 4, kind)
    _, times = smoother.push(scores, np.arange(9.0))
    owed, owed_times = smoother.flush()
    # the last value covered windows 5-8, dated 6.5; still owed: 6-8, 7-8 and 8 alone, dated by their middles
    assert times[-1] == 6.5 and owed_times.tolist() == [7.0, 7.5, 8.0]
    np.testing.assert_allclose(owed, [reduce(scores[a:], axis=0) for a in (6, 7, 8)], rtol=1e-6)
    assert smoother.flush()[0].shape == (0, 3)  # flushed once: reset
    smoother.push(scores[:3], [0.0, 1.0, 2.0])  # fewer windows than the filter spans: the last value covered
    owed, owed_times = smoother.flush()  # all three, so 1-2 and 2 alone are owed
    np.testing.assert_allclose(owed, [reduce(scores[a:3], axis=0) for a in (1, 2)], rtol=1e-6)
    assert owed_times.tolist() == [1.5, 2.0]
    assert Smoother(3, 1).flush()[0].shape == (0, 3)


def test_flush_spans_cover_the_rest_of_a_stream_split_between_the_owed_moments():
    scores = np.random.default_rng(2).random((9, 3))
    smoother = Smoother(3, 4, "median")
    smoothed, times = smoother.push(scores, np.arange(9.0))
    values, edges = smoother.flush_spans(7.0, 9.6, smoothed[-1])  # owed at 7.0, 7.5 and 8.0
    np.testing.assert_allclose(values, [np.median(scores[a:], axis=0) for a in (6, 7, 8)], rtol=1e-6)
    assert edges.tolist() == [7.0, 7.25, 7.75, 9.6]
    alone = Smoother(3, 1)  # nothing owed: the last value covers the rest by itself
    smoothed, _ = alone.push(scores, np.arange(9.0))
    values, edges = alone.flush_spans(8.5, 9.6, smoothed[-1])
    np.testing.assert_array_equal(values, smoothed[-1:])
    assert edges.tolist() == [8.5, 9.6]


def test_smoothing_one_window_is_the_identity():
    smoother = Smoother(3, k=1)
    scores = np.array([0.123456, 0.5, 0.999], dtype=np.float32)
    smoothed, centre = smoother.push(scores[None], [4.25])
    np.testing.assert_array_equal(smoothed, scores[None])
    assert centre.tolist() == [4.25]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 6), cuts=st.lists(st.integers(1, 12), min_size=1, max_size=30),
       kind=st.sampled_from(["mean", "median"]), gap=st.sampled_from([0.0, 0.5, 1.2]))
def test_windows_split_any_way_give_the_same_smoothing_and_events_to_the_bit(seed, k, cuts, kind, gap):
    """The engine hands over as many windows as a read completes: a file in large
    reads and the same audio live must smooth and track identically."""
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.random((n, 3)) ** rng.uniform(0.3, 3.0, size=3)  # some classes mostly on, some mostly off
    centres = 0.5 + np.arange(n) * 0.37
    made = lambda: (Smoother(3, k, kind), EventTracker(["a", "b", "c"], [0.5, 0.6, 0.7], [0.3, 0.5, 0.7],
                                                        min_duration=[0.8, 0.0, 0.4], max_gap=gap))
    whole_smoother, whole_tracker = made()
    whole, whole_centres = whole_smoother.push(scores, centres)
    whole_changes = whole_tracker.update(whole_centres - 0.2, whole_centres + 0.2, whole)
    smoother, tracker = made()
    pieces, changes, at = [], [], 0
    for size in cuts * n:
        if at >= n:
            break
        part, part_centres = smoother.push(scores[at:at + size], centres[at:at + size])
        pieces.append(part)
        changes += [(i + at, kind, e) for i, kind, e in tracker.update(part_centres - 0.2, part_centres + 0.2, part)]
        at += size
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
    assert changes == whole_changes
    assert tracker.close_all() == whole_tracker.close_all()


def test_bad_settings():
    with pytest.raises(ValueError):
        EventTracker(["a"], on=[0.5], off=[0.6])
    with pytest.raises(ValueError):
        EventTracker(["a"], on=[0.5], off=[0.4], min_duration=-1)
    with pytest.raises(ValueError):
        Smoother(2, k=0)
    with pytest.raises(ValueError):
        EventTracker(["a"], on=[0.5], off=[0.4], max_gap=-0.1)


def test_an_event_bridges_a_gap_shorter_than_max_gap_and_closes_when_the_gap_lasts():
    # spans of 0.1 s: on for 1 s, off for 0.3 s, on for 1 s, then off
    scores = np.array([0.9] * 10 + [0.1] * 3 + [0.9] * 10 + [0.1] * 20)[:, None]
    starts = np.arange(len(scores)) * 0.1
    bridged = EventTracker(["dog"], [0.5], [0.5], max_gap=0.5)
    changes = bridged.update(starts, starts + 0.1, scores)
    assert [(i, kind) for i, kind, _ in changes] == [(0, "open"), (29, "close")]  # decided once the gap passed 0.5 s
    assert (changes[1][2].onset, changes[1][2].offset) == (0.0, pytest.approx(2.3))
    split = EventTracker(["dog"], [0.5], [0.5], max_gap=0.2)
    events = [e for _, kind, e in split.update(starts, starts + 0.1, scores) if kind == "close"]
    assert [(e.onset, round(e.offset, 6)) for e in events] == [(0.0, 1.0), (pytest.approx(1.3), 2.3)]
    pending = EventTracker(["dog"], [0.5], [0.5], max_gap=5.0)
    assert [kind for _, kind, _ in pending.update(starts, starts + 0.1, scores)] == ["open"]  # gap still undecided
    assert [(kind, round(e.offset, 6)) for kind, e in pending.close_all()] == [("close", 2.3)]
