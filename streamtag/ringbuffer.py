"""The ring buffer between an audio producer and the engine.

One producer (a reader thread, or the sound card's callback) writes frames;
one consumer (the engine) reads them. Every frame has a stream position: the
count of frames the producer wrote before it. Two ways to write:

- :meth:`RingBuffer.write` applies back-pressure: it waits for space, so files
  and pipes lose nothing however slow the engine is.
- :meth:`RingBuffer.write_nowait` is for a live callback, which must never
  wait: it copies into the preallocated buffer and, when the engine has fallen
  behind, overwrites the oldest frames. The consumer notices from the
  positions, skips what was lost and counts it in :attr:`RingBuffer.dropped`,
  so a gap is always reported, never silent.

``write_nowait`` never waits for a lock and allocates no buffers. It
announces the range it is about to overwrite (``_claimed``) before copying and
publishes it (``_written``) after, so a reader that raced it can tell which of
the frames it just copied may be torn, and drops those as well (a seqlock).
It then wakes a waiting reader if it can take the lock at once; when it
cannot, the reader finds the frames at its next poll instead (``poll``), so
the wake-up costs a live stream no latency in the common case and never
blocks the callback.
"""

from __future__ import annotations

import threading
import time

import numpy as np

class ArrivalMarks:
    """When each of the last ``size`` writes of a stream landed, to tell a
    frame's arrival time from its position: the engine's latency is measured
    from the arrival of a window's last sample. Fixed size: no growth however
    long the stream."""

    def __init__(self, size: int = 1024):
        self._end = np.zeros(size, dtype=np.int64)  # stream position after each recent write...
        self._time = np.zeros(size, dtype=np.float64)  # ...and the perf_counter() when it landed
        self._count = 0

    def mark(self, end: int, when: float | None = None) -> None:
        """Frames up to position ``end`` (exclusive) landed at ``when`` (now by default)."""
        slot = self._count % len(self._end)
        self._end[slot] = end
        self._time[slot] = time.perf_counter() if when is None else when
        self._count += 1

    def times(self, positions) -> np.ndarray:
        """``perf_counter()`` times at which the frames at ``positions`` were
        written: each that of the write that brought it, or of the oldest
        remembered write if that one is forgotten, or of the newest if the
        frame has not arrived yet."""
        positions = np.asarray(positions, dtype=np.int64)
        size, marks = len(self._end), self._count
        count = min(marks, size)
        if count == 0:
            return np.full(positions.shape, time.perf_counter())
        order = (np.arange(count) + (marks % size if marks > size else 0)) % size  # oldest write first
        ends = self._end[order]  # ascending: each write ends where the next begins
        first_after = np.searchsorted(ends, positions, side="right")  # the write whose frames hold position
        return self._time[order[np.minimum(first_after, count - 1)]]


