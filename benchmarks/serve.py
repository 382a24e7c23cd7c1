"""Serve: how many live streams `streamtag serve` carries on this machine, one worker process per core.

A server (``streamtag serve --workers CORES``: one worker process per core,
each a whole server with the command's defaults: the bundled default model at
its hop, one torch thread, a batch waits at most 20 ms) runs on loopback,
started from a child process. N simulated sensors run in another child
process (asyncio, websockets): each streams the demo street scene, looped from
its own offset, as 22.05 kHz 16-bit mono live audio (``"live": true``), in
blocks of 20-100 ms drawn afresh for each block and sent when a sound card
would have delivered them, and reads its events. After a warm-up the server's
figures are reset and taken over a measuring window:

- latency: from the arrival of the message holding a window's last sample to
  that window's result sent (or ready to send, when it decided no event), p50
  and p99 over each worker's last 20,000 windows, merged, as the server
  measures it;
- windows per second scored, in how many ticks (network calls);
- CPU: the workers' and the sensors' process time over the window, in cores;
- memory per stream: the workers' resident memory with N streams open, less
  theirs before any client connected, over N;
- drops: samples the server dropped (a live stream whose audio waited more
  than 2 s) and sensors that fell behind their schedule by more than one block.

N grows until a step misses p99 <= 100 ms with no drops; the largest N that
held is the figure. The server and the sensors share this machine's cores, as
a real deployment's sensors would not: the sensors' CPU is reported beside the
server's so the server's share can be read off.

The baseline, in the same run: the status quo of one process per stream,
``streamtag tag --raw -`` fed the same live audio on standard input, 4 at
once: CPU and resident memory per stream, and the stream count this machine
could carry that way (cores over CPU per stream, memory over resident memory
per stream).

Run: ``python -m benchmarks.serve [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks.report import REPO, new_figure, save_figure
from benchmarks.workload import SPEC, scene

P99_TARGET_MS = 100.0
WARMUP_S = 5.0
MEASURE_S = 12.0
STEPS = (25, 50, 100, 200, 300, 400, 500, 600, 800, 1000)
BLOCK_MS = (20, 100)
BASELINE_PROCESSES = 4
BASELINE_SECONDS = 12.0


# -- the server child ----------------------------------------------------------


def _server_child(port_file: str, workers: int) -> None:
    """Serve on a free port (written to ``port_file``) with ``workers`` processes; answer "stats" and
    "reset" lines on standard input with the workers' figures merged."""
    from streamtag.server import Limits, ServeConfig, Workers

    running = Workers(ServeConfig(port=0, limits=Limits(max_streams=100000)), workers)
    idle_mb = running.stats()["rss_mb"]
    with open(port_file + ".tmp", "w") as f:
        f.write(str(running.port))
    os.replace(port_file + ".tmp", port_file)
    for line in sys.stdin:
        if line.strip() == "reset":
            running.reset_stats()
        stats = running.stats()
        stats.pop("each")
        print(json.dumps({**stats, "idle_rss_mb": idle_mb, "wall": time.perf_counter()}), flush=True)
    running.stop()


# -- the sensors child ---------------------------------------------------------


async def _sensor(url: str, audio: np.ndarray, offset: int, start: float, stop: float, rng, figures: dict) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    rate = SPEC.sample_rate
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    try:
        async with connect(url, compression=None, max_size=None) as ws:
            await ws.send(json.dumps({"rate": rate, "channels": 1, "sample_type": "s16", "live": True}))
            json.loads(await ws.recv())  # ready
            reader = asyncio.ensure_future(_read(ws, figures))
            t0, sent = time.perf_counter(), 0
            while time.perf_counter() < stop:
                n = int(rate * rng.uniform(*BLOCK_MS) / 1000)
                due = t0 + (sent + n) / rate  # a sound card hands the block over when its last sample is in
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif -wait > BLOCK_MS[1] / 1000:
                    figures["late"] += 1  # this sensor fell a whole block behind its clock
                at = (offset + sent) % len(audio)
                block = np.take(audio, np.arange(at, at + n), mode="wrap")
                await ws.send(block.tobytes())
                sent += n
            await ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(reader, 30)
            figures["completed"] += 1
    except (ConnectionClosed, OSError, asyncio.TimeoutError) as exc:
        figures["failed"] += 1
        figures["errors"].append(type(exc).__name__ + ": " + str(exc)[:200])


async def _read(ws, figures: dict) -> None:
    async for message in ws:
        for line in message.splitlines():
            obj = json.loads(line)
            if obj["type"] == "event":
                figures["events"] += 1
            elif obj["type"] == "dropped":
                figures["dropped_samples"] += obj["samples"]


