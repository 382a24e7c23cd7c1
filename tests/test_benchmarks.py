"""The benchmarks run end to end in quick mode and measure what they claim.

Times are never asserted (benchmarks are not tests); what is asserted is what
makes a figure trustworthy: every window the audio holds was scored, the
baseline scores the same windows as the engine, a child's peak memory is its
own, a leak shows as growth, and the runner writes and keeps what it says.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from rich.table import Table

from benchmarks import __main__ as runner
from benchmarks import gpu
from benchmarks.files import recompute_scores, run_process
from benchmarks.live import expected_windows
from benchmarks.report import markdown
from benchmarks.soak import growth
from benchmarks.workload import SPEC, LoopedSource, model_file, write_street
from streamtag import cli
from streamtag.engine import Engine
from streamtag.modelfile import DEFAULT_MODEL, load_model, read_metadata
from streamtag.ringbuffer import RingBuffer
from streamtag.sources import FileSource

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run of every part, as ``python -m benchmarks --quick`` does it."""
    folder = tmp_path_factory.mktemp("bench")
    assert runner.main(["--quick", "--out", str(folder)]) == 0
    return folder, {part: json.loads((folder / f"{part}.json").read_text()) for part in runner.PARTS}


def test_every_part_records_its_machine_and_figures(quick):
    folder, records = quick
    for part, record in records.items():
        assert record["quick"] is True and record["seconds"] > 0
        about = record["machine"]
        assert about["cores"] >= 1 and about["versions"]["torch"] and about["date"]
        probe = about["probe"]  # how fast the machine ran just before the part
        assert probe["python_loop_ms"] > 0 and probe["memory_gb_s"] > 0 and probe["product_us"] > 0
        assert record["figures"]
    text = (folder / "results.md").read_text()
    for title in runner.TITLES.values():
        assert f"## {title}" in text
    assert "Targets" in text and "Quick run" in text
    assert text.count("speed probe: Python loop") >= len(records) - 1  # the GPU part may be an older record
    assert "not measured" not in text  # every target found its figure
    for record in records.values():
        for name in record["plots"]:
            assert (folder / name).read_bytes().startswith(PNG)
            assert f"]({name})" in text
    assert {"live_latency.png", "soak_memory.png", "serve_latency.png"} <= \
        {n for r in records.values() for n in r["plots"]}


def test_serve_measures_every_step_on_live_streams_beside_a_process_per_stream(quick):
    serve = quick[1]["serve"]["figures"]
    assert [s["streams"] for s in serve["steps"]][:1] == [2]
    for step in serve["steps"]:
        # two seconds of 2-4 live sensors: every one completed, nothing dropped, windows scored at their rate
        assert step["sensors_failed"] == 0 and step["server_dropped_samples"] == 0
        expected = step["streams"] * 22050 / 512 / serve["hop_frames"]  # windows per second of live audio
        assert 0.5 * expected < step["windows_per_s"] < 1.5 * expected
        assert 0 < step["p50_ms"] <= step["p99_ms"] and step["server_cpu"] > 0 and step["mb_per_stream"] > 0
        assert step["held"] == (step["p99_ms"] <= 100 and step["sensors_late"] == 0)
    assert serve["max_streams"] == max([s["streams"] for s in serve["steps"] if s["held"]], default=0)
    base = serve["baseline"]
    assert base["processes"] == 2 and base["mb_per_stream"] > 100 and base["cpu_per_stream"] > 0
    assert base["streams"] == int(min(base["streams_by_cpu"], base["streams_by_memory"]))


def test_live_runs_score_every_window_and_report_ordered_latencies(quick):
    live = quick[1]["live"]["figures"]
    assert len(live["runs"]) == 11
    for run in live["runs"]:
        assert run["dropped_samples"] == 0  # a 10 s ring cannot overflow in a 2 s run
        assert run["windows"] == run["expected_windows"] > 0
        lat = run["latency"]
        assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert lat["n"] == run["windows"] and len(lat["quantiles_ms"]) > 100
        assert run["model"]["p50_ms"] <= lat["max_ms"]  # the model's time is part of the latency
    default_threads = [r for r in live["runs"] if "torch default threads" in r["name"]]
    assert len(default_threads) == 1 and all(r["threads"] == 1 for r in live["runs"] if r not in default_threads)
    assert [r["name"] for r in live["runs"] if r["int8"]] == ["dense 1500 int8, hop 1"]
    assert live["p99_ms"] == live["runs"][0]["latency"]["p99_ms"]
    assert live["int8_p99_ms"] == next(r for r in live["runs"] if r["int8"])["latency"]["p99_ms"]
    # the embedded model as streamtag live runs it: its own window and hop, named in the row
    meta = read_metadata(DEFAULT_MODEL)
    shipped = [r for r in live["runs"] if r["shipped"]]
    assert [(r["frames"], r["hop"]) for r in shipped] == [(meta["window_frames"], meta["hop_frames"])]
    frames = "" if meta["window_frames"] == 41 else f", {meta['window_frames']} frames"  # rows name other lengths
    assert shipped[0]["name"] == f"default model, hop {meta['hop_frames']}{frames}"
    assert all(r["frames"] == 41 for r in live["runs"] if not r["shipped"])


