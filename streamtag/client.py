"""``streamtag tag --server URL``: tag through a ``streamtag serve`` instead of a local model.

The same sources as a local run (files, a WAV or raw pipe on standard input, a
microphone) feed a ring buffer; a sender thread takes the samples from it and
sends them as float32 PCM, so the server's engine gets exactly the samples a
local engine would; the calling thread reads the server's JSON Lines and hands
events and windows to the same sinks. Files and pipes are sent as fast as the
server takes them (it slows the sender down rather than drop); a microphone
is sent as a live stream, and audio its ring had to drop is told to the
server as a gap (``{"type": "skip"}``), so times stay exact and the loss counts
in the summary. The model and its decoding are the server's.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np

from streamtag.engine import OnEvent, OnWindow, Summary, WindowScores
from streamtag.errors import StreamtagError
from streamtag.events import Event
from streamtag.ringbuffer import RingBuffer
from streamtag.sources import Source

BLOCK_BYTES = 1 << 16  # audio per message: well under the server's default message limit


class RemoteError(StreamtagError):
    """The server refused the stream or closed it with a reason."""


class RemoteSession:
    """One connection to a server, tagging one source; :meth:`run` returns its
    :class:`~streamtag.engine.Summary` as a local run would. ``token`` defaults
    to $STREAMTAG_TOKEN."""

    def __init__(self, url: str, token: str | None = None, open_timeout: float = 10.0):
        if not url.startswith(("ws://", "wss://")):
            raise StreamtagError(f"--server takes a ws:// or wss:// URL, got {url!r}")
        token = token if token is not None else os.environ.get("STREAMTAG_TOKEN")
        self.url, self.open_timeout = url, open_timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else None
        self.classes: list[str] = []
        self._stopping = False
        self.ws = None

    def _connect(self):
        from websockets.sync.client import connect

        try:
            return connect(self.url, additional_headers=self.headers, compression=None,
                           open_timeout=self.open_timeout, max_size=None, close_timeout=2)
        except OSError as exc:
            raise RemoteError(f"cannot reach {self.url}: {exc.strerror or exc}") from None
        except Exception as exc:  # websockets' handshake errors: a refused token, a full server, not a WebSocket
            raise RemoteError(f"{self.url} refused the stream: {_first_line(exc)}") from None

    def stop(self) -> None:
        """End the stream soon: what was sent is still tagged (Ctrl-C)."""
        self._stopping = True

    def run(self, source: Source, on_window: OnWindow | None = None, on_event: OnEvent | None = None,
            max_seconds: float | None = None, on_ready=None) -> Summary:
        """Tag ``source`` on the server; the callbacks as :meth:`Engine.run`'s, and
        ``on_ready(classes)`` once the server has said its classes."""
        t0 = time.perf_counter()
        with self._connect() as ws:
            self.ws = ws
            return self._run(ws, source, on_window, on_event, max_seconds, on_ready, t0)

    def _run(self, ws, source, on_window, on_event, max_seconds, on_ready, t0) -> Summary:
        from websockets.exceptions import ConnectionClosed

        try:
            ws.send(json.dumps({"rate": source.sample_rate, "channels": source.channels, "sample_type": "f32",
                                "windows": on_window is not None, "name": source.name, "live": source.live}))
            ready = self._next(ws.recv())
            if ready.get("type") != "ready":
                raise RemoteError(f"{self.url}: expected 'ready', got {ready.get('type')!r}")
            self.classes = list(ready["classes"])
            if on_ready is not None:
                on_ready(self.classes)
            sender = _Sender(ws, source, max_seconds, lambda: self._stopping)
            sender.start()
            try:
                summary = self._receive(on_window, on_event)
            finally:
                sender.stop()
        except ConnectionClosed as exc:
            raise RemoteError(f"{self.url} closed the stream: {exc.rcvd.reason if exc.rcvd else 'no reason'}") \
                from None
        if sender.error is not None and not isinstance(sender.error, StreamtagError):
            raise sender.error
        return Summary(source=source.name, sample_rate=source.sample_rate, seconds=summary["seconds"],
                       windows=summary["windows"], events=summary["events"],
                       dropped_samples=summary["dropped_samples"], gaps=summary["gaps"], overflows=source.overflows,
                       stopped=sender.stopped,
                       clip_scores=None if summary["clip_scores"] is None else np.asarray(summary["clip_scores"],
                                                                                          dtype=np.float32),
                       wall_seconds=time.perf_counter() - t0, error=sender.error)

    def _receive(self, on_window: OnWindow | None, on_event: OnEvent | None) -> dict:
        """Hand the server's lines to the callbacks until its summary."""
        for message in self.ws:
            for line in message.splitlines():
                obj = self._next(line)
                kind = obj.get("type")
                if kind == "event" and on_event is not None:
                    index = self.classes.index(obj["label"])
                    on_event(obj["state"], Event(obj["label"], index, obj["onset"], obj["offset"], obj["score"],
                                                 closed=obj["state"] == "close"))
                elif kind == "window" and on_window is not None:
                    scores = np.asarray(obj["scores"], dtype=np.float32)
                    now = time.perf_counter()
                    on_window(WindowScores(obj["index"], obj["start"], obj["end"], obj["at"], scores, scores, now,
                                           now))
                elif kind == "summary":
                    return obj
        raise RemoteError(f"{self.url} closed the stream before its summary")

    def _next(self, text) -> dict:
        if not isinstance(text, str):
            raise RemoteError(f"{self.url} sent binary data; is it a streamtag server?")
        try:
            obj = json.loads(text)
        except ValueError:
            raise RemoteError(f"{self.url} sent something that is not JSON; is it a streamtag server?") from None
        if obj.get("type") == "error":
            raise RemoteError(f"server: {obj.get('message')}")
        return obj


