"""Power spectrum ``|rfft(frame)|**2`` of a power-of-two frame, vectorised inside numba.

``np.fft.rfft`` inside ``@njit`` (rocket-fft) runs pocketfft, which is scalar within one
transform: about 3 us for 1024 doubles on the 2-core AMD EPYC (Zen 3, AVX2) that streamtag
is tuned on, most of the frontend's per-hop budget. This module computes the same power
spectrum with code that LLVM's loop vectoriser turns into 4-wide AVX2 arithmetic.

Usage: build a :class:`~streamtag.spectrum_plan.SpectrumPlan` once with
:func:`streamtag.spectrum_plan.make_plan` (numpy alone, so the frontend can build one without numba), then call
``power_spectrum(frame, out, plan)`` from Python or from inside another ``@njit`` function.
Nothing is allocated per call.

How, and why this way:

* A real FFT of ``n`` points is a complex FFT of ``M = n // 2`` points on
  ``z[m] = x[2m] + i x[2m+1]`` followed by the standard split: with ``p = Z[k]`` and
  ``q = conj(Z[M-k])``, ``X[k] = ((p + q) + W^k (p - q) / i) / 2`` where ``W = exp(-2 pi i / n)``.
* ``z`` is first written to contiguous real and imaginary arrays, times the plan's window,
  whose weights for even and odd samples the plan keeps apart: passes read contiguous
  streams, and the first pass reading the real frame itself (stride-2 loads) cost twice
  as much as this copy and a pass together.
* The complex FFT is a constant-geometry (Pease) decimation in frequency with real and
  imaginary parts in separate arrays: every pass is one flat loop over the butterflies
  that reads 4 contiguous quarter streams and writes element ``4 j + slot``. Numba leaves
  LLVM only the loop vectoriser (the SLP vectoriser is off), and that vectoriser only
  handles such flat loops with contiguous or interleaved accesses; the textbook
  self-sorting (Stockham) passes have short inner loops that stay scalar.
* Radix-4 passes (two radix-2 stages per trip through memory); odd ``log2(M)`` ends with a
  radix-8 pass. The last pass has unit twiddles, so it skips the multiplies.
* Each pass stores its outputs in bit-reversed slot order, so the transform ends in plain
  bit-reversed order. There ``k`` and ``M - k`` sit mirrored inside each octave block
  ``[B, 2B)``, so the split above is a forward-and-reverse loop that vectorises; one index
  table then gathers the powers into natural order.
* Array indices are cast to ``uint64``: numba skips its negative-index wraparound for
  unsigned indices, and that wraparound is what otherwise keeps these loops scalar.
* ``fastmath={"contract"}`` only lets LLVM fuse multiply-adds; NaN and infinity keep their
  IEEE meaning.
"""

from __future__ import annotations

import numba
from numba import uint64

__all__ = ["power_spectrum"]

_JIT = dict(cache=True, nogil=True, fastmath={"contract"})
_HALF_SQRT2 = 0.7071067811865476


@numba.njit(**_JIT)
def _cmul(ar, ai, br, bi):
    return ar * br - ai * bi, ar * bi + ai * br


@numba.njit(**_JIT)
def _dft4(v):
    """4-point DFT of ``(re0, im0, ..., re3, im3)``, outputs in natural order."""
    apcr = v[0] + v[4]; apci = v[1] + v[5]; amcr = v[0] - v[4]; amci = v[1] - v[5]
    bpdr = v[2] + v[6]; bpdi = v[3] + v[7]; bmdr = v[2] - v[6]; bmdi = v[3] - v[7]
    return (apcr + bpdr, apci + bpdi, amcr + bmdi, amci - bmdr,
            apcr - bpdr, apci - bpdi, amcr - bmdi, amci + bmdr)


