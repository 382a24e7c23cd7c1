"""Archive: ``streamtag archive`` on a local Ray cluster of 1 and 2 workers, beside one ``streamtag tag`` process.

Two archives of looped street scene (16-bit WAV at 22.05 kHz): **long files**
(24 files of 5 minutes, 2 hours) and **short clips** (600 files of 4 s, 40
minutes, UrbanSound8K's length: the cost of each file shows). Each is tagged
into a fresh output folder with the default model and settings, CSV and DCASE
outputs, by :func:`streamtag.archive.run_archive` (what the command runs),
with ``--workers 1`` and ``--workers 2`` (one torch thread each).

Figures per run:

- **real-time factor**: hours of audio over the whole run's wall time,
  start-up included (Ray's local cluster, the workers' imports and model);
- **steady rate**: audio seconds over the time from the first file's result
  to the last one's, where the start-up no longer counts;
- **start-up**: from the call to the first file's result;
- **worker memory**: the peak resident memory of one worker process.

The baseline, measured in the same run on the same files, is one ``streamtag
tag -q -f csv FILES...`` process with torch's default threads (one per core):
what a user runs on one machine without Ray. Scaling is the 2-worker rate over
the 1-worker rate; on 2 cores the driver and Ray's own processes share them.

Run: ``python -m benchmarks.archive [--quick]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.report import REPO, standalone
from benchmarks.workload import SPEC, scene, write_street

ARCHIVES = {"long files": (24, 300.0), "short clips": (600, 4.0)}  # files, seconds each
QUICK_ARCHIVES = {"long files": (2, 40.0), "short clips": (20, 4.0)}
WORKERS = (1, 2)
PROJECTED_WORKERS = (16, 64, 256)  # a 16-core machine, 4 of them, 16 of them
FORMATS = ["csv", "dcase"]


def _write_archive(folder: Path, files: int, seconds: float) -> list:
    import soundfile as sf

    from streamtag.archive import list_folder

    folder.mkdir(parents=True)
    if seconds >= 20:
        for i in range(files):
            write_street(folder / f"f{i:04d}.wav", seconds)
    else:
        clip, n = scene(), int(seconds * SPEC.sample_rate)
        for i in range(files):  # successive pieces of the looped scene, so the clips differ
            start = (i * n) % (len(clip) - n)
            sf.write(folder / f"c{i:04d}.wav", clip[start:start + n], SPEC.sample_rate, subtype="PCM_16")
    return list_folder(str(folder))


class _WorkerMemory:
    """Samples the resident memory of this process's Ray archive workers while a run lasts."""

    def __init__(self):
        import psutil

        self.peak_mb, self._stop = 0.0, threading.Event()
        self._me = psutil.Process()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for proc in self._me.children(recursive=True):
                try:
                    if "ArchiveWorker" in " ".join(proc.cmdline()[:1]):
                        self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2 ** 20)
                except Exception:  # gone meanwhile
                    pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mb


def _archive_run(items, out: Path, workers: int) -> tuple[dict, list[dict]]:
    """The run's figures, and the records it left in ``out``."""
    from streamtag.archive import run_archive

    times: list[float] = []
    memory = _WorkerMemory()
    t0 = time.perf_counter()
    records = run_archive(items, str(out), FORMATS, workers=workers, threads=1,
                          on_record=lambda record: times.append(time.perf_counter())).records
    wall = time.perf_counter() - t0
    audio = sum(r["seconds"] for r in records)
    first_file = min(r["seconds"] for r in records)
    steady = (audio - first_file) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    return {"workers": workers, "files": len(records), "audio_s": audio, "wall_s": wall, "rtf": audio / wall,
            "steady_rtf": steady, "startup_s": times[0] - t0, "worker_peak_mb": memory.stop(),
            "events": sum(len(r["events"]) for r in records)}, records


def _baseline(items, out: Path) -> dict:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "streamtag", "tag", "-q", "-f", "csv", "-o", str(out),
                    *[i.absolute for i in items]], check=True, cwd=REPO)
    wall = time.perf_counter() - t0
    return {"wall_s": wall}


