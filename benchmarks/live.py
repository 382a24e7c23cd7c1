"""End to end, live: how long after a window's last sample arrives its scores are ready.

A :class:`~benchmarks.workload.LoopedSource` plays street audio in real time,
in blocks of ``BLOCK`` samples handed over the moment their last sample is
due, like a sound card's callback, from its own thread. The engine reads them
from the ring buffer and runs frontend, model and event logic on the caller's
thread, as ``streamtag tag --mic`` does. A window's latency is
``WindowScores.done - WindowScores.arrival``: from the ring receiving the block
that completes the window to the model's scores for it (smoothing and event
tracking follow, in microseconds). Nothing on the engine's side sleeps; it
waits on the ring.

The networks are untrained, of the shapes the issue names (41-frame windows,
dense 1500 and 5000); one more configuration runs the model embedded in the
package as ``streamtag live`` does by default (its own window length and
hop), which is what a user of the default model waits for.

Each model is warmed up (numba, TorchScript's profiling executor,
allocations) by a short unmeasured run before its first configuration. Torch
runs one thread (``THREADS``), the setting :mod:`benchmarks.model` assumes for
live use; one configuration keeps torch's default to show why, one runs the
dense layers in int8 (``--int8``). "Core busy"
runs a Python busy loop in another process throughout. The long
configuration (10 minutes of audio in the full run, paced in real time) counts
dropped samples; every configuration checks that it scored every window the
audio holds. "model" columns time the scorer's calls that score a window (at
a 1-frame hop: one new first-layer column, then the rest of the network); the
rest of a window's latency is waiting to be woken, the frontend and Python.

Run: ``python -m benchmarks.live [--quick]``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import cdf_plot, standalone, summarize
from benchmarks.workload import FRAMES, SPEC, LoopedSource, model_file, scene
from streamtag.engine import Engine
from streamtag.modelfile import load_model

BLOCK = 512  # samples per sound card block: 23 ms, one hop
THREADS = 1


@dataclasses.dataclass(frozen=True)
class Config:
    dense: int
    hop: int | None  # frames; None: the model's own
    busy: bool = False
    threads: int | None = THREADS  # None: torch's default
    long: bool = False  # the dropped-samples run
    int8: bool = False  # dense layers in int8 (--int8)
    shipped: bool = False  # the model embedded in the package instead of an untrained network

    @property
    def name(self) -> str:
        return self.label()

    def label(self, model_hop: int | None = None, frames: int = FRAMES) -> str:
        """The name, with the hop the model chose where the configuration leaves it to the model,
        and the window length where it is not 41 frames."""
        hop = self.hop or model_hop
        model = "default model" if self.shipped else f"dense {self.dense}{' int8' if self.int8 else ''}"
        return (model + (f", hop {hop}" if hop else ", its hop")
                + (", core busy" if self.busy else "") + ("" if self.threads == THREADS else ", torch default threads")
                + (f", {frames} frames" if frames != FRAMES else ""))

    @property
    def model(self) -> tuple:
        """Which model file the configuration loads: configurations that share one share its warm-up."""
        return ("shipped",) if self.shipped else (self.dense, self.int8)


CONFIGS = (
    Config(1500, 1, long=True),
    Config(1500, 2),
    Config(1500, 4),
    Config(1500, 1, busy=True),
    Config(1500, 2, busy=True),
    Config(1500, 4, busy=True),
    Config(5000, 1),
    Config(5000, 1, busy=True),
    Config(1500, 1, threads=None),
    Config(1500, 1, int8=True),
    Config(1500, None, shipped=True),
)


def _seconds(config: Config, quick: bool) -> float:
    if quick:  # a 41-frame window takes 0.95 s, a 101-frame one 2.35 s
        return 3.0 if config.shipped else 2.0 if config.long else 1.2
    return 600.0 if config.long else 60.0


def expected_windows(samples: int, hop: int, window: int = FRAMES) -> int:
    """Windows of ``window`` frames every ``hop`` frames in ``samples`` model-rate samples."""
    frames = 0 if samples < SPEC.n_fft else 1 + (samples - SPEC.n_fft) // SPEC.hop_length
    return 0 if frames < window else 1 + (frames - window) // hop


class _Timed:
    """A model whose scorer's calls are timed when they score windows, to tell model time from the rest
    of the latency."""

    def __init__(self, model):
        self.model = model
        self.calls: list[float] = []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def scorer(self):
        scorer = self.model.scorer()
        push = scorer.push

        def timed(frames: np.ndarray, ends: np.ndarray) -> np.ndarray:
            t = time.perf_counter()
            out = push(frames, ends)
            if len(ends):
                self.calls.append(time.perf_counter() - t)
            return out

        scorer.push = timed
        return scorer


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def measure(model, config: Config, seconds: float, clip: np.ndarray, warmup: float = 0.0, progress=None) -> dict:
    """One live run of ``seconds`` of audio, after ``warmup`` seconds of the same, as a dict of figures."""
    timed = _Timed(model)
    engine = Engine(timed, hop_frames=config.hop)
    rate = SPEC.sample_rate
    busy = _busy() if config.busy else None
    try:
        if warmup:
            engine.run(LoopedSource(clip, rate, warmup, blocks=BLOCK))
            timed.calls.clear()
        latencies: list[float] = []

        def on_window(window) -> None:
            latencies.append(window.latency)
            if progress is not None and len(latencies) % 200 == 0:
                progress(window.end)

        source = LoopedSource(clip, rate, seconds, blocks=BLOCK)
        summary = engine.run(source, on_window=on_window)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return {
        "name": config.label(engine.hop_frames, engine.window_frames),
        "dense": config.dense, "int8": config.int8, "shipped": config.shipped, "hop": engine.hop_frames,
        "frames": engine.window_frames, "busy": config.busy,
        "threads": torch.get_num_threads(), "long": config.long, "audio_seconds": source.frames / rate,
        "wall_seconds": summary.wall_seconds, "windows": summary.windows,
        "expected_windows": expected_windows(source.frames, engine.hop_frames, engine.window_frames),
        "dropped_samples": summary.dropped_samples, "gaps": summary.gaps,
        "latency": summarize(latencies), "model": summarize(timed.calls),
    }


def run(quick: bool = False, progress=None) -> dict:
    """Measure every configuration; ``progress(description, done, total)`` in seconds of audio."""
    default_threads = torch.get_num_threads()
    total = sum(_seconds(c, quick) for c in CONFIGS)
    done = 0.0
    runs = []
    warm: set[tuple] = set()
    clip = scene()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            models = {c.model: load_model(device="cpu") if c.shipped
                      else load_model(model_file(tmp, c.dense), device="cpu", int8=c.int8) for c in CONFIGS}
            for config in CONFIGS:
                seconds = _seconds(config, quick)
                torch.set_num_threads(config.threads or default_threads)
                report = None if progress is None else \
                    (lambda s, d=done, n=config.name: progress(n, d + min(s, seconds), total))
                kind = config.model
                warmup = 0.0 if kind in warm else 1.2 if quick else 3.0  # numba, TorchScript, allocations
                warm.add(kind)
                runs.append(measure(models[kind], config, seconds, clip, warmup, report))
                done += seconds
                if progress is not None:
                    progress(config.name, done, total)
    finally:
        torch.set_num_threads(default_threads)
    long = next(r for r in runs if r["long"])
    int8 = next(r for r in runs if r["int8"] and r["hop"] == 1)
    return {"block": BLOCK, "frames": FRAMES, "runs": runs, "p99_ms": long["latency"]["p99_ms"],
            "int8_p99_ms": int8["latency"]["p99_ms"],
            "dropped_samples": long["dropped_samples"], "drop_seconds": long["audio_seconds"]}


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"End to end, live: ms from a window's last sample to its scores "
                    f"({result['frames']}-frame windows unless named, {result['block']}-sample blocks in real time)")
    for column in ("configuration", "audio s", "windows", "dropped", "p50", "p90", "p99", "max",
                   "model p50", "model p99"):
        t.add_column(column, justify="left" if column == "configuration" else "right")
    for r in result["runs"]:
        lat, mod = r["latency"], r["model"]
        windows = f"{r['windows']}" + ("" if r["windows"] == r["expected_windows"] else f" of {r['expected_windows']}")
        t.add_row(r["name"] + ("" if r["threads"] == THREADS else f" ({r['threads']})"), f"{r['audio_seconds']:.1f}",
                  windows, f"{r['dropped_samples']}",
                  *(f"{lat[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")),
                  f"{mod['p50_ms']:.2f}", f"{mod['p99_ms']:.2f}")
    return t


def plot(result: dict, folder: Path) -> list[Path]:
    curves = {r["name"]: r["latency"] for r in result["runs"]}
    return [cdf_plot(curves, Path(folder) / "live_latency.png",
                     "End-to-end latency, live (last sample of a window -> its scores)")]


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, table, argv)


if __name__ == "__main__":
    main()
