"""The model on CUDA: per-window latency at batch 1 and batch throughput, with and without CUDA graphs.

At batch 1 a GPU spends most of a window's time launching kernels and
copying, not computing; a CUDA graph replays the whole network's launches as
one. Each call here is what the live engine pays per window: copy the window
to the device, run the network, copy the probabilities back (which waits for
the GPU). Calls are timed one by one, for p50 and p99. Throughput is windows
per second at batch ``BATCHES`` with the same copies, the offline case.

Variants: eager PyTorch, the TorchScript model file (what ``load_model``
gives on a GPU), and each captured in a CUDA graph, for dense 1500 with batch
norm and dense 5000. Skipped, with a note, where no CUDA device is present.

Run: ``python -m benchmarks.gpu [--quick]``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import cdf_plot, standalone, summarize
from benchmarks.workload import FRAMES, SPEC, model_file, network

BATCHES = (256, 2048)


def _windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, 2, SPEC.n_mels, FRAMES)).astype(np.float32)
    x[:, 0] = x[:, 0] * 20 - 50
    x[:, 1] *= 10
    return x


def _graphed(fn, batch: int):
    """``fn`` captured in a CUDA graph for a fixed ``batch``: a function of a host window array."""
    static_in = torch.zeros((batch, 2, SPEC.n_mels, FRAMES), device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(5):  # warm up off the capture stream (TorchScript specialises on early calls)
            fn(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_in)

    def call(x: np.ndarray) -> np.ndarray:
        static_in.copy_(torch.from_numpy(x))
        graph.replay()
        return static_out.cpu().numpy()

    return call


def _plain(fn):
    def call(x: np.ndarray) -> np.ndarray:
        return fn(torch.from_numpy(x).to("cuda")).cpu().numpy()

    return call


def _measure(fn, graphed: bool, one: np.ndarray, expected: np.ndarray, big: dict, calls: int, quick: bool) -> dict:
    one_call = _graphed(fn, 1) if graphed else _plain(fn)
    np.testing.assert_allclose(one_call(one), expected, atol=1e-4)  # the same network gives the same answer
    for _ in range(20):
        one_call(one)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        one_call(one)
        times.append(time.perf_counter() - t)
    entry = {"batch1": summarize(times)}
    for b, x in big.items():
        many = _graphed(fn, b) if graphed else _plain(fn)
        many(x)
        reps = 3 if quick else 30
        t = time.perf_counter()
        for _ in range(reps):
            many(x)
        entry[f"windows_per_s_{b}"] = reps * b / (time.perf_counter() - t)
    return entry


def run(quick: bool = False) -> dict:
    """Measure on the first CUDA device; ``{"skipped": why}`` where there is none."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine"}
    from streamtag.modelfile import load_model

    calls = 50 if quick else 3000
    result: dict = {"device": torch.cuda.get_device_name(0), "cuda": torch.version.cuda, "calls": calls,
                    "batches": list(BATCHES), "variants": {}}
    one = _windows(1)
    big = {b: _windows(b, seed=1) for b in BATCHES}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for dense in (1500, 5000):
            model = load_model(model_file(tmp, dense), device="cuda")
            eager = network(dense).to("cuda")
            fns = {"eager": lambda x, m=eager: m.probabilities(m(x)), "TorchScript": model.module}
            expected = model.predict(one)
            for name, fn in fns.items():
                for graphed in (False, True):
                    label = f"dense {dense}, {name}{' + CUDA graph' if graphed else ''}"
                    try:
                        result["variants"][label] = _measure(fn, graphed, one, expected, big, calls, quick)
                    except RuntimeError as exc:  # a capture TorchScript's executor refuses: say so, go on
                        result["variants"][label] = {"error": str(exc).strip().splitlines()[0]}
    return result


def table(result: dict):
    from rich.table import Table

    if "skipped" in result:
        t = Table(title="Model on CUDA")
        t.add_column("skipped")
        t.add_row(result["skipped"])
        return t
    t = Table(title=f"Model on CUDA: {result['device']} (CUDA {result['cuda']}), {FRAMES}-frame windows, "
                    f"copies to and from the device included")
    t.add_column("variant")
    for column in ("batch 1 p50 ms", "p99 ms", "max ms", *(f"windows/s at {b}" for b in result["batches"])):
        t.add_column(column, justify="right")
    for label, v in result["variants"].items():
        if "error" in v:
            t.add_row(label, f"failed: {v['error']}", *[""] * (2 + len(result["batches"])))
            continue
        s = v["batch1"]
        t.add_row(label, f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s['max_ms']:.3f}",
                  *(f"{v[f'windows_per_s_{b}']:,.0f}" for b in result["batches"]))
    return t


def plot(result: dict, folder: Path) -> list[Path]:
    if "skipped" in result:
        return []
    curves = {label: v["batch1"] for label, v in result["variants"].items() if "batch1" in v}
    return [cdf_plot(curves, Path(folder) / "gpu_latency.png", f"Per-window latency at batch 1, {result['device']}")]


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, table, argv)


if __name__ == "__main__":
    main()