def test_files_and_soak_measure_whole_processes(quick):
    records = quick[1]
    files, soak = records["files"]["figures"], records["soak"]["figures"]
    tag, baseline = files["rows"]
    assert tag["events"] >= 0 and "windows" in tag["stderr"]  # the summary line streamtag tag prints
    windows = expected_windows(int(files["audio_seconds"] * SPEC.sample_rate), files["hop"])
    assert 0 < baseline["windows"] <= windows  # the first few lack delta history
    for row in (tag, baseline):
        assert row["peak_mb"] > 50 and row["wall_s"] > 0  # torch alone takes more than 50 MB
    assert soak["windows"] > 0 and len(soak["samples"]) >= 3
    assert soak["peak_mb"] >= max(mb for _, mb in soak["samples"]) * 0.99
    floors = soak["floors_mb"]
    assert 50 < floors["import torch"] <= floors["import torch, load the frontend kernel"] * 1.05
    assert floors["import torch, load the frontend kernel"] <= soak["peak_mb"] * 1.05  # the live path does both
    startup = floors["all of the start-up: frontend kernel, model, engine"]
    assert floors["import torch, load the frontend kernel"] * 0.95 <= startup <= soak["peak_mb"] * 1.05
    assert soak["floor_mb"] == floors["import torch, load the frontend kernel"]
    # the memory at the end, split into the process's own and what it maps from files
    assert soak["anonymous_mb"] > 50 and soak["file_mb"] > 10
    assert abs(soak["anonymous_mb"] + soak["file_mb"] - soak["samples"][-1][1]) < 0.05 * soak["samples"][-1][1]
    model = records["model"]["figures"]
    for name in ("script", "int8"):
        for dense in (1500, 5000):
            warm, cold = model[f"{name}_warm_ms_{dense}"], model[f"{name}_gap_ms_{dense}"]
            assert warm > 0 and cold > 0 and model[f"{name}_gap_ratio_{dense}"] == cold / warm
    gpu_figures = records["gpu"]["figures"]
    assert "skipped" in gpu_figures or len(gpu_figures["variants"]) == 8


def test_baseline_scores_the_same_windows_as_the_engine(tmp_path):
    model, wav = model_file(tmp_path, 64), write_street(tmp_path / "street.wav", 4.0)
    ends, scores = recompute_scores(wav, model, hop=5)
    got = []
    Engine(load_model(model, device="cpu"), hop_frames=5).run(FileSource(wav), on_window=got.append)
    engine = {40 + 5 * w.index: w.scores for w in got}
    assert len(ends) >= len(got) - 4 and len(ends) > 10
    np.testing.assert_allclose(scores, np.stack([engine[t] for t in ends]), atol=1e-5)


def test_process_peak_memory_is_the_childs_own(tmp_path):
    import torch  # noqa: F401  (this process is large; its children must not look it)

    small = run_process([sys.executable, "-c", "pass"], tmp_path)
    big = run_process([sys.executable, "-c", "import numpy; x = numpy.ones(25_000_000)"], tmp_path)  # 200 MB
    assert small["peak_mb"] < 100
    assert big["peak_mb"] - small["peak_mb"] > 150
    with pytest.raises(RuntimeError, match="failed"):
        run_process([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path)


def test_growth_sees_a_leak_but_not_the_warm_up():
    t = np.arange(0, 3601, 30.0)
    flat = np.where(t < 200, 700.0, 760.0) + np.random.default_rng(0).normal(0, 1, len(t))
    assert abs(growth(np.c_[t, flat])) < 2
    leak = 760.0 + t / 60 * 0.5  # 0.5 MB a minute
    assert growth(np.c_[t, leak]) > 20


def test_looped_source_delivers_the_clip_over_and_over():
    clip = np.arange(1000, dtype=np.float32)
    ring = RingBuffer(10_000)
    LoopedSource(clip, 1000, 3.7, blocks=300, speed=None)._run(ring)
    out = np.empty((10_000, 1), dtype=np.float32)
    n, position = ring.read(out)
    assert (n, position) == (3700, 0)
    np.testing.assert_array_equal(out[:n, 0], np.resize(clip, 3700))
    assert ring.finished


def test_expected_windows_counts_whole_windows():
    frames = lambda n: 1 + (n - SPEC.n_fft) // SPEC.hop_length  # noqa: E731
    n = 41 * SPEC.hop_length + SPEC.n_fft  # 42 frames
    assert frames(n) == 42
    assert expected_windows(n, 1) == 2 and expected_windows(n - 1, 1) == 1 and expected_windows(1000, 1) == 0


def test_markdown_shows_the_rich_tables_rows():
    t = Table(title="Costs")
    t.add_column("what")
    t.add_column("ms", justify="right")
    t.add_row("a|b", "1.5")
    assert markdown(t) == "**Costs**\n\n| what | ms |\n|---|---:|\n| a\\|b | 1.5 |"


def test_a_skipped_part_keeps_an_earlier_measurement(tmp_path, monkeypatch):
    measured = {"device": "Some GPU", "cuda": "13.0", "calls": 10, "batches": [256], "variants": {}}
    record = {"part": "gpu", "quick": False, "command": "", "machine": runner.machine(), "seconds": 5.0,
              "figures": measured, "plots": []}
    (tmp_path / "gpu.json").write_text(json.dumps(record))
    monkeypatch.setattr(gpu, "run", lambda quick: {"skipped": "no CUDA device on this machine"})
    assert runner.main(["--only", "gpu", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "gpu.json").read_text())["figures"] == measured
    assert "Some GPU" in (tmp_path / "results.md").read_text()


def test_bench_command_runs_the_benchmarks_in_a_process(tmp_path):
    done = subprocess.run([sys.executable, "-m", "streamtag", "bench", "--only", "gpu", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "gpu.json").exists() and (tmp_path / "results.md").exists()
    bad = subprocess.run([sys.executable, "-m", "streamtag", "bench", "--only", "nope"], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nope" in bad.stderr


def test_bench_command_without_a_source_checkout_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_source_root", lambda: tmp_path)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clone of the streamtag repository" in err[0]
