"""Power spectrum per frame: ``streamtag.spectrum`` beside rocket-fft's ``np.fft.rfft`` in numba.

Both run inside ``@njit`` loops exactly as the frontend kernel would call them:
rocket-fft as ``np.fft.rfft(frame)`` followed by ``re**2 + im**2``, streamtag as
``power_spectrum(frame, out, plan)``. The two loops are timed alternately, in
batches, and each keeps its fastest batch, so load from other processes on a
shared machine reaches both alike and disturbs the minimum least. Accuracy is
the largest deviation from numpy's float64 rfft, relative to the spectrum's peak.

Run: ``python -m benchmarks.spectrum [--quick]``.
"""

from __future__ import annotations

import time

import numba
import numpy as np
import rocket_fft  # noqa: F401  (registers np.fft inside @njit)

from benchmarks.report import machine, standalone
from streamtag.spectrum import power_spectrum
from streamtag.spectrum_plan import make_plan

SIZES = (1024, 2048)


@numba.njit(nogil=True)
def _rocket_loop(frame, out, calls):
    for _ in range(calls):
        spectrum = np.fft.rfft(frame)
        for k in range(out.shape[0]):
            out[k] = spectrum[k].real * spectrum[k].real + spectrum[k].imag * spectrum[k].imag


@numba.njit(nogil=True)
def _streamtag_loop(frame, out, plan, calls):
    for _ in range(calls):
        power_spectrum(frame, out, plan)


def _max_error(n: int, plan) -> float:
    """Largest deviation from numpy's float64 rfft over a noise and a sinusoid frame, relative to the peak."""
    worst = 0.0
    frames = (np.random.default_rng(n).standard_normal(n), np.sin(2 * np.pi * 0.1234 * np.arange(n) + 0.3))
    for frame in frames:
        out = np.empty(n // 2 + 1)
        power_spectrum(frame, out, plan)
        ref = np.abs(np.fft.rfft(frame)) ** 2
        worst = max(worst, float(np.max(np.abs(out - ref)) / ref.max()))
    return worst


def run(quick: bool = False) -> dict:
    """Microseconds per frame (the minimum over batches) for each size, and the accuracy."""
    rounds = 20 if quick else 2000
    calls = 20
    result: dict = {"machine": machine(), "rounds": rounds, "calls_per_batch": calls}
    for n in SIZES:
        frame = np.random.default_rng(0).standard_normal(n)
        out = np.empty(n // 2 + 1)
        plan = make_plan(n)
        _rocket_loop(frame, out, 1)  # compile / warm up
        _streamtag_loop(frame, out, plan, 1)
        best = {"rocket": float("inf"), "streamtag": float("inf")}
        for _ in range(rounds):
            t = time.perf_counter()
            _rocket_loop(frame, out, calls)
            best["rocket"] = min(best["rocket"], time.perf_counter() - t)
            t = time.perf_counter()
            _streamtag_loop(frame, out, plan, calls)
            best["streamtag"] = min(best["streamtag"], time.perf_counter() - t)
        result[f"rocket_us_{n}"] = best["rocket"] / calls * 1e6
        result[f"streamtag_us_{n}"] = best["streamtag"] / calls * 1e6
        result[f"ratio_{n}"] = best["rocket"] / best["streamtag"]
        result[f"max_rel_error_{n}"] = _max_error(n, plan)
    return result


def table(result: dict):
    from rich.table import Table

    m = result["machine"]
    load = f", load {m['load'][0]:.1f}" if m.get("load") else ""
    t = Table(title="Power spectrum |rfft(frame)|^2 per frame, inside numba",
              caption=f"{m['cpu']} ({m['cores']} cores{load}); minimum of {result['rounds']} alternating "
                      f"batches of {result['calls_per_batch']} calls")
    t.add_column("n_fft", justify="right")
    t.add_column("rocket-fft rfft + power (us)", justify="right")
    t.add_column("streamtag.spectrum (us)", justify="right")
    t.add_column("speed-up", justify="right")
    t.add_column("max error / peak", justify="right")
    for n in SIZES:
        t.add_row(str(n), f"{result[f'rocket_us_{n}']:.2f}", f"{result[f'streamtag_us_{n}']:.2f}",
                  f"{result[f'ratio_{n}']:.2f}x", f"{result[f'max_rel_error_{n}']:.1e}")
    return t


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, table, argv)


if __name__ == "__main__":
    main()
