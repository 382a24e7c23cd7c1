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
_UNIT_STRIDE = (_FLOAT32.itemsize,)  # the strides of a C-contiguous float32 vector, and of nothing else
_SLAB_FRAMES = 256  # frames per block that push() carves its outputs from
_HISTORY = 2 * DELTA_TAPS + 1  # log-mel frames the causal delta filter reads
_BUFFER_HOPS = 4  # the sample buffer holds a frame plus this many hops, so it is compacted once per 4 hops

# The kernel takes everything it keeps between calls (state, tables, scratch
# and the window ring) in one float64 array, with integers and the float32 ring
# as views of parts of it: each array argument costs ~80 ns on every call, and
# with a dozen arrays and the FFT plan's tuple that alone cost more than
# computing a frame. Layout (see Frontend.__init__), in float64 words:
#   header (int64)   [start, end, emitted, slot, used, hop, n_fft, n_mels, nnz, twiddles, buffer, ints, ring]
#   tables (int64)   fb_ptr fb_start gather
#   floats           buf (float32, 2 per word) hist window (split, see make_plan) fb_w amin twiddles post_twiddles work power energy mantissa logmel delta
#   ring (float32)   (2 * history, 2, n_mels): frame by frame, so a frame is one contiguous write
_START, _END, _EMITTED, _SLOT, _USED, _HOP, _NFFT, _NMELS, _NNZ, _TWIDDLES, _BUFFER, _INTS, _RING = range(13)
_HEADER = 13

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
def _push_kernel(x, state, out):
    """Consume the samples ``x`` and write every frame they complete to ``out``
    from row ``used`` on, the delta history and the window ring; return the new
    ``used``. If ``out`` lacks the rows, consume nothing and return ``-1 - rows
    needed``, so the caller can hand over a larger ``out``.

    ``buf[start:end]`` holds the samples not yet consumed by a hop: a frame is
    the contiguous slice ``buf[start:start + n_fft]``, so nothing is shifted per
    frame; when the buffer is full its tail moves to the front. The ring works
    the same way: frames are appended at slot ``s`` of a ring twice the window
    history long, and when it is full the newest history moves to the front, so
    the newest frames always form one contiguous slice ending at ``s``.
    """
    ints = state.view(np.int64)
    hop, n_fft, n_mels, nnz, n_twiddles = ints[_HOP], ints[_NFFT], ints[_NMELS], ints[_NNZ], ints[_TWIDDLES]
    size = ints[_BUFFER]
    buf = state[ints[_INTS]:ints[_INTS] + (size + 1) // 2].view(np.float32)  # the samples as they came
    start, end = ints[_START], ints[_END]
    n = x.shape[0]
    pending = end - start + n
    count = (pending - n_fft) // hop + 1 if pending >= n_fft else 0
    produced = ints[_USED]
    if produced + count > out.shape[0]:
        return -1 - count
    if count == 0 and end + n <= size:  # no frame completes and the buffer has room: a copy
        dst = buf[end:end + n]
        for k in range(n):
            dst[k] = x[k]
        ints[_END] = end + n
        return produced
    half = n_fft // 2
    at = _HEADER
    fb_ptr = ints[at:at + n_mels + 1]
    at += n_mels + 1
    fb_start = ints[at:at + n_mels]
    at += n_mels
    gather = ints[at:at + half]
    at = ints[_INTS] + (size + 1) // 2  # after the sample buffer: float32, so a frame reads half the bytes
    hist = state[at:at + _HISTORY * n_mels]  # _HISTORY rows of n_mels: flat, as a reshape costs ~35 ns
    at += _HISTORY * n_mels
    window = state[at:at + n_fft]
    at += n_fft
    fb_w = state[at:at + nnz]
    at += nnz
    amin = state[at]
    at += 1
    twiddles = state[at:at + n_twiddles]
    at += n_twiddles
    post_twiddles = state[at:at + n_fft]
    at += n_fft
    work = state[at:at + 5 * half]
    at += 5 * half
    plan = SpectrumPlan(twiddles, post_twiddles, gather, work, window)
    power = state[at:at + half + 1]
    at += half + 1
    energy = state[at:at + n_mels]
    at += n_mels
    mantissa = state[at:at + n_mels]
    at += n_mels
    logmel = state[at:at + n_mels]
    at += n_mels
    delta = state[at:at + n_mels]
    ring = state[ints[_RING]:].view(np.float32)  # (ring_slots, 2, n_mels), flat
    ring_slots = ring.shape[0] // (2 * n_mels)

    capacity = ring_slots // 2
    emitted, slot = ints[_EMITTED], ints[_SLOT]
    i = 0
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
            power_spectrum(buf[start:start + n_fft], power, plan)
            start += hop
            for m in range(n_mels):  # each band's weights apply to one contiguous run of bins, from fb_start[m]
                first, count = fb_ptr[m], fb_ptr[m + 1] - fb_ptr[m]
                bins = power[fb_start[m]:fb_start[m] + count]
                weights = fb_w[first:first + count]
                acc = 0.0
                for j in range(count):
                    acc += weights[j] * bins[j]
                energy[m] = max(acc, amin)
            _to_db(energy, mantissa, logmel)
            # causal delta over the last 9 log-mel frames; edge-pad the stream start
            for r in range(_HISTORY if emitted == 0 else 1):
                row = (emitted + r) % _HISTORY
                hist[row * n_mels:(row + 1) * n_mels] = logmel
            delta[:] = 0.0
            for tap in range(1, DELTA_TAPS + 1):
                row = (emitted - DELTA_TAPS + tap) % _HISTORY
                later = hist[row * n_mels:(row + 1) * n_mels]
                row = (emitted - DELTA_TAPS - tap + _HISTORY) % _HISTORY
                earlier = hist[row * n_mels:(row + 1) * n_mels]
                for m in range(n_mels):
                    delta[m] += tap * (later[m] - earlier[m])
            frame = out[produced]
            for m in range(n_mels):
                frame[0, m] = logmel[m]
                frame[1, m] = delta[m]
            if slot == ring_slots:  # the ring is full: its newest window-worth of frames moves to the front
                newest = ring[(slot - capacity) * 2 * n_mels:slot * 2 * n_mels]
                for k in range(capacity * 2 * n_mels):
                    ring[k] = newest[k]
                slot = capacity
            row = ring[slot * 2 * n_mels:(slot + 1) * 2 * n_mels]
            for m in range(n_mels):
                row[m] = logmel[m]
                row[n_mels + m] = delta[m]
            slot += 1
            emitted += 1
            produced += 1
    ints[_START], ints[_END] = start, end
    ints[_EMITTED], ints[_SLOT], ints[_USED] = emitted, slot, produced
    return produced


# The one signature push() calls the kernel with. push() calls the compiled
# function for it directly: the dispatcher's per-call type resolution costs
# ~0.4 us, a tenth of a frame. push() makes x a C-contiguous float32 vector and
# owns the other two arrays, so the types always match.
_PUSH_SIGNATURE = "int64(float32[::1], float64[::1], float32[:, :, ::1])"


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
        self._n_mels = s.n_mels
        size = s.n_fft + _BUFFER_HOPS * s.hop_length
        fb = mel_filterbank(s)
        # each band as one run of bins, from its first nonzero weight to its last
        nonzero = fb != 0
        has = nonzero.any(axis=1)
        fb_start = np.where(has, nonzero.argmax(axis=1), 0)
        fb_stop = np.where(has, fb.shape[1] - nonzero[:, ::-1].argmax(axis=1), 0)
        fb_ptr = np.concatenate([[0], np.cumsum(fb_stop - fb_start)])
        fb_w = np.concatenate([fb[m, fb_start[m]:fb_stop[m]] for m in range(s.n_mels)])
        plan = make_plan(s.n_fft, hann_periodic(s.n_fft))
        tables = np.concatenate([fb_ptr, fb_start, plan.gather]).astype(np.int64)
        floats = np.concatenate([
            np.zeros((size + 1) // 2), np.zeros(_HISTORY * s.n_mels),  # buf (float32, 2 per word), hist: state
            plan.window, fb_w, [s.amin],
            plan.twiddles, plan.post_twiddles, plan.work,
            np.zeros(s.n_fft // 2 + 1 + 4 * s.n_mels)])  # power, energy, mantissa, logmel, delta: scratch
        ring_words = s.n_mels * 2 * history  # (2 * history, 2, n_mels) float32
        self._state = np.zeros(_HEADER + len(tables) + len(floats) + ring_words)
        self._ints = self._state.view(np.int64)
        header = [0] * _HEADER
        header[_HOP], header[_NFFT], header[_NMELS] = s.hop_length, s.n_fft, s.n_mels
        header[_NNZ], header[_TWIDDLES], header[_BUFFER] = len(fb_w), len(plan.twiddles), size
        header[_INTS], header[_RING] = _HEADER + len(tables), _HEADER + len(tables) + len(floats)
        self._ints[:_HEADER] = header
        self._ints[_HEADER:_HEADER + len(tables)] = tables
        self._state[header[_INTS]:header[_RING]] = floats
        self._ring = self._state[header[_RING]:].view(np.float32).reshape(2 * history, 2, s.n_mels)
        self._slab = np.empty((_SLAB_FRAMES, 2, s.n_mels), dtype=np.float32)
        self._used = 0  # mirror of the kernel's count of the slab's rows handed out
        self._kernel = _compiled_push_kernel()

    def reset(self) -> None:
        """Forget all audio: the next sample starts a new stream."""
        ints = self._ints
        ints[_START] = ints[_END] = ints[_EMITTED] = ints[_SLOT] = 0

    @property
    def frames_emitted(self) -> int:
        """Frames produced since the stream started."""
        return int(self._ints[_EMITTED])

    @property
    def samples_pending(self) -> int:
        """Samples received but not yet part of an emitted frame's hop."""
        return int(self._ints[_END] - self._ints[_START])

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed ``samples`` (1-D, any length); return the frames they complete, float32 ``(n, 2, n_mels)``.

        The returned array is the caller's: later pushes never write to it. It is
        a slice of a slab of frames that later pushes carve further: slicing costs
        a third of ``np.empty``, which is a tenth of a hop.
        """
        x = samples
        if type(x) is not np.ndarray or x.dtype is not _FLOAT32 or x.strides != _UNIT_STRIDE:  # not C-contiguous 1-D
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 1:
                raise AudioError(f"Frontend.push takes mono samples as a 1-D array, got shape {x.shape}")
            x = np.ascontiguousarray(x)  # the compiled kernel's signature
        first = self._used
        used = self._used = self._kernel(x, self._state, self._slab)
        if used < 0:  # the slab is full: start a new one, large enough for these frames
            self._slab = np.empty((max(_SLAB_FRAMES, -1 - used), 2, self._n_mels), dtype=np.float32)
            self._ints[_USED] = first = 0
            used = self._used = self._kernel(x, self._state, self._slab)
        return self._slab[first:used]

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
        # the ring holds frames one after another: 120 scattered writes per frame in the window's own
        # layout cost the hop 0.3-0.4 us, and the transposing copy costs a read 0.7 us
        return self._ring[end - n_frames:end].transpose(1, 2, 0).copy()


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
