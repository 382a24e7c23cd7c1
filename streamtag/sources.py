"""Where audio comes from: files, pipes, microphones, arrays.

A source knows its input ``sample_rate`` and ``channels`` and, once started,
writes ``(frames, channels)`` float32 blocks into the engine's
:class:`~streamtag.ringbuffer.RingBuffer`. It neither resamples nor downmixes:
the engine does both, the same way for every source, so a recording gives the
same scores whichever way it arrives.

- Pull sources (a file, a WAV or raw PCM stream, an array) read on their own
  thread and write with back-pressure: they lose nothing.
- Live sources (a microphone, or :class:`PacedSource` standing in for one)
  write from a callback that must not wait; if the engine falls behind, the
  ring drops the oldest audio and counts it.

A pull source that fails part-way (a truncated stream, a decoding error)
hands its error to the ring after the audio it did read, so the engine tags
everything that arrived and then reports the error.
"""

from __future__ import annotations

import io
import struct
import threading
import time
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf

from streamtag.audio import check_complete, check_stream_format, open_audio
from streamtag.errors import (
    DeviceError,
    EmptyAudioError,
    NotAudioError,
    StreamtagError,
    TruncatedAudioError,
    UnsupportedAudioError,
)
from streamtag.ringbuffer import RingBuffer

#: Raw PCM sample types ``--raw`` accepts (little-endian).
RAW_TYPES = ("s16", "s32", "f32")
_DTYPES = {"u8": "u1", "s16": "<i2", "s24": "u1", "s32": "<i4", "f32": "<f4", "f64": "<f8"}
_WIDTH = {"u8": 1, "s16": 2, "s24": 3, "s32": 4, "f32": 4, "f64": 8}
_READ = 1 << 16  # bytes per read from a stream: small enough to pass audio on as it arrives

# WAV data sizes that mean "unknown length": 0 and 0xFFFFFFFF (ffmpeg, RF64) and the
# near-2 GiB placeholders of streamed headers: 0x80000000 (arecord), 0x7FFFF000 (sox).
_STREAMED_WAV_SIZE = 0x7FFF0000


