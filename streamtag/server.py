"""``streamtag serve``: many live audio streams tagged in one process, over WebSockets.

Each client opens one stream on one WebSocket connection:

1. It connects (``ws://HOST:PORT/``), with ``Authorization: Bearer TOKEN`` (or
   ``?token=TOKEN``) when the server has a token; a missing or wrong one is
   refused (HTTP 401) before any audio, as is a client beyond ``max_streams``
   (HTTP 503).
2. Its first message is text, JSON: ``{"rate": 48000, "channels": 2,
   "sample_type": "s16"}`` for raw little-endian PCM ("u8", "s16", "s24",
   "s32", "f32", "f64"), or ``{"format": "wav"}`` for a WAV stream whose header
   comes first in the audio; optional ``"live": true`` (a real-time source:
   see below), ``"windows": true`` (send every window's scores) and
   ``"name"``. The server answers ``{"type": "ready", "classes": [...], ...}``.
3. Then binary messages of audio, in any sizes up to ``max_message`` bytes (a
   sample frame may straddle two), ``{"type": "skip", "frames": N}`` where the
   client itself lost N frames, and a last text message ``{"type": "end"}``.
4. The server sends text messages of JSON Lines (one object per line, several
   lines per message): ``{"type": "event", "state": "open"|"close", "label",
   "onset", "offset", "score"}``, ``{"type": "window", "index", "start", "end",
   "at", "scores": [...]}`` when asked (``at``: the moment the score describes),
   ``{"type": "dropped", "samples", "at"}`` when the server had to drop audio of
   this stream (a client's own skips are not echoed; both count in the
   summary's ``dropped_samples``), and after ``end``
   ``{"type": "summary", ...}``; then it closes the connection (1000).

How the work is shared: every stream has its own engine (frontend, resampler,
smoothing, events), fed on the event loop as its audio arrives; the windows
that audio completes wait, and the windows of all streams are scored together
in one network call per tick (:meth:`~streamtag.engine.Engine.score_together`). A tick
starts ``max_wait`` seconds after the first window waiting for it, or at once
when ``max_batch`` windows wait: no window waits longer than ``max_wait`` plus
the time the loop is busy. A stream's scores are the ones it would get alone
(to float rounding): batching never mixes streams. One process's loop runs on
one core; :class:`Workers` runs several processes on one port.

Every client is treated as possibly hostile. Its memory is bounded: messages up
to ``max_message`` bytes (a bigger one closes the stream, 1009), the library's
queue of ``MAX_QUEUE`` messages, at most ``max_behind`` seconds of decoded
audio waiting for the engine, and ``SEND_BUFFER`` bytes of results in the
kernel. When its audio waits that long, a live stream loses its oldest audio,
counted and reported to the client (``dropped``), and the engine restarts at
the true time after the gap, so nothing is lost silently; any other stream is
simply not read until there is room (TCP slows the sender), and loses
nothing. A malformed message, bad audio
(NaN samples), ``idle_timeout`` seconds without a message, or results the
client does not read within ``send_timeout`` close that stream alone, with a
reason (1008); the others go on.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import http
import json
import math
import os
import socket
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np

from streamtag.audio import check_stream_format
from streamtag.engine import Engine, LatencyLog, Summary, WindowScores
from streamtag.errors import StreamtagError
from streamtag.events import Event
from streamtag.sources import PcmDecoder, sample_width

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_QUEUE = 16  # messages the WebSocket library buffers per client before it stops reading the socket
MAX_WAV_HEADER = 1 << 16  # bytes a WAV header may take
MAX_NAME = 200
SEND_BUFFER = 1 << 16  # bytes of results the kernel may hold for a client (beside the library's 32 KiB)


class ProtocolError(StreamtagError):
    """A client broke the protocol: the reason its stream is closed."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one client may cost; see the module docstring."""

    max_streams: int = 1000
    max_message: int = 1 << 20  # bytes of one WebSocket message
    max_behind: float = 2.0  # seconds of audio that may wait for the engine before the oldest is dropped
    idle_timeout: float = 30.0  # seconds without a message
    send_timeout: float = 10.0  # seconds a result may wait for the client to read
    max_channels: int = 8

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise StreamtagError(f"{field.name.replace('_', '-')} must be a positive number, got {value!r}")


