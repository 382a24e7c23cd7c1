"""Tables and scratch for :mod:`streamtag.spectrum`'s power spectrum, built with numpy alone.

They sit apart from the numba code that reads them so that :class:`streamtag.frontend.Frontend`
can build its state without importing numba: the process that runs the frontend's kernel
compiled ahead of time never loads numba or LLVM (see :mod:`streamtag.frontend`).
How the transform uses each table is described in :mod:`streamtag.spectrum`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["MAX_N_FFT", "MIN_N_FFT", "SpectrumPlan", "make_plan"]

MIN_N_FFT = 16
MAX_N_FFT = 8192


class SpectrumPlan(NamedTuple):
    """Tables and scratch for one ``n_fft``; a tuple of arrays, so numba takes it as is.
    All are flat, so that a caller can carve them from one larger array without a reshape
    (~35 ns each inside numba).

    ``work`` is scratch that every call overwrites: give each thread its own plan.
    """

    twiddles: np.ndarray  # (passes * 6 * n_fft // 8,): per pass, rows re/im of w, w**2, w**3 per butterfly
    post_twiddles: np.ndarray  # (n_fft,): cos, then sin, of -2 pi k / n_fft, bit-reversed k
    gather: np.ndarray  # (n_fft // 2,) int64: where the power of bin k lies in the work's last row
    work: np.ndarray  # (5 * n_fft // 2,): two re/im ping-pong buffers and the unordered powers
    window: np.ndarray  # (n_fft,) weights for the even-numbered samples, then the odd; or (0,): none


def _bit_reverse(m: int) -> np.ndarray:
    """The permutation ``i -> bit-reversed i`` of ``range(m)``, ``m`` a power of two."""
    bits = m.bit_length() - 1
    i = np.arange(m)
    rev = np.zeros(m, dtype=np.int64)
    for b in range(bits):
        rev |= ((i >> b) & 1) << (bits - 1 - b)
    return rev


def make_plan(n_fft: int, window=None) -> SpectrumPlan:
    """Precompute the twiddles, gather table and scratch for frames of ``n_fft`` samples.

    ``n_fft`` must be a power of two from ``MIN_N_FFT`` to ``MAX_N_FFT``. ``window``, if
    given, holds ``n_fft`` finite weights that :func:`power_spectrum` applies to each
    frame as it reads it, which saves a pass over a windowed copy.
    """
    if (isinstance(n_fft, bool) or not isinstance(n_fft, (int, np.integer))
            or not MIN_N_FFT <= n_fft <= MAX_N_FFT or n_fft & (n_fft - 1)):
        raise ValueError(f"n_fft must be a power of two from {MIN_N_FFT} to {MAX_N_FFT}, got {n_fft!r}")
    n = int(n_fft)
    if window is None:
        weights = np.zeros(0)
    else:
        window = np.asarray(window, dtype=np.float64)
        if window.shape != (n,) or not np.isfinite(window).all():
            raise ValueError(f"window must hold {n} finite weights (n_fft), got shape {window.shape}")
        # even-numbered samples' weights, then the odd ones': the transform reads the frame as
        # z[j] = x[2j] + i x[2j+1], and contiguous weights for each half halve the cost of that read
        weights = np.concatenate([window[0::2], window[1::2]])
    m = n // 2
    quarter = m // 4
    log2m = m.bit_length() - 1
    # radix-4 passes that multiply by twiddles; the last pass (radix-4 or radix-8) has none
    passes = log2m // 2 - 1 if log2m % 2 == 0 else (log2m - 3) // 2
    twiddles = np.empty((passes, 6, quarter))
    j = np.arange(quarter)
    for t in range(passes):
        # butterfly j of pass t is Stockham butterfly j >> 2t of a sub-transform of m >> 2t
        angle = -2.0 * np.pi * (j >> (2 * t)) / (m >> (2 * t))
        for r in (1, 2, 3):
            twiddles[t, 2 * r - 2] = np.cos(r * angle)
            twiddles[t, 2 * r - 1] = np.sin(r * angle)
    freq = _bit_reverse(m)  # the transform leaves Z[freq[i]] at position i
    angle = -2.0 * np.pi * freq / n
    post_twiddles = np.stack([np.cos(angle), np.sin(angle)])
    # _post stores the power of position i at i, except for the second half of each octave
    # block [b, 2b), whose mirror order it stores forward at b + b/2 + (2b - 1 - i)
    where = np.arange(m)
    b = 2
    while b < m:
        o = np.arange(b // 2)
        where[2 * b - 1 - o] = b + b // 2 + o
        b *= 2
    gather = np.empty(m, dtype=np.int64)
    gather[freq] = where
    return SpectrumPlan(twiddles.ravel(), post_twiddles.ravel(), gather, np.zeros(5 * m), weights)
