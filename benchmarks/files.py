"""Files: real-time factor and peak memory of ``streamtag tag`` on an hour of audio.

Each figure is a whole process, as a user runs it: ``python -m streamtag tag
FILE -o events.jsonl`` with default settings (the bundled default model at its
default hop, torch's threads, one per core; one row adds ``--hop 20``, one
``--int8``, one ``--threads 1``, the setting for one job per core), start-up (imports,
the frontend's cached compiled kernel, loading the model) included, timed from launch to exit;
peak memory is the child's maximum resident set size (``wait4``). The input is
an hour of looped street scene as a 16-bit WAV at the model's 22.05 kHz, and
the same at 44.1 kHz, which adds streaming resampling.

The baseline is the usual way to tag a stream without an incremental
frontend, run the same way as a process: read the file block by block, and
for each window recompute log-mel and delta from its samples with torchaudio
(:func:`benchmarks.frontend._torchaudio_recompute`, checked equal to the
frontend's window) and score it with the same TorchScript file at batch 1,
on one torch thread: at batch 1 a second thread only slows the network (see the
model part's "2 threads" row).
It scores the same windows as the engine (all but the first few, whose delta
lacks history) and does no event logic or output, which flatters it slightly.

Run: ``python -m benchmarks.files [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import REPO
from benchmarks.workload import DEFAULT_HOP, SPEC, write_street
from streamtag.modelfile import DEFAULT_MODEL, read_metadata
from streamtag.features import DELTA_TAPS

START_SECONDS = 1.0  # a file this short measures start-up alone
WIDE_HOP = 20  # a coarser hop than the default model's, for comparison


def recompute_scores(path, model_path, hop: int = DEFAULT_HOP):
    """The baseline: (window end frames, probabilities) for every window of
    the model's window length every ``hop`` frames whose delta has full history,
    recomputed from the samples of each window."""
    import soundfile as sf

    from benchmarks.frontend import _torchaudio_recompute

    frames = read_metadata(model_path)["window_frames"]
    features = _torchaudio_recompute(frames)  # and one torch thread, the faster setting at batch 1
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.11, and still what the file holds
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        module = torch.jit.load(str(model_path), map_location="cpu").eval()
    need = (frames + 2 * DELTA_TAPS - 1) * SPEC.hop_length + SPEC.n_fft  # samples one window's features read
    ends, scores = [], []
    t = frames - 1  # end frame of the next window, as the engine counts them
    tail = np.zeros(0, dtype=np.float32)
    base = 0  # input sample index of tail[0]
    with sf.SoundFile(str(path)) as f, torch.inference_mode():
        if f.samplerate != SPEC.sample_rate:
            raise ValueError(f"the baseline reads {SPEC.sample_rate} Hz audio, {path} is {f.samplerate} Hz")
        for block in f.blocks(blocksize=8192, dtype="float32", always_2d=True):
            audio = np.concatenate([tail, block.mean(axis=1)])
            while (stop := t * SPEC.hop_length + SPEC.n_fft) <= base + len(audio):
                if stop >= need:
                    window = features(audio[:stop - base])
                    scores.append(module(torch.from_numpy(window[None]))[0].numpy())
                    ends.append(t)
                t += hop
            keep = min(len(audio), need)
            tail, base = audio[len(audio) - keep:], base + len(audio) - keep
    return np.asarray(ends, dtype=np.int64), np.stack(scores) if scores else np.empty((0, 0), dtype=np.float32)


# Linux keeps a process's peak resident size across exec, and a child forked
# from a big process starts out as a copy of it, so this benchmark (torch
# loaded) would lend its own size to every child it measures. A small Python
# process in between starts the command and reports the command's own figures.
_LAUNCHER = """
import os, subprocess, sys, time
t = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{time.perf_counter() - t} {os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_process(cmd: list[str], folder: Path) -> dict:
    """Run ``cmd`` to its end: wall seconds from launch to exit, peak resident MB, its output."""
    figures = folder / "figures"
    with open(folder / "stdout", "w+b") as out, open(folder / "stderr", "w+b") as err:
        subprocess.run([sys.executable, "-c", _LAUNCHER, str(figures), *cmd], stdout=out, stderr=err,
                       stdin=subprocess.DEVNULL, cwd=REPO, check=True)
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip()
        out.seek(0)
        stdout = out.read().decode(errors="replace").strip()
    wall, code, maxrss = figures.read_text().split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({code}): {stderr[-2000:]}")
    peak = int(maxrss) / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)  # bytes on macOS, KiB elsewhere
    return {"wall_s": float(wall), "peak_mb": peak, "stderr": stderr.splitlines()[-1] if stderr else "",
            "stdout": stdout}


