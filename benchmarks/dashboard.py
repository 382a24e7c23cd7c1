"""The live dashboard: what a frame costs to draw, and what drawing costs the audio path.

- ``render``: milliseconds to draw one frame (a fresh snapshot, the layout,
  every panel) into a truecolor terminal that discards its output, at
  80 x 24, 120 x 40 and 200 x 60, from an engine that has just tagged the
  demo scene with a full event log. ``1000 / p99`` is the refresh rate one
  core could sustain; the dashboard asks rich for 15 per second.
- ``live``: end-to-end latency (a window's last sample to its scores) and
  dropped samples of the live path: the demo scene in real time in 512-sample
  blocks, dense 1500, a 1-frame hop (a window every 23 ms, the most sensitive
  case), torch on one thread. Measured side by side, alternating, without a
  screen (the baseline) and with the dashboard refreshing into a discarding
  80 x 24 terminal. The dashboard draws on its own thread, just after the engine has dealt with a block
  and never takes a lock the engine waits on, so what it can cost is the time
  its Python holds the interpreter; the ratio of p99s shows how much. "frames/s"
  is how often the dashboard actually drew.

Run: ``python -m benchmarks.dashboard [--quick]``.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from rich.console import Console

from benchmarks.report import standalone, summarize, timings
from benchmarks.workload import SPEC, LoopedSource, model_file, scene
from streamtag.dashboard import HISTORY_FRAMES, REFRESH_PER_SECOND, Dashboard, EventLog, Setup, show
from streamtag.engine import Engine
from streamtag.modelfile import load_model
from streamtag.sources import ArraySource

SIZES = ((80, 24), (120, 40), (200, 60))
BLOCK = 512
HOP = 1


def _setup(engine: Engine, model, name: str) -> Setup:
    return Setup(source=name, source_rate=SPEC.sample_rate, model_name=model.name, model_rate=SPEC.sample_rate,
                 compute="CPU", thresholds=engine.tracker.on.copy(), hop_seconds=engine.hop_seconds)


def _null_console(width: int, height: int) -> Console:
    return Console(file=open(os.devnull, "w"), width=width, height=height, force_terminal=True,
                   color_system="truecolor")


def render_times(model, frames: int) -> dict:
    """Draw ``frames`` frames at each size after tagging the scene once."""
    engine = Engine(model, thresholds=0.45, history_frames=HISTORY_FRAMES)
    log = EventLog()
    engine.run(ArraySource(scene(), SPEC.sample_rate), on_event=log)
    board = Dashboard(engine.snapshot, _setup(engine, model, "scene"), log)
    out = {}
    for width, height in SIZES:
        console = _null_console(width, height)
        console.print(board)  # warm: styles, palette
        out[f"{width}x{height}"] = summarize(timings(lambda: console.print(board), frames))
    return out


def live_run(model, seconds: float, dashboard: bool, clip: np.ndarray) -> dict:
    engine = Engine(model, hop_frames=HOP, history_frames=HISTORY_FRAMES)
    latencies: list[float] = []
    snapshots = 0
    take = engine.snapshot

    def counted():  # the dashboard takes one snapshot per frame it draws
        nonlocal snapshots
        snapshots += 1
        return take()

    engine.snapshot = counted
    source = LoopedSource(clip, SPEC.sample_rate, seconds, blocks=BLOCK)
    on_window = lambda w: latencies.append(w.latency)  # noqa: E731
    if dashboard:
        summary, _ = show(engine, source, _setup(engine, model, "looped"), _null_console(80, 24),
                          on_window=on_window)
    else:
        summary = engine.run(source, on_window=on_window)
    return {"latency": latencies, "dropped": summary.dropped_samples, "audio_seconds": summary.seconds,
            "frames": snapshots, "wall_seconds": summary.wall_seconds}


def run(quick: bool = False) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = load_model(model_file(tmp, 1500), device="cpu")
        clip = scene()
        render = render_times(model, 20 if quick else 300)
        live_run(model, 1.0 if quick else 3.0, False, clip)  # warm numba, TorchScript, allocations
        seconds = 2.0 if quick else 30.0
        runs = {False: [], True: []}
        for _ in range(2):  # alternate, so a change in the machine's load hits both alike
            for dashboard in (False, True):
                runs[dashboard].append(live_run(model, seconds, dashboard, clip))
    finally:
        torch.set_num_threads(threads)

    def pooled(results: list[dict]) -> dict:
        return {"latency": summarize([x for r in results for x in r["latency"]]),
                "dropped_samples": sum(r["dropped"] for r in results),
                "audio_seconds": sum(r["audio_seconds"] for r in results),
                "frames_per_second": sum(r["frames"] for r in results) / sum(r["wall_seconds"] for r in results)}

    live = {"baseline": pooled(runs[False]), "dashboard": pooled(runs[True])}
    base, shown = live["baseline"]["latency"], live["dashboard"]["latency"]
    return {"render": render, "live": live, "refresh_per_second": REFRESH_PER_SECOND, "hop": HOP, "block": BLOCK,
            "render_p99_ms_80x24": render["80x24"]["p99_ms"],
            "sustainable_fps_80x24": 1000 / render["80x24"]["p99_ms"],
            "p99_ratio": shown["p99_ms"] / base["p99_ms"], "p50_ratio": shown["p50_ms"] / base["p50_ms"],
            "dropped_samples": live["dashboard"]["dropped_samples"]}


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"Dashboard: drawing a frame, and the live path's latency with and without it "
                    f"(ms; it refreshes {result['refresh_per_second']} times a second)")
    for column in ("measurement", "n", "p50", "p99", "max", "notes"):
        t.add_column(column, justify="left" if column in ("measurement", "notes") else "right")
    for size, s in result["render"].items():
        t.add_row(f"draw one frame, {size.replace('x', ' x ')}", str(s["n"]),
                  *(f"{s[k]:.2f}" for k in ("p50_ms", "p99_ms", "max_ms")), f"{1000 / s['p99_ms']:.0f} frames/s at p99")
    for name, r in result["live"].items():
        lat = r["latency"]
        notes = f"{r['audio_seconds']:.0f} s of audio, {r['dropped_samples']} samples dropped"
        if name == "dashboard":
            notes += f", drew {r['frames_per_second']:.1f} frames/s"
        run = "no screen (baseline)" if name == "baseline" else "with the dashboard"
        t.add_row(f"live, {run}, {result['hop']}-frame hop", str(lat["n"]),
                  *(f"{lat[k]:.2f}" for k in ("p50_ms", "p99_ms", "max_ms")), notes)
    t.add_row("live, dashboard / baseline", "", f"{result['p50_ratio']:.2f}x", f"{result['p99_ratio']:.2f}x", "", "")
    return t


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, table, argv)


if __name__ == "__main__":
    main()