@dataclasses.dataclass
class StreamFormat:
    """What a client's first message declares."""

    rate: int | None
    channels: int | None
    sample_type: str | None  # None: a WAV stream, its header still to come
    windows: bool
    name: str
    live: bool = False  # a real-time source: drop its oldest audio when behind, rather than slow it down

    @classmethod
    def parse(cls, text, max_channels: int) -> "StreamFormat":
        if not isinstance(text, str):
            raise ProtocolError("the first message must be text: JSON saying the stream's format")
        try:
            spec = json.loads(text)
        except ValueError:
            raise ProtocolError("the first message is not JSON") from None
        if not isinstance(spec, dict):
            raise ProtocolError("the first message must be a JSON object")
        unknown = set(spec) - {"rate", "channels", "sample_type", "format", "windows", "name", "live"}
        if unknown:
            raise ProtocolError(f"unknown field(s) in the first message: {', '.join(sorted(unknown))}")
        windows, live = spec.get("windows", False), spec.get("live", False)
        name = spec.get("name", "stream")
        if not isinstance(windows, bool) or not isinstance(live, bool):
            raise ProtocolError("'windows' and 'live' must be true or false")
        if not isinstance(name, str) or len(name) > MAX_NAME:
            raise ProtocolError(f"'name' must be a string of at most {MAX_NAME} characters")
        fmt = spec.get("format", "pcm")
        if fmt == "wav":
            if {"rate", "channels", "sample_type"} & set(spec):
                raise ProtocolError("a WAV stream's header gives its rate, channels and sample type")
            return cls(None, None, None, windows, name, live)
        if fmt != "pcm":
            raise ProtocolError(f"'format' must be 'pcm' or 'wav', got {fmt!r}")
        if "rate" not in spec:
            raise ProtocolError("raw PCM needs 'rate' (Hz)")
        rate, channels = check_stream_format(spec["rate"], spec.get("channels", 1))
        if channels > max_channels:
            raise ProtocolError(f"at most {max_channels} channels per stream, got {channels}")
        sample_type = spec.get("sample_type", "s16")
        if not isinstance(sample_type, str):
            raise ProtocolError("'sample_type' must be a string")
        sample_width(sample_type)
        return cls(rate, channels, sample_type, windows, name, live)