def run(quick: bool = False, progress=None) -> dict:
    archives = QUICK_ARCHIVES if quick else ARCHIVES
    result: dict = {"archives": [], "cores": os.cpu_count(), "formats": FORMATS}
    steps = len(archives) * (len(WORKERS) + 1)
    step = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (files, seconds) in archives.items():
            if progress is not None:
                progress(f"{name}: writing {files} files", step, steps)
            items = _write_archive(Path(tmp) / name.replace(" ", "-"), files, seconds)
            entry = {"name": name, "files": files, "seconds_each": seconds, "runs": []}
            for workers in WORKERS:
                if progress is not None:
                    progress(f"{name}: {workers} worker{'s' * (workers > 1)}", step, steps)
                out = Path(tmp) / f"out-{name}-{workers}"
                figures, records = _archive_run(items, out, workers)
                entry["runs"].append(figures)
                step += 1
            entry["write_ms"], entry["driver_ms"] = _write_ms(records), _driver_ms(out, records)
            if progress is not None:
                progress(f"{name}: streamtag tag, one process", step, steps)
            base = _baseline(items, Path(tmp) / f"{name}.csv")
            audio = entry["runs"][0]["audio_s"]
            entry["baseline"] = {**base, "rtf": audio / base["wall_s"]}
            one, two = entry["runs"][0], entry["runs"][-1]
            entry["scaling"] = two["steady_rtf"] / one["steady_rtf"] if one["steady_rtf"] else 0.0
            result["archives"].append(entry)
            step += 1
    long, short = result["archives"]
    rate = long["runs"][0]["steady_rtf"]  # one worker's steady rate on long files
    result["worker_steady_rtf"] = rate
    # What each file costs beyond its audio: a short clip's time at the short-clip rate less at the long-file rate.
    seconds = short["seconds_each"]
    result["per_file_overhead_ms"] = 1e3 * seconds * (1 / short["runs"][0]["steady_rtf"] - 1 / rate)
    result["efficiency"] = long["scaling"] / WORKERS[-1]
    result["projection"] = [{"workers": n, "rtf": rate * n * result["efficiency"],
                             "year_hours": 8760 / (rate * n * result["efficiency"])} for n in PROJECTED_WORKERS]
    return result


def _write_ms(records: list[dict]) -> float:
    """A worker's cost of writing one file's outputs (CSV, DCASE and its record, each renamed
    into place), timed again on the run's own records."""
    from streamtag.archive import Archive
    from streamtag.modelfile import DEFAULT_MODEL, read_metadata

    classes = read_metadata(DEFAULT_MODEL)["classes"]
    with tempfile.TemporaryDirectory() as tmp:
        archive = Archive(tmp, FORMATS, {"model": "bench"})
        t0 = time.perf_counter()
        for i, record in enumerate(records):
            archive.write(f"f{i:05d}.wav", record, classes)
        return 1e3 * (time.perf_counter() - t0) / len(records)


def _driver_ms(out: Path, records: list[dict]) -> float:
    """The driver's cost per file: reading a worker's summary and checking that the record is there."""
    import json

    from streamtag.archive import RECORD

    summaries = [json.dumps({"path": r["path"], "seconds": r["seconds"], "events": len(r["events"]),
                             "error": r["error"], "unwritten": None}) for r in records]
    paths = sorted((out / "files").rglob("*" + RECORD))
    t0 = time.perf_counter()
    for summary, path in zip(summaries, paths):
        json.loads(summary)
        path.is_file()
    return 1e3 * (time.perf_counter() - t0) / len(records)


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"streamtag archive on a local Ray cluster ({result['cores']} cores), default model, "
                    f"{' and '.join(result['formats'])} outputs; baseline: one `streamtag tag` process")
    for column in ("archive", "run", "files", "audio (h)", "wall (s)", "real-time factor", "steady rate (x)",
                   "start-up (s)", "worker peak MB", "2 / 1 workers"):
        t.add_column(column, justify="left" if column in ("archive", "run") else "right")
    for entry in result["archives"]:
        label = f"{entry['name']} ({entry['files']} x {entry['seconds_each']:g} s)"
        for r in entry["runs"]:
            t.add_row(label, f"archive, {r['workers']} worker{'s' * (r['workers'] > 1)}", str(r["files"]),
                      f"{r['audio_s'] / 3600:.2f}", f"{r['wall_s']:.1f}", f"{r['rtf']:.0f}x",
                      f"{r['steady_rtf']:.0f}x", f"{r['startup_s']:.1f}", f"{r['worker_peak_mb']:.0f}",
                      f"{entry['scaling']:.2f}" if r["workers"] == 2 else "")
        b = entry["baseline"]
        t.add_row(label, "baseline: streamtag tag, one process", str(entry["files"]),
                  f"{entry['runs'][0]['audio_s'] / 3600:.2f}", f"{b['wall_s']:.1f}", f"{b['rtf']:.0f}x", "", "", "",
                  "")
    for p in result["projection"]:
        t.add_row("PROJECTION (from the figures above): a year of one sensor", f"{p['workers']} workers", "", "8760",
                  f"{p['year_hours'] * 3600:.0f}", f"{p['rtf']:.0f}x", "", "", "", "")
    per_worker = result["worker_steady_rtf"] * result["efficiency"]
    costs = []
    for entry in result["archives"]:  # the driver keeps up with this many workers' files
        workers = 1e3 / entry["driver_ms"] * entry["seconds_each"] / per_worker
        costs.append(f"{entry['name']}: writing {entry['write_ms']:.2f} ms a file in the worker, the driver's check "
                     f"{1e3 * entry['driver_ms']:.0f} us (it keeps up with about {workers:,.0f} workers)")
    t.caption = (f"Projection: one worker's steady rate on long files times the workers times the 2-worker "
                 f"efficiency measured here ({result['efficiency']:.2f}); the network alone, files on a shared "
                 f"filesystem fast enough. Per-worker overhead: the start-up and memory above, and "
                 f"{result['per_file_overhead_ms']:.1f} ms a file beyond its audio. Outputs: {'; '.join(costs)}.")
    return t


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, table, argv)


if __name__ == "__main__":
    main()
