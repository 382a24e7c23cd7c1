"""``streamtag live`` and ``streamtag demo`` end to end.

The dashboard is read off a real terminal: tmux runs the command in an 80 x 24
pane and ``tmux capture-pane`` returns the screen as a person would see it.
Ctrl-C runs in a pseudo-terminal (pexpect), where the raw output shows whether
the terminal was restored. Without a terminal the command writes JSON Lines,
which must match what ``streamtag tag`` finds in the same file.

The model is the small random one, so which class a file triggers is
arbitrary; the threshold is set between the best and second-best class's
peak score offline, so exactly one class has events and the live path must
show the same ones.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import need
from streamtag.cli import main
from streamtag.engine import Engine
from streamtag.errors import DeviceError
from streamtag.modelfile import load_model
from streamtag.sources import FileSource

RATE = 44100
SECONDS = 3.0


@pytest.fixture(scope="module")
def clip(tmp_path_factory, random_model_file):
    """A 3 s, 44.1 kHz stereo clip (tones in noise); the threshold that gives
    exactly one class events with the random model; those events, offline."""
    t = np.arange(int(SECONDS * RATE)) / RATE
    rng = np.random.default_rng(1)
    x = 0.02 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 880 * t) * ((t > 0.8) & (t < 2.4))
    path = tmp_path_factory.mktemp("live") / "clip.wav"
    sf.write(path, np.stack([x, 0.5 * x], axis=1), RATE, subtype="PCM_16")
    model = load_model(random_model_file, device="cpu")
    smoothed = []
    Engine(model).run(FileSource(path), on_window=lambda w: smoothed.append(w.smoothed))
    peaks = np.sort(np.max(smoothed, axis=0))
    assert peaks[-1] - peaks[-2] > 0.01, "the random model must prefer one class clearly"
    threshold = round(float(peaks[-1] + peaks[-2]) / 2, 4)
    events = []
    Engine(model, thresholds=threshold).run(FileSource(path), on_event=lambda k, e: k == "close" and events.append(e))
    assert events and len({e.label for e in events}) == 1
    return path, threshold, events


def live(capsys, *args):
    rc = main(["live", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


# -- without a terminal ---------------------------------------------------------


def test_without_a_terminal_it_writes_the_events_tag_finds(capsys, tmp_path, random_model_file, clip):
    path, threshold, offline = clip
    log = tmp_path / "events.jsonl"
    rc, out, err = live(capsys, "--input", path, "--model", random_model_file, "--threshold", threshold,
                        "--jsonl", log)
    assert rc == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["label"], e["onset"], e["offset"]) for e in events] == \
        [(e.label, round(e.onset, 6), round(e.offset, 6)) for e in offline]
    assert all(e["type"] == "event" and e["source"] == str(path) for e in events)
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [{**e, "time": None} for e in logged] == [{**e, "time": None} for e in events]
    wall = re.fullmatch(r"streamtag: 1 input, 3\.00 s of audio, \d+ windows, \d+ events in ([\d.]+) s .*\n", err)
    assert float(wall[1]) >= SECONDS - 0.05, "the file is replayed in real time, like a microphone"
    assert "\x1b" not in out  # no screen codes in a pipe

    assert main(["tag", str(path), "--model", str(random_model_file), "--threshold", str(threshold), "-q"]) == 0
    tagged = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["label"], e["onset"], e["offset"]) for e in tagged] == \
        [(e["label"], e["onset"], e["offset"]) for e in events]


def test_duration_bounds_the_run(capsys, random_model_file, clip):
    path, threshold, _ = clip
    rc, out, err = live(capsys, "--input", path, "--model", random_model_file, "--seconds", 0.5)
    assert rc == 0 and "0.50 s of audio" in err


@pytest.mark.parametrize("args, message", [
    (["--input", "missing.wav"], "missing.wav"),
    (["--scene", "--threshold", "1.5"], "--threshold '1.5': a probability lies in [0, 1]"),
    (["--scene", "--threshold", "loud"], "--threshold 'loud': give a probability P or LABEL=P"),
    (["--scene", "--threshold", "lion=0.3"], "the model has no class 'lion' (its classes: air_conditioner, car_horn"),
    (["--scene", "--duration", "0"], "--duration must be positive"),
    (["--scene", "--threads", "0"], "--threads must be at least 1"),
    (["--scene", "--hop", "0"], "hop must be at least 1 frame"),
    (["--scene", "--jsonl", "/nonexistent/dir/x.jsonl"], "cannot write /nonexistent/dir/x.jsonl"),
])
def test_bad_input_is_one_line(capsys, random_model_file, args, message):
    rc, out, err = live(capsys, "--model", random_model_file, *args)
    assert rc == 2 and out == ""
    assert err.startswith("streamtag: error: ") and message in err and err.count("\n") == 1


def test_sources_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["live", "--scene", "--input", "x.wav"])
    assert exit.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_without_a_microphone_it_points_to_the_alternatives(capsys, monkeypatch, random_model_file):
    def no_devices(device=None):
        raise DeviceError("no audio input devices found")

    monkeypatch.setattr("streamtag.live.MicrophoneSource", no_devices)
    rc, _, err = live(capsys, "--model", random_model_file)
    assert rc == 2 and "no audio input devices found; replay a file with --input FILE" in err


def test_threshold_options_apply_in_order():
    from streamtag.live import parse_thresholds

    classes = ["a", "b", "c"]
    assert parse_thresholds(None, classes, [0.5] * 3) is None
    assert parse_thresholds(["0.3", "b=0.7"], classes, [0.5] * 3).tolist() == [0.3, 0.7, 0.3]
    assert parse_thresholds(["b=0.7", "0.2"], classes, [0.5] * 3).tolist() == [0.2, 0.2, 0.2]


def test_demo_plays_the_scene_without_a_microphone(capsys, monkeypatch, random_model_file):
    monkeypatch.setattr("streamtag.live.list_devices", lambda: [])
    rc = main(["demo", "--model", str(random_model_file), "--seconds", "0.3"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "no microphone found: playing a synthesised street scene" in err and "0.30 s of audio" in err


# -- in a terminal -------------------------------------------------------------


class Tmux:
    """A private tmux server with one pane of a fixed size."""

    def __init__(self, width: int = 80, height: int = 24):
        self.socket = f"streamtag-test-{os.getpid()}"
        self.size = (width, height)

    def run(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, f"tmux {args[0]}: {done.stderr.strip()}"
        return done.stdout

    def start(self, command: str) -> None:
        """Run ``command`` in a new server that ignores the user's configuration
        (``-f`` given to any later client would make it look for a new server)."""
        self.run("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", str(self.size[0]), "-y", str(self.size[1]),
                 f"{command}; echo EXIT=$?; sleep 60")

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def wait_for(self, pattern: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} never appeared; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux():
    need(shutil.which("tmux") is not None, "tmux is not installed (make system-deps)")
    pane = Tmux()
    yield pane
    pane.close()


def command(*args) -> str:
    return " ".join([sys.executable, "-m", "streamtag", "live", *map(str, args)])


def test_dashboard_in_a_real_terminal_shows_the_files_tag(tmux, tmp_path, random_model_file, clip):
    path, threshold, offline = clip
    label, first = offline[0].label, offline[0]
    log = tmp_path / "events.jsonl"
    tmux.start(command("--input", path, "--model", random_model_file, "--threshold", threshold, "--jsonl", log))
    tmux.wait_for(rf"│ ● {label} ")  # its bar is highlighted while the event is open...
    screen = tmux.wait_for(rf"\d\d:\d\d:\d\d {label[:10]}")  # ...and the event log shows it (cut to fit)
    lines = screen.splitlines()
    assert "streamtag live" in lines[0] and "/ 0:03.0" in lines[0] and "Ctrl-C stops" in lines[0]
    for title in ("classes", "events", "input level", "log-mel", "health"):
        assert title in screen
    row = re.search(rf"\d\d:\d\d:\d\d {label[:10]}\S* +([\d.]+) ", screen)
    assert float(row[1]) == pytest.approx(first.onset, abs=0.051)
    device = "CUDA" if torch.cuda.is_available() else "CPU"  # the model goes to a GPU where there is one
    assert "44.1 → 22.05 kHz" in screen and f"random on {device}" in screen and "dBFS" in screen
    for name in ("air_conditioner", "children_playing", "street_music"):
        assert re.search(rf"│ [● ] {name} .*\d\.\d\d │", screen)
    assert all(len(line) <= 80 for line in lines)

    final = tmux.wait_for(r"EXIT=\d+")
    assert "EXIT=0" in final and "Traceback" not in final
    assert "events this session" in final and label in final and "3.00 s of audio" in final
    assert "log-mel" not in final and "Ctrl-C stops" not in final  # the dashboard's screen is gone
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["label"], e["onset"]) for e in logged] == [(e.label, round(e.onset, 6)) for e in offline]


def test_ctrl_c_restores_the_terminal_and_prints_the_summary(random_model_file):
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    env.pop("NO_COLOR", None)
    output = io.StringIO()
    child = pexpect.spawn(sys.executable, ["-m", "streamtag", "live", "--scene", "--model", str(random_model_file)],
                          dimensions=(24, 80), env=env, encoding="utf-8", timeout=90)
    child.logfile_read = output
    try:
        child.expect("Ctrl-C stops")
        child.expect(r"\d+ windows")
        time.sleep(1.0)
        child.sendintr()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 130
    text = output.getvalue()
    assert "\x1b[?1049h" in text  # the dashboard used the alternate screen...
    after = text[text.rindex("\x1b[?1049l"):]  # ...and left it
    assert "\x1b[?25h" in text[text.rindex("\x1b[?25l"):]  # the cursor is shown again
    assert re.search(r"streamtag: 1 input, \d+\.\d\d s of audio, \d+ windows, \d+ events .*interrupted", after)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