class Batcher:
    """Scores the waiting windows of all streams in one network call per tick.

    The call runs on the event loop: no stream is fed while it runs (their
    audio waits in the sockets), so it needs no locks, and a server that wants
    more cores runs more worker processes (:class:`Workers`), each with its
    own loop. Tried the other way, with the network on a thread of its own:
    the thread and the loop took turns at the interpreter after every torch
    call, which cost 10 % more CPU and a worse p99 at 300 streams."""

    def __init__(self, max_wait: float, max_batch: int):
        self.max_wait, self.max_batch = max_wait, max_batch
        self._waiting: list[tuple[Engine, asyncio.Future]] = []
        self._windows = 0
        self._timer: asyncio.TimerHandle | None = None
        self.ticks = 0
        self.scored = 0

    def submit(self, engine: Engine) -> asyncio.Future:
        """Score ``engine``'s waiting windows at the next tick; the future is done
        when its events and callbacks have run. The engine must not be pushed to
        before then."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._waiting.append((engine, done))
        self._windows += engine.pending_windows
        if self._windows >= self.max_batch:
            self._tick()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait, self._tick)
        return done

    def _tick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self._waiting, self._windows = self._waiting, [], 0
        if not waiting:
            return
        try:
            self.scored += Engine.score_together([engine for engine, _ in waiting])
            self.ticks += 1
            for _, done in waiting:
                if not done.done():
                    done.set_result(None)
        except Exception as exc:  # noqa: BLE001 -- every stream of the batch hears of it, the server goes on
            for _, done in waiting:
                if not done.done():
                    done.set_exception(exc)


class Server:
    """The WebSocket server; :meth:`run` serves until cancelled.

    ``tagger`` is a :class:`~streamtag.tagger.Tagger` (one model and its
    decoding). ``token``, when given, is required of every client; a host
    other than localhost needs one. ``max_wait`` bounds how long a window waits
    for its batch; ``max_batch`` starts a tick early."""

    def __init__(self, tagger, host: str = "127.0.0.1", port: int = 8765, *, token: str | None = None,
                 limits: Limits = Limits(), max_wait: float = 0.02, max_batch: int = 512, reuse_port: bool = False):
        if host not in LOCAL_HOSTS and not token:
            raise StreamtagError(f"serving on {host} needs a token (--token or STREAMTAG_TOKEN): "
                                 "any client that can reach it could stream to it")
        if not (isinstance(port, int) and 0 <= port <= 65535):
            raise StreamtagError(f"port must be an integer from 0 to 65535, got {port!r}")
        if not (max_wait > 0 and max_batch >= 1):
            raise StreamtagError("max-wait must be positive and max-batch at least 1")
        self.tagger, self.host, self.port, self.token, self.limits = tagger, host, port, token, limits
        self.reuse_port = reuse_port  # several worker processes listen on the port (run_workers)
        self.batcher = Batcher(max_wait, max_batch)
        self.latency = LatencyLog(20000)  # seconds from a window's last sample received to its result sent
        self.streams = 0  # open now
        self.accepted = 0
        self.windows = 0
        self.dropped_samples = 0
        self.closed: collections.Counter[str] = collections.Counter()  # why streams ended
        self.faults: collections.deque[str] = collections.deque(maxlen=100)  # the latest streams' close reasons
        self.bound_port: int | None = None
        self._open: set[_Stream] = set()
        self.started = time.perf_counter()

    # -- serving -------------------------------------------------------------

    async def run(self, ready: asyncio.Future | None = None) -> None:
        """Serve until cancelled; ``ready`` gets the bound port once listening."""
        from websockets.asyncio.server import serve


        async with serve(self._handle, self.host, self.port, process_request=self._admit,
                         max_size=self.limits.max_message, max_queue=MAX_QUEUE, compression=None,
                         close_timeout=2, ping_interval=20, ping_timeout=20, reuse_port=self.reuse_port) as server:
            self.bound_port = next(iter(server.sockets)).getsockname()[1]
            if ready is not None:
                ready.set_result(self.bound_port)
            sweep = asyncio.get_running_loop().create_task(self._sweep())
            try:
                await server.serve_forever()
            finally:
                sweep.cancel()

    def reset_stats(self) -> None:
        """Start the latency, window and drop counts afresh (a load test, after its warm-up)."""
        self.latency = LatencyLog(20000)
        self.windows = self.dropped_samples = 0
        self.batcher.ticks = self.batcher.scored = 0
        self.started = time.perf_counter()

    def latencies(self) -> np.ndarray:
        """The latencies behind :meth:`stats`' percentiles, in seconds (to merge several workers')."""
        return self.latency.values()

    def stats(self) -> dict:
        """Since the start or :meth:`reset_stats`: streams, windows, ticks, latency
        from a window's last sample received to its result sent (p50/p99 over the
        last 20,000 windows), samples dropped, why streams closed."""
        p50, p99 = self.latency.percentiles()
        return {"streams": self.streams, "accepted": self.accepted, "windows": self.windows,
                "ticks": self.batcher.ticks, "batched_windows": self.batcher.scored,
                "latency_p50_ms": p50 * 1e3, "latency_p99_ms": p99 * 1e3,
                "dropped_samples": self.dropped_samples, "closed": dict(self.closed),
                "uptime_s": time.perf_counter() - self.started}

    def _admit(self, connection, request):
        """Refuse a wrong or missing token, or a client over the stream limit, before the handshake."""
        if self.token is not None:
            given = None
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                given = auth[len("Bearer "):]
            else:
                given = parse_qs(urlsplit(request.path).query).get("token", [None])[0]
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                self.closed["unauthorized"] += 1
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        if self.streams >= self.limits.max_streams:
            self.closed["server full"] += 1
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"server full: {self.limits.max_streams} streams\n")
        return None

    async def _handle(self, ws) -> None:
        self.streams += 1
        self.accepted += 1
        stream = _Stream(self, ws)
        self._open.add(stream)
        try:
            reason = await stream.run()
        finally:
            self.streams -= 1
            self._open.discard(stream)
        self.closed[reason] += 1

    async def _sweep(self) -> None:
        """Close streams that have sent nothing for ``idle_timeout`` seconds: one timer for all of
        them, where a timeout on every receive cost each message a task."""
        every = min(1.0, self.limits.idle_timeout / 4)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for stream in list(self._open):
                if not stream.idle and now - stream.last_message > self.limits.idle_timeout:
                    asyncio.get_running_loop().create_task(stream.close_idle())


class _Stream:
    """One client's stream: a reader task that decodes and queues the audio as
    it arrives, and this task, which feeds the engine, waits for the batch and
    sends the results. The queue holds at most ``max_behind`` seconds: a live
    stream (``"live": true``) then loses its oldest audio, counted and
    reported; any other waits (the socket is not read, so TCP slows the client
    down) and loses nothing."""

    def __init__(self, server: Server, ws):
        self.server, self.ws, self.limits = server, ws, server.limits
        self.engine = server.tagger.engine(meters=False)
        self.fmt: StreamFormat | None = None
        # ("audio", block, arrival) | ("skip", frames, "server" | "client") | ("end",)
        self.queue: collections.deque = collections.deque()
        self.queued = 0  # frames of audio in the queue
        self.position = 0  # frames pushed to the engine or skipped
        self.wake = asyncio.Event()  # the queue has something
        self.space = asyncio.Event()  # the queue has room
        self.lines: list[str] = []  # JSON lines to send
        self.last_message = time.monotonic()
        self.idle = False  # closed by the server's sweep for sending nothing
        self.arrivals: list[float] = []  # of the windows scored since the last send

    async def run(self) -> str:
        """Serve the stream; the reason it ended."""
        from websockets.exceptions import ConnectionClosed

        ws = self.ws
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:  # the kernel's buffer of results not yet read by the client: bounded too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        try:
            fmt = self.fmt_declared = StreamFormat.parse(await self._receive(), self.limits.max_channels)
            decoder = PcmDecoder(fmt.sample_type, fmt.channels or 1, fmt.name, MAX_WAV_HEADER)
            if fmt.sample_type is not None:
                self._open(fmt)
            engine = self.engine
            await self._send([json.dumps({"type": "ready", "classes": engine.classes, "model": engine.model.name,
                                          "sample_rate": engine.spec.sample_rate,
                                          "window_seconds": engine.spec.seconds(engine.window_frames),
                                          "hop_seconds": engine.hop_seconds})])
            reader = asyncio.get_running_loop().create_task(self._read(decoder))
            try:
                summary = await self._process(reader)
            finally:
                reader.cancel()
            await self._send([json.dumps(_summary_message(summary))])
            await ws.close(1000, "end of stream")
            return "completed"
        except StreamtagError as exc:
            self.server.faults.append(f"{_peer(ws)}: {exc}")
            lines = self.lines + [json.dumps({"type": "error", "message": str(exc)})]  # what was decided, then why
            try:
                await asyncio.wait_for(ws.send("\n".join(lines)), 1.0)
            except (ConnectionClosed, asyncio.TimeoutError):
                pass
            await ws.close(1008, _short(str(exc)))
            return "protocol" if isinstance(exc, ProtocolError) else "bad audio"
        except ConnectionClosed as exc:
            if self.idle:
                return "idle"
            return "message too big" if exc.sent is not None and exc.sent.code == 1009 else "disconnected"

    def _open(self, fmt: StreamFormat) -> None:
        self.fmt = fmt
        self.engine.open(fmt.rate, fmt.channels, fmt.name, on_window=self._window, on_event=self._event)
        self.max_queued = max(1, min(int(self.limits.max_behind * fmt.rate), (1 << 20) // fmt.channels))

    async def _receive(self):
        message = await self.ws.recv()  # no timeout here: the server's sweep closes idle streams (cheaper)
        self.last_message = time.monotonic()
        return message

    async def close_idle(self) -> None:
        """Close the stream: it has sent nothing for ``idle_timeout`` seconds."""
        from websockets.exceptions import ConnectionClosed

        self.idle = True
        reason = f"idle for {self.limits.idle_timeout:g} s"
        self.server.faults.append(f"{_peer(self.ws)}: {reason}")
        try:
            await asyncio.wait_for(self.ws.send(json.dumps({"type": "error", "message": reason})), 1.0)
        except (ConnectionClosed, asyncio.TimeoutError):
            pass
        await self.ws.close(1008, reason)

    async def _read(self, decoder: PcmDecoder) -> None:
        """Queue each message's audio as it arrives, then the end; a fault ends
        this task, and the processing task raises it when the queue runs dry."""
        try:
            while True:
                while self.fmt is not None and not self.fmt.live and self.queued >= self.max_queued:
                    self.space.clear()
                    await self.space.wait()
                message = await self._receive()
                arrival = time.perf_counter()
                if isinstance(message, str):
                    skipped = _control(message)
                    if skipped is None:
                        decoder.finish()
                        self._put(("end",))
                        return
                    self._put(("skip", skipped, "client"))
                    continue
                block = decoder.decode(message)
                if self.fmt is None and block is not None:  # a WAV stream's header is complete
                    if decoder.channels > self.limits.max_channels:
                        raise ProtocolError(f"at most {self.limits.max_channels} channels per stream, got "
                                            f"{decoder.channels}")
                    rate, channels = check_stream_format(decoder.sample_rate, decoder.channels, "WAV header: ")
                    self._open(dataclasses.replace(self.fmt_declared, rate=rate, channels=channels,
                                                   sample_type=decoder.sample_type))
                if block is not None and len(block):
                    self._put(("audio", block, arrival))
        finally:
            self.wake.set()

    def _put(self, item: tuple) -> None:
        self.queue.append(item)
        if item[0] == "audio":
            self.queued += len(item[1])
            while self.fmt.live and self.queued > self.max_queued:
                self._drop_oldest()
        self.wake.set()

    def _drop_oldest(self) -> None:
        """A live stream's engine is behind: its oldest queued audio becomes a counted gap."""
        i = next(i for i, item in enumerate(self.queue) if item[0] == "audio")
        frames = len(self.queue[i][1])
        self.queued -= frames
        if i and self.queue[i - 1][0] == "skip" and self.queue[i - 1][2] == "server":
            self.queue[i - 1] = ("skip", self.queue[i - 1][1] + frames, "server")
            del self.queue[i]
        else:
            self.queue[i] = ("skip", frames, "server")

    async def _process(self, reader: asyncio.Task) -> Summary:
        engine = self.engine
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                if not self.queue:
                    await reader  # it ended without queueing the end: raises its fault
                    raise ProtocolError("the stream ended without an end message")
            while self.queue:
                item = self.queue.popleft()
                if item[0] == "end":
                    if self.fmt is None:
                        raise ProtocolError("the stream ended before its WAV header")
                    summary = engine.close()
                    await self._flush()
                    return summary
                if item[0] == "skip":  # a gap: the engine restarts at the true time after it
                    _, frames, by = item
                    engine.skip(frames)
                    if by == "server":
                        self.server.dropped_samples += frames
                        self.lines.append(json.dumps({"type": "dropped", "samples": frames,
                                                      "at": round(self.position / self.fmt.rate, 6)}))
                    self.position += frames
                    continue
                _, block, arrival = item
                self.queued -= len(block)
                self.position += len(block)
                engine.push(block, score=False, arrival=arrival)
            self.space.set()
            if engine.pending_windows:
                await self.server.batcher.submit(engine)
            await self._flush()

    def _window(self, window: WindowScores) -> None:
        self.arrivals.append(window.arrival)
        if self.fmt.windows:
            self.lines.append(json.dumps({"type": "window", "index": window.index, "start": round(window.start, 6),
                                          "end": round(window.end, 6), "at": round(window.at, 6),
                                          "scores": [round(float(p), 6) for p in window.scores]}))

    def _event(self, kind: str, event: Event) -> None:
        self.lines.append(json.dumps({"type": "event", "state": kind, "label": event.label,
                                      "onset": round(event.onset, 6), "offset": round(event.offset, 6),
                                      "score": float(event.score)}))

    async def _flush(self) -> None:
        lines, self.lines = self.lines, []
        arrivals, self.arrivals = self.arrivals, []
        if lines:
            await self._send(lines)
        if arrivals:
            self.server.latency.extend(time.perf_counter() - np.asarray(arrivals))
            self.server.windows += len(arrivals)

    async def _send(self, lines: list[str]) -> None:
        try:
            await asyncio.wait_for(self.ws.send("\n".join(lines)), self.limits.send_timeout)
        except asyncio.TimeoutError:
            raise ProtocolError(f"the client did not read its results for {self.limits.send_timeout:g} s") from None


