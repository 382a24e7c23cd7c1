"""The incremental log-mel + delta frontend, and its batch entry points.

:class:`Frontend` takes audio in blocks of any size and emits each frame the
moment its last sample arrives. All per-frame work (window, FFT, mel, dB, delta)
runs inside one ``@njit`` kernel per :meth:`Frontend.push`, with the power
spectrum from :mod:`streamtag.spectrum`, so there is no per-frame Python. A recording's features are, by
definition, what this frontend emits when fed that recording in one block:
:func:`compute_features` does exactly that, so training and live inference see
identical numbers by construction.
"""

from __future__ import annotations

import numba
import numpy as np

from streamtag.errors import AudioError
from streamtag.features import DELTA_TAPS, FeatureSpec, hann_periodic, mel_filterbank
from streamtag.spectrum import SpectrumPlan, make_plan, power_spectrum

_HISTORY = 2 * DELTA_TAPS + 1  # log-mel frames the causal delta filter reads

# The kernel takes its state and tables packed into one int64 and one float64
# array: numba's dispatcher checks the type of every argument on every call, and
# with a dozen arrays and the FFT plan's tuple that check alone cost more than
# computing a frame. Layout (see Frontend.__init__):
#   ints:   [fill, emitted, slot, hop, n_fft, n_mels, nnz, passes] fb_ptr fb_bin gather
#   floats: buf hist window fb_w amin twiddles post_twiddles work
_FILL, _EMITTED, _SLOT, _HOP, _NFFT, _NMELS, _NNZ, _PASSES = range(8)
_HEADER = 8


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _push_kernel(x, ints, floats, ring, out):
    """Consume the samples ``x``; write every frame they complete to ``out``, the
    delta history and the window ring ``ring``; return how many.

    ``buf`` holds the ``fill`` samples of the frame being assembled. The ring
    stores each frame twice, at slot ``s`` and ``s + capacity``, so that the
    newest frames always form one contiguous slice.
    """
    hop, n_fft, n_mels, nnz, passes = ints[_HOP], ints[_NFFT], ints[_NMELS], ints[_NNZ], ints[_PASSES]
    half = n_fft // 2
    at = _HEADER
    fb_ptr = ints[at:at + n_mels + 1]
    at += n_mels + 1
    fb_bin = ints[at:at + nnz]
    at += nnz
    gather = ints[at:at + half]
    buf = floats[:n_fft]
    at = n_fft
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
    plan = SpectrumPlan(twiddles, post_twiddles, gather, work)

    capacity = ring.shape[2] // 2
    frame = np.empty(n_fft)
    power = np.empty(half + 1)
    logmel = np.empty(n_mels)
    ahead = np.empty(DELTA_TAPS, np.int64)
    behind = np.empty(DELTA_TAPS, np.int64)
    fill = ints[_FILL]
    emitted = ints[_EMITTED]
    slot = ints[_SLOT]
    produced = 0
    i = 0
    n = x.shape[0]
    while i < n:
        take = min(n_fft - fill, n - i)
        for k in range(take):
            buf[fill + k] = x[i + k]
        fill += take
        i += take
        if fill < n_fft:
            break
        for k in range(n_fft):
            frame[k] = buf[k] * window[k]
        power_spectrum(frame, power, plan)
        for m in range(n_mels):  # each band's bins are one contiguous run starting at fb_bin[fb_ptr[m]]
            first, count = fb_ptr[m], fb_ptr[m + 1] - fb_ptr[m]
            weights = fb_w[first:first + count]
            bins = power[fb_bin[first]:fb_bin[first] + count] if count else power[:0]
            acc = 0.0
            for j in range(count):
                acc += weights[j] * bins[j]
            logmel[m] = 10.0 * np.log10(np.float32(max(acc, amin)))  # float32 log: the output's precision, faster
        # causal delta over the last 9 log-mel frames; edge-pad the stream start
        if emitted == 0:
            for r in range(_HISTORY):
                hist[r, :] = logmel
        else:
            hist[emitted % _HISTORY, :] = logmel
        for tap in range(1, DELTA_TAPS + 1):
            ahead[tap - 1] = (emitted - DELTA_TAPS + tap) % _HISTORY
            behind[tap - 1] = (emitted - DELTA_TAPS - tap + _HISTORY) % _HISTORY
        for m in range(n_mels):
            d = 0.0
            for tap in range(1, DELTA_TAPS + 1):
                d += tap * (hist[ahead[tap - 1], m] - hist[behind[tap - 1], m])
            out[produced, 0, m] = logmel[m]
            out[produced, 1, m] = d
            ring[0, m, slot] = logmel[m]
            ring[1, m, slot] = d
            ring[0, m, slot + capacity] = logmel[m]
            ring[1, m, slot + capacity] = d
        slot = (slot + 1) % capacity
        emitted += 1
        produced += 1
        # keep the overlap with the next frame
        for k in range(n_fft - hop):
            buf[k] = buf[k + hop]
        fill = n_fft - hop
    ints[_FILL] = fill
    ints[_EMITTED] = emitted
    ints[_SLOT] = slot
    return produced


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
        fb = mel_filterbank(s)
        rows, cols = np.nonzero(fb)
        plan = make_plan(s.n_fft)
        header = np.zeros(_HEADER, dtype=np.int64)
        header[[_HOP, _NFFT, _NMELS, _NNZ, _PASSES]] = s.hop_length, s.n_fft, s.n_mels, rows.size, len(plan.twiddles)
        fb_ptr = np.searchsorted(rows, np.arange(s.n_mels + 1))
        self._ints = np.concatenate([header, fb_ptr, cols, plan.gather]).astype(np.int64)
        self._floats = np.concatenate([
            np.zeros(s.n_fft), np.zeros(_HISTORY * s.n_mels),  # buf, hist: state
            hann_periodic(s.n_fft), fb[rows, cols], [s.amin],
            plan.twiddles.ravel(), plan.post_twiddles.ravel(), plan.work.ravel()])
        self._buf = self._floats[:s.n_fft]  # a view, for the Python fast path in push()
        self._empty = np.empty((0, 2, s.n_mels), dtype=np.float32)
        self._ring = np.zeros((2, s.n_mels, 2 * self.history), dtype=np.float32)
        self._fill = 0

    def reset(self) -> None:
        """Forget all audio: the next sample starts a new stream."""
        self._ints[[_FILL, _EMITTED, _SLOT]] = 0
        self._fill = 0

    @property
    def frames_emitted(self) -> int:
        """Frames produced since the stream started."""
        return int(self._ints[_EMITTED])

    @property
    def samples_pending(self) -> int:
        """Samples received but not yet part of an emitted frame's hop."""
        return self._fill

    def push(self, samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise AudioError(f"Frontend.push takes mono samples as a 1-D array, got shape {x.shape}")
        fill = self._fill
        avail = fill + x.shape[0]
        n_fft = self.spec.n_fft
        if avail < n_fft:  # no frame completes: a copy, no kernel call
            self._buf[fill:avail] = x
            self._fill = self._ints[_FILL] = avail
            return self._empty
        out = np.empty(((avail - n_fft) // self.spec.hop_length + 1, 2, self.spec.n_mels), dtype=np.float32)
        _push_kernel(x, self._ints, self._floats, self._ring, out)
        self._fill = int(self._ints[_FILL])
        return out

    def window(self, n_frames: int) -> np.ndarray:
        """The newest ``n_frames`` frames as a model window, float32 ``(2, n_mels, n_frames)``.

        Raises ``ValueError`` if fewer frames have been emitted or the ring is
        smaller than ``n_frames``.
        """
        if not 1 <= n_frames <= self.history:
            raise ValueError(f"window length must be 1..{self.history} (the ring's history), got {n_frames}")
        if n_frames > self.frames_emitted:
            raise ValueError(f"only {self.frames_emitted} frames emitted, cannot read a window of {n_frames}")
        end = int(self._ints[_SLOT]) + self.history
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
