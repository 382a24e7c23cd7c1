"""The incremental log-mel + delta frontend, and its batch entry points.

:class:`Frontend` takes audio in blocks of any size and emits each frame the
moment its last sample arrives. All per-frame work (window, FFT, mel, dB, delta)
runs inside one ``@njit`` kernel per :meth:`Frontend.push`, with the power
spectrum from :mod:`streamtag.spectrum`, so there is no per-frame Python and no
allocation per frame. A recording's features are, by
definition, what this frontend emits when fed that recording in one block:
:func:`compute_features` does exactly that, so training and live inference see
identical numbers by construction.
"""

from __future__ import annotations

import functools
import numba
import numpy as np

from streamtag.errors import AudioError
from streamtag.features import DELTA_TAPS, FeatureSpec, hann_periodic, mel_filterbank
from streamtag.spectrum import SpectrumPlan, make_plan, power_spectrum

_FLOAT32 = np.dtype(np.float32)
_SLAB_FRAMES = 256  # frames per block that push() carves its outputs from
_HISTORY = 2 * DELTA_TAPS + 1  # log-mel frames the causal delta filter reads
_BUFFER_HOPS = 16  # the sample buffer holds a frame plus this many hops, so it is compacted once per 16 hops

# The kernel takes its state, tables and scratch packed into one int64 and one
# float64 array: every argument costs time on every call, and with a dozen
# arrays and the FFT plan's tuple that alone cost more than computing a frame.
# Layout (see Frontend.__init__):
#   ints:   [start, end, emitted, slot, hop, n_fft, n_mels, nnz, passes, buffer] fb_ptr fb_bin gather
#   floats: buf hist window fb_w amin twiddles post_twiddles work power energy mantissa logmel delta
_START, _END, _EMITTED, _SLOT, _HOP, _NFFT, _NMELS, _NNZ, _PASSES, _BUFFER = range(10)
_HEADER = 10