def _sensors_child(url: str, n: int, seconds: float, ramp: float) -> None:
    """Run ``n`` sensors for ``seconds`` (starts spread over ``ramp``); print figures as JSON."""
    audio = (scene() * 32767).astype("<i2")
    figures = {"sensors": n, "completed": 0, "failed": 0, "late": 0, "events": 0, "dropped_samples": 0,
               "errors": []}

    async def main() -> None:
        now = time.perf_counter()
        rng = np.random.default_rng(0)
        starts = now + np.sort(rng.uniform(0, ramp, n))
        await asyncio.gather(*(_sensor(url, audio, int(rng.integers(len(audio))), float(s), now + ramp + seconds,
                                       np.random.default_rng(k), figures) for k, s in enumerate(starts)))

    asyncio.run(main())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    figures["cpu_s"] = usage.ru_utime + usage.ru_stime
    figures["errors"] = figures["errors"][:5]
    print(json.dumps(figures))


# -- the parent ----------------------------------------------------------------


class _ServerProcess:
    def __init__(self, folder, workers: int):
        self.port_file = os.path.join(folder, "port")
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serve", "--server", self.port_file,
                                      str(workers)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True)
        deadline = time.monotonic() + 120
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the benchmark server did not start")
            time.sleep(0.1)
        self.url = f"ws://127.0.0.1:{open(self.port_file).read()}/"

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _step(server: _ServerProcess, n: int, warmup: float, measure: float) -> dict:
    ramp = min(3.0, warmup / 2)
    sensors = subprocess.Popen([sys.executable, "-m", "benchmarks.serve", "--sensors", server.url, str(n),
                                str(warmup - ramp + measure + 1.0), str(ramp)], stdout=subprocess.PIPE,
                               cwd=REPO, text=True)
    time.sleep(warmup)
    before = server.ask("reset")
    time.sleep(measure)
    after = server.ask("stats")
    load = json.loads(sensors.communicate(timeout=300)[0])
    wall = after["wall"] - before["wall"]
    held = (after["latency_p99_ms"] <= P99_TARGET_MS and after["dropped_samples"] == 0 and load["failed"] == 0
            and load["late"] == 0 and load["dropped_samples"] == 0)
    return {"streams": n, "p50_ms": after["latency_p50_ms"], "p99_ms": after["latency_p99_ms"],
            "windows_per_s": after["windows"] / wall, "ticks_per_s": after["ticks"] / wall,
            "server_cpu": (after["cpu_s"] - before["cpu_s"]) / wall, "sensors_cpu": load["cpu_s"] / (
                warmup + measure + 1.0), "mb_per_stream": (after["rss_mb"] - after["idle_rss_mb"]) / n,
            "device": after["device"], "server_dropped_samples": after["dropped_samples"], "sensors_late": load["late"],
            "sensors_failed": load["failed"], "events": load["events"], "errors": load["errors"], "held": held}