@numba.njit(**_JIT)
def _dft8(v):
    """8-point DFT of 8 interleaved complex values: a radix-2 step, then two ``_dft4``."""
    t1r = v[2] - v[10]; t1i = v[3] - v[11]
    t2r = v[4] - v[12]; t2i = v[5] - v[13]
    t3r = v[6] - v[14]; t3i = v[7] - v[15]
    even = _dft4((v[0] + v[8], v[1] + v[9], v[2] + v[10], v[3] + v[11],
                  v[4] + v[12], v[5] + v[13], v[6] + v[14], v[7] + v[15]))
    # the odd half is multiplied by exp(-2 pi i k / 8), k = 0..3
    odd = _dft4((v[0] - v[8], v[1] - v[9],
                 _HALF_SQRT2 * (t1r + t1i), _HALF_SQRT2 * (t1i - t1r),
                 t2i, -t2r,
                 _HALF_SQRT2 * (t3i - t3r), -_HALF_SQRT2 * (t3r + t3i)))
    return (even[0], even[1], odd[0], odd[1], even[2], even[3], odd[2], odd[3],
            even[4], even[5], odd[4], odd[5], even[6], even[7], odd[6], odd[7])


@numba.njit(**_JIT)
def _load4(xr, xi, j, q):
    i0 = uint64(j); i1 = uint64(j + q); i2 = uint64(j + 2 * q); i3 = uint64(j + 3 * q)
    return (xr[i0], xi[i0], xr[i1], xi[i1], xr[i2], xi[i2], xr[i3], xi[i3])


@numba.njit(**_JIT)
def _load8(xr, xi, j, q):
    i0 = uint64(j); i1 = uint64(j + q); i2 = uint64(j + 2 * q); i3 = uint64(j + 3 * q)
    i4 = uint64(j + 4 * q); i5 = uint64(j + 5 * q); i6 = uint64(j + 6 * q); i7 = uint64(j + 7 * q)
    return (xr[i0], xi[i0], xr[i1], xi[i1], xr[i2], xi[i2], xr[i3], xi[i3],
            xr[i4], xi[i4], xr[i5], xi[i5], xr[i6], xi[i6], xr[i7], xi[i7])


@numba.njit(**_JIT)
def _twiddle4(v, tw, j, q):
    """Multiply output r of radix-4 butterfly ``j`` of ``q`` by ``w**r``; ``tw`` holds rows of ``q``."""
    i = uint64(j)
    y1 = _cmul(v[2], v[3], tw[i], tw[i + uint64(q)])
    y2 = _cmul(v[4], v[5], tw[i + uint64(2 * q)], tw[i + uint64(3 * q)])
    y3 = _cmul(v[6], v[7], tw[i + uint64(4 * q)], tw[i + uint64(5 * q)])
    return (v[0], v[1], y1[0], y1[1], y2[0], y2[1], y3[0], y3[1])


@numba.njit(**_JIT)
def _store4(yr, yi, j, v):
    """Store output r of butterfly j at ``4 j + bitrev2(r)``."""
    o = uint64(4 * j)
    yr[o] = v[0]; yi[o] = v[1]
    yr[o + uint64(2)] = v[2]; yi[o + uint64(2)] = v[3]
    yr[o + uint64(1)] = v[4]; yi[o + uint64(1)] = v[5]
    yr[o + uint64(3)] = v[6]; yi[o + uint64(3)] = v[7]


@numba.njit(**_JIT)
def _store8(yr, yi, j, v):
    """Store output r of butterfly j at ``8 j + bitrev3(r)``."""
    o = uint64(8 * j)
    yr[o] = v[0]; yi[o] = v[1]
    yr[o + uint64(4)] = v[2]; yi[o + uint64(4)] = v[3]
    yr[o + uint64(2)] = v[4]; yi[o + uint64(2)] = v[5]
    yr[o + uint64(6)] = v[6]; yi[o + uint64(6)] = v[7]
    yr[o + uint64(1)] = v[8]; yi[o + uint64(1)] = v[9]
    yr[o + uint64(5)] = v[10]; yi[o + uint64(5)] = v[11]
    yr[o + uint64(3)] = v[12]; yi[o + uint64(3)] = v[13]
    yr[o + uint64(7)] = v[14]; yi[o + uint64(7)] = v[15]


@numba.njit(**_JIT)
def _radix4_pass(xr, xi, tw, yr, yi):
    q = xr.shape[0] // 4
    for j in range(q):
        _store4(yr, yi, j, _twiddle4(_dft4(_load4(xr, xi, j, q)), tw, j, q))


