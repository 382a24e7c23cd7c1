"""Live capture through a real audio stack, without a sound card.

A private PulseAudio daemon with a null sink stands in for the sound card: a
real recording is played into the sink with ``paplay`` while ``streamtag tag
--mic`` records the sink's monitor through PortAudio. With the random model,
the clip-level top label of the capture must equal that of tagging the file.

Made robust three ways: the clip is played in the sink's own format (no
resampling inside PulseAudio); it loops, and exactly two loops are captured,
so the capture holds nothing but the clip wherever it starts; and the clip is
the one whose label, simulated for every start, leads the runner-up by the
widest margin. The same capture sent to ``streamtag serve`` (``tag --server
--mic``, a live stream) must give the same label.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import soxr

from conftest import need
from streamtag.engine import Engine
from streamtag.sources import ArraySource, FileSource

pytestmark = pytest.mark.pulse
SINK_RATE = 44100  # the null sink's own format: 44.1 kHz, stereo, s16


def _pactl(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["pactl", *args], env=env, capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    """Environment for a PulseAudio daemon of our own, with ``vsink`` as the
    default sink and its monitor as the default source; stopped afterwards."""
    need(all(shutil.which(tool) for tool in ("pulseaudio", "pactl", "paplay")),
         "PulseAudio is not installed (make system-deps: pulseaudio pulseaudio-utils)")
    need(ctypes.util.find_library("portaudio") is not None, "PortAudio is not installed (libportaudio2)")
    runtime = tmp_path_factory.mktemp("pulse")
    runtime.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("PULSE_SERVER", "PULSE_SINK", "PULSE_SOURCE")}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    started = subprocess.run(
        ["pulseaudio", "-D", "-n", "--exit-idle-time=-1", "--disallow-exit",
         "--load=module-native-protocol-unix", "--load=module-null-sink sink_name=vsink"],
        env=env, capture_output=True, text=True, timeout=30)
    deadline = time.monotonic() + 10
    while _pactl(env, "info").returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    need(_pactl(env, "info").returncode == 0, f"could not start a PulseAudio daemon: {started.stderr.strip()}")
    _pactl(env, "set-default-sink", "vsink")
    _pactl(env, "set-default-source", "vsink.monitor")
    yield env
    pid_file = runtime / "pulse" / "pid"
    if pid_file.exists():
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)


def as_played(path) -> np.ndarray:
    """The clip as the null sink plays it: 44.1 kHz stereo 16-bit, so PulseAudio
    passes it through without resampling."""
    audio, rate = sf.read(path, dtype="float32")
    audio = soxr.resample(audio, rate, SINK_RATE, quality="VHQ")
    audio = np.round(np.clip(audio, -1, 32767 / 32768) * 32768) / 32768
    return np.repeat(audio[:, None], 2, axis=1).astype(np.float32)


def loop_agreement(model, path) -> float:
    """How safely the capture's top label should match the file's: the smallest
    lead of the file's top label over the runner-up in the mean of any two clip
    lengths of the looped clip (the capture starts anywhere in the loop); < 0 if
    some start would give another label."""
    engine = Engine(model)
    expected = int(np.argmax(engine.run(FileSource(path)).clip_scores))
    played = as_played(path)
    windows = []
    engine.run(ArraySource(np.tile(played, (3, 1)), SINK_RATE), on_window=windows.append)
    starts = np.array([w.start for w in windows])
    ends = np.array([w.end for w in windows])
    scores = np.stack([w.scores for w in windows])
    period = len(played) / SINK_RATE
    leads = []
    for offset in np.arange(0, period, 0.1):
        mean = scores[(starts >= offset) & (ends <= offset + 2 * period)].mean(axis=0)
        leads.append(mean[expected] - np.delete(mean, expected).max())
    return float(min(leads))


def test_devices_lists_the_pulse_input(pulse):
    result = subprocess.run([sys.executable, "-m", "streamtag", "devices"], env=pulse, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows and all(len(r) >= 5 and r[0].isdigit() for r in rows)
    assert any(len(r) == 6 and r[5] == "default" for r in rows)


def test_microphone_capture_gives_the_same_top_label_as_the_file(pulse, us8k_dir, random_model_file, tmp_path):
    import torch

    from streamtag.modelfile import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: a second thread only waits on busy cores
    try:
        model = load_model(random_model_file, device="cpu")
        candidates = sorted((us8k_dir / "audio" / "fold1").glob("*.flac"))[:20]
        candidates = [p for p in candidates if sf.info(p).frames == 4 * sf.info(p).samplerate][:6]
        assert candidates, "fold1 should hold full-length (4 s) clips"
        leads = {path: loop_agreement(model, path) for path in candidates}
        clip = max(leads, key=leads.get)
        assert leads[clip] > 0, leads
        expected = model.classes[int(np.argmax(Engine(model).run(FileSource(clip)).clip_scores))]
    finally:
        torch.set_num_threads(threads)

    looped = tmp_path / "looped.wav"
    sf.write(looped, np.tile(as_played(clip), (8, 1)), SINK_RATE, subtype="PCM_16")  # plays throughout
    # the microphone tagged here, then sent as a live stream to a server with the same model
    server = subprocess.Popen([sys.executable, "-m", "streamtag", "serve", "--model", str(random_model_file),
                               "--port", "0"], env=pulse, stderr=subprocess.PIPE, text=True)
    try:
        url = _served_url(server)
        for where in ([], ["--server", url]):
            player = subprocess.Popen(["paplay", "-d", "vsink", str(looped)], env=pulse, stderr=subprocess.PIPE)
            try:
                time.sleep(1.0)  # an idle null sink can take a moment to deliver its first block
                local = [] if where else ["--model", str(random_model_file)]
                result = subprocess.run(
                    [sys.executable, "-m", "streamtag", "tag", *local, "--mic", "--clip", "--duration", "8", "-q",
                     *where], env=pulse, capture_output=True, text=True, timeout=120)
            finally:
                player.terminate()
                player.wait(10)
            assert result.returncode == 0, result.stderr
            line = json.loads(result.stdout)
            assert line["source"].startswith("mic:") and line["windows"] >= 25
            assert line["top"][0] == expected, (where, clip.name, leads[clip], line)
    finally:
        server.terminate()
        server.wait(10)


def _served_url(server: subprocess.Popen) -> str:
    """The ws:// address `streamtag serve --port 0` announces on standard error."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if "ws://" in line:  # what it writes later is read too, so that a full pipe never blocks it
            threading.Thread(target=server.stderr.read, daemon=True).start()
            return line[line.index("ws://"):].split()[0]
        if not line and server.poll() is not None:
            break
    raise AssertionError("streamtag serve did not announce its address")
