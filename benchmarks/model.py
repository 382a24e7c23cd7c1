"""Network cost per window: eager PyTorch, the TorchScript model file, int8 dense layers.

The live engine classifies one window per hop, at batch 1, on a machine whose
other core runs audio capture and the frontend; offline evaluation classifies
many windows at once. So each variant is timed at batch 1 and at batch
``BATCH``, for the paper's dense 5000 (no batch norm) and the study's dense 1500
(batch norm), all with ``THREADS`` torch threads, side by side in one run.
Int8 changes the outputs a little; the table shows by how much, on random
feature-like windows through a network with random weights.

Back-to-back calls find the weights in the CPU's caches. Live, a window comes
every 23 ms and the caches have gone cold by then (on a shared VM, other
tenants' work evicts them too within a millisecond or so). So batch 1 is also timed
with ``GAP`` of busy work before a call (a spinning loop, so that the core
stays awake as it does live) and, in the same rounds, right after it, as the
medians of the calls: the first, not the back-to-back minimum, is what the
live benchmark's model column sees.

Run: ``python -m benchmarks.model [--quick]``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from streamtag.features import FeatureSpec
from streamtag.model import PiczakCNN
from streamtag.modelfile import load_model, save_model
from benchmarks.report import standalone, timings

THREADS = 1  # the live engine's setting: the other core captures audio and runs the frontend
BATCH = 64
GAP = 0.005  # seconds of other work before each "after a gap" call
FRAMES = 41
SPEC = FeatureSpec()


def _per_window_ms(fn, x: torch.Tensor, calls: int, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(3):  # warm-up: TorchScript's profiling executor specialises on early calls
            fn(x)
        return timings(lambda: [fn(x) for _ in range(calls)], repeats).min() / (calls * x.shape[0]) * 1e3


def _warm_and_after_gap_ms(fn, x: torch.Tensor, calls: int) -> tuple[float, float]:
    """Median ms of ``fn(x)`` right after another call, and after ``GAP`` seconds of spinning, over ``calls``
    rounds that take one of each in turn, so that a shared machine's drifting speed falls on both alike."""
    warm, cold = [], []
    with torch.inference_mode():
        for _ in range(calls):
            end = time.perf_counter() + GAP
            while time.perf_counter() < end:
                pass
            t = time.perf_counter()
            fn(x)
            t1 = time.perf_counter()
            fn(x)
            cold.append(t1 - t)
            warm.append(time.perf_counter() - t1)
    return float(np.median(warm)) * 1e3, float(np.median(cold)) * 1e3


def _windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, 2, SPEC.n_mels, FRAMES)).astype(np.float32)
    x[:, 0] = x[:, 0] * 20 - 50
    x[:, 1] *= 10
    return x