class _Sender(threading.Thread):
    """Reads the source's ring and sends its samples; a gap in the ring is sent as a skip."""

    def __init__(self, ws, source: Source, max_seconds: float | None, stopping):
        super().__init__(name="streamtag-sender", daemon=True)
        self.ws, self.source, self.stopping = ws, source, stopping
        self.limit = None if max_seconds is None else max(0, round(max_seconds * source.sample_rate))
        self.error: BaseException | None = None
        self.stopped = False
        self._halt = False
        frames = max(1, BLOCK_BYTES // (4 * source.channels))
        self.ring = RingBuffer(max(int(10 * source.sample_rate), 2 * frames) if source.live else 4 * frames,
                               source.channels)
        self.block = np.empty((frames, source.channels), dtype=np.float32)

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        ring, sent = self.ring, 0
        try:
            self.source.start(ring)
            while True:
                if (self.stopping() or self._halt) and not self.stopped:
                    self.source.stop()
                    ring.cancel()
                    self.stopped = True
                n, position = ring.read(self.block, timeout=0.05)
                if n == 0:
                    if ring.finished or self.stopped:
                        break
                    continue
                if position > sent:
                    self.ws.send(json.dumps({"type": "skip", "frames": position - sent}))
                    sent = position
                if self.limit is not None and sent + n >= self.limit:
                    n = self.limit - sent
                    self.stopped = True
                if n > 0:
                    self.ws.send(self.block[:n].astype("<f4").tobytes())
                    sent += n
                if self.stopped:
                    break
            if not self.stopped and ring.error is not None:
                self.error = ring.error  # a truncated stream, NaN samples: what came before is still tagged
            self.ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass  # the receiving side reports why
        except BaseException as exc:  # noqa: BLE001 -- reported by run() on the calling thread
            self.error = exc
        finally:
            self.source.stop()
            ring.cancel()

    def stop(self) -> None:
        """End the thread and wait for it. The thread stops the source itself: a sound device stopped from two
        threads at once can deadlock in PortAudio."""
        self._halt = True
        self.ring.cancel()
        self.join(timeout=5)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
