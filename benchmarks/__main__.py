"""Run streamtag's benchmarks and write the results: ``python -m benchmarks [--quick] [--only PARTS]``.

Parts, in order:

- ``frontend``: cost per hop and per window read, beside torchaudio and librosa recomputing the window;
- ``model``: the CNN per window, batch 1 and batched, eager / TorchScript / int8, dense 1500 and 5000;
- ``gpu``: the CNN on CUDA, with and without CUDA graphs (skipped without a GPU);
- ``live``: end to end, live: latency from a window's last sample to its scores, dropped samples;
- ``dashboard``: the cost of drawing a frame of ``streamtag live``, and the live latency with it beside without;
- ``files``: real-time factor and peak memory of ``streamtag tag`` on an hour of audio, beside a baseline;
- ``soak``: the live path's memory over an hour of audio played faster than real time;
- ``serve``: how many live streams one ``streamtag serve`` carries at p99 <= 100 ms, beside a process per stream;
- ``archive``: ``streamtag archive`` on a local Ray cluster of 1 and 2 workers, beside one ``streamtag tag`` process.

Each part writes ``OUT/<part>.json``: its figures, the machine, load, versions
and commit they were measured with, and how long it took. ``OUT/results.md``
is then rebuilt from every part's JSON in ``OUT``, so a part measured
elsewhere (the GPU part on a machine with a GPU) keeps its figures and says
where they come from; a run that has to skip a part leaves an earlier
measurement of it in place. ``OUT/*.png`` plot the latency distributions and
the soak. The full run writes ``benchmarks/results/`` (committed); a quick
run, which only proves the code works, ``runs/bench-quick/``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import operator
import sys
import time
from pathlib import Path

from benchmarks.report import REPO, describe, machine, markdown
from benchmarks.soak import FLAT_MB

PARTS = ("frontend", "model", "gpu", "live", "dashboard", "files", "soak", "serve", "archive")
WITH_PROGRESS = {"live", "files", "soak", "serve", "archive"}  # parts long enough to report progress
RESULTS = REPO / "benchmarks" / "results"
QUICK_RESULTS = REPO / "runs" / "bench-quick"
TITLES = {"frontend": "Frontend", "model": "Model on the CPU", "gpu": "Model on CUDA", "live": "End to end, live",
          "dashboard": "Live dashboard", "files": "Files", "soak": "Soak",
          "serve": "Many streams: streamtag serve", "archive": "An archive on Ray: streamtag archive"}

# (part, what, key of the value in the part's figures, comparison, goal, how to show a value, what else
# to say about it, with the part's figures in braces). The goals are for a 2-core CPU.
TARGETS = (
    ("frontend", "frontend cost per hop (512-sample blocks)", "hop_us_block512", "<=", 5.0, "{:.2f} us", ""),
    ("frontend", "frontend speed-up vs torchaudio recompute (41 frames)", "torchaudio_ratio_41", ">=", 50.0,
     "{:.0f}x", ""),
    ("live", "end-to-end p99, dense 1500, 1-frame hop", "p99_ms", "<=", 5.0, "{:.2f} ms",
     " (dense layers in int8, --int8: {int8_p99_ms:.2f} ms)"),
    ("live", "dropped samples live, dense 1500, 1-frame hop", "dropped_samples", "<=", 0, "{:d}",
     " in {drop_seconds:.0f} s of audio"),
    ("dashboard", "one frame of the dashboard at 80 x 24, p99", "render_p99_ms_80x24", "<=", 10.0, "{:.1f} ms", ""),
    ("dashboard", "live end-to-end p99 with the dashboard / without, 1-frame hop", "p99_ratio", "<=", 1.5,
     "{:.2f}x", ""),
    ("dashboard", "dropped samples live with the dashboard", "dropped_samples", "<=", 0, "{:d}", ""),
    ("files", "streamtag tag on a file, default settings (whole process)", "rtf", ">=", 300.0, "{:.0f}x real time",
     ""),
    ("soak", "live peak memory (start-up included)", "peak_mb", "<=", 600.0, "{:.0f} MB",
     " (import torch and load the frontend kernel, nothing else: {floor_mb:.0f} MB)"),
    ("soak", "live memory growth over the soak", "growth_mb", "<=", FLAT_MB, "{:+.1f} MB",
     " over {audio_seconds:.0f} s of audio"),
    ("serve", "concurrent live streams, streamtag serve, p99 <= 100 ms, no drops", "max_streams", ">=", 300,
     "{:d}", " on {device}, {workers} workers (a process per stream: {baseline[streams]})"),
)
_OPS = {"<=": operator.le, ">=": operator.ge}


def _records(folder: Path) -> dict[str, dict]:
    records = {}
    for part in PARTS:
        path = folder / f"{part}.json"
        if path.exists():
            records[part] = json.loads(path.read_text())
    return records


def targets_table(records: dict[str, dict]):
    from rich.table import Table

    t = Table(title="Targets (for a 2-core CPU)")
    for column in ("target", "goal", "measured", "met"):
        t.add_column(column)
    for part, what, key, op, goal, fmt, context in TARGETS:
        record = records.get(part)
        if record is None:
            t.add_row(what, f"{op} {fmt.format(goal)}", "not measured", "")
            continue
        figures = record["figures"]
        met = "yes" if _OPS[op](figures[key], goal) else "NO"
        t.add_row(what, f"{op} {fmt.format(goal)}", fmt.format(figures[key]) + context.format(**figures),
                  met + (" (quick run)" if record["quick"] else ""))
    return t


def write_markdown(folder: Path) -> Path:
    """Rebuild ``results.md`` from the parts' JSON files in ``folder``."""
    records = _records(folder)
    total = sum(r["seconds"] for r in records.values())
    lines = ["# streamtag benchmarks", "",
             f"Made by `python -m benchmarks` (`make bench`); these parts took {total / 60:.0f} minutes together. "
             "Each section says when, on what machine and at which commit its figures were measured, and how "
             "fast that machine ran just before (a speed probe: shared machines differ and drift, by 2-3x between "
             "runs here, so compare figures across sections only where their probes agree). "
             "Module docstrings in `benchmarks/` say exactly what each figure measures.", "",
             markdown(targets_table(records)), ""]
    for part, record in records.items():
        module = importlib.import_module(f"benchmarks.{part}")
        quick = " **Quick run: these figures only prove the code works.**" if record["quick"] else ""
        lines += [f"## {TITLES[part]}", "", f"_Measured {describe(record['machine'])}; took {record['seconds']:.0f} s._"
                  + quick, "", markdown(module.table(record["figures"])), ""]
        lines += [f"![{TITLES[part]}]({name})" for name in record.get("plots", [])]
        lines += [""] if record.get("plots") else []
    path = folder / "results.md"
    path.write_text("\n".join(lines))
    return path


