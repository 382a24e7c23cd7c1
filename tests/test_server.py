"""``streamtag serve`` and ``streamtag tag --server``: many streams, one process, hostile clients.

A real server runs on a free localhost port in a thread of its own (its own
event loop); clients are websockets' synchronous clients, several at once on
threads. Streams must get exactly the events they get alone, and a client's
fault must close its own stream only: the others finish and lose nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import streamtag
from streamtag.cli import main
from streamtag.errors import StreamtagError
from streamtag.scene import synthesize_scene
from streamtag.server import Limits, Server

RATE = 22050


@pytest.fixture(scope="module")
def tagger():
    return streamtag.Tagger()


@pytest.fixture(scope="module")
def scene():
    """The 20 s demo scene at 22.05 kHz as int16: different stretches of it make different streams."""
    return (synthesize_scene(rate=RATE)[0] * 32767).astype(np.int16)


class Running:
    """A server on its own event loop in a thread, on a free port."""

    def __init__(self, tagger, **options):
        self.server = Server(tagger, "127.0.0.1", 0, **options)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(30), "the server did not start"
        self.url = f"ws://127.0.0.1:{self.server.bound_port}/"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve():
            ready = self.loop.create_future()
            ready.add_done_callback(lambda _: self._ready.set())
            await self.server.run(ready)

        self.task = self.loop.create_task(serve())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)


@pytest.fixture
def serve(tagger):
    running = []

    def start(**options) -> Running:
        running.append(Running(tagger, **options))
        return running[-1]

    yield start
    for r in running:
        r.stop()


def stream(url, samples, *, block=2205, pause=0.0, token=None, windows=False, live=False, end=True,
           header=None, sample_type="s16", extra=()):
    """Send ``samples`` as one stream; return (lines received, close code, close reason)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    lines: list[dict] = []
    with connect(url, additional_headers=headers, compression=None, max_size=None) as ws:
        ws.send(header or json.dumps({"rate": RATE, "channels": 1, "sample_type": sample_type, "windows": windows,
                                      "live": live}))
        received = threading.Thread(target=_receive, args=(ws, lines), daemon=True)
        received.start()
        data = samples.tobytes() if isinstance(samples, np.ndarray) else samples
        width = block * (samples.dtype.itemsize if isinstance(samples, np.ndarray) else 2)
        try:
            for message in extra:
                ws.send(message)
            for i in range(0, len(data), width):
                ws.send(data[i:i + width])
                if pause:
                    time.sleep(pause)
            if end:
                ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass
        received.join(30)
        return lines, ws.close_code, ws.close_reason


def _receive(ws, lines: list[dict]) -> None:
    try:
        for message in ws:
            lines += [json.loads(line) for line in message.splitlines()]
    except ConnectionClosed:
        pass


def events(lines) -> list[tuple[str, float, float]]:
    return [(o["label"], round(o["onset"], 6), round(o["offset"], 6)) for o in lines
            if o["type"] == "event" and o["state"] == "close"]


def alone(tagger, samples) -> list[tuple[str, float, float]]:
    return [(e.label, round(e.onset, 6), round(e.offset, 6)) for e in tagger.tag(samples, sample_rate=RATE).events]


def test_tag_through_a_server_prints_the_local_events(serve, tagger, scene, tmp_path, capsys):
    running = serve()
    path = tmp_path / "street.wav"
    sf.write(path, scene[:9 * RATE], RATE, subtype="PCM_16")
    for fmt in ("csv", "dcase", "jsonl"):
        assert main(["tag", str(path), "-f", fmt, "-q"]) == 0
        local = capsys.readouterr().out
        assert main(["tag", str(path), "-f", fmt, "-q", "--server", running.url]) == 0
        remote = capsys.readouterr().out
        strip = (lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]) if fmt == "csv" else \
            (lambda text: [{k: v for k, v in json.loads(line).items() if k != "time"} for line in text.splitlines()]) \
            if fmt == "jsonl" else str.splitlines  # the time an event was reported differs
        assert strip(remote) == strip(local) and len(local.splitlines()) > 1, fmt
    assert main(["tag", str(path), "--clip", "-f", "jsonl", "--server", running.url]) == 0
    clip = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(list(clip["scores"].values()), tagger.tag(path).clip_scores, atol=1e-5)
    # standard input (a WAV stream, as sox or arecord write it) through the server: the same events again
    local = [json.loads(line) for line in _tag_stdin(capsys, path, "-f", "jsonl", "-q")]
    remote = [json.loads(line) for line in _tag_stdin(capsys, path, "-f", "jsonl", "-q", "--server", running.url)]
    assert [(o["label"], o["onset"], o["offset"]) for o in remote] == \
        [(o["label"], o["onset"], o["offset"]) for o in local] and local
    # the model and its decoding are the server's: local model options are refused, in one line
    assert main(["tag", str(path), "--server", running.url, "--threshold", "0.3"]) == 2
    assert "--threshold set the local model" in capsys.readouterr().err