def run(quick: bool = False) -> dict:
    """Measure and return per-window costs (ms), ratios and int8 output changes as a dict."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    repeats = 2 if quick else 5
    x1 = torch.from_numpy(_windows(1))
    xb = torch.from_numpy(_windows(8 if quick else BATCH, seed=1))
    check = _windows(16 if quick else 512, seed=2)
    result: dict = {"threads": THREADS, "batch": xb.shape[0], "frames": FRAMES, "gap_s": GAP}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for dense, batch_norm in ((1500, True), (5000, False)):
                torch.manual_seed(0)
                net = PiczakCNN(10, frames=FRAMES, dense=dense, batch_norm=batch_norm).eval()
                net.set_normalization(mean=[[[-50.0]], [[0.0]]], std=[[[20.0]], [[10.0]]])
                models = {"eager": net}
                for name, quantize in (("script", False), ("int8", True)):
                    path = save_model(Path(tmp) / f"{name}{dense}.pt", net, classes=[f"c{i}" for i in range(10)],
                                      spec=SPEC, window_frames=FRAMES, hop_frames=10, quantize=quantize)
                    models[name] = load_model(path, device="cpu")
                calls1 = 3 if quick else max(20, 20000 // dense)
                for name, model in models.items():
                    fn = model if name == "eager" else model.module
                    result[f"{name}_b1_ms_{dense}"] = _per_window_ms(fn, x1, calls1, repeats)
                    result[f"{name}_batched_ms_{dense}"] = _per_window_ms(fn, xb, 1 if quick else 3, repeats)
                for name in ("script", "int8"):
                    warm, cold = _warm_and_after_gap_ms(models[name].module, x1, 5 if quick else 200)
                    result[f"{name}_warm_ms_{dense}"], result[f"{name}_gap_ms_{dense}"] = warm, cold
                    result[f"{name}_gap_ratio_{dense}"] = cold / warm
                torch.set_num_threads(2)
                result[f"script_b1_2threads_ms_{dense}"] = _per_window_ms(models["script"].module, x1, calls1, repeats)
                torch.set_num_threads(THREADS)
                predict_s = timings(lambda: [models["script"].predict(x1.numpy()) for _ in range(calls1)], repeats).min()
                result[f"predict_b1_ms_{dense}"] = predict_s / calls1 * 1e3

                exact = models["script"].predict(check)
                quant = models["int8"].predict(check)
                result[f"int8_max_abs_diff_{dense}"] = float(np.abs(quant - exact).max())
                result[f"int8_mean_abs_diff_{dense}"] = float(np.abs(quant - exact).mean())
                result[f"int8_flips_{dense}"] = float(((quant >= 0.5) != (exact >= 0.5)).mean())
                for b in ("b1", "batched"):
                    result[f"script_vs_eager_{b}_{dense}"] = result[f"eager_{b}_ms_{dense}"] / result[f"script_{b}_ms_{dense}"]
                    result[f"int8_vs_script_{b}_{dense}"] = result[f"script_{b}_ms_{dense}"] / result[f"int8_{b}_ms_{dense}"]
                result[f"batching_gain_{dense}"] = result[f"script_b1_ms_{dense}"] / result[f"script_batched_ms_{dense}"]
    finally:
        torch.set_num_threads(previous_threads)
    return result


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"Piczak CNN, {result['frames']}-frame windows: ms per window "
                    f"({result['threads']} torch thread{'s' if result['threads'] > 1 else ''}, "
                    f"batched = {result['batch']})")
    t.add_column("what")
    t.add_column("dense 1500 + BN", justify="right")
    t.add_column("dense 5000", justify="right")
    denses = (1500, 5000)

    def row(label, key, fmt):
        t.add_row(label, *(fmt.format(result[key.format(d=d)]) for d in denses))

    for b, label in (("b1", "batch 1"), ("batched", "batched")):
        row(f"eager, {label}", "eager_" + b + "_ms_{d}", "{:.3f}")
        row(f"TorchScript, {label}", "script_" + b + "_ms_{d}", "{:.3f}")
        row(f"TorchScript int8 dense, {label}", "int8_" + b + "_ms_{d}", "{:.3f}")
        row("  TorchScript speed-up vs eager", "script_vs_eager_" + b + "_{d}", "{:.2f}x")
        row("  int8 speed-up vs TorchScript", "int8_vs_script_" + b + "_{d}", "{:.2f}x")
    gap = f"{result['gap_s'] * 1e3:g} ms"
    for name, label in (("script", "TorchScript"), ("int8", "TorchScript int8 dense")):
        row(f"{label}, batch 1, right after another call (median)", name + "_warm_ms_{d}", "{:.3f}")
        row(f"{label}, batch 1, after {gap} of other work (median)", name + "_gap_ms_{d}", "{:.3f}")
        row("  after the gap / right after another call", name + "_gap_ratio_{d}", "{:.1f}x")
    row("TorchScript, batch 1, 2 threads", "script_b1_2threads_ms_{d}", "{:.3f}")
    row("TaggerModel.predict, batch 1", "predict_b1_ms_{d}", "{:.3f}")
    row("batching gain (TorchScript)", "batching_gain_{d}", "{:.1f}x")
    row("int8: max |change| in probability", "int8_max_abs_diff_{d}", "{:.4f}")
    row("int8: mean |change| in probability", "int8_mean_abs_diff_{d}", "{:.5f}")
    row("int8: decisions flipped at 0.5", "int8_flips_{d}", "{:.2%}")
    return t


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, table, argv)


if __name__ == "__main__":
    main()