def _run_part(part: str, quick: bool, folder: Path, console) -> dict:
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    module = importlib.import_module(f"benchmarks.{part}")
    about = machine()  # the load just before the part starts
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task(part, total=None)

        def report(description: str, done: float, total: float) -> None:
            progress.update(task, description=f"{part}: {description}", completed=done, total=total)

        threads = torch.get_num_threads()
        try:
            figures = module.run(quick=quick, **({"progress": report} if part in WITH_PROGRESS else {}))
        finally:
            torch.set_num_threads(threads)  # a part that pins torch's threads must not set the next one's
    record = {"part": part, "quick": quick, "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
              "machine": about, "seconds": time.perf_counter() - t0, "figures": figures}
    path = folder / f"{part}.json"
    if "skipped" in figures and path.exists() and "skipped" not in json.loads(path.read_text())["figures"]:
        console.print(f"{part}: skipped here ({figures['skipped']}); keeping the figures already in {path}")
        return json.loads(path.read_text())
    plot = getattr(module, "plot", None)
    record["plots"] = [p.name for p in plot(figures, folder)] if plot else []
    path.write_text(json.dumps(record, indent=1) + "\n")
    console.print(module.table(figures))
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny inputs: proves every part works in about a minute; figures mean nothing")
    parser.add_argument("--only", metavar="PARTS", help=f"comma-separated parts to run, of: {', '.join(PARTS)}")
    parser.add_argument("--out", metavar="DIR", help=f"where to write (default: {RESULTS.relative_to(REPO)}, "
                                                     f"or {QUICK_RESULTS.relative_to(REPO)} with --quick)")
    args = parser.parse_args(argv)
    parts = PARTS if args.only is None else tuple(p.strip() for p in args.only.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    folder = Path(args.out) if args.out else QUICK_RESULTS if args.quick else RESULTS
    try:
        if unknown or not parts:
            raise ValueError(f"unknown part(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PARTS)}")
        folder.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:
        print(f"python -m benchmarks: error: {getattr(exc, 'strerror', None) or exc}"
              + (f": {folder}" if isinstance(exc, OSError) else ""), file=sys.stderr)
        return 2
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)  # a log file gets whole table rows
    t0 = time.perf_counter()
    for part in sorted(parts, key=PARTS.index):
        _run_part(part, args.quick, folder, console)
    path = write_markdown(folder)
    console.print(targets_table(_records(folder)))
    console.print(f"{', '.join(parts)}: {(time.perf_counter() - t0) / 60:.1f} minutes; results in {path.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
