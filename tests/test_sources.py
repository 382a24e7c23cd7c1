"""Sources: WAV and raw PCM streams decode exactly as libsndfile decodes the
file, streamed WAV headers are accepted, and bad streams fail clearly."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
import soundfile as sf

from streamtag import sources
from streamtag.errors import (
    AudioNotFoundError,
    DeviceError,
    EmptyAudioError,
    NotAudioError,
    StreamtagError,
    TruncatedAudioError,
    UnsupportedAudioError,
)
from streamtag.ringbuffer import RingBuffer
from streamtag.sources import ArraySource, FileSource, PacedSource, RawSource, WavStreamSource


class ChunkyStream(io.RawIOBase):
    """A pipe that hands over random, odd-sized pieces (splitting samples and frames)."""

    def __init__(self, data: bytes, seed: int = 0):
        self.data, self.pos, self.rng = data, 0, np.random.default_rng(seed)

    def readable(self) -> bool:
        return True

    def read1(self, n: int = -1) -> bytes:
        take = min(int(self.rng.integers(1, 3000)), n if n >= 0 else len(self.data))
        piece = self.data[self.pos:self.pos + take]
        self.pos += len(piece)
        return piece

    read = read1


def signal(n: int = 5000, channels: int = 2, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).uniform(-0.9, 0.9, (n, channels))).astype(np.float32)


def wav_bytes(data: np.ndarray, rate: int, subtype: str, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def collect(source) -> np.ndarray:
    return np.concatenate(list(source._blocks()))


def data_offset(raw: bytes) -> int:
    """Byte offset of the data chunk's size field."""
    return raw.index(b"data") + 4


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_stream_decodes_exactly_like_libsndfile(subtype):
    raw = wav_bytes(signal(), 16000, subtype)
    expected, _ = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    source = WavStreamSource(ChunkyStream(raw))
    assert (source.sample_rate, source.channels) == (16000, 2)
    np.testing.assert_array_equal(collect(source), expected)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_wav_bytes_pushed_in_pieces_decode_every_frame(subtype):
    """The decoder behind a server's and a Tagger stream's WAV input: pieces of any size, a frame split
    across them, and a chunk after the samples that is not audio. Every frame, and nothing more, comes out."""
    raw = wav_bytes(signal(), 16000, subtype) + b"LIST" + struct.pack("<I", 4) + b"abcd"
    expected, _ = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    for piece in (1, 7, 1001, len(raw)):
        decoder = sources.PcmDecoder(None)
        blocks = [decoder.decode(raw[i:i + piece]) for i in range(0, len(raw), piece)]
        decoder.finish()
        np.testing.assert_array_equal(np.concatenate([b for b in blocks if b is not None]), expected, err_msg=piece)
        assert (decoder.sample_rate, decoder.channels) == (16000, 2)


def test_extensible_wav_and_extra_chunks_before_the_data():
    raw = wav_bytes(signal(channels=3), 44100, "PCM_24", fmt="WAVEX")
    expected, _ = sf.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    at = raw.index(b"data")
    with_list = raw[:at] + b"LIST" + struct.pack("<I", 5) + b"INFOx\x00" + raw[at:]  # odd size: padded
    source = WavStreamSource(io.BytesIO(with_list))
    assert source.channels == 3
    np.testing.assert_array_equal(collect(source), expected)


@pytest.mark.parametrize("placeholder", [0, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF, 0x7FFFF000])
def test_streamed_headers_of_unknown_length_read_to_the_end(placeholder):
    """arecord, sox and ffmpeg write a placeholder data size when they cannot seek back."""
    data = signal(channels=1)
    raw = bytearray(wav_bytes(data, 22050, "PCM_16"))
    size_at = data_offset(raw)
    raw[size_at:size_at + 4] = struct.pack("<I", placeholder)
    raw[4:8] = struct.pack("<I", placeholder)
    got = collect(WavStreamSource(ChunkyStream(bytes(raw), seed=3)))
    assert got.shape == (len(data), 1)
    np.testing.assert_allclose(got, data, atol=1 / 32768)


def test_known_length_stops_at_the_data_and_ignores_trailing_chunks():
    data = signal(1000, 1)
    raw = wav_bytes(data, 8000, "PCM_16") + b"LIST" + struct.pack("<I", 4) + b"abcd"
    assert collect(WavStreamSource(io.BytesIO(raw))).shape == (1000, 1)


def test_stream_cut_mid_sample_yields_the_whole_frames_then_reports():
    raw = wav_bytes(signal(1000, 2), 8000, "PCM_16")
    size_at = data_offset(raw)
    cut = raw[:size_at] + struct.pack("<I", 0xFFFFFFFF) + raw[size_at + 4:-3]  # 999 frames + 1 byte
    blocks = []
    with pytest.raises(TruncatedAudioError, match="inside a sample frame after 999 whole frames"):
        for block in WavStreamSource(ChunkyStream(cut))._blocks():
            blocks.append(block)
    assert sum(len(b) for b in blocks) == 999


def test_stream_shorter_than_its_declared_length_is_truncated():
    raw = wav_bytes(signal(1000, 1), 8000, "PCM_16")
    with pytest.raises(TruncatedAudioError, match="declares 2000 bytes"):
        collect(WavStreamSource(io.BytesIO(raw[:-200])))


@pytest.mark.parametrize("cut", [3, 12, 30, 43])
def test_stream_cut_inside_the_header(cut):
    raw = wav_bytes(signal(100, 1), 8000, "PCM_16")
    with pytest.raises(TruncatedAudioError, match="inside the WAV header"):
        WavStreamSource(io.BytesIO(raw[:cut]))


