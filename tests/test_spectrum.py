"""The vectorised power spectrum against numpy's float64 rfft."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from streamtag.spectrum import power_spectrum
from streamtag.spectrum_plan import MAX_N_FFT, MIN_N_FFT, make_plan

SIZES = [2 ** k for k in range(4, 14)]  # every supported size, 16 .. 8192
KINDS = ("noise", "sinusoid", "bin_sinusoid", "impulse", "zeros", "dc")


def _frame(kind: str, n: int) -> np.ndarray:
    t = np.arange(n)
    if kind == "noise":
        return np.random.default_rng(n).standard_normal(n)
    if kind == "sinusoid":  # between bins: energy leaks into every bin
        return 0.8 * np.sin(2 * np.pi * 0.1234 * n * t / n + 0.3)
    if kind == "bin_sinusoid":  # exactly on a bin: the rest of the spectrum is rounding noise
        return np.cos(2 * np.pi * (n // 8) * t / n)
    if kind == "impulse":
        return np.eye(1, n, n // 3)[0]
    if kind == "zeros":
        return np.zeros(n)
    return np.full(n, -0.6)  # dc


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_numpy_rfft(kind, n):
    x = _frame(kind, n)
    out = np.full(n // 2 + 1, np.nan)
    power_spectrum(x, out, make_plan(n))
    ref = np.abs(np.fft.rfft(x)) ** 2
    # within 1e-9 of the spectrum's peak (exactly zero for a silent frame)
    assert np.max(np.abs(out - ref)) <= 1e-9 * ref.max()


def test_plan_is_reusable_and_out_is_overwritten():
    n = 1024
    plan = make_plan(n)
    out = np.empty(n // 2 + 1)
    for kind in ("noise", "impulse", "zeros"):
        x = _frame(kind, n)
        power_spectrum(x, out, plan)
        ref = np.abs(np.fft.rfft(x)) ** 2
        assert np.max(np.abs(out - ref)) <= 1e-9 * ref.max()


def test_callable_from_another_njit_function():
    @numba.njit
    def windowed_power(frame, window, out, plan):
        power_spectrum(frame * window, out, plan)

    n = 512
    x = _frame("noise", n)
    window = np.hanning(n)
    out = np.empty(n // 2 + 1)
    windowed_power(x, window, out, make_plan(n))
    ref = np.abs(np.fft.rfft(x * window)) ** 2
    assert np.max(np.abs(out - ref)) <= 1e-9 * ref.max()


@pytest.mark.parametrize("n", SIZES)
def test_window_is_applied_as_the_frame_is_read(n):
    x = _frame("noise", n)
    window = np.hanning(n) + 0.1 * np.arange(n) / n  # asymmetric: a misplaced weight shows
    out = np.full(n // 2 + 1, np.nan)
    power_spectrum(x, out, make_plan(n, window))
    ref = np.abs(np.fft.rfft(x * window)) ** 2
    assert np.max(np.abs(out - ref)) <= 1e-9 * ref.max()


@pytest.mark.parametrize("window", [np.ones(512), np.ones((2, 512)), np.full(1024, np.nan)])
def test_rejects_a_window_of_another_size_or_not_finite(window):
    with pytest.raises(ValueError, match="window"):
        make_plan(1024, window)


@pytest.mark.parametrize("n_fft", [1000, 24, MIN_N_FFT // 2, 2 * MAX_N_FFT, 0, -16, 1024.0, True])
def test_rejects_unsupported_sizes(n_fft):
    with pytest.raises(ValueError, match="power of two"):
        make_plan(n_fft)


@pytest.mark.parametrize("frame_len, out_len", [(512, 513), (1024, 512), (2048, 1025)])
def test_rejects_arrays_of_another_size(frame_len, out_len):
    with pytest.raises(ValueError, match="n_fft"):
        power_spectrum(np.zeros(frame_len), np.empty(out_len), make_plan(1024))