@numba.njit(**_JIT)
def _radix4_last(xr, xi, yr, yi):
    q = xr.shape[0] // 4
    for j in range(q):
        _store4(yr, yi, j, _dft4(_load4(xr, xi, j, q)))


@numba.njit(**_JIT)
def _radix8_last(xr, xi, yr, yi):
    q = xr.shape[0] // 8
    for j in range(q):
        _store8(yr, yi, j, _dft8(_load8(xr, xi, j, q)))


@numba.njit(**_JIT)
def _deinterleave(x, window, zr, zi):
    """``zr + i zi = z[j] = x[2j] + i x[2j+1]``, times the plan's split ``window`` unless it is empty."""
    m = zr.shape[0]
    if window.shape[0] == 0:
        for j in range(m):
            zr[j] = x[uint64(2 * j)]
            zi[j] = x[uint64(2 * j + 1)]
    else:
        odd = window[m:]
        for j in range(m):
            zr[j] = x[uint64(2 * j)] * window[j]
            zi[j] = x[uint64(2 * j + 1)] * odd[j]


@numba.njit(**_JIT)
def _post(zr, zi, post_twiddles, gather, powers, out):
    """Split the bit-reversed half-length spectrum ``Z`` into the real frame's powers."""
    m = zr.shape[0]
    out[0] = (zr[0] + zi[0]) * (zr[0] + zi[0])
    out[m] = (zr[0] - zi[0]) * (zr[0] - zi[0])
    powers[1] = zr[1] * zr[1] + zi[1] * zi[1]  # bin m/2: |X| = |Z|
    b = 2
    while b < m:
        h = b // 2
        for o in range(h):
            i = uint64(b + o)
            mirror = uint64(2 * b - 1 - o)
            pr = zr[i]; pi = zi[i]; qr = zr[mirror]; qi = -zi[mirror]
            er = pr + qr; ei = pi + qi
            fr = pi - qi; fi = qr - pr  # (p - q) / i
            wr = post_twiddles[i]; wi = post_twiddles[i + uint64(m)]
            tr = wr * fr - wi * fi; ti = wr * fi + wi * fr
            ur = er + tr; ui = ei + ti  # 2 X[k]
            vr = er - tr; vi = ei - ti  # 2 conj(X[m - k])
            powers[i] = 0.25 * (ur * ur + ui * ui)
            powers[uint64(b + h + o)] = 0.25 * (vr * vr + vi * vi)
        b *= 2
    for k in range(1, m):
        out[k] = powers[uint64(gather[k])]


@numba.njit(**_JIT)
def power_spectrum(frame, out, plan):
    """Write ``|rfft(frame * window)|**2`` (``n_fft // 2 + 1`` values) into ``out``.

    ``frame`` holds ``n_fft`` real samples and ``plan`` comes from ``make_plan(n_fft, window)``
    (no window: all ones). Equals ``np.abs(np.fft.rfft(frame * window)) ** 2`` to float64 rounding.
    """
    work = plan.work
    m = work.shape[0] // 5
    if frame.shape[0] != 2 * m or out.shape[0] != m + 1:
        raise ValueError("power_spectrum: frame needs the plan's n_fft samples and out n_fft // 2 + 1 values")
    tw = plan.twiddles
    size = 6 * (m // 4)  # one pass's twiddles
    ar = work[:m]; ai = work[m:2 * m]; br = work[2 * m:3 * m]; bi = work[3 * m:4 * m]
    # the real frame as M complex values, windowed, in contiguous re/im arrays: reading it straight from the
    # frame inside the first pass took twice as long as this loop and a pass together (stride-2 loads)
    _deinterleave(frame, plan.window, ar, ai)
    for t in range(tw.shape[0] // size):  # none for n_fft = 16: the radix-8 pass below is the whole transform
        _radix4_pass(ar, ai, tw[t * size:(t + 1) * size], br, bi)
        ar, br = br, ar
        ai, bi = bi, ai
    if m == 4 ** (tw.shape[0] // size + 1):
        _radix4_last(ar, ai, br, bi)
    else:
        _radix8_last(ar, ai, br, bi)
    _post(br, bi, plan.post_twiddles, plan.gather, work[4 * m:], out)