def _control(text: str) -> int | None:
    """A text message after the first: None for ``{"type": "end"}``, the frame
    count of ``{"type": "skip", "frames": N}`` (audio the client lost)."""
    try:
        message = json.loads(text)
    except ValueError:
        raise ProtocolError("a text message after the first must be JSON: {\"type\": \"end\"}") from None
    if message == {"type": "end"}:
        return None
    if isinstance(message, dict) and message.get("type") == "skip" and set(message) == {"type", "frames"} \
            and isinstance(message["frames"], int) and not isinstance(message["frames"], bool) \
            and 0 < message["frames"] <= 1 << 40:
        return message["frames"]
    raise ProtocolError("a text message after the first is {\"type\": \"end\"} or {\"type\": \"skip\", "
                        "\"frames\": N}")


def _summary_message(summary: Summary) -> dict:
    return {"type": "summary", "source": summary.source, "sample_rate": summary.sample_rate,
            "seconds": round(summary.seconds, 6), "windows": summary.windows, "events": summary.events,
            "dropped_samples": summary.dropped_samples, "gaps": summary.gaps,
            "clip_scores": None if summary.clip_scores is None else [float(p) for p in summary.clip_scores]}


def _peer(ws) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "client"


def _short(reason: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    data = reason.encode()
    return reason if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


# -- several worker processes on one port --------------------------------------


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What a worker process needs to build its own :class:`Server` (the model
    is loaded in each, so this is all that crosses the process boundary)."""

    model: str | None = None
    device: str | None = None
    int8: bool = False
    decoding: dict = dataclasses.field(default_factory=dict)  # Tagger's decoding options
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    limits: Limits = Limits()
    max_wait: float = 0.02
    max_batch: int = 512
    threads: int = 1  # torch's CPU threads per worker

    def build(self, reuse_port: bool = False, port: int | None = None) -> Server:
        import torch

        from streamtag.tagger import Tagger

        torch.set_num_threads(self.threads)
        tagger = Tagger(self.model, device=self.device, int8=self.int8, **self.decoding)
        return Server(tagger, self.host, self.port if port is None else port, token=self.token, limits=self.limits,
                      max_wait=self.max_wait, max_batch=self.max_batch, reuse_port=reuse_port)


class Workers:
    """``n`` worker processes, each a whole :class:`Server` (its own event loop,
    engines and batches), listening on one port: the kernel spreads new
    connections over them (SO_REUSEPORT, Linux and BSDs). One process's event
    loop runs on one core; workers let a server use several, each stream still
    served by one. :meth:`stats` merges theirs."""

    def __init__(self, config: ServeConfig, n: int, timeout: float = 120.0):
        import multiprocessing
        import socket as sockets

        if n < 1:
            raise StreamtagError(f"workers must be at least 1, got {n}")
        if not hasattr(sockets, "SO_REUSEPORT") and n > 1:
            raise StreamtagError("several workers need SO_REUSEPORT, which this system lacks; use one")
        holder = None
        port = config.port
        if port == 0:  # pick a free port for all of them, held until they listen on it
            holder = sockets.socket(sockets.AF_INET6 if ":" in config.host else sockets.AF_INET)
            holder.setsockopt(sockets.SOL_SOCKET, sockets.SO_REUSEPORT, 1)
            holder.bind((config.host, 0))
            port = holder.getsockname()[1]
        context = multiprocessing.get_context("spawn")
        self.port, self.processes, self.pipes = port, [], []
        try:
            for index in range(n):
                mine, theirs = context.Pipe()
                process = context.Process(target=_worker, args=(config, port, n > 1 or holder is not None, theirs),
                                          daemon=True,
                                          name=f"streamtag-serve-{index}")
                process.start()
                self.processes.append(process)
                self.pipes.append(mine)
            for pipe, process in zip(self.pipes, self.processes):
                if not pipe.poll(timeout):
                    raise StreamtagError("a worker did not start")
                kind, value = pipe.recv()
                if kind == "error":
                    raise StreamtagError(value)
        except BaseException:
            self.stop()
            raise
        finally:
            if holder is not None:
                holder.close()

    def ask(self, command: str) -> list[dict]:
        for pipe in self.pipes:
            pipe.send(command)
        return [pipe.recv() for pipe in self.pipes]

    def reset_stats(self) -> None:
        self.ask("reset")

    def stats(self) -> dict:
        """All workers' :meth:`Server.stats` together, with each one's CPU time and memory."""
        each = self.ask("stats")
        latency = np.concatenate([w.pop("latencies") for w in each])
        p50, p99 = np.percentile(latency, [50, 99]) * 1e3 if len(latency) else (math.nan, math.nan)
        closed: collections.Counter = collections.Counter()
        for w in each:
            closed.update(w["closed"])
        return {"workers": len(each), **{key: sum(w[key] for w in each) for key in (
                "streams", "accepted", "windows", "ticks", "batched_windows", "dropped_samples", "cpu_s", "rss_mb")},
                "latency_p50_ms": float(p50), "latency_p99_ms": float(p99), "closed": dict(closed),
                "faults": [f for w in each for f in w["faults"]], "device": each[0]["device"],
                "each": each}

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
        for process in self.processes:
            process.join(10)


def _worker(config: ServeConfig, port: int, reuse_port: bool, pipe) -> None:
    """A worker process: serve, and answer the parent's "stats" and "reset" on ``pipe``."""
    import resource
    import threading

    try:
        server = config.build(reuse_port=reuse_port, port=port)
    except StreamtagError as exc:
        pipe.send(("error", str(exc)))
        return
    loop = asyncio.new_event_loop()

    async def answer(command: str) -> dict:
        if command == "reset":
            server.reset_stats()
            return {}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        with open("/proc/self/statm") as f:  # resident pages (Linux), without psutil
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
        return {**server.stats(), "latencies": server.latencies(), "faults": list(server.faults),
                "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": rss, "device": server.tagger.model.device}

    def commands() -> None:
        while True:
            try:
                command = pipe.recv()
            except EOFError:  # the parent has gone
                loop.call_soon_threadsafe(serving.cancel)
                return
            pipe.send(asyncio.run_coroutine_threadsafe(answer(command), loop).result())

    async def main() -> None:
        ready = loop.create_future()
        task = asyncio.ensure_future(server.run(ready))
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            pipe.send(("error", f"cannot listen on {config.host}:{port}: {task.exception()}"))
            return
        pipe.send(("ready", ready.result()))
        threading.Thread(target=commands, daemon=True).start()
        await task

    serving = loop.create_task(main())
    try:
        loop.run_until_complete(serving)
    except (asyncio.CancelledError, KeyboardInterrupt):
        pass