class RingBuffer:
    """Single-producer, single-consumer ring of ``capacity`` frames of ``channels`` samples."""

    def __init__(self, capacity: int, channels: int = 1, dtype=np.float32, poll: float = 0.002):
        if not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if not isinstance(channels, (int, np.integer)) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self.poll = poll  # how often a waiting reader looks for frames a callback wrote but could not notify
        self._buf = np.zeros((self.capacity, self.channels), dtype=dtype)
        self._claimed = 0  # producer: frames written, or being written right now
        self._written = 0  # producer: frames completely written
        self._read = 0  # consumer: frames read or skipped
        self.dropped = 0  # consumer: frames overwritten before they could be read
        self.arrivals = ArrivalMarks()
        self._closed = False
        self._cancelled = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()

    # -- producer side -------------------------------------------------------

    def write(self, block: np.ndarray) -> bool:
        """Copy ``block`` (frames, channels) in, waiting for space as needed.

        Returns False, with the rest of the block unwritten, if the consumer
        cancelled: the producer should then stop.
        """
        block = self._frames(block)
        done = 0
        while done < len(block):
            with self._cond:
                while self._written - self._read >= self.capacity and not self._cancelled:
                    self._cond.wait()
                if self._cancelled:
                    return False
                take = min(self.capacity - (self._written - self._read), len(block) - done)
            self._store(block[done:done + take], self._written + take)
            done += take
            with self._cond:
                self._cond.notify_all()
        return True

    def write_nowait(self, block: np.ndarray) -> None:
        """Copy ``block`` (frames, channels) in without waiting, overwriting
        the oldest frames when the buffer is full. Safe in an audio callback."""
        end = self._written + len(block)
        if len(block) > self.capacity:  # only the newest capacity frames can survive
            block = block[len(block) - self.capacity:]
        self._store(block, end)
        if self._cond.acquire(blocking=False):  # wake the reader now rather than at its next poll
            try:
                self._cond.notify_all()
            finally:
                self._cond.release()

    def close(self, error: BaseException | None = None) -> None:
        """No more frames will come; ``error`` (if any) explains why they stopped.
        The reader sees it after it has read everything written before."""
        with self._cond:
            self.error = error
            self._closed = True
            self._cond.notify_all()

    def _frames(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block)
        if block.ndim == 1 and self.channels == 1:
            block = block[:, None]
        if block.ndim != 2 or block.shape[1] != self.channels:
            raise ValueError(f"expected a (frames, {self.channels}) block, got shape {block.shape}")
        return block

    def _store(self, block: np.ndarray, end: int) -> None:
        """Write ``block`` so its last frame lands at stream position ``end - 1``."""
        n = len(block)
        self._claimed = end
        start = (end - n) % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start:start + first] = block[:first]
        if first < n:
            self._buf[:n - first] = block[first:]
        self._written = end
        self.arrivals.mark(end)

    # -- consumer side -------------------------------------------------------

    def read(self, out: np.ndarray, timeout: float | None = None) -> tuple[int, int]:
        """Copy up to ``len(out)`` of the oldest unread frames into ``out``.

        Returns ``(n, position)``: how many frames were copied and the stream
        position of the first. Waits up to ``timeout`` seconds (None: forever)
        for frames; ``n`` is 0 when none came in time or the stream is over
        (see :attr:`finished`). A ``position`` ahead of where the last read
        ended means frames were dropped in between.
        """
        deadline = None if timeout is None else time.perf_counter() + timeout
        while self._written == self._read:
            if self._closed or self._cancelled:
                return 0, self._read
            left = None if deadline is None else deadline - time.perf_counter()
            if left is not None and left <= 0:
                return 0, self._read
            with self._cond:
                if self._written == self._read and not self._closed:
                    self._cond.wait(self.poll if left is None else min(self.poll, left))
        written = self._written
        start = max(self._read, written - self.capacity)
        n = min(written - start, len(out))
        i = start % self.capacity
        first = min(n, self.capacity - i)
        out[:first] = self._buf[i:i + first]
        if first < n:
            out[first:n] = self._buf[:n - first]
        torn = min(n, max(0, self._claimed - self.capacity - start))  # overwritten while we copied
        if torn:
            out[:n - torn] = out[torn:n]
            start += torn
            n -= torn
        self.dropped += start - self._read
        self._read = start + n
        with self._cond:
            self._cond.notify_all()
        return n, start

    def cancel(self) -> None:
        """The consumer stops: release a producer waiting in :meth:`write`."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        """The producer closed the stream and every frame has been read."""
        return self._closed and self._written == self._read

    @property
    def position(self) -> int:
        """Stream position of the next frame to read."""
        return self._read

    @property
    def fill(self) -> float:
        """Fraction of the buffer holding unread frames (1.0: the next write drops audio)."""
        return min(self._written - self._read, self.capacity) / self.capacity

    def arrival_times(self, positions) -> np.ndarray:
        """When the frames at ``positions`` were written (:meth:`ArrivalMarks.times`)."""
        return self.arrivals.times(positions)
