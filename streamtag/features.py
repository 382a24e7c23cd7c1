"""The one feature definition every part of streamtag shares.

A :class:`FeatureSpec` says exactly how audio becomes the numbers a model sees:
log-mel frames plus their delta, framed over the continuous signal. It travels
inside every model file, so a model can never be fed features computed another
way. This module is pure numpy: the frontend that computes the features lives
in :mod:`streamtag.frontend` and knows nothing of torch either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from streamtag.errors import SpecError

#: The only delta definition a streaming frontend can reproduce exactly without
#: look-ahead: librosa 0.3.1's 9-tap filter as used by Piczak (2015),
#: ``d[t] = sum_{n=1..4} n * (x[t-4+n] - x[t-4-n])``, unnormalised and centred
#: four frames back, with the history edge-padded at the start of a stream.
CAUSAL_DELTA = "causal9"

DELTA_TAPS = 4  # the filter reaches DELTA_TAPS frames either side of t - DELTA_TAPS


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """How audio becomes log-mel + delta frames.

    Frame ``t`` covers samples ``[t * hop_length, t * hop_length + n_fft)`` of the
    stream, windowed by a periodic Hann window; its power spectrum goes through a
    Slaney-scale, Slaney-normalised mel filterbank (librosa's default) and is
    converted to dB as ``10 * log10(max(power, amin))``. There is no
    whole-recording ``top_db`` clipping: it would need the future.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 512
    window: str = "hann_periodic"
    n_mels: int = 60
    fmin: float = 0.0
    fmax: float | None = None  # None means sample_rate / 2
    mel_scale: str = "slaney"
    mel_norm: str = "slaney"
    amin: float = 1e-10  # power floor: -100 dB
    delta: str = CAUSAL_DELTA

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise SpecError(f"invalid FeatureSpec: {what}")

        need(isinstance(self.sample_rate, int) and self.sample_rate > 0, f"sample_rate must be a positive int, got {self.sample_rate!r}")
        need(isinstance(self.n_fft, int) and 16 <= self.n_fft <= 8192 and self.n_fft & (self.n_fft - 1) == 0,
             f"n_fft must be a power of two from 16 to 8192 (the frontend's FFT), got {self.n_fft!r}")
        need(isinstance(self.hop_length, int) and 0 < self.hop_length <= self.n_fft, f"hop_length must be an int in 1..n_fft, got {self.hop_length!r}")
        need(self.window == "hann_periodic", f"window must be 'hann_periodic', got {self.window!r}")
        need(isinstance(self.n_mels, int) and 1 <= self.n_mels <= self.n_fft // 2 + 1, f"n_mels must be an int in 1..n_fft/2+1, got {self.n_mels!r}")
        need(self.mel_scale == "slaney" and self.mel_norm == "slaney", "only the Slaney mel scale with Slaney normalisation is supported")
        need(0.0 <= self.fmin < self.fmax_hz <= self.sample_rate / 2, f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={self.fmin}, fmax={self.fmax_hz}")
        need(1e-300 <= self.amin < float("inf"), f"amin must be a finite power floor of at least 1e-300, got {self.amin!r}")
        need(self.delta == CAUSAL_DELTA, f"delta must be {CAUSAL_DELTA!r}, got {self.delta!r}")

    @property
    def fmax_hz(self) -> float:
        return float(self.sample_rate / 2 if self.fmax is None else self.fmax)

    @property
    def floor_db(self) -> float:
        """The dB value of a frame band with no energy at all."""
        return float(10.0 * np.log10(self.amin))

    def seconds(self, frames: int) -> float:
        """Duration in seconds of ``frames`` hops."""
        return frames * self.hop_length / self.sample_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSpec":
        if not isinstance(data, dict):
            raise SpecError(f"a FeatureSpec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown FeatureSpec fields: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"FeatureSpec is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def digest(self) -> str:
        """A short stable hash, for keying feature caches."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa, htk=False)."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(spec: FeatureSpec) -> np.ndarray:
    """The (n_mels, n_fft // 2 + 1) filterbank: triangles on the Slaney mel scale,
    each scaled to unit area (Slaney normalisation), as librosa.filters.mel builds it."""
    n_bins = spec.n_fft // 2 + 1
    fft_hz = np.linspace(0.0, spec.sample_rate / 2, n_bins)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(spec.fmin), hz_to_mel(spec.fmax_hz), spec.n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights


def hann_periodic(n: int) -> np.ndarray:
    """The periodic ('DFT-even') Hann window, as scipy's ``get_window('hann', n)``."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