def _tag(wav: Path, folder: Path, *options: str) -> dict:
    out = folder / "events.jsonl"
    result = run_process([sys.executable, "-m", "streamtag", "tag", str(wav), "-o", str(out), *options], folder)
    result["events"] = sum(1 for _ in open(out, encoding="utf-8"))
    del result["stdout"]  # the events went to the file
    return result


def _baseline(wav: Path, folder: Path, hop: int) -> dict:
    result = run_process([sys.executable, "-m", "benchmarks.files", "--baseline", str(wav), str(DEFAULT_MODEL),
                          str(hop)], folder)
    result["windows"] = json.loads(result.pop("stdout"))["windows"]
    return result


def run(quick: bool = False, progress=None) -> dict:
    """Time both ways as processes; ``progress(description, done, total)`` counts the runs.
    The quick run skips the start-up and 44.1 kHz runs, which only repeat the same code."""
    seconds = 20.0 if quick else 3600.0
    rate = SPEC.sample_rate
    metadata = read_metadata(DEFAULT_MODEL)
    hop, frames = metadata["hop_frames"], metadata["window_frames"]
    runs = [("streamtag tag", seconds, rate, _tag, ()),
            ("torchaudio recompute, batch 1", seconds, rate, _baseline, (hop,))]
    if not quick:
        runs += [("streamtag tag", seconds, 44100, _tag, ()),
                 (f"streamtag tag --hop {WIDE_HOP}", seconds, rate, _tag, ("--hop", str(WIDE_HOP))),
                 ("streamtag tag --int8", seconds, rate, _tag, ("--int8",)),
                 ("streamtag tag --threads 1", seconds, rate, _tag, ("--threads", "1")),
                 ("start-up alone: streamtag tag", START_SECONDS, rate, _tag, ())]
    result: dict = {"audio_seconds": seconds, "hop": hop, "frames": frames, "threads": torch.get_num_threads(),
                    "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wavs: dict[tuple[float, int], Path] = {}
        for i, (name, length, rate, fn, args) in enumerate(runs):
            if progress is not None:
                progress(name, i, len(runs))
            if (length, rate) not in wavs:
                wavs[length, rate] = write_street(folder / f"street-{length:g}s-{rate}.wav", length, rate)
            wav = wavs[length, rate]
            row = {"name": f"{name}, {length:g} s at {rate / 1000:g} kHz", "rate": rate, "audio_seconds": length,
                   **fn(wav, folder, *args)}
            row["rtf"] = length / row["wall_s"]
            result["rows"].append(row)
    tag, baseline = result["rows"][0], result["rows"][1]
    result["rtf"], result["peak_mb"] = tag["rtf"], tag["peak_mb"]
    result["speedup_vs_baseline"] = baseline["wall_s"] / tag["wall_s"]
    return result


def table(result: dict):
    from rich.table import Table

    hours = result["audio_seconds"] / 3600
    t = Table(title=f"Files: whole process on {hours:.3g} h of audio ({result['frames']}-frame windows every "
                    f"{result['hop']} frames; streamtag on {result['threads']} torch threads unless a row says "
                    f"otherwise, the baseline on 1)")
    for column in ("what", "wall s", "x real time", "peak MB"):
        t.add_column(column, justify="left" if column == "what" else "right")
    for row in result["rows"]:
        rtf = f"{row['rtf']:.0f}x" if row["audio_seconds"] > START_SECONDS else ""
        t.add_row(row["name"], f"{row['wall_s']:.1f}", rtf, f"{row['peak_mb']:.0f}")
    t.add_row("streamtag tag speed-up vs the baseline (22.05 kHz)", f"{result['speedup_vs_baseline']:.1f}x", "", "")
    return t


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run that only proves the benchmark works")
    parser.add_argument("--baseline", nargs=3, metavar=("WAV", "MODEL", "HOP"),
                        help="(internal) run the baseline on WAV with MODEL every HOP frames and print its window count")
    args = parser.parse_args(argv)
    if args.baseline:
        wav, model, hop = args.baseline
        ends, _ = recompute_scores(wav, model, int(hop))
        print(json.dumps({"windows": len(ends)}))
        return
    from rich.console import Console

    Console().print(table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
