"""The frontend's per-push kernel (numba), and its build ahead of time.

:meth:`streamtag.frontend.Frontend.push` hands each block of samples to
:func:`push_kernel`, which runs every frame the block completes (window, FFT,
mel, dB, delta) without returning to Python. This module is the only part of
the frontend that imports numba. A process normally never imports it: it loads
the kernel compiled ahead of time by :func:`build` (``python -m
streamtag.frontend_kernel PATH``) into an extension module that needs neither
numba nor LLVM at run time. Loading numba and its LLVM to run the kernel just in
time costs a process about 120 MB and a second of start-up (see
:mod:`streamtag.frontend` for when that still happens).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numba
import numpy as np

from streamtag.features import DELTA_TAPS
from streamtag.frontend_layout import (_BUFFER, _EMITTED, _END, _HEADER, _HISTORY, _HOP, _INTS, _KERNEL_MODULE,
                                       _NFFT, _NMELS, _NNZ, _RING, _SLOT, _START, _TWIDDLES, _USED)
from streamtag.spectrum import power_spectrum
from streamtag.spectrum_plan import SpectrumPlan

# The one signature push() calls the kernel with, both ways it is compiled. push() makes x a
# C-contiguous float32 vector and owns the other two arrays, so the types always match; it calls
# the compiled function directly, as numba's dispatcher's per-call type resolution costs ~0.4 us,
# a tenth of a frame.
SIGNATURE = "int64(float32[::1], float64[::1], float32[:, :, ::1])"

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
def push_kernel(x, state, out):
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


def compile_just_in_time():
    """:func:`push_kernel` compiled for :data:`SIGNATURE` in this process (or loaded from numba's cache)."""
    return push_kernel.compile(SIGNATURE)


def build(path: Path) -> None:
    """Compile :func:`push_kernel` ahead of time, for this machine's CPU, into the extension module ``path``.

    numba's ``pycc`` emits the same machine code as the just-in-time compiler
    (``target_cpu="host"`` keeps the AVX2 loops), wrapped in a C extension that a
    C compiler links; the frames it computes are bit-identical (tested). ``pycc``
    is marked for deprecation in favour of a successor not yet released; if a
    numba without it is installed, this raises and the frontend runs the kernel
    just in time.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycc's pending-deprecation notice
        from numba.pycc import CC
        from numba.pycc.platform import external_compiler_works
    if not external_compiler_works():
        raise RuntimeError("no working C and C++ compiler (install gcc and g++, or point CC at one)")
    cc = CC(_KERNEL_MODULE)
    cc.output_dir = str(path.parent)
    cc.output_file = path.name
    cc.target_cpu = "host"

    @cc.export("push_kernel", SIGNATURE)
    def exported(x, state, out):  # pycc compiles a Python function; push_kernel's own options apply inside
        return push_kernel(x, state, out)

    cc.compile()


if __name__ == "__main__":  # how streamtag.frontend builds the module: in a child, so numba never stays loaded
    try:
        build(Path(sys.argv[1]))
    except Exception as e:  # the parent records this one line as the reason and runs the kernel just in time
        sys.exit(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}")