def _tag_stdin(capsys, path, *options) -> list[str]:
    import io
    import sys

    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(path.read_bytes()))
    try:
        assert main(["tag", "-", *options]) == 0
    finally:
        sys.stdin = saved
    return capsys.readouterr().out.splitlines()


def test_concurrent_streams_each_get_their_own_events_and_scores(serve, tagger, scene):
    running = serve(max_wait=0.05)
    pieces = [scene[i * 3 * RATE:(i * 3 + 6) * RATE] for i in range(5)]
    results = [None] * len(pieces)

    def client(k: int) -> None:
        results[k] = stream(running.url, pieces[k], block=int(RATE * (0.02 + 0.02 * k)), pause=0.002,
                            windows=True)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(pieces))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for piece, (lines, code, _) in zip(pieces, results):
        assert code == 1000
        result = tagger.tag(piece, sample_rate=RATE, windows=True)
        assert events(lines) == alone(tagger, piece)
        scores = [o["scores"] for o in lines if o["type"] == "window"]
        np.testing.assert_allclose(scores, [w.scores for w in result.windows], atol=2e-6)
        summary = lines[-1]
        assert summary["type"] == "summary" and summary["dropped_samples"] == 0
        assert summary["windows"] == len(result.windows)
    batcher = running.server.batcher
    assert batcher.scored > batcher.ticks > 0  # windows of several streams went through one network call


def test_a_faulty_client_closes_only_its_own_stream(serve, tagger, scene):
    running = serve(limits=Limits(max_message=1 << 16, send_timeout=1.0, idle_timeout=5.0))
    good = [scene[i * 4 * RATE:(i * 4 + 6) * RATE] for i in range(3)]
    outcome: dict[str, tuple] = {}

    def run(name, fn) -> threading.Thread:
        t = threading.Thread(target=lambda: outcome.__setitem__(name, fn()))
        t.start()
        return t

    threads = [run(f"good {k}", lambda k=k: stream(running.url, good[k], block=1102, pause=0.01))
               for k in range(3)]
    time.sleep(0.3)  # the good streams are under way
    long = np.resize(scene, 90 * RATE)
    threads += [
        run("binary first", lambda: stream(running.url, scene[:RATE], header=b"\x00\x01")),
        run("not json", lambda: stream(running.url, scene[:RATE], header="{rate: 22050")),
        run("bad control", lambda: stream(running.url, scene[:RATE], extra=['{"type": "stop"}'])),
        run("large", lambda: stream(running.url, scene[:2 * RATE], block=RATE)),  # 44 KB messages: allowed
        run("too big", lambda: stream(running.url, np.resize(scene, 3 * RATE), block=3 * RATE)),  # 132 KB
        run("nan", lambda: stream(running.url, np.r_[np.zeros(RATE), np.nan, np.zeros(RATE)].astype("<f4"),
                                  sample_type="f32")),
        run("not reading", lambda: _not_reading(running, long)),
        run("disconnect", lambda: _disconnect(running.url, scene[:3 * RATE])),
    ]
    for t in threads:
        t.join(60)
    for k in range(3):
        lines, code, _ = outcome[f"good {k}"]
        assert code == 1000 and events(lines) == alone(tagger, good[k]), k
        assert lines[-1]["type"] == "summary" and lines[-1]["dropped_samples"] == 0
    assert outcome["large"][1] == 1000  # a message under the limit is fine
    for name, reason in (("binary first", "first message must be text"), ("not json", "not JSON"),
                         ("bad control", "a text message after the first is"), ("nan", "NaN")):
        lines, code, why = outcome[name]
        assert code == 1008 and reason in why, (name, why)
        assert lines[-1] == {"type": "error", "message": lines[-1]["message"]} and reason in lines[-1]["message"]
    assert outcome["too big"][1] == 1009  # message too big
    assert any("did not read its results for 1 s" in fault for fault in running.server.faults)
    deadline = time.monotonic() + 20  # a client that drops or stops reading returns before the server has ended
    while running.server.streams and time.monotonic() < deadline:  # its stream: count closures once all have
        time.sleep(0.05)
    closed = running.server.closed
    assert closed["completed"] == 4 and closed["disconnected"] == 1 and closed["bad audio"] == 1, dict(closed)
    assert closed["message too big"] == 1, dict(closed)
    assert closed["protocol"] == 4, dict(closed)  # binary first, not json, bad control, not reading


