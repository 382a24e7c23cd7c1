"""``streamtag archive``: an archive tagged on a local Ray cluster, exactly once, resumable.

The listing, the output folder and its bookkeeping are tested directly; the
rest runs the real command on a local Ray cluster of two workers: the same
events as ``streamtag tag`` on each file, a worker killed mid-run (its file is
redone, nothing lost or written twice), and a whole run killed and resumed.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamtag.archive import Archive, list_folder, read_manifest
from streamtag.cli import main
from streamtag.errors import StreamtagError
from streamtag.scene import synthesize_scene

RATE = 22050
WORKER = "ray::MapWorker(MapBatches(ArchiveWorker))"


def archive_cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from streamtag.cli import entry_point; entry_point()", "archive", *map(str, args)]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """Eight 60-s street scenes in two folders (other seeds, so other events), plus what a
    listing must leave out: a hidden file and a text file."""
    root = tmp_path_factory.mktemp("archive") / "recordings"
    for i in range(8):
        audio, _ = synthesize_scene(RATE, seed=i, duration=60.0)
        folder = root / ("north" if i % 2 else "south")
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"scene{i}.flac", audio, RATE)
    sf.write(root / "south" / ".hidden.wav", np.zeros(RATE), RATE)
    (root / "notes.txt").write_text("not audio\n")
    return root


@pytest.fixture(scope="module")
def reference(recordings, tmp_path_factory) -> dict[str, str]:
    """What ``streamtag tag`` writes for every recording, one run per format, in listing order."""
    out = tmp_path_factory.mktemp("reference")
    paths = [item.path for item in list_folder(str(recordings))]
    texts = {}
    for fmt in ("dcase", "jsonl", "csv"):
        target = out / f"all.{fmt}"
        assert main(["tag", "-q", "--threads", "1", "-f", fmt, "-o", str(target), *paths]) == 0
        texts[fmt] = target.read_text()
    first = out / "first.txt"
    assert main(["tag", "-q", "--threads", "1", "-f", "audacity", "-o", str(first), paths[0]]) == 0
    texts["audacity"] = first.read_text()
    return texts


def without_time(text: str, fmt: str) -> list:
    """Rows without the wall-clock time a row was written (it differs between any two runs)."""
    if fmt == "jsonl":
        return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in text.splitlines()]
    return [row[:-1] for row in csv.reader(text.splitlines())]


# --- listing and bookkeeping, no cluster ---------------------------------------------------------------------------

def test_folder_listing_is_recursive_sorted_and_only_audio(recordings, tmp_path):
    items = list_folder(str(recordings))
    assert [i.rel for i in items] == [f"north/scene{i}.flac" for i in (1, 3, 5, 7)] + \
        [f"south/scene{i}.flac" for i in (0, 2, 4, 6)]
    assert all(i.path == os.path.join(str(recordings), i.rel) and Path(i.absolute).is_absolute() for i in items)
    assert list_folder(str(recordings), exclude=recordings / "north")[0].rel == "south/scene0.flac"
    with pytest.raises(StreamtagError, match="not a folder"):
        list_folder(str(tmp_path / "missing"))


def test_manifest_paths_are_relative_to_the_manifest(recordings, tmp_path):
    manifest = recordings / "list.txt"
    manifest.write_text("# two of them\nnorth/scene1.flac\n\n%s  # absolute\n" % (recordings / "south/scene0.flac"))
    items = read_manifest(str(manifest))
    assert [i.rel for i in items] == ["north/scene1.flac", "south/scene0.flac"]
    assert items[0].path == os.path.join(str(recordings), "north/scene1.flac")
    manifest.write_text("north/scene1.flac\nnorth/../north/scene1.flac\n")
    with pytest.raises(StreamtagError, match="more than once"):
        read_manifest(str(manifest))
    manifest.write_text("# nothing\n")
    with pytest.raises(StreamtagError, match="lists no files"):
        read_manifest(str(manifest))
    manifest.unlink()


def test_output_folder_refuses_other_settings_and_counts_only_whole_results(tmp_path):
    settings = {"model": "default", "sha256": "ab", "int8": False, "decoding": {}}
    archive = Archive(str(tmp_path / "out"), ["csv", "dcase"], settings)
    record = {"path": "x/a.wav", "seconds": 1.0, "windows": 3, "events": [["siren", 8, 0.1, 0.6, 0.9]],
              "clip_scores": [0.1] * 10, "error": None, "wall_seconds": 0.1}
    assert not archive.done("a.wav")
    archive.write("a.wav", record, ["c%d" % i for i in range(8)] + ["siren", "c9"])
    assert archive.done("a.wav")
    (tmp_path / "out" / "files" / "a.wav.tsv").unlink()  # a format missing: not done
    assert not archive.done("a.wav")
    archive.write("b.wav", {**record, "error": "b.wav: audio data is damaged"}, ["c"] * 10)
    assert not archive.done("b.wav")  # a failed input is tried again
    Archive(str(tmp_path / "out"), ["jsonl"], settings)  # the same settings: fine, whatever the formats
    with pytest.raises(StreamtagError, match="other settings .*sha256"):
        Archive(str(tmp_path / "out"), ["csv"], {**settings, "sha256": "cd"})
    assert not list((tmp_path / "out").rglob("*.tmp"))


@pytest.mark.parametrize("argv, message", [
    ([], "give a folder of recordings or --manifest"),
    (["FOLDER", "--format", "csv,xml"], "--format takes a comma list"),
    (["FOLDER", "--workers", "0"], "--workers must be at least 1"),
    (["EMPTY"], "no audio files"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, recordings, capsys):
    (tmp_path / "empty").mkdir()
    argv = [{"FOLDER": str(recordings), "EMPTY": str(tmp_path / "empty")}.get(a, a) for a in argv]
    assert main(["archive", *argv, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


# --- on a local Ray cluster ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_installed():
    pytest.importorskip("ray", reason="the cluster extra is not installed (pip install 'streamtag[cluster]')")


def test_two_workers_write_what_tag_writes_for_each_file(ray_installed, recordings, reference, tmp_path):
    out = tmp_path / "tags"
    run = subprocess.run(archive_cli(recordings, "-o", out, "--workers", "2", "-f", "dcase,jsonl,csv,audacity",
                                     "--report-every", "0"), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "8/8 files" in run.stderr and "0 done before" in run.stderr
    progress = re.findall(r"streamtag archive: (\d+)/8 files, ([\d.]+) h of audio, (\d+)x real time", run.stderr)
    assert [int(n) for n, _, _ in progress][:8] == list(range(1, 9))  # a line a file in a log, then the summary
    assert float(progress[-1][1]) == round(8 * 60 / 3600, 2) and int(progress[-1][2]) > 0
    assert (out / "events.tsv").read_text() == reference["dcase"]  # every event, once, in listing order
    for fmt, suffix in (("jsonl", ".jsonl"), ("csv", ".csv")):
        assert without_time((out / f"events{suffix}").read_text(), fmt) == without_time(reference[fmt], fmt)
    items = list_folder(str(recordings))
    assert (out / "files" / (items[0].rel + ".txt")).read_text() == reference["audacity"]
    per_file = "".join((out / "files" / (i.rel + ".tsv")).read_text().split("\n", 1)[1] for i in items)
    assert "filename\tonset\toffset\tevent_label\n" + per_file == reference["dcase"]
    rows = list(csv.DictReader((out / "files.csv").open()))
    assert [r["path"] for r in rows] == [i.path for i in items] and all(r["error"] == "" for r in rows)
    assert [float(r["seconds"]) for r in rows] == [60.0] * 8
    assert sum(int(r["events"]) for r in rows) == reference["dcase"].count("\n") - 1


def _children(pid: int):
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _workers(pid: int) -> list:
    found = []
    for proc in _children(pid):
        try:
            if " ".join(proc.cmdline()).startswith(WORKER):
                found.append(proc)
        except Exception:  # gone meanwhile
            pass
    return found


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_a_worker_killed_mid_run_loses_nothing_and_writes_nothing_twice(ray_installed, recordings, reference,
                                                                        tmp_path):
    out = tmp_path / "tags"
    proc = subprocess.Popen(archive_cli(recordings, "-o", out, "--workers", "2", "-f", "dcase"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        workers = _wait_for(lambda: found if len(found := _workers(proc.pid)) == 2 else None, 120, "two workers")
        _wait_for(lambda: list(out.glob("files/*/*.json")), 120, "the first finished file")
        victim = workers[0]
        done_before_kill = len(list(out.glob("files/*/*.json")))
        victim.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert done_before_kill < 8, "the run ended before a worker could be killed: the test proved nothing"
    assert not victim.is_running()
    assert (out / "events.tsv").read_text() == reference["dcase"]
    assert len(list(out.glob("files/*/*.json"))) == 8 and not list(out.rglob("*.tmp"))


def test_a_run_killed_outright_resumes_where_it_stopped(ray_installed, recordings, reference, tmp_path):
    out = tmp_path / "tags"
    proc = subprocess.Popen(archive_cli(recordings, "-o", out, "--workers", "1", "-f", "dcase"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: list(out.glob("files/*/*.json")), 120, "the first finished file")
        cluster = _children(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local cluster it started, as a crash would
        proc.wait(timeout=30)
    finally:
        proc.kill()
    for leftover in cluster:  # whatever of the cluster outlived its driver
        try:
            leftover.kill()
        except Exception:
            pass
    done = len(list(out.glob("files/*/*.json")))
    assert 1 <= done < 8, f"{done} files done when the run was killed: the test proved nothing"
    assert not (out / "events.tsv").exists()

    run = subprocess.run(archive_cli(recordings, "-o", out, "--workers", "2", "-f", "dcase"),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"{8 - done}/{8 - done} files" in run.stderr and f"{done} done before" in run.stderr
    assert (out / "events.tsv").read_text() == reference["dcase"]

    again = subprocess.run(archive_cli(recordings, "-o", out, "-f", "dcase"), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "0/0 files" in again.stderr and "8 done before" in again.stderr
    other = subprocess.run(archive_cli(recordings, "-o", out, "--hop", "8"), capture_output=True, text=True,
                           timeout=120)
    assert other.returncode == 2 and "other settings (decoding differ)" in other.stderr
    assert other.stderr.count("\n") == 1


def test_a_running_cluster_is_found_by_its_address(ray_installed, recordings, reference, tmp_path):
    """``ray start --head`` as a user starts a cluster, then ``--address HOST:PORT``: one worker per CPU
    the cluster has, the same events."""
    import socket

    with socket.socket() as s:  # a free port for the cluster's head
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).parent / "ray")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    started = subprocess.run([ray, "start", "--head", "--port", str(port), "--num-cpus", "2",
                              "--include-dashboard", "false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=120, env=env)
    try:
        assert started.returncode == 0, started.stderr
        address = re.search(r"--address='([^']+)'", started.stdout + started.stderr).group(1)  # what it tells users
        no_token = subprocess.run(archive_cli(recordings, "-o", tmp_path / "tags", "--address", address),
                                  capture_output=True, text=True, timeout=120, env=env)
        assert no_token.returncode == 2 and "it wants its token; set RAY_AUTH_MODE=token" in no_token.stderr
        run = subprocess.run(archive_cli(recordings, "-o", tmp_path / "tags", "-f", "dcase", "--address", address),
                             capture_output=True, text=True, timeout=300, env={**env, "RAY_AUTH_MODE": "token"})
        assert run.returncode == 0, run.stderr
        assert "on 2 workers" in run.stderr
        assert (tmp_path / "tags" / "events.tsv").read_text() == reference["dcase"]
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120, env=env)
    refused = subprocess.run(archive_cli(recordings, "-o", tmp_path / "other", "--address", address),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"cannot reach the Ray cluster at {address}" in refused.stderr


def test_a_worker_that_cannot_write_stops_the_run_in_one_line(ray_installed, recordings, tmp_path):
    out = tmp_path / "tags"
    out.mkdir()
    (out / "files").write_text("a file where the outputs' folder should be\n")
    run = subprocess.run(archive_cli(recordings / "north", "-o", out, "--workers", "1"), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("streamtag: error: a worker could not write its outputs: cannot write ") and \
        str(out / "files") in last and "Traceback" not in run.stderr
