"""Augmentations, on audio (before the frontend) and on feature batches.

Audio-level ones keep the features honest: a mixed or shifted clip goes through
the same frontend a live stream does, so the model never sees frames the
frontend could not produce. Between-class mixing follows Tokozume et al.
(2018, "Learning from between-class examples", EnvNet-v2): two clips of
different classes are mixed at a random ratio, with their loudness taken into
account, and the target is the same mix of their labels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from streamtag.audio import resample


@dataclasses.dataclass
class Augment:
    """Which augmentations to apply; all off by default."""

    shift: bool = False  # random sub-hop sample offset and random window grid offset
    gain_db: float = 0.0  # random gain, uniform in +-gain_db
    background: float = 0.0  # probability of mixing in another class's clip at 10..20 dB below
    mix: float = 0.0  # probability of a between-class mix (soft targets)
    speed: float = 0.0  # random speed change (pitch and tempo together), factor uniform in 1 +- speed
    specaugment: bool = False  # one frequency and one time mask per window (torchaudio)

    @classmethod
    def parse(cls, text: str) -> "Augment":
        """'shift,gain=6,background=0.5,mix=0.5,speed=0.1,specaugment' (values optional); 'none' for nothing."""
        aug = cls()
        defaults = {"gain": 6.0, "background": 0.5, "mix": 0.5, "speed": 0.1}
        fields = {"shift": "shift", "gain": "gain_db", "background": "background", "mix": "mix", "speed": "speed",
                  "specaugment": "specaugment"}
        for item in filter(None, (t.strip() for t in text.split(","))):
            if item == "none":
                continue
            key, _, value = item.partition("=")
            if key not in fields:
                raise ValueError(f"unknown augmentation {key!r}; choose from {', '.join(fields)} or none")
            if key in ("shift", "specaugment"):
                setattr(aug, fields[key], True)
            else:
                try:
                    setattr(aug, fields[key], float(value) if value else defaults[key])
                except ValueError:
                    raise ValueError(f"augmentation {key} takes a number, got {value!r}") from None
        if not 0 <= aug.speed < 0.5:
            raise ValueError(f"augmentation speed is the largest change of speed, in [0, 0.5), got {aug.speed:g}")
        return aug

    @property
    def on_audio(self) -> bool:
        return self.shift or self.gain_db > 0 or self.background > 0 or self.mix > 0 or self.speed > 0

    def describe(self) -> str:
        parts = (["shift"] if self.shift else []) + ([f"gain={self.gain_db:g}"] if self.gain_db else []) \
            + ([f"background={self.background:g}"] if self.background else []) \
            + ([f"mix={self.mix:g}"] if self.mix else []) + ([f"speed={self.speed:g}"] if self.speed else []) \
            + (["specaugment"] if self.specaugment else [])
        return ",".join(parts) or "none"

    def speed_factor(self, rng: np.random.Generator) -> float:
        """How much faster a clip plays this time: uniform in 1 +- ``speed`` (1 when off)."""
        return float(rng.uniform(1 - self.speed, 1 + self.speed)) if self.speed else 1.0


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """``audio`` (one signal, or one per row) played ``factor`` times as fast: pitch and
    tempo change together, like a tape run faster or slower (Ko et al.'s speed
    perturbation). Resampled with soxr as if recorded at ``factor`` times the rate;
    the length becomes ``len / factor``."""
    if factor == 1.0:
        return audio
    # soxr takes rows as channels, (samples, channels), and converts each alike
    return np.ascontiguousarray(resample(np.ascontiguousarray(audio.T), factor * 1000.0, 1000.0, quality="HQ").T)


def loudness_db(audio: np.ndarray, block: int = 2205) -> float:
    """Peak RMS over 0.1 s blocks in dB: the 'sound pressure' of a clip for mixing."""
    n = max(1, len(audio) // block)
    blocks = np.resize(audio, n * block).reshape(n, block) if len(audio) >= block else audio[None, :]
    return float(20 * np.log10(max(np.sqrt((blocks.astype(np.float64) ** 2).mean(axis=1)).max(), 1e-8)))


def between_class_mix(a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    """Tokozume's mix of ``a`` (weight r) and ``b`` (1 - r), compensating their loudness,
    so that ``r`` is the share of the perceived mixture, not of the raw amplitudes."""
    n = max(len(a), len(b))
    a, b = np.pad(a, (0, n - len(a))), np.pad(b, (0, n - len(b)))
    if r <= 0 or r >= 1:
        return a if r >= 1 else b
    p = 1.0 / (1.0 + 10 ** ((loudness_db(a) - loudness_db(b)) / 20) * (1 - r) / r)
    return ((p * a + (1 - p) * b) / np.sqrt(p * p + (1 - p) ** 2)).astype(np.float32)


def add_background(a: np.ndarray, b: np.ndarray, snr_db: float) -> np.ndarray:
    """``a`` with ``b`` added ``snr_db`` below it (``b`` looped or cut to ``a``'s length)."""
    b = np.resize(b, len(a))
    scale = 10 ** ((loudness_db(a) - loudness_db(b) - snr_db) / 20)
    return (a + scale * b).astype(np.float32)


def spec_augment(x: "torch.Tensor", mean: "torch.Tensor", max_bands: int = 8,
                 max_frames: int | None = None) -> "torch.Tensor":
    """One frequency mask and one time mask per window, filled with the feature
    mean (zero after the model's normalisation). ``x`` is (N, 2, n_mels, frames)."""
    import torchaudio  # here, so that parsing options does not load torch

    max_frames = max_frames or max(1, x.shape[-1] // 8)
    centred = x - mean
    centred = torchaudio.functional.mask_along_axis_iid(centred, max_bands, 0.0, 2)
    centred = torchaudio.functional.mask_along_axis_iid(centred, max_frames, 0.0, 3)
    return centred + mean