def _not_reading(running: Running, samples) -> None:
    """A client that asks for every window's scores, sends 90 s of audio and never reads a byte: a raw
    socket with a small receive buffer (a WebSocket library would go on reading into its own queue)."""
    sock = socket.create_connection(("127.0.0.1", running.server.bound_port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert b" 101 " in response.split(b"\r\n")[0]
    try:
        sock.sendall(_frame(1, json.dumps({"rate": RATE, "channels": 1, "sample_type": "s16",
                                           "windows": True}).encode()))
        data = samples.tobytes()
        for i in range(0, len(data), 32768):
            sock.sendall(_frame(2, data[i:i + 32768]))
        sock.sendall(_frame(1, b'{"type": "end"}'))
    except OSError:  # the server stopped reading (it waits for this client), or closed it
        pass
    deadline = time.monotonic() + 20  # the server gives up on it within its send timeout
    while not any("did not read" in f for f in running.server.faults) and time.monotonic() < deadline:
        time.sleep(0.1)
    sock.close()


def _frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455)."""
    n, mask = len(payload), os.urandom(4)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 \
        else bytes([0x80 | 127]) + struct.pack(">Q", n)
    masked = np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
    return head + mask + masked.tobytes()


def _disconnect(url, samples) -> None:
    with connect(url, compression=None) as ws:
        ws.send(json.dumps({"rate": RATE, "channels": 1, "sample_type": "s16"}))
        ws.send(samples[:RATE].tobytes())  # a second of audio, then the connection drops
        ws.socket.shutdown(socket.SHUT_RDWR)
        ws.socket.close()


def test_a_token_is_required_where_one_is_set(serve, tagger, scene, tmp_path, capsys, monkeypatch):
    running = serve(token="s3cret")
    monkeypatch.delenv("STREAMTAG_TOKEN", raising=False)
    path = tmp_path / "street.wav"
    sf.write(path, scene[:3 * RATE], RATE, subtype="PCM_16")
    assert main(["tag", str(path), "-f", "jsonl", "-q", "--server", running.url]) == 2
    assert "refused the stream" in capsys.readouterr().err
    assert main(["tag", str(path), "-f", "jsonl", "-q", "--server", running.url, "--token", "s3cret"]) == 0
    assert [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()] == \
        [e[0] for e in alone(tagger, scene[:3 * RATE])]
    for token in (None, "wrong"):
        with pytest.raises(InvalidStatus, match="401"):
            stream(running.url, scene[:RATE], token=token)
    lines, code, _ = stream(running.url, scene[:2 * RATE], token="s3cret")
    assert code == 1000 and lines[-1]["type"] == "summary"
    lines, code, _ = stream(running.url + "?token=s3cret", scene[:2 * RATE])
    assert code == 1000
    assert running.server.closed["unauthorized"] == 3
    with pytest.raises(StreamtagError, match="needs a token"):
        Server(tagger, "0.0.0.0", 0)


def test_serve_off_localhost_without_a_token_is_a_one_line_error(capsys, monkeypatch):
    monkeypatch.delenv("STREAMTAG_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamtag: error: serving on 0.0.0.0 needs a token") and err.count("\n") == 1


def test_idle_full_and_wav_streams(serve, tagger, scene):
    running = serve(limits=Limits(idle_timeout=0.5, max_streams=2))
    with connect(running.url) as idle:
        idle.send(json.dumps({"rate": RATE}))
        assert json.loads(idle.recv())["type"] == "ready"
        with connect(running.url):
            with pytest.raises(InvalidStatus, match="503"):
                connect(running.url)
        time.sleep(1.0)
        with pytest.raises(ConnectionClosed):
            while True:
                idle.recv()
        assert idle.close_code == 1008 and "idle" in idle.close_reason
    # a WAV stream, its header split across messages and its frames across others
    import io

    buffer = io.BytesIO()
    sf.write(buffer, np.stack([scene[:5 * RATE], scene[RATE:6 * RATE]], axis=1), RATE, format="WAV",
             subtype="PCM_16")
    lines, code, _ = stream(running.url, buffer.getvalue(), block=1001, header=json.dumps({"format": "wav"}))
    assert code == 1000
    stereo = np.stack([scene[:5 * RATE], scene[RATE:6 * RATE]], axis=1)
    expected = [(e.label, round(e.onset, 6), round(e.offset, 6))
                for e in tagger.tag(stereo, sample_rate=RATE).events]
    assert events(lines) == expected


def test_audio_lost_is_counted_reported_and_times_stay_true(serve, tagger, scene):
    running = serve(max_wait=0.5, limits=Limits(max_behind=0.05))
    # the client lost a second itself and says so
    lines, code, _ = stream(running.url, scene[2 * RATE:6 * RATE],
                            extra=[scene[:2 * RATE].tobytes(), json.dumps({"type": "skip", "frames": RATE})])
    summary = lines[-1]
    assert code == 1000 and summary["dropped_samples"] == RATE and summary["gaps"] == 1
    assert not [o for o in lines if o["type"] == "dropped"]  # the client knows: the server does not echo it
    assert summary["seconds"] == pytest.approx(7.0) and running.server.dropped_samples == 0
    after = [e for e in events(lines) if e[1] >= 3.0]  # the audio after the gap, tagged at its true time
    expected = alone(tagger, scene[2 * RATE:6 * RATE])
    assert [e[0] for e in after] == [e[0] for e in expected] and expected
    np.testing.assert_allclose([e[1:] for e in after], [(a + 3, b + 3) for _, a, b in expected], atol=2e-6)
    # a live stream sent faster than the server takes it (a batch waits 0.5 s; at most 0.05 s may queue):
    # the server drops its oldest audio, counts it and says so
    lines, code, _ = stream(running.url, scene[:4 * RATE], block=RATE // 20, live=True)
    summary = lines[-1]
    dropped = [o for o in lines if o["type"] == "dropped"]
    assert code == 1000 and summary["dropped_samples"] > 0
    assert sum(o["samples"] for o in dropped) == summary["dropped_samples"]
    assert summary["seconds"] == pytest.approx(4.0)  # every sample accounted for: tagged or dropped
    # the same stream, not live: the server slows the client down instead and loses nothing
    lines, code, _ = stream(running.url, scene[:4 * RATE], block=RATE // 20)
    assert code == 1000 and lines[-1]["dropped_samples"] == 0 and not [o for o in lines if o["type"] == "dropped"]
    assert events(lines) == alone(tagger, scene[:4 * RATE])


def test_worker_processes_share_one_port_and_merge_their_figures(tagger, scene):
    from streamtag.server import ServeConfig, Workers

    workers = Workers(ServeConfig(port=0, max_wait=0.05), 2)
    try:
        url = f"ws://127.0.0.1:{workers.port}/"
        pieces = [scene[i * 3 * RATE:(i * 3 + 5) * RATE] for i in range(4)]
        results = [None] * len(pieces)
        threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, stream(url, pieces[k], pause=0.002)))
                   for k in range(len(pieces))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        for piece, (lines, code, _) in zip(pieces, results):
            assert code == 1000 and events(lines) == alone(tagger, piece)
        stats = workers.stats()
        assert stats["workers"] == 2 and stats["accepted"] == 4 and stats["closed"] == {"completed": 4}
        assert stats["windows"] == sum(lines[-1]["windows"] for lines, _, _ in results)
        assert sum(w["accepted"] for w in stats["each"]) == 4 and stats["latency_p99_ms"] > 0
        workers.reset_stats()
        assert workers.stats()["windows"] == 0
    finally:
        workers.stop()
    assert not any(p.is_alive() for p in workers.processes)
