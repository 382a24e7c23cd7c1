"""How benchmark results are recorded: the machine they came from, latency
summaries, Markdown tables and PNG plots.

A figure means little without the machine, the load on it, the versions and
the commit it was measured with, so every part's JSON carries :func:`machine`.
Latency distributions are kept as summaries plus a quantile curve
(:data:`QUANTILES`) instead of every sample: small enough to commit, detailed
enough to plot the tail.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("streamtag", "torch", "torchaudio", "numpy", "numba", "rocket-fft", "soxr", "soundfile", "librosa")
#: Percentiles kept for each latency distribution: every 1% to 99, then every 0.1% into the tail.
QUANTILES = np.round(np.concatenate([np.arange(0, 99, 1.0), np.arange(99, 100, 0.1), [100.0]]), 1)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def timings(fn, repeats: int) -> np.ndarray:
    """Wall seconds of each of ``repeats`` calls of ``fn()``: their minimum is the least disturbed
    figure on a shared machine, their distribution the latency."""
    seconds = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        seconds[i] = time.perf_counter() - t
    return seconds


def speed_probe() -> dict:
    """How fast the machine is right now, by three fixed workloads the figures lean on: a Python loop
    (the interpreter), summing 128 MB (memory bandwidth) and torch's 1500 x 1500 matrix-vector product
    on one thread (a live window's largest layer).

    Shared machines differ and drift: with nothing changed on its path, the live p99 measured 7.97 ms
    on one 2-core virtual machine and 2.51 on another of the same kind hours later, and this product
    243-283 us and 108. Taken just before each part, the probe tells such a difference of machine from
    a change of code.
    """
    import torch

    def loop() -> int:
        total = 0
        for i in range(200_000):
            total += i
        return total

    memory = np.ones(2 ** 24)  # 128 MB of float64: four times the largest L3 cache of the machines used
    weights, x = torch.ones(1500, 1500), torch.ones(1, 1500)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        product = timings(lambda: torch.nn.functional.linear(x, weights), 200)
    finally:
        torch.set_num_threads(threads)
    return {"python_loop_ms": round(timings(loop, 5).min() * 1e3, 2),
            "memory_gb_s": round(memory.nbytes / timings(memory.sum, 5).min() / 1e9, 1),
            "product_us": round(float(np.median(product)) * 1e6, 1)}


def machine() -> dict:
    """Where and when a result is measured: CPU, cores, load, memory, how fast the machine runs now
    (:func:`speed_probe`), versions, commit."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2 ** 30, 1)
    except ImportError:
        memory_gb = None
    commit = _git("rev-parse", "HEAD")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "memory_gb": memory_gb,
        "probe": speed_probe(),
        "platform": platform.platform(),
        "versions": versions,
        "commit": commit,
        # tracked files changed since that commit: the figures are not exactly the commit's (the results
        # the run itself is writing do not count)
        "dirty": None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no", "--",
                                                       ".", ":(exclude)benchmarks/results")),
    }


def describe(m: dict) -> str:
    """One Markdown line saying where a part was measured."""
    v = m["versions"]
    commit = f"commit `{m['commit'][:10]}`{' (with local changes)' if m['dirty'] else ''}" if m["commit"] \
        else "no git commit"
    load = f", load {m['load'][0]:.1f}" if m.get("load") else ""
    memory = f", {m['memory_gb']} GB" if m.get("memory_gb") else ""
    p = m.get("probe")  # absent from parts measured before it existed
    probe = (f"; speed probe: Python loop {p['python_loop_ms']:.1f} ms, memory {p['memory_gb_s']:.0f} GB/s, "
             f"1500 x 1500 product {p['product_us']:.0f} us") if p else ""
    return (f"{m['date']} on {m['cpu']} ({m['cores']} cores{load}{memory}{probe}), {m['platform']}; "
            f"Python {v['python']}, torch {v['torch']}, numpy {v['numpy']}, numba {v['numba']}; {commit}")


def summarize(seconds) -> dict:
    """Latencies in seconds -> count, mean, p50/p90/p99/max and the quantile curve, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if not len(ms):
        return {"n": 0}
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"n": int(len(ms)), "mean_ms": float(ms.mean()), "p50_ms": float(p50), "p90_ms": float(p90),
            "p99_ms": float(p99), "max_ms": float(ms.max()),
            "quantiles_ms": [round(float(x), 4) for x in np.percentile(ms, QUANTILES)]}


def new_figure(figsize: tuple[float, float]):
    """``(fig, ax)``: a matplotlib figure drawn off screen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def save_figure(fig, path) -> Path:
    """Lay ``fig`` out, write it as a PNG at ``path`` and free it; the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def cdf_plot(curves: dict[str, dict], path: Path, title: str) -> Path:
    """Plot latency distributions (``summarize`` results by label) as tail
    curves: the x axis is 'fraction of windows slower than', on a log scale,
    so p50, p99 and the maximum are equally readable."""
    fig, ax = new_figure((8, 4.8))
    exceed = 1 - QUANTILES / 100
    for label, s in curves.items():
        if s.get("n"):
            keep = exceed >= 1 / s["n"]  # finer quantiles than the sample count would be interpolation
            line, = ax.plot(exceed[keep], np.asarray(s["quantiles_ms"])[keep],
                            label=f"{label} (p99 {s['p99_ms']:.2f} ms)")
            ax.plot([1 / s["n"]], [s["max_ms"]], ".", color=line.get_color())  # the slowest window
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("fraction of windows slower (log; dots: the slowest window)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return save_figure(fig, path)


def markdown(table) -> str:
    """A rich Table as a Markdown table, so the terminal and the committed file show the same rows."""

    def text(cell) -> str:
        return str(getattr(cell, "plain", cell)).replace("|", "\\|").replace("\n", " ")

    columns = table.columns
    lines = [f"**{text(table.title)}**", ""] if table.title else []
    lines.append("| " + " | ".join(text(c.header) for c in columns) + " |")
    lines.append("|" + "|".join("---:" if c.justify == "right" else "---" for c in columns) + "|")
    for row in zip(*(list(c.cells) for c in columns)):
        lines.append("| " + " | ".join(text(cell) for cell in row) + " |")
    if table.caption:
        lines += ["", text(table.caption)]
    return "\n".join(lines)


def standalone(doc: str, run, table, argv: list[str] | None = None) -> None:
    """``main()`` of a benchmark module run on its own (``python -m benchmarks.NAME [--quick]``):
    measure with ``run(quick)`` and print ``table(result)``."""
    import argparse

    from rich.console import Console

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run that only proves the benchmark works")
    args = parser.parse_args(argv)
    Console().print(table(run(quick=args.quick)))
