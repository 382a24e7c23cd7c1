"""Soak: the live path's memory over an hour of audio must stay flat.

A fresh process (so nothing else the benchmarks loaded counts) runs the live
path of ``streamtag tag --mic``, engine with its default settings and the
bundled default model at its default hop, fed by a :class:`~benchmarks.workload.LoopedSource` at
``SPEED`` times real time, with one torch thread as live use runs. Every
``EVERY`` seconds of audio it samples its own resident memory. Peak memory
is the process's maximum resident set size (``wait4``), start-up included.
The process ends as ``streamtag`` does (:func:`streamtag.cli.exit_now`), without
Python's shutdown, whose C++ destructors would read 128 MB of torch's CUDA
libraries back in only to tear them down. Beside it, the peaks of processes
that stop, the same way, after each step of the live path's start-up: import
torch (the pinned PyPI wheel is the CUDA build, which maps its CUDA libraries
even on a CPU), load the frontend's kernel (compiled ahead of time, so no numba), load
the model (TorchScript, frozen and optimised for inference): the floors under
the live path's own memory.

Resident memory counts the pages of shared libraries the process has mapped
from the page cache, and how many count depends on how the files entered the
page cache, not on streamtag: right after ``pip install`` had written them, the
same wheels measured 689 MB for ``import torch`` (415 MB of it mapped from
files); once the page cache had been dropped and the files read back, 472-495
MB, with the same 274 MB of anonymous memory (the process's own allocations and
the libraries' writable data) either way. The table splits the memory at the
end into those two parts.

Memory is flat when, after the first ``WARMUP`` of the audio (allocations that
happen once), the median of the last quarter of samples exceeds that of the
first quarter by at most ``FLAT_MB``: a leak of even a few bytes per window
(about 8000 windows an hour at the default hop, 155,000 at a 1-frame hop)
shows in an hour, allocator noise of a few MB does not.

Run: ``python -m benchmarks.soak [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.files import run_process
from benchmarks.report import new_figure, save_figure
from benchmarks.workload import SPEC, LoopedSource, scene
from streamtag.cli import exit_now
from streamtag.modelfile import DEFAULT_MODEL

SPEED = 30.0  # an hour of audio in two minutes, with room to keep up on a busy 2-core machine
EVERY = 30.0  # seconds of audio between memory samples
WARMUP = 0.1
FLAT_MB = 20.0
THREADS = 1
# What the peak is made of: processes that stop after start-up steps of the live path.
_EXIT = "\nfrom streamtag.cli import exit_now\nexit_now(0)"
FLOOR = "import torch, load the frontend kernel"  # what no live path can go under
FLOORS = {
    "import torch": "import torch" + _EXIT,
    FLOOR: "import torch\nfrom streamtag.frontend import Frontend\nFrontend()" + _EXIT,
    "all of the start-up: frontend kernel, model, engine":
        f"import torch\nfrom streamtag.engine import Engine\nfrom streamtag.modelfile import load_model\n"
        f"torch.set_num_threads({THREADS})\nEngine(load_model(device='cpu'))" + _EXIT,
}


def _child(model_path: str, seconds: float, speed: float, every: float) -> dict:
    """The soak itself, in the child process: figures as a dict."""
    import psutil
    import torch

    from streamtag.engine import Engine
    from streamtag.modelfile import load_model

    torch.set_num_threads(THREADS)
    engine = Engine(load_model(model_path, device="cpu"))
    process = psutil.Process()
    samples: list[tuple[float, float]] = []

    def on_window(window) -> None:
        if not samples or window.end >= samples[-1][0] + every:
            samples.append((window.end, process.memory_info().rss / 2 ** 20))

    summary = engine.run(LoopedSource(scene(), SPEC.sample_rate, seconds, speed=speed), on_window=on_window)
    samples.append((summary.seconds, process.memory_info().rss / 2 ** 20))
    memory = process.memory_info()
    return {"samples": samples, "anonymous_mb": (memory.rss - memory.shared) / 2 ** 20,
            "file_mb": memory.shared / 2 ** 20,
            "windows": summary.windows, "hop": engine.hop_frames,
            "dropped_samples": summary.dropped_samples, "wall_seconds": summary.wall_seconds}


def growth(samples) -> float:
    """MB the resident memory grew between the first and last quarter of the samples after ``WARMUP``."""
    t, rss = np.asarray(samples, dtype=np.float64).T
    rss = rss[t >= WARMUP * t[-1]]
    quarter = max(1, len(rss) // 4)
    return float(np.median(rss[-quarter:]) - np.median(rss[:quarter]))


def run(quick: bool = False, progress=None) -> dict:
    """Soak in a child process; ``progress(description, done, total)`` only says when it starts."""
    seconds, speed, every = (20.0, 20.0, 1.0) if quick else (3600.0, SPEED, EVERY)
    if progress is not None:
        progress(f"{seconds / 60:g} min of audio at {speed:g}x real time", 0, 1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        done = run_process([sys.executable, "-m", "benchmarks.soak", "--child", str(DEFAULT_MODEL), str(seconds),
                            str(speed), str(every)], folder)
        floors = {name: run_process([sys.executable, "-c", code], folder)["peak_mb"] for name, code in FLOORS.items()}
    result = json.loads(done["stdout"])
    result["floors_mb"] = floors
    result["floor_mb"] = floors[FLOOR]
    rss = [mb for _, mb in result["samples"]]
    result.update(audio_seconds=seconds, speed=speed, threads=THREADS, process_wall_s=done["wall_s"],
                  peak_mb=done["peak_mb"], start_mb=rss[0], end_mb=rss[-1], growth_mb=growth(result["samples"]))
    result["flat"] = result["growth_mb"] <= FLAT_MB
    return result


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"Soak: live path memory over {result['audio_seconds'] / 60:g} min of audio at "
                    f"{result['speed']:g}x real time (hop {result['hop']}, {result['threads']} torch thread)")
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("windows scored", f"{result['windows']}")
    t.add_row("dropped samples", f"{result['dropped_samples']}")
    t.add_row("resident memory at the first window (MB)", f"{result['start_mb']:.0f}")
    t.add_row("resident memory at the end (MB)", f"{result['end_mb']:.0f}")
    t.add_row("  of which anonymous: the process's allocations, the libraries' writable data (MB)",
              f"{result['anonymous_mb']:.0f}")
    t.add_row("  of which mapped from files: shared libraries, as many pages as the page cache maps (MB)",
              f"{result['file_mb']:.0f}")
    t.add_row("peak resident memory, start-up included (MB)", f"{result['peak_mb']:.0f}")
    for name, mb in result["floors_mb"].items():
        t.add_row(f"  for comparison, peak of a process that only does: {name} (MB)", f"{mb:.0f}")
    t.add_row(f"growth after the first {WARMUP:.0%}, last vs first quarter (MB)", f"{result['growth_mb']:+.1f}")
    t.add_row(f"flat (growth at most {FLAT_MB:g} MB)", "yes" if result["flat"] else "NO")
    return t


def plot(result: dict, folder: Path) -> list[Path]:
    t, rss = np.asarray(result["samples"]).T
    fig, ax = new_figure((8, 3.6))
    ax.plot(t / 60, rss, ".-", ms=3)
    ax.axhline(result["peak_mb"], color="grey", ls="--", lw=1,
               label=f"peak, start-up included: {result['peak_mb']:.0f} MB")
    ax.set_xlabel("audio played (minutes)")
    ax.set_ylabel("resident memory (MB)")
    ax.set_ylim(0, result["peak_mb"] * 1.15)
    ax.set_title(f"Soak: live path at {result['speed']:g}x real time, growth {result['growth_mb']:+.1f} MB")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return [save_figure(fig, Path(folder) / "soak_memory.png")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run that only proves the benchmark works")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "SECONDS", "SPEED", "EVERY"),
                        help="(internal) run the soak in this process and print its figures as JSON")
    args = parser.parse_args(argv)
    if args.child:
        model, seconds, speed, every = args.child
        print(json.dumps(_child(model, float(seconds), float(speed), float(every))))
        exit_now(0)
    from rich.console import Console

    Console().print(table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