class Source:
    """What the engine needs to know about any source."""

    name: str = "audio"
    sample_rate: int
    channels: int
    live: bool = False  # True: written from a callback that must not wait (the ring drops instead)
    frames: int | None = None  # total frames, when known in advance
    overflows: int = 0  # blocks the sound card reported lost before they reached us

    def start(self, ring: RingBuffer) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop producing; safe to call more than once."""


class _Reader(Source):
    """A pull source: a thread copies :meth:`_blocks` into the ring with back-pressure."""

    def _blocks(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def start(self, ring: RingBuffer) -> None:
        threading.Thread(target=self._run, args=(ring,), name=f"streamtag-read {self.name}", daemon=True).start()

    def _run(self, ring: RingBuffer) -> None:
        try:
            for block in self._blocks():
                if not ring.write(block):
                    return  # the engine stopped
        except BaseException as exc:  # handed to the engine, which raises it after the audio read so far
            ring.close(exc)
            return
        ring.close()


class FileSource(_Reader):
    """An audio file, anything libsndfile reads, decoded block by block."""

    def __init__(self, path, block: int = 8192):
        self.path = Path(path)
        self.name = str(path)
        self._file = open_audio(self.path)  # a bad file fails here, before anything starts
        self.sample_rate = self._file.samplerate
        self.channels = self._file.channels
        self.frames = self._file.frames
        self._block = block

    def _blocks(self) -> Iterator[np.ndarray]:
        read = 0
        with self._file as f:
            while True:
                try:
                    data = f.read(self._block, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as exc:
                    raise TruncatedAudioError(f"{self.name}: audio data is damaged or cut short after "
                                              f"{read} frames ({exc})") from None
                if not len(data):
                    break
                read += len(data)
                yield data
            check_complete(self.path, f, read)


class ArraySource(_Reader):
    """Samples already in memory, ``(frames,)`` or ``(frames, channels)``, fed in blocks."""

    def __init__(self, samples: np.ndarray, sample_rate: int, name: str = "array", block: int = 8192):
        samples = np.asarray(samples, dtype=np.float32)
        self.samples = samples[:, None] if samples.ndim == 1 else samples
        self.sample_rate, self.channels = int(sample_rate), self.samples.shape[1]
        self.frames, self.name, self._block = len(self.samples), name, block

    def _blocks(self) -> Iterator[np.ndarray]:
        for i in range(0, len(self.samples), self._block):
            yield self.samples[i:i + self._block]


class PacedSource(Source):
    """Samples in memory delivered like a sound card: in blocks, on a clock,
    from a thread that must not wait (``write_nowait``). For tests of the live
    path and for latency benchmarks.

    ``blocks`` is a block size or a sequence of sizes (cycled); ``speed`` is
    how much faster than real time to deliver (None: as fast as possible).
    """

    live = True

    def __init__(self, samples: np.ndarray, sample_rate: int, blocks=512, speed: float | None = 1.0,
                 name: str = "paced"):
        samples = np.asarray(samples, dtype=np.float32)
        self.samples = samples[:, None] if samples.ndim == 1 else samples
        self.sample_rate, self.channels = int(sample_rate), self.samples.shape[1]
        self.frames, self.name, self.speed = len(self.samples), name, speed
        self._sizes = [int(blocks)] if np.isscalar(blocks) else [int(b) for b in blocks]
        if not self._sizes or min(self._sizes) < 1:
            raise ValueError(f"block sizes must be positive, got {blocks!r}")
        self._stop = threading.Event()

    def start(self, ring: RingBuffer) -> None:
        threading.Thread(target=self._run, args=(ring,), name=f"streamtag-paced {self.name}", daemon=True).start()

    def _run(self, ring: RingBuffer) -> None:
        t0 = time.perf_counter()
        pos, k = 0, 0
        while pos < len(self.samples) and not self._stop.is_set():
            end = min(pos + self._sizes[k % len(self._sizes)], len(self.samples))
            if self.speed:  # a sound card hands a block over once its last sample is recorded
                delay = t0 + end / self.sample_rate / self.speed - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
            ring.write_nowait(self.samples[pos:end])
            pos, k = end, k + 1
        ring.close()

    def stop(self) -> None:
        self._stop.set()


class ReplaySource(FileSource):
    """An audio file played as a sound card would deliver it: decoded block by
    block on the clock and written without waiting, so the live path (drops,
    latency, the dashboard) behaves exactly as with a microphone. For demos
    and for machines without one; ``speed`` > 1 plays faster than real time."""

    live = True

    def __init__(self, path, speed: float = 1.0, block_seconds: float = 0.02):
        super().__init__(path)
        if not speed > 0:
            raise StreamtagError(f"replay speed must be positive, got {speed!r}")
        self.speed = speed
        self._block = max(1, round(self.sample_rate * block_seconds))
        self._stop = threading.Event()

    def _run(self, ring: RingBuffer) -> None:
        t0 = time.perf_counter()
        played = 0
        try:
            for block in self._blocks():
                played += len(block)
                delay = t0 + played / self.sample_rate / self.speed - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
                if self._stop.is_set():
                    return  # the engine stopped and cancelled the ring
                ring.write_nowait(block)
        except BaseException as exc:  # handed to the engine after the audio played so far
            ring.close(exc)
            return
        ring.close()

    def stop(self) -> None:
        self._stop.set()


# -- byte streams: WAV and raw PCM on standard input ---------------------------


def _read_some(stream: BinaryIO, n: int) -> bytes:
    """Whatever the stream has now, up to ``n`` bytes (b"" at the end): a pipe's
    audio is passed on as it arrives instead of waiting to fill a big read."""
    read1 = getattr(stream, "read1", None)
    return read1(n) if read1 is not None else stream.read(n)


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = _read_some(stream, n - len(data))
        if not more:
            break
        data += more
    return data


def sample_width(sample_type: str) -> int:
    """Bytes per sample of a PCM sample type ("u8", "s16", "s24", "s32", "f32", "f64")."""
    if sample_type not in _WIDTH:
        raise UnsupportedAudioError(f"unsupported sample type {sample_type!r}; use one of {', '.join(_WIDTH)}")
    return _WIDTH[sample_type]


def decode_pcm(raw: bytes, sample_type: str, channels: int) -> np.ndarray:
    """Little-endian PCM bytes (whole frames) as float32 ``(frames, channels)``,
    scaled as libsndfile scales them, so a pipe and a file give identical samples."""
    width = _WIDTH[sample_type]
    x = np.frombuffer(raw, dtype=_DTYPES[sample_type])
    if sample_type == "s24":  # three bytes to the top of an int32, then scaled as s32
        b = x.reshape(-1, 3).astype(np.int32)
        x, sample_type = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24), "s32"
    return _to_float(x, sample_type).reshape(len(raw) // (width * channels), channels)


_ARRAY_TYPES = {np.dtype(np.uint8): "u8", np.dtype(np.int16): "s16", np.dtype(np.int32): "s32"}


def as_float_samples(block, channels: int) -> np.ndarray:
    """An array of samples as float32 ``(frames, channels)``: float as it is,
    int16, int32 or uint8 scaled to [-1, 1) as libsndfile (and :func:`decode_pcm`)
    scale them. ``(frames,)`` is taken for one channel."""
    x = np.asarray(block)
    if x.ndim == 1 and channels == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] != channels:
        raise StreamtagError(f"expected samples of shape (frames, {channels}), got {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    if x.dtype not in _ARRAY_TYPES:
        raise StreamtagError(f"unsupported sample type {x.dtype}: use float, int16, int32 or uint8 samples")
    return _to_float(x, _ARRAY_TYPES[x.dtype])


def _to_float(x: np.ndarray, sample_type: str) -> np.ndarray:
    if sample_type == "u8":
        return (x.astype(np.float32) - np.float32(128)) * np.float32(1 / 128)
    if sample_type == "s16":
        return x.astype(np.float32) * np.float32(1 / 32768)
    if sample_type == "s32":
        return x.astype(np.float32) * np.float32(2.0 ** -31)
    return x.astype(np.float32, copy=False)


class PcmDecoder:
    """A byte stream that arrives in pieces of any size (a socket's messages, a
    caller's pushes) as float32 ``(frames, channels)`` blocks: raw PCM of a
    declared sample type, or, with ``sample_type=None``, a WAV stream whose
    header comes first (its rate, channels and sample type are then known once
    :meth:`decode` has returned a block). A sample frame may straddle two pieces."""

    def __init__(self, sample_type: str | None = None, channels: int = 1, name: str = "stream",
                 max_header: int = 1 << 16):
        if sample_type is not None:
            sample_width(sample_type)  # checks it
        self.sample_type, self.channels, self.name = sample_type, channels, name
        self.sample_rate: int | None = None  # from a WAV header
        self.max_header = max_header
        self._pending = b""
        self._left: int | None = None  # bytes of samples a WAV header declared, still to come

    def decode(self, data: bytes) -> np.ndarray | None:
        """The whole frames ``data`` completes; None while a WAV header is incomplete."""
        data = bytes(data)
        if self.sample_type is None:
            data = self._pending + data
            head = io.BytesIO(data)
            try:
                rate, channels, sample_type, self._left = read_wav_header(head, self.name)
            except TruncatedAudioError:
                if len(data) > self.max_header:
                    raise NotAudioError(f"{self.name}: no complete WAV header within {self.max_header} bytes") \
                        from None
                self._pending = data  # the rest of the header is still to come
                return None
            self.sample_rate, self.channels, self.sample_type = rate, channels, sample_type
            data, self._pending = data[head.tell():], b""
        if self._left is not None:  # counted on the new bytes only: a frame's pending start was counted before
            data = data[:self._left]  # what follows the samples (metadata chunks) is not audio
            self._left -= len(data)
        data = self._pending + data
        frame = _WIDTH[self.sample_type] * self.channels
        whole = len(data) - len(data) % frame
        self._pending = data[whole:]
        return decode_pcm(data[:whole], self.sample_type, self.channels)

    def finish(self) -> None:
        """The stream has ended: raise if it ended inside a sample frame or a WAV header."""
        if self._pending:
            where = "a sample frame" if self.sample_type is not None else "its WAV header"
            raise TruncatedAudioError(f"{self.name}: the stream ended inside {where} "
                                      f"({len(self._pending)} bytes left over)")


class _ByteStreamSource(_Reader):
    """PCM frames from a byte stream; the header, if any, is already parsed."""

    def __init__(self, stream: BinaryIO, name: str, sample_rate: int, channels: int, sample_type: str,
                 limit: int | None = None):
        self._stream, self.name = stream, name
        self.sample_rate, self.channels, self.sample_type = sample_rate, channels, sample_type
        self._frame_bytes = _WIDTH[sample_type] * channels
        self._limit = limit  # bytes of samples the header promised, None if unknown

    def _blocks(self) -> Iterator[np.ndarray]:
        decoder = PcmDecoder(self.sample_type, self.channels, self.name)  # carries a frame split across reads
        total = 0
        while self._limit is None or total < self._limit:
            want = _READ if self._limit is None else min(_READ, self._limit - total)
            data = _read_some(self._stream, want)
            if not data:
                break
            total += len(data)
            block = decoder.decode(data)
            if len(block):
                yield block
        frames, left = divmod(total, self._frame_bytes)
        if total == 0:
            raise EmptyAudioError(f"{self.name}: the stream holds no samples")
        if left:
            raise TruncatedAudioError(f"{self.name}: truncated: the stream ended inside a sample frame after "
                                      f"{frames} whole frames ({left} bytes left over)")
        if self._limit is not None and total < self._limit:
            raise TruncatedAudioError(f"{self.name}: truncated: the header declares {self._limit} bytes of "
                                      f"samples, the stream ended after {total}")


class RawSource(_ByteStreamSource):
    """Headerless little-endian PCM (``--raw``): the caller says rate, channels and sample type."""

    def __init__(self, stream: BinaryIO, sample_rate, channels, sample_type: str, name: str = "stdin"):
        if sample_type not in RAW_TYPES:
            raise UnsupportedAudioError(f"unsupported raw sample type {sample_type!r}; use one of "
                                        f"{', '.join(RAW_TYPES)}")
        check_stream_format(sample_rate, channels, "raw ")
        super().__init__(stream, name, sample_rate, channels, sample_type)


class WavStreamSource(_ByteStreamSource):
    """A WAV stream read front to back, never seeking: a file on a pipe, or the
    header-first streams ``arecord`` and ``sox -t wav -`` write, whose data size
    is a placeholder. The header is parsed here, so a bad one fails at once."""

    def __init__(self, stream: BinaryIO, name: str = "stdin"):
        rate, channels, sample_type, limit = read_wav_header(stream, name)
        super().__init__(stream, name, rate, channels, sample_type, limit)


def read_wav_header(stream: BinaryIO, name: str) -> tuple[int, int, str, int | None]:
    """Read a WAV stream's header up to its samples: (rate, channels, sample type,
    bytes of samples declared or None when the size is a streaming placeholder).
    Raises a one-line AudioError for anything else; TruncatedAudioError if the
    stream ends inside the header."""
    (tag, channels, rate, bits), limit = _parse_wav_header(stream, name)
    return rate, channels, _wav_sample_type(name, tag, bits), limit


def _parse_wav_header(stream: BinaryIO, name: str) -> tuple[tuple[int, int, int, int], int | None]:
    read = 0

    def take(n: int, what: str) -> bytes:
        nonlocal read
        data = _read_exact(stream, n)
        read += len(data)
        if len(data) < n:
            if read == 0:
                raise EmptyAudioError(f"{name}: the stream is empty")
            raise TruncatedAudioError(f"{name}: truncated: the stream ended inside the WAV header "
                                      f"({what}) after {read} bytes")
        return data

    head = take(12, "RIFF header")
    if head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        raise NotAudioError(f"{name}: not a WAV stream (it starts with {head[:4]!r}); "
                            "for headerless PCM use --raw with --rate, --channels and --sample-type")
    fmt = None
    while True:
        chunk_id, size = struct.unpack("<4sI", take(8, "chunk header"))
        if chunk_id == b"data":
            if fmt is None:
                raise NotAudioError(f"{name}: WAV stream has its data before its 'fmt ' chunk")
            return fmt, None if size == 0 or size >= _STREAMED_WAV_SIZE else size
        body = take(size + (size & 1), f"{chunk_id.decode('latin-1')!r} chunk")
        if chunk_id == b"fmt ":
            if size < 16:
                raise NotAudioError(f"{name}: WAV 'fmt ' chunk is only {size} bytes")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the subformat GUID
                tag = struct.unpack("<H", body[24:26])[0]
            if channels < 1 or rate < 1:
                raise NotAudioError(f"{name}: WAV header gives {channels} channels at {rate} Hz")
            fmt = (tag, channels, rate, bits)


def _wav_sample_type(name: str, tag: int, bits: int) -> str:
    types = {(1, 8): "u8", (1, 16): "s16", (1, 24): "s24", (1, 32): "s32", (3, 32): "f32", (3, 64): "f64"}
    if (tag, bits) not in types:
        kind = {1: "integer PCM", 3: "float", 2: "ADPCM", 6: "A-law", 7: "mu-law"}.get(tag, f"format tag {tag:#x}")
        raise UnsupportedAudioError(f"{name}: unsupported WAV sample type: {bits}-bit {kind}; "
                                    "streamtag reads 8/16/24/32-bit integer and 32/64-bit float PCM")
    return types[(tag, bits)]


# -- microphones ---------------------------------------------------------------


def _sounddevice():
    try:
        import sounddevice
    except OSError as exc:  # PortAudio itself is missing
        raise DeviceError(f"cannot use sound devices: {exc} (install PortAudio, e.g. apt-get install "
                          "libportaudio2)") from None
    return sounddevice


def list_devices() -> list[dict]:
    """Input devices as dicts: index, name, hostapi, channels, sample_rate, default."""
    sd = _sounddevice()
    default = sd.default.device[0]
    if default is None or default < 0:
        try:
            default = sd.query_devices(kind="input")["index"]
        except sd.PortAudioError:
            default = -1
    apis = sd.query_hostapis()
    return [{"index": d["index"], "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
             "channels": d["max_input_channels"], "sample_rate": int(d["default_samplerate"]),
             "default": d["index"] == default}
            for d in sd.query_devices() if d["max_input_channels"] > 0]


def find_device(device: int | str | None) -> dict:
    """One input device from :func:`list_devices`: by index, by (part of) its
    name, or the default input when ``device`` is None or empty."""
    devices = list_devices()
    if not devices:
        raise DeviceError("no audio input devices found")
    if device is None or device == "":
        match = [d for d in devices if d["default"]] or devices[:1]
    elif isinstance(device, int) or str(device).isdigit():
        match = [d for d in devices if d["index"] == int(device)]
        if not match:
            raise DeviceError(f"no input device with index {device}; `streamtag devices` lists them")
    else:
        wanted = str(device).lower()
        match = [d for d in devices if d["name"].lower() == wanted] or \
                [d for d in devices if wanted in d["name"].lower()]
        if not match:
            raise DeviceError(f"no input device matches {device!r}; `streamtag devices` lists them")
        if len(match) > 1:
            names = ", ".join(f"{d['index']}: {d['name']}" for d in match)
            raise DeviceError(f"{device!r} matches several input devices ({names}); give the index")
    return match[0]


class MicrophoneSource(Source):
    """A sound card input through PortAudio (sounddevice). The callback only
    copies into the ring: no waiting, no buffers allocated."""

    live = True

    def __init__(self, device: int | str | None = None, blocksize: int = 0):
        info = find_device(device)
        self.device = info["index"]
        self.name = f"mic:{info['name']}"
        self.sample_rate = info["sample_rate"]
        self.channels = min(2, info["channels"])
        self.overflows = 0
        self._blocksize = blocksize
        self._stream = None
        self._ring: RingBuffer | None = None

    def start(self, ring: RingBuffer) -> None:
        sd = _sounddevice()
        self._ring = ring
        try:
            self._stream = sd.InputStream(device=self.device, channels=self.channels, samplerate=self.sample_rate,
                                          dtype="float32", blocksize=self._blocksize, latency="low",
                                          callback=self._callback)
            self._stream.start()
        except sd.PortAudioError as exc:
            raise DeviceError(f"cannot open {self.name} at {self.sample_rate} Hz: {exc}") from None

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        self._ring.write_nowait(indata)

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
        if self._ring is not None:
            self._ring.close()
