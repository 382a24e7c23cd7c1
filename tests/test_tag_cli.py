"""``streamtag tag`` end to end: inputs, formats, bad input, Ctrl-C and ``| head``.

Most runs call the CLI in-process (standard input replaced by bytes); the
signal and pipe behaviour needs a real process.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from streamtag.cli import main

RATE = 16000


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """3 s of tones in noise, 16 kHz stereo 16-bit WAV."""
    t = np.arange(3 * RATE) / RATE
    x = 0.05 * np.random.default_rng(0).standard_normal(len(t)) + 0.4 * np.sin(2 * np.pi * 440 * t) * (t > 1)
    path = tmp_path_factory.mktemp("audio") / "clip.wav"
    sf.write(path, np.stack([x, x[::-1]], axis=1), RATE, subtype="PCM_16")
    return path


def streamed(path) -> bytes:
    """The file's bytes with the data size an unseekable writer (arecord, sox) leaves."""
    data = bytearray(path.read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = struct.pack("<I", 0xFFFFFFFF)
    return bytes(data)


def tag(capsys, monkeypatch, *args, stdin: bytes | None = None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    rc = main(["tag", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_file_wav_pipe_and_raw_pipe_give_the_same_windows(capsys, monkeypatch, random_model_file, clip):
    model = ["--model", random_model_file, "--frames", "-q", "--threshold", "0.45"]
    runs = {"file": tag(capsys, monkeypatch, *model, clip),
            "wav pipe": tag(capsys, monkeypatch, *model, "-", stdin=streamed(clip)),
            "raw pipe": tag(capsys, monkeypatch, *model, "--raw", "--rate", RATE, "--channels", 2, "-",
                            stdin=clip.read_bytes()[44:])}
    results = {}
    for name, (rc, out, err) in runs.items():
        assert rc == 0 and err == "", (name, err)
        objs = lines(out)
        windows = [o for o in objs if o["type"] == "window"]
        events = [o for o in objs if o["type"] == "event"]
        assert windows and events, name
        results[name] = (np.array([list(w["scores"].values()) for w in windows]),
                         [(w["start"], w["end"]) for w in windows],
                         [(e["label"], e["onset"], e["offset"]) for e in events])
    file_scores, file_times, file_events = results["file"]
    assert len(file_times) == (((3 * 22050 - 1024) // 512 + 1) - 41) // 10 + 1  # the model's hop: 10 frames
    for name, (scores, times, events) in results.items():
        np.testing.assert_allclose(scores, file_scores, atol=1e-5, err_msg=name)
        assert times == file_times and events == file_events, name
    event = lines(runs["file"][1])[-1]
    assert set(event) == {"type", "source", "label", "onset", "offset", "score", "time"}
    assert event["source"] == str(clip) and 0 <= event["onset"] < event["offset"] <= 3.0


def test_csv_audacity_and_text_outputs(capsys, monkeypatch, random_model_file, clip, tmp_path):
    common = ["--model", random_model_file, "-q", "--threshold", "0.45", clip]
    rc, out, _ = tag(capsys, monkeypatch, *common, "-o", tmp_path / "events.csv")
    assert rc == 0 and out == ""
    rows = list(csv.DictReader((tmp_path / "events.csv").open()))
    assert rows and set(rows[0]) == {"source", "onset", "offset", "label", "score", "time"}
    rc, out, _ = tag(capsys, monkeypatch, *common, "-f", "audacity")
    labels = [line.split("\t") for line in out.splitlines()]
    assert rc == 0 and [(float(a), float(b), c) for a, b, c in labels] == \
        [(float(r["onset"]), float(r["offset"]), r["label"]) for r in rows]
    rc, out, _ = tag(capsys, monkeypatch, *common, "-f", "text")
    assert rc == 0 and out.count("▶") == out.count("■") == len(rows)


def test_clip_mode_one_line_per_input_and_bad_files_reported_in_turn(capsys, monkeypatch, random_model_file, clip,
                                                                    tmp_path):
    short = tmp_path / "short.flac"
    sf.write(short, np.zeros(4000), 22050)  # shorter than a window: still scored once
    rc, out, err = tag(capsys, monkeypatch, "--model", random_model_file, "--clip", clip, tmp_path / "gone.wav",
                       short)
    assert rc == 2
    objs = lines(out)
    assert [o["type"] for o in objs] == ["clip", "clip"]
    assert [o["source"] for o in objs] == [str(clip), str(short)]
    assert objs[0]["windows"] > 1 and objs[1]["windows"] == 1
    best = max(objs[0]["scores"], key=objs[0]["scores"].get)
    assert objs[0]["top"][0] == best and len(objs[0]["top"]) == 3
    assert err.splitlines()[0] == f"streamtag: error: {tmp_path / 'gone.wav'}: no such file"
    assert "2 inputs" in err.splitlines()[1]


def test_int8_runs_the_dense_layers_in_int8_with_close_scores(capsys, monkeypatch, random_model_file, clip):
    scores = {}
    for flag in ([], ["--int8"]):
        rc, out, _ = tag(capsys, monkeypatch, "--model", random_model_file, "--clip", "-q", *flag, clip)
        assert rc == 0
        (obj,) = lines(out)
        scores[bool(flag)] = np.array(list(obj["scores"].values()))
    assert np.abs(scores[True] - scores[False]).max() < 0.02 and not np.array_equal(scores[True], scores[False])


def float_wav(tmp_path, samples) -> bytes:
    path = tmp_path / "f.wav"
    sf.write(path, np.asarray(samples, dtype=np.float32), 22050, subtype="FLOAT")
    return path


@pytest.mark.parametrize("case", [
    "missing file", "junk file", "empty file", "nan samples", "raw u8", "raw without rate", "raw rate not a number",
    "raw zero channels", "raw without stdin", "rate without raw", "stdin cut in header", "stdin not wav",
    "stdin mu-law", "missing model", "frames with csv", "audacity clip", "no input", "zero threads"])
def test_bad_input_gives_one_line_and_exit_2(case, capsys, monkeypatch, random_model_file, clip, tmp_path):
    model = ["--model", random_model_file]
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio" * 50)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    nan = np.zeros(30000)
    nan[25000] = np.inf
    mulaw = io.BytesIO()
    sf.write(mulaw, np.zeros(1000), 8000, subtype="ULAW", format="WAV")
    stdin = None
    args, expect = {
        "missing file": ([*model, tmp_path / "nope.wav"], "no such file"),
        "junk file": ([*model, junk], "not a readable audio file"),
        "empty file": ([*model, empty], "empty"),
        "nan samples": ([*model, float_wav(tmp_path, nan)], "NaN or infinite sample at position 25000"),
        "raw u8": ([*model, "--raw", "--rate", "8000", "--sample-type", "u8", "-"], "unsupported raw sample type"),
        "raw without rate": ([*model, "--raw", "-"], "--raw needs --rate"),
        "raw rate not a number": ([*model, "--raw", "--rate", "fast", "-"], "--rate must be an integer"),
        "raw zero channels": ([*model, "--raw", "--rate", "8000", "--channels", "0", "-"], "channel count"),
        "raw without stdin": ([*model, "--raw", "--rate", "8000", clip], "--raw describes standard input"),
        "rate without raw": ([*model, "--rate", "8000", clip], "describe --raw input"),
        "stdin cut in header": ([*model, "-"], "inside the WAV header"),
        "stdin not wav": ([*model, "-"], "not a WAV stream"),
        "stdin mu-law": ([*model, "-"], "unsupported WAV sample type"),
        "missing model": (["--model", str(tmp_path / "nowhere.pt"), clip], "nowhere.pt"),
        "frames with csv": ([*model, "--frames", "-f", "csv", clip], "--frames writes JSON Lines"),
        "audacity clip": ([*model, "--clip", "-f", "audacity", clip], "Audacity"),
        "no input": ([*model], "no input"),
        "zero threads": ([*model, "--threads", "0", clip], "--threads must be at least 1"),
    }[case]
    stdin = {"stdin cut in header": clip.read_bytes()[:30], "stdin not wav": b"hello, world" * 10,
             "stdin mu-law": mulaw.getvalue()}.get(case, b"")
    if case == "no input":
        monkeypatch.setattr(sys, "stdin", type("Tty", (), {"isatty": lambda self: True})())
        stdin = None
    rc, out, err = tag(capsys, monkeypatch, *args, stdin=stdin)
    assert rc == 2
    errors = [line for line in err.splitlines() if line.startswith("streamtag: error:")]
    assert len(errors) == 1 and expect in errors[0], err
    assert "Traceback" not in err


def test_files_use_torchs_threads_unless_told_and_openmp_threads_sleep(capsys, monkeypatch, random_model_file, clip):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    try:
        torch.set_num_threads(2)
        assert tag(capsys, monkeypatch, "--model", random_model_file, "-q", clip)[0] == 0
        assert torch.get_num_threads() == 2  # a file's windows come in batches: torch's threads stay
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # for the torch a command loads after it
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        assert tag(capsys, monkeypatch, "--model", random_model_file, "-q", "--threads", "1", clip)[0] == 0
        assert torch.get_num_threads() == 1 and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice
    finally:
        torch.set_num_threads(before)


def test_stream_cut_mid_sample_is_tagged_then_reported(capsys, monkeypatch, random_model_file, clip):
    data = streamed(clip)[:-3]  # ends inside a stereo frame
    rc, out, err = tag(capsys, monkeypatch, "--model", random_model_file, "--frames", "-", stdin=data)
    assert rc == 2
    windows = [o for o in lines(out) if o["type"] == "window"]
    assert windows[-1]["end"] <= 3.0 and len(windows) >= 5
    assert "streamtag: error: stdin: truncated: the stream ended inside a sample frame" in err


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "streamtag", "tag", *map(str, args)]


def test_closed_downstream_pipe_ends_quietly(random_model_file, clip, tmp_path):
    long = tmp_path / "long.wav"
    data, rate = sf.read(clip)
    sf.write(long, np.tile(data, (10, 1)), rate)
    command = " ".join(cli("--model", random_model_file, "--frames", "--hop", 1, long)) + " | head -n 1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and json.loads(result.stdout)["type"] == "window"
    assert result.stderr == ""


def test_ctrl_c_closes_open_events_prints_a_summary_and_exits(random_model_file, clip):
    """A live pipe that never ends: Ctrl-C must still give every open event its offset."""
    proc = subprocess.Popen(cli("--model", random_model_file, "--frames", "--threshold", "0", "-"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    proc.stdin.write(streamed(clip))
    proc.stdin.flush()  # ...and keep standard input open, like arecord would
    deadline = time.monotonic() + 60
    first = proc.stdout.readline()
    while b'"window"' not in first and time.monotonic() < deadline:
        first = proc.stdout.readline()
    assert b'"window"' in first
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130  # standard input still open: the signal alone ended it
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdin.close()
    events = [json.loads(line) for line in out.splitlines() if b'"event"' in line]
    assert len(events) == 10 and len({e["label"] for e in events}) == 10  # every class was on
    assert all(0 <= e["onset"] < e["offset"] <= 3.0 for e in events)
    err = err.decode()
    assert "Traceback" not in err and "interrupted" in err and err.startswith("streamtag: 1 input")
    assert os.linesep not in err.rstrip()
