"""The ring buffer: lossless with back-pressure, lossy but counted when live.

Samples are written as their own stream positions, so every read can be
checked against where the ring says it came from.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from streamtag.ringbuffer import RingBuffer


def positions(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None]


def test_back_pressure_loses_nothing_with_a_slow_reader():
    rng = np.random.default_rng(1)
    total = 60_000
    ring = RingBuffer(1000)

    def produce():
        pos = 0
        while pos < total:
            n = min(int(rng.integers(1, 2500)), total - pos)  # blocks larger than the ring too
            assert ring.write(positions(pos, n))
            pos += n
        ring.close()

    threading.Thread(target=produce, daemon=True).start()
    out = np.empty((700, 1), dtype=np.float32)
    got, expected_pos = [], 0
    while True:
        n, pos = ring.read(out[:int(rng.integers(1, 700))], timeout=5)
        if n == 0:
            assert ring.finished
            break
        assert pos == expected_pos
        got.append(out[:n, 0].copy())
        expected_pos += n
    assert ring.dropped == 0
    np.testing.assert_array_equal(np.concatenate(got), np.arange(total, dtype=np.float32))


def test_write_nowait_drops_the_oldest_and_counts_them():
    ring = RingBuffer(1000, channels=2)
    for start in range(0, 2500, 500):
        ring.write_nowait(np.repeat(positions(start, 500), 2, axis=1))
    assert ring.fill == 1.0
    out = np.empty((4000, 2), dtype=np.float32)
    n, pos = ring.read(out, timeout=0)
    assert (n, pos) == (1000, 1500)
    assert ring.dropped == 1500
    np.testing.assert_array_equal(out[:n, 0], np.arange(1500, 2500))
    ring.write_nowait(np.repeat(positions(2500, 3000), 2, axis=1))  # one block longer than the whole ring
    n, pos = ring.read(out, timeout=0)
    assert (n, pos) == (1000, 4500)
    assert ring.dropped == 3500
    np.testing.assert_array_equal(out[:n, 1], np.arange(4500, 5500))


class _InterruptingOut(np.ndarray):
    """A read target whose first assignment lets a 'callback' write in the middle
    of the reader's copy, as a sound card interrupt would."""

    def __setitem__(self, key, value):
        hook = getattr(self, "hook", None)
        if hook is not None:
            self.hook = None
            hook()
        super().__setitem__(key, value)


def test_frames_overwritten_during_a_read_are_dropped_not_returned():
    ring = RingBuffer(100)
    ring.write_nowait(positions(0, 100))
    out = np.empty((100, 1), dtype=np.float32).view(_InterruptingOut)
    out.hook = lambda: ring.write_nowait(positions(100, 30))  # overwrites positions 0..29 mid-copy
    n, pos = ring.read(out, timeout=0)
    assert pos == 30 and n == 70
    np.testing.assert_array_equal(np.asarray(out[:n, 0]), np.arange(30, 100))
    assert ring.dropped == 30
    n, pos = ring.read(np.empty((100, 1), dtype=np.float32), timeout=0)
    assert (pos, n) == (100, 30)


def test_live_producer_every_frame_read_is_genuine_and_every_loss_counted():
    total, ring = 200_000, RingBuffer(256)
    rng = np.random.default_rng(2)
    sizes = rng.integers(1, 64, 20_000)

    def produce():
        pos = 0
        for n in sizes:
            n = min(int(n), total - pos)
            ring.write_nowait(positions(pos, n))
            pos += n
            if pos == total:
                break
        ring.close()

    threading.Thread(target=produce, daemon=True).start()
    out = np.empty((100, 1), dtype=np.float32)
    seen, last_end = 0, 0
    while True:
        n, pos = ring.read(out, timeout=5)
        if n == 0:
            break
        assert pos >= last_end
        np.testing.assert_array_equal(out[:n, 0], np.arange(pos, pos + n, dtype=np.float32))
        seen += n
        last_end = pos + n
        if rng.random() < 0.01:
            time.sleep(0.001)  # fall behind now and then
    assert ring.finished
    assert seen + ring.dropped == last_end


def test_cancel_releases_a_blocked_writer():
    ring = RingBuffer(10)
    result = {}

    def produce():
        result["ok"] = ring.write(positions(0, 50))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    time.sleep(0.05)
    assert thread.is_alive() and ring.fill == 1.0  # waiting for space
    ring.cancel()
    thread.join(2)
    assert result == {"ok": False}


def test_close_carries_the_producers_error_after_the_data():
    ring = RingBuffer(10)
    ring.write(positions(0, 5))
    ring.close(ValueError("cut short"))
    out = np.empty((10, 1), dtype=np.float32)
    assert ring.read(out, timeout=0) == (5, 0)
    assert ring.finished and isinstance(ring.error, ValueError)
    assert ring.read(out, timeout=0) == (0, 5)


def test_read_times_out_when_nothing_arrives():
    ring = RingBuffer(10, poll=0.001)
    t0 = time.perf_counter()
    assert ring.read(np.empty((4, 1), dtype=np.float32), timeout=0.05) == (0, 0)
    assert 0.04 <= time.perf_counter() - t0 < 1.0
    assert not ring.finished


def test_write_nowait_wakes_a_waiting_reader_without_its_poll():
    ring = RingBuffer(100, poll=5.0)  # a reader that only polled would sleep 5 s
    threading.Timer(0.05, ring.write_nowait, args=(positions(0, 10),)).start()
    t0 = time.perf_counter()
    assert ring.read(np.empty((10, 1), dtype=np.float32), timeout=10) == (10, 0)
    assert time.perf_counter() - t0 < 2.0


def test_arrival_time_is_the_write_that_brought_the_frame():
    ring = RingBuffer(100)
    ring.write_nowait(positions(0, 10))
    time.sleep(0.01)
    ring.write_nowait(positions(10, 10))
    first, second = ring.arrival_times([9, 10])
    assert second - first >= 0.009
    np.testing.assert_array_equal(ring.arrival_times([0, 5, 19, 25]), [first, first, second, second])
    assert ring.arrival_times(np.empty(0, dtype=np.int64)).shape == (0,)


def test_arrival_times_after_many_writes_remember_the_newest():
    ring = RingBuffer(100)
    for start in range(0, 3000, 2):  # more writes than are remembered
        ring.write_nowait(positions(start % 100, 2))
        ring.read(np.empty((2, 1), dtype=np.float32))
    times = ring.arrival_times([0, 500, 2990, 2998, 2999, 5000])
    assert times[0] == times[1]  # both forgotten: the oldest remembered write
    assert times[1] < times[2] <= times[3]
    assert times[3] == times[4] == times[5]  # the newest write, and a frame yet to come


def test_bad_arguments():
    with pytest.raises(ValueError):
        RingBuffer(0)
    with pytest.raises(ValueError):
        RingBuffer(10, channels=2).write(np.zeros((3, 1), dtype=np.float32))