def test_empty_and_foreign_streams():
    with pytest.raises(EmptyAudioError):
        WavStreamSource(io.BytesIO(b""))
    with pytest.raises(NotAudioError, match="--raw"):
        WavStreamSource(io.BytesIO(b"OggS" + bytes(100)))


def test_unsupported_wav_sample_type():
    raw = wav_bytes(signal(100, 1), 8000, "ULAW")
    with pytest.raises(UnsupportedAudioError, match="mu-law"):
        WavStreamSource(io.BytesIO(raw))


@pytest.mark.parametrize("sample_type,dtype,scale", [("s16", "<i2", 2 ** 15), ("s32", "<i4", 2 ** 31),
                                                     ("f32", "<f4", 1)])
def test_raw_pcm_in_random_chunks(sample_type, dtype, scale):
    rng = np.random.default_rng(4)
    if sample_type == "f32":
        values = rng.uniform(-1, 1, (3001, 2)).astype(dtype)
    else:
        values = rng.integers(-scale, scale, (3001, 2)).astype(dtype)
    source = RawSource(ChunkyStream(values.tobytes(), seed=5), 48000, 2, sample_type)
    got = collect(source)
    np.testing.assert_array_equal(got, (values.astype(np.float64) / scale).astype(np.float32))


def test_raw_parameters_are_checked():
    with pytest.raises(UnsupportedAudioError, match="s16, s32, f32"):
        RawSource(io.BytesIO(), 16000, 1, "u8")
    with pytest.raises(StreamtagError, match="sample rate"):
        RawSource(io.BytesIO(), 0, 1, "s16")
    with pytest.raises(StreamtagError, match="channel count"):
        RawSource(io.BytesIO(), 16000, 0, "s16")


def test_raw_stream_ending_mid_frame():
    source = RawSource(io.BytesIO(bytes(4 * 100 + 3)), 16000, 2, "s16")
    with pytest.raises(TruncatedAudioError, match="after 100 whole frames"):
        collect(source)


def test_file_source_matches_soundfile_and_reports_truncation(tmp_path):
    data = signal(20000, 2)
    path = tmp_path / "x.wav"
    sf.write(path, data, 32000, subtype="PCM_24")
    expected, _ = sf.read(path, dtype="float32", always_2d=True)
    source = FileSource(path, block=4096)
    assert (source.sample_rate, source.channels, source.frames) == (32000, 2, 20000)
    np.testing.assert_array_equal(collect(source), expected)

    cut = tmp_path / "cut.wav"
    cut.write_bytes(path.read_bytes()[:-3000])
    blocks = []
    with pytest.raises(TruncatedAudioError):
        for block in FileSource(cut)._blocks():
            blocks.append(block)
    assert sum(len(b) for b in blocks) == 20000 - 500


def test_file_source_open_errors(tmp_path):
    with pytest.raises(AudioNotFoundError):
        FileSource(tmp_path / "missing.wav")
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(NotAudioError):
        FileSource(junk)


def test_reader_thread_hands_errors_to_the_ring_after_the_data():
    raw = wav_bytes(signal(1000, 1), 8000, "PCM_16")
    source = WavStreamSource(io.BytesIO(raw[:-100]))
    ring = RingBuffer(300)
    source.start(ring)
    out = np.empty((10_000, 1), dtype=np.float32)
    total = 0
    while True:
        n, _ = ring.read(out, timeout=5)
        if n == 0:
            break
        total += n
    assert total == 950 and isinstance(ring.error, TruncatedAudioError)


def test_array_and_paced_sources_deliver_everything_in_order():
    data = signal(8000, 1)
    for source in (ArraySource(data, 8000, block=333), PacedSource(data, 8000, blocks=[100, 250, 7], speed=4)):
        ring = RingBuffer(20000)
        t0 = time.perf_counter()
        source.start(ring)
        out = np.empty((20000, 1), dtype=np.float32)
        got = []
        while True:
            n, _ = ring.read(out, timeout=5)
            if n == 0:
                break
            got.append(out[:n].copy())
        np.testing.assert_array_equal(np.concatenate(got), data)
        if source.live:  # 1 s of audio at 4x real time
            assert time.perf_counter() - t0 >= 0.24


def test_find_device_by_index_name_or_default(monkeypatch):
    fake = [{"index": 0, "name": "Built-in Mic", "hostapi": "ALSA", "channels": 2, "sample_rate": 48000,
             "default": False},
            {"index": 3, "name": "USB Audio", "hostapi": "ALSA", "channels": 1, "sample_rate": 44100,
             "default": True},
            {"index": 4, "name": "USB Audio #2", "hostapi": "ALSA", "channels": 1, "sample_rate": 44100,
             "default": False}]
    monkeypatch.setattr(sources, "list_devices", lambda: fake)
    assert sources.find_device(None)["index"] == 3
    assert sources.find_device("0")["name"] == "Built-in Mic"
    assert sources.find_device("built-in")["index"] == 0
    assert sources.find_device("usb audio")["index"] == 3  # an exact name wins over partial matches
    with pytest.raises(DeviceError, match="several"):
        sources.find_device("usb")
    with pytest.raises(DeviceError, match="no input device matches"):
        sources.find_device("bluetooth")
    with pytest.raises(DeviceError, match="index 7"):
        sources.find_device(7)
