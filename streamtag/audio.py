"""Reading audio files into the mono float32 signal a FeatureSpec expects.

Anything libsndfile decodes is accepted (WAV of 8/16/24/32-bit integer or float
samples, FLAC, Ogg Vorbis, ...) at any sample rate and channel count: channels
are averaged and the rate is converted with soxr's very-high-quality resampler.
Bad input raises a typed :class:`~streamtag.errors.AudioError` that says what
was wrong.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from streamtag.errors import (
    AudioNotFoundError,
    EmptyAudioError,
    NonFiniteAudioError,
    NotAudioError,
    StreamtagError,
    TruncatedAudioError,
)


def check_stream_format(sample_rate, channels, what: str = "") -> tuple[int, int]:
    """A stream's rate and channel count that its sender states (raw PCM, a pushed
    stream, a server's client) as ints, or a one-line error naming the bad one."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) \
            or not 1000 <= sample_rate <= 768000:
        raise StreamtagError(f"{what}sample rate must be an integer from 1000 to 768000 Hz, got {sample_rate!r}")
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or not 1 <= channels <= 64:
        raise StreamtagError(f"{what}channel count must be an integer from 1 to 64, got {channels!r}")
    return int(sample_rate), int(channels)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a ``(frames, channels)`` block; 1-D input passes through."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, rate_in: float, rate_out: float, quality: str = "VHQ") -> np.ndarray:
    """Convert a whole signal, ``(samples,)`` or ``(samples, channels)``, from
    ``rate_in`` to ``rate_out`` (soxr; very high quality unless ``quality`` says
    otherwise)."""
    if rate_in == rate_out:
        return np.asarray(samples, dtype=np.float32)
    return soxr.resample(samples, rate_in, rate_out, quality=quality).astype(np.float32, copy=False)


def check_finite(samples: np.ndarray, offset: int = 0, rate: int | None = None, where: str = "audio") -> None:
    """Raise :class:`NonFiniteAudioError` naming the first NaN or infinite sample.

    ``offset`` is the stream position of ``samples[0]``, so the error points at
    the sample in the whole stream, not in this block.
    """
    # the common case in one pass and no temporary array (it runs before each live block is scored): a sum is
    # finite only if every sample is, and a float64 sum of float32 samples cannot overflow; where it is not
    # finite, the exact check below decides
    samples = np.asarray(samples)
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf, or float64 samples near the largest float
        if math.isfinite(samples.sum(dtype=np.float64)):
            return
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad.reshape(len(samples), -1).any(axis=1))) + offset
        at = f" ({first / rate:.3f} s)" if rate else ""
        raise NonFiniteAudioError(f"{where}: NaN or infinite sample at position {first}{at}", first)


_CONTAINER_MAGIC = {b"RIFF": "WAV", b"RIFX": "WAV", b"fLaC": "FLAC", b"OggS": "Ogg", b"FORM": "AIFF"}


def _declared_wav_bytes(path: Path) -> tuple[int, int] | None:
    """(declared data bytes, data offset) of a RIFF/WAVE file, or None if not one
    or if the header declares an unknown length (a streamed WAV)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                if size in (0, 0xFFFFFFFF):
                    return None
                return size, f.tell()
            f.seek(size + (size & 1), os.SEEK_CUR)


def _ogg_is_complete(path: Path) -> bool:
    """True if an Ogg file ends with a whole page that carries the end-of-stream flag.

    Ogg headers declare no length, so a cut-short Ogg decodes cleanly up to the
    cut; only its missing last page gives it away.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read()
    start = tail.rfind(b"OggS")
    if start < 0 or len(tail) - start < 27:
        return False
    flags, n_segments = tail[start + 5], tail[start + 26]
    lacing = tail[start + 27:start + 27 + n_segments]
    page_len = 27 + n_segments + sum(lacing)
    return len(lacing) == n_segments and len(tail) - start == page_len and bool(flags & 0x04)


def open_audio(path: str | os.PathLike) -> sf.SoundFile:
    """Open an audio file for reading in blocks.

    Raises AudioNotFoundError, NotAudioError, EmptyAudioError or
    TruncatedAudioError (a known container whose header is damaged).
    """
    path = Path(path)
    if not path.exists():
        raise AudioNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise NotAudioError(f"{path}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise EmptyAudioError(f"{path}: file is empty")
    try:
        return sf.SoundFile(path)
    except sf.LibsndfileError as exc:
        with open(path, "rb") as head:
            magic = head.read(4)
        if magic in _CONTAINER_MAGIC:
            raise TruncatedAudioError(
                f"{path}: {_CONTAINER_MAGIC[magic]} file is damaged or cut short ({exc.error_string})") from None
        raise NotAudioError(f"{path}: not a readable audio file ({exc.error_string})") from None


def check_complete(path: str | os.PathLike, f: sf.SoundFile, frames_read: int) -> None:
    """After reading ``frames_read`` frames of the open file ``f``, raise
    TruncatedAudioError if the file promised more, EmptyAudioError if it held none."""
    path = Path(path)
    wav = _declared_wav_bytes(path)
    if wav is not None:
        size, start = wav
        if path.stat().st_size < start + size:
            raise TruncatedAudioError(
                f"{path}: truncated: header declares {size} bytes of samples, file holds {path.stat().st_size - start}")
    if f.format == "OGG" and not _ogg_is_complete(path):
        raise TruncatedAudioError(f"{path}: truncated: the Ogg stream has no final page")
    if frames_read < f.frames:
        raise TruncatedAudioError(f"{path}: truncated: header declares {f.frames} frames, only {frames_read} could be read")
    if frames_read == 0:
        raise EmptyAudioError(f"{path}: holds no samples")


def load_audio(path: str | os.PathLike, sample_rate: int = 22050) -> np.ndarray:
    """Read a whole audio file as mono float32 at ``sample_rate``.

    Raises AudioNotFoundError, NotAudioError, EmptyAudioError,
    TruncatedAudioError or NonFiniteAudioError, each with the file's name.
    """
    with open_audio(path) as f:
        rate = f.samplerate
        try:
            data = f.read(dtype="float32", always_2d=True)
        except sf.LibsndfileError as exc:
            raise TruncatedAudioError(f"{path}: audio data is damaged or cut short ({exc.error_string})") from None
        check_complete(path, f, len(data))
    check_finite(data, rate=rate, where=str(path))
    return resample(to_mono(data), rate, sample_rate)