_LN2 = 0.6931471805599453
_DB_PER_LN = 10.0 / 2.302585092994046  # dB per natural-log unit: 10 / ln 10
_MANTISSA = (1 << 52) - 1
_EXPONENT_ONE = 1023 << 52


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _to_db(energy, mantissa, out):
    """``out[m] = 10 * log10(energy[m])`` for normal positive float64 energies, to ~1e-10 dB;
    NaN and infinity pass through.

    libm's log10 is a scalar call per band (~9 ns each, half a microsecond per
    frame); this splits off the exponent with integer arithmetic on the bits and
    evaluates ``ln`` of the mantissa in ``[sqrt(1/2), sqrt(2))`` as the series
    ``2 atanh(s)``, ``s = (m - 1) / (m + 1)``, which loops LLVM vectorises.
    """
    bits = energy.view(np.int64)
    mbits = mantissa.view(np.int64)
    for m in range(energy.shape[0]):
        mbits[m] = (bits[m] & _MANTISSA) | _EXPONENT_ONE  # the mantissa as a float in [1, 2)
    for m in range(energy.shape[0]):
        e = np.float64((bits[m] >> 52) - 1023)
        x = mantissa[m]
        big = x > 1.4142135623730951
        x = x * 0.5 if big else x
        e = e + 1.0 if big else e
        s = (x - 1.0) / (x + 1.0)
        s2 = s * s
        ln_x = 2.0 * s * (1.0 + s2 * (1.0 / 3 + s2 * (1.0 / 5 + s2 * (1.0 / 7 + s2 * (1.0 / 9 + s2 * (1.0 / 11))))))
        db = _DB_PER_LN * (e * _LN2 + ln_x)
        out[m] = db if energy[m] < np.inf else energy[m]  # NaN < inf is false too


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _push_kernel(x, ints, floats, ring, out):
    """Consume the samples ``x``; write every frame they complete to ``out``, the
    delta history and the window ring ``ring``; return the new end of the sample buffer.

    ``buf[start:end]`` holds the samples not yet consumed by a hop: a frame is
    the contiguous slice ``buf[start:start + n_fft]``, so nothing is shifted per
    frame; when the buffer is full its tail moves to the front. The ring works
    the same way: frames are appended at slot ``s`` of a ring twice the window
    history long, and when it is full the newest history moves to the front, so
    the newest frames always form one contiguous slice ending at ``s``.
    """
    hop, n_fft, n_mels, nnz, passes = ints[_HOP], ints[_NFFT], ints[_NMELS], ints[_NNZ], ints[_PASSES]
    size = ints[_BUFFER]
    half = n_fft // 2
    at = _HEADER
    fb_ptr = ints[at:at + n_mels + 1]
    at += n_mels + 1
    fb_bin = ints[at:at + nnz]
    at += nnz
    gather = ints[at:at + half]
    buf = floats[:size]
    at = size
    hist = floats[at:at + _HISTORY * n_mels].reshape((_HISTORY, n_mels))
    at += _HISTORY * n_mels
    window = floats[at:at + n_fft]
    at += n_fft
    fb_w = floats[at:at + nnz]
    at += nnz
    amin = floats[at]
    at += 1
    twiddles = floats[at:at + passes * 6 * (half // 4)].reshape((passes, 6, half // 4))
    at += passes * 6 * (half // 4)
    post_twiddles = floats[at:at + n_fft].reshape((2, half))
    at += n_fft
    work = floats[at:at + 5 * half].reshape((5, half))
    at += 5 * half
    plan = SpectrumPlan(twiddles, post_twiddles, gather, work)
    power = floats[at:at + half + 1]
    at += half + 1
    energy = floats[at:at + n_mels]
    at += n_mels
    mantissa = floats[at:at + n_mels]
    at += n_mels
    logmel = floats[at:at + n_mels]
    at += n_mels
    delta = floats[at:at + n_mels]

    capacity = ring.shape[2] // 2
    start, end = ints[_START], ints[_END]
    emitted, slot = ints[_EMITTED], ints[_SLOT]
    produced = 0
    i = 0
    n = x.shape[0]
    while i < n:
        if end == size:  # buffer full: move the unconsumed tail (less than a frame) to the front
            tail = buf[start:end]
            for k in range(end - start):
                buf[k] = tail[k]
            end -= start
            start = 0
        take = min(size - end, n - i)
        dst, src = buf[end:end + take], x[i:i + take]  # slices: indices from 0 let LLVM vectorise
        for k in range(take):
            dst[k] = src[k]
        end += take
        i += take
        while end - start >= n_fft:
            power_spectrum(buf[start:start + n_fft], power, plan, window)
            start += hop
            for m in range(n_mels):  # each band's bins are one contiguous run starting at fb_bin[fb_ptr[m]]
                first, count = fb_ptr[m], fb_ptr[m + 1] - fb_ptr[m]
                bins = power[fb_bin[first]:fb_bin[first] + count] if count else power[:0]
                weights = fb_w[first:first + count]
                acc = 0.0
                for j in range(count):
                    acc += weights[j] * bins[j]
                energy[m] = max(acc, amin)
            _to_db(energy, mantissa, logmel)
            # causal delta over the last 9 log-mel frames; edge-pad the stream start
            if emitted == 0:
                for r in range(_HISTORY):
                    hist[r, :] = logmel
            else:
                hist[emitted % _HISTORY, :] = logmel
            delta[:] = 0.0
            for tap in range(1, DELTA_TAPS + 1):
                later = hist[(emitted - DELTA_TAPS + tap) % _HISTORY]
                earlier = hist[(emitted - DELTA_TAPS - tap + _HISTORY) % _HISTORY]
                for m in range(n_mels):
                    delta[m] += tap * (later[m] - earlier[m])
            frame = out[produced]
            for m in range(n_mels):
                frame[0, m] = logmel[m]
                frame[1, m] = delta[m]
            if slot == ring.shape[2]:  # the ring is full: its newest window-worth of frames moves to the front
                for c in range(2):
                    for m in range(n_mels):
                        for k in range(capacity):
                            ring[c, m, k] = ring[c, m, slot - capacity + k]
                slot = capacity
            for m in range(n_mels):
                ring[0, m, slot] = frame[0, m]
                ring[1, m, slot] = frame[1, m]
            slot += 1
            emitted += 1
            produced += 1
    ints[_START], ints[_END] = start, end
    ints[_EMITTED], ints[_SLOT] = emitted, slot
    return end


# The one signature push() calls the kernel with. push() calls the compiled
# function for it directly: the dispatcher's per-call type resolution costs
# ~0.4 us, a tenth of a frame. push() makes x a C-contiguous float32 vector and
# owns the other four arrays, so the types always match.
_PUSH_SIGNATURE = "int64(float32[::1], int64[::1], float64[::1], float32[:, :, ::1], float32[:, :, ::1])"


@functools.cache
def _compiled_push_kernel():
    """``_push_kernel`` compiled (or loaded from numba's cache) for ``_PUSH_SIGNATURE``."""
    return _push_kernel.compile(_PUSH_SIGNATURE)


class Frontend:
    """Streaming log-mel + delta frontend for one :class:`FeatureSpec`.

    ``push(samples)`` accepts any number of samples (already at the spec's sample
    rate, mono, finite) and returns the frames they complete as float32
    ``(n, 2, n_mels)``: channel 0 log-mel in dB, channel 1 its causal delta.
    The newest ``history`` frames stay readable as a model window via
    :meth:`window`.
    """

    def __init__(self, spec: FeatureSpec | None = None, history: int = 101):
        self.spec = spec or FeatureSpec()
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be a positive int, got {history!r}")
        self.history = history
        s = self.spec
        self._n_fft, self._hop, self._n_mels = s.n_fft, s.hop_length, s.n_mels
        self._size = s.n_fft + _BUFFER_HOPS * s.hop_length
        fb = mel_filterbank(s)
        rows, cols = np.nonzero(fb)
        plan = make_plan(s.n_fft)
        header = np.zeros(_HEADER, dtype=np.int64)
        header[[_HOP, _NFFT, _NMELS, _NNZ, _PASSES, _BUFFER]] = (
            s.hop_length, s.n_fft, s.n_mels, rows.size, len(plan.twiddles), self._size)
        fb_ptr = np.searchsorted(rows, np.arange(s.n_mels + 1))
        self._ints = np.concatenate([header, fb_ptr, cols, plan.gather]).astype(np.int64)
        self._floats = np.concatenate([
            np.zeros(self._size), np.zeros(_HISTORY * s.n_mels),  # buf, hist: state
            hann_periodic(s.n_fft), fb[rows, cols], [s.amin],
            plan.twiddles.ravel(), plan.post_twiddles.ravel(), plan.work.ravel(),
            np.zeros(s.n_fft // 2 + 1 + 4 * s.n_mels)])  # power, energy, mantissa, logmel, delta: scratch
        self._buf = self._floats[:self._size]  # a view, for the Python fast path in push()
        self._empty = np.empty((0, 2, s.n_mels), dtype=np.float32)
        self._ring = np.zeros((2, s.n_mels, 2 * self.history), dtype=np.float32)
        self._end = self._fill = 0  # mirrors of the kernel's buffer end and of end - start
        self._slab = np.empty((_SLAB_FRAMES, 2, s.n_mels), dtype=np.float32)
        self._slab_used = 0
        self._kernel = _compiled_push_kernel()

    def reset(self) -> None:
        """Forget all audio: the next sample starts a new stream."""
        self._ints[[_START, _END, _EMITTED, _SLOT]] = 0
        self._end = self._fill = 0

    @property
    def frames_emitted(self) -> int:
        """Frames produced since the stream started."""
        return int(self._ints[_EMITTED])

    @property
    def samples_pending(self) -> int:
        """Samples received but not yet part of an emitted frame's hop."""
        return self._fill

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed ``samples`` (1-D, any length); return the frames they complete, float32 ``(n, 2, n_mels)``.

        The returned array is the caller's: later pushes never write to it.
        """
        x = samples
        if type(x) is not np.ndarray or x.dtype is not _FLOAT32 or x.ndim != 1 or not x.flags.c_contiguous:
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 1:
                raise AudioError(f"Frontend.push takes mono samples as a 1-D array, got shape {x.shape}")
            x = np.ascontiguousarray(x)  # the compiled kernel's signature
        n = x.shape[0]
        avail = self._fill + n
        end = self._end + n
        if avail < self._n_fft and end <= self._size:  # no frame completes and the buffer has room: a copy
            self._buf[self._end:end] = x
            self._ints[_END] = self._end = end
            self._fill = avail
            return self._empty
        count = (avail - self._n_fft) // self._hop + 1 if avail >= self._n_fft else 0
        used = self._slab_used + count
        if used <= _SLAB_FRAMES:  # the common case, inline: a method call costs a fiftieth of a hop
            out = self._slab[self._slab_used:used]
            self._slab_used = used
        else:
            out = self._frames(count)
        self._end = self._kernel(x, self._ints, self._floats, self._ring, out)
        self._fill = avail - count * self._hop
        return out

    def _frames(self, count: int) -> np.ndarray:
        """A fresh float32 ``(count, 2, n_mels)`` array for ``push`` to fill when
        the current slab has no room for it.

        ``push`` carves small requests from a slab, never handing out a row
        twice: slicing is a third of the cost of ``np.empty`` (which is a tenth
        of a hop). This starts a new slab, or allocates a large request alone.
        """
        if count > _SLAB_FRAMES // 4:
            return np.empty((count, 2, self._n_mels), dtype=np.float32)
        self._slab = np.empty((_SLAB_FRAMES, 2, self._n_mels), dtype=np.float32)
        self._slab_used = count
        return self._slab[:count]

    def window(self, n_frames: int) -> np.ndarray:
        """The newest ``n_frames`` frames as a model window, float32 ``(2, n_mels, n_frames)``.

        Raises ``ValueError`` if fewer frames have been emitted or the ring is
        smaller than ``n_frames``.
        """
        if not 1 <= n_frames <= self.history:
            raise ValueError(f"window length must be 1..{self.history} (the ring's history), got {n_frames}")
        emitted = int(self._ints[_EMITTED])
        if n_frames > emitted:
            raise ValueError(f"only {emitted} frames emitted, cannot read a window of {n_frames}")
        end = int(self._ints[_SLOT])
        return self._ring[:, :, end - n_frames:end].copy()


def compute_features(audio: np.ndarray, spec: FeatureSpec | None = None) -> np.ndarray:
    """All frames of a recording, float32 ``(frames, 2, n_mels)``: what a
    :class:`Frontend` emits when fed the whole recording."""
    return Frontend(spec, history=1).push(audio)


def cut_windows(frames: np.ndarray, length: int, stride: int,
                silence_db: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut model windows from a recording's frames.

    Returns ``(windows, starts)``: float32 ``(n, 2, n_mels, length)`` and the
    first frame index of each window. Windows start at multiples of ``stride``;
    a trailing partial window is not produced. With ``silence_db`` set, windows
    whose loudest log-mel value is below it are dropped (Piczak's rule of
    discarding silent segments).
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[1] != 2:
        raise ValueError(f"frames must have shape (frames, 2, n_mels), got {frames.shape}")
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"window length must be a positive int, got {length!r}")
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    n_mels = frames.shape[2]
    if frames.shape[0] < length:
        return np.empty((0, 2, n_mels, length), dtype=np.float32), np.empty(0, dtype=np.int64)
    starts = np.arange(0, frames.shape[0] - length + 1, stride, dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(frames, length, axis=0)[starts]  # (n, 2, n_mels, length)
    if silence_db is not None:
        starts = starts[view[:, 0].max(axis=(1, 2)) >= silence_db]
        view = np.lib.stride_tricks.sliding_window_view(frames, length, axis=0)[starts]
    return np.ascontiguousarray(view), starts