def _baseline(seconds: float, processes: int) -> dict:
    """One ``streamtag tag --raw -`` process per stream, fed live audio: CPU and memory per stream."""
    import psutil

    audio = (scene() * 32767).astype("<i2")
    rate = SPEC.sample_rate
    procs = [subprocess.Popen([sys.executable, "-m", "streamtag", "tag", "--raw", "--rate", str(rate), "--threads",
                               "1", "-q", "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=REPO)
             for _ in range(processes)]
    watched = [psutil.Process(p.pid) for p in procs]
    time.sleep(3.0)  # start-up: imports, the model
    cpu0 = sum(sum(w.cpu_times()[:2]) for w in watched)
    t0, sent, peak = time.perf_counter(), 0, 0.0
    block = rate // 20
    while time.perf_counter() - t0 < seconds:
        at = sent % len(audio)
        data = np.take(audio, np.arange(at, at + block), mode="wrap").tobytes()
        for p in procs:
            p.stdin.write(data)
            p.stdin.flush()
        sent += block
        peak = max(peak, sum(w.memory_info().rss for w in watched) / 2 ** 20)
        time.sleep(max(0.0, t0 + sent / rate - time.perf_counter()))
    cpu = (sum(sum(w.cpu_times()[:2]) for w in watched) - cpu0) / (time.perf_counter() - t0)
    for p in procs:
        p.stdin.close()
        p.wait(60)
    cores = os.cpu_count() or 1
    memory = psutil.virtual_memory().total / 2 ** 20
    per_cpu, per_mb = cpu / processes, peak / processes
    return {"processes": processes, "cpu_per_stream": per_cpu, "mb_per_stream": per_mb,
            "streams_by_cpu": cores / per_cpu, "streams_by_memory": memory / per_mb,
            "streams": int(min(cores / per_cpu, memory / per_mb))}


def run(quick: bool = False, progress=None) -> dict:
    import tempfile

    steps = (2, 4) if quick else STEPS
    warmup, measure = (2.0, 2.0) if quick else (WARMUP_S, MEASURE_S)
    result: dict = {"steps": [], "p99_target_ms": P99_TARGET_MS, "block_ms": list(BLOCK_MS), "cores": os.cpu_count(),
                    "hop_frames": None}
    workers = os.cpu_count() or 1
    result["workers"] = workers
    with tempfile.TemporaryDirectory() as folder:
        server = _ServerProcess(folder, workers)
        try:
            for i, n in enumerate(steps):
                if progress is not None:
                    progress(f"{n} streams", i, len(steps) + 1)
                step = _step(server, n, warmup, measure)
                result["steps"].append(step)
                if not step["held"]:
                    break
                time.sleep(2.0)  # the last step's sensors have closed
        finally:
            server.close()
    if progress is not None:
        progress("baseline: a process per stream", len(steps), len(steps) + 1)
    result["baseline"] = _baseline(2.0 if quick else BASELINE_SECONDS, 2 if quick else BASELINE_PROCESSES)
    from streamtag.modelfile import DEFAULT_MODEL, read_metadata

    result["hop_frames"] = read_metadata(DEFAULT_MODEL)["hop_frames"]
    held = [s["streams"] for s in result["steps"] if s["held"]]
    result["max_streams"] = max(held) if held else 0
    result["device"] = result["steps"][0]["device"]
    return result


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"streamtag serve: N live sensors on loopback, {result['block_ms'][0]}-{result['block_ms'][1]} ms "
                    f"blocks, default model at hop {result['hop_frames']} on {result['device']}, {result['workers']} worker "
                    f"processes (--workers, one per core); held = p99 <= {result['p99_target_ms']:g} "
                    "ms, no drops")
    for column in ("streams", "p50 (ms)", "p99 (ms)", "windows/s", "ticks/s", "server CPU (cores)",
                   "sensors CPU (cores)", "MB per stream", "dropped", "late sensors", "held"):
        t.add_column(column, justify="left" if column == "held" else "right")
    for s in result["steps"]:
        t.add_row(str(s["streams"]), f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", f"{s['windows_per_s']:.0f}",
                  f"{s['ticks_per_s']:.1f}", f"{s['server_cpu']:.2f}", f"{s['sensors_cpu']:.2f}",
                  f"{s['mb_per_stream']:.2f}", f"{s['server_dropped_samples']}", f"{s['sensors_late']}",
                  "yes" if s["held"] else "NO")
    b = result["baseline"]
    t.add_row(f"baseline: a process per stream, {b['processes']} run", "", "", "", "",
              f"{b['cpu_per_stream'] * b['processes']:.2f}", "", f"{b['mb_per_stream']:.0f}", "", "",
              f"at most {b['streams']} streams ({b['streams_by_cpu']:.0f} by CPU, "
              f"{b['streams_by_memory']:.0f} by memory)")
    return t


def plot(result: dict, folder) -> list:
    from pathlib import Path

    steps = result["steps"]
    n = [s["streams"] for s in steps]
    fig, ax = new_figure((8, 4))
    ax.plot(n, [s["p50_ms"] for s in steps], "o-", label="p50")
    ax.plot(n, [s["p99_ms"] for s in steps], "o-", label="p99")
    ax.axhline(result["p99_target_ms"], color="grey", ls="--", lw=1, label=f"target p99 {result['p99_target_ms']:g} ms")
    ax2 = ax.twinx()
    ax2.plot(n, [s["server_cpu"] for s in steps], "s:", color="tab:red", label="server CPU (cores)")
    ax2.set_ylabel("server CPU (cores)")
    ax.set_xlabel("concurrent live streams")
    ax.set_ylabel("latency: last sample received -> result sent (ms)")
    ax.set_title(f"streamtag serve: largest N holding p99 <= {result['p99_target_ms']:g} ms, no drops: "
                 f"{result['max_streams']}")
    ax.grid(True, alpha=0.3)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="upper left")
    return [save_figure(fig, Path(folder) / "serve_latency.png")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run that only proves the benchmark works")
    parser.add_argument("--server", nargs=2, metavar=("PORT_FILE", "WORKERS"), help="(internal) the server child")
    parser.add_argument("--sensors", nargs=4, metavar=("URL", "N", "SECONDS", "RAMP"),
                        help="(internal) the sensors child")
    args = parser.parse_args(argv)
    if args.server:
        _server_child(args.server[0], int(args.server[1]))
        return
    if args.sensors:
        url, n, seconds, ramp = args.sensors
        _sensors_child(url, int(n), float(seconds), float(ramp))
        return
    from rich.console import Console

    Console().print(table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
