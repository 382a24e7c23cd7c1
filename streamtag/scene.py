"""A street scene synthesised in code, for demos and tests on machines with no microphone.

No recording may ship with streamtag (the datasets are CC BY-NC), so the demo
makes its own sound: street noise under a wailing siren, a two-tone car horn,
a jackhammer's hammering and an idling engine, each at a known time. The
sounds are crude imitations; what the model makes of them is an honest test
of how far it generalises beyond its training recordings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SceneEvent:
    label: str  # the UrbanSound8K class the sound imitates
    onset: float  # seconds
    offset: float


def _envelope(n: int, rate: int, fade: float = 0.02) -> np.ndarray:
    """Flat envelope with short raised-cosine fades, so events start without clicks."""
    k = max(1, min(n // 2, int(fade * rate)))
    env = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
    env[:k], env[n - k:] = ramp, ramp[::-1]
    return env


def _siren(n, rate, rng):
    t = np.arange(n) / rate
    freq = 900 + 350 * np.sin(2 * np.pi * t / 1.6)  # a slow wail between 550 and 1250 Hz
    phase = 2 * np.pi * np.cumsum(freq) / rate
    return sum(np.sin(k * phase) / k for k in (1, 2, 3))


def _car_horn(n, rate, rng):
    t = np.arange(n) / rate
    tone = sum(np.sign(np.sin(2 * np.pi * f * t)) for f in (415.0, 498.0))  # two square-ish reed tones
    return tone * (1 + 0.05 * rng.standard_normal(n))


def _jackhammer(n, rate, rng):
    t = np.arange(n) / rate
    hits = np.exp(-((t * 16.0) % 1.0) * 12.0)  # 16 blows a second, each decaying fast
    return hits * rng.standard_normal(n) + 0.5 * hits * np.sin(2 * np.pi * 180 * t)


def _engine_idling(n, rate, rng):
    t = np.arange(n) / rate
    firing = 28.0 * (1 + 0.02 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(firing) / rate
    return sum(np.sin(k * phase) / k ** 0.7 for k in range(1, 12)) * (1 + 0.3 * np.sin(phase / 2))


_SOUNDS = {"siren": _siren, "car_horn": _car_horn, "jackhammer": _jackhammer, "engine_idling": _engine_idling}

#: (label, onset s, duration s, level dBFS): the demo scene, 20 s long.
SCRIPT = (
    ("engine_idling", 1.0, 4.0, -20.0),
    ("siren", 6.0, 5.0, -18.0),
    ("car_horn", 12.0, 0.8, -18.0),
    ("car_horn", 13.2, 0.6, -18.0),
    ("jackhammer", 15.0, 4.0, -24.0),  # crest factor 13: peaks near -2 dBFS
)
DURATION = 20.0


def street_noise(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Brownish noise (energy falling with frequency), the hum of a distant street."""
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum /= np.sqrt(np.maximum(freqs, 50.0) / 50.0)
    noise = np.fft.irfft(spectrum, n)
    return noise / np.sqrt(np.mean(noise ** 2))


def synthesize_scene(rate: int = 22050, seed: int = 0, noise_dbfs: float = -42.0,
                     script=SCRIPT, duration: float = DURATION) -> tuple[np.ndarray, list[SceneEvent]]:
    """The demo scene as mono float32 at ``rate``, and the events it holds.

    Levels are RMS in dBFS; the result never clips.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate} and {duration}")
    rng = np.random.default_rng(seed)
    n = int(round(duration * rate))
    audio = street_noise(n, rate, rng) * 10 ** (noise_dbfs / 20)
    events = []
    for label, onset, length, level in script:
        if label not in _SOUNDS:
            raise ValueError(f"no synthesiser for {label!r}; known: {', '.join(_SOUNDS)}")
        start, count = int(onset * rate), int(length * rate)
        if start + count > n:
            raise ValueError(f"{label} at {onset} s for {length} s runs past the scene's {duration} s")
        sound = _SOUNDS[label](count, rate, rng)
        sound *= 10 ** (level / 20) / np.sqrt(np.mean(sound ** 2)) * _envelope(count, rate)
        audio[start:start + count] += sound
        events.append(SceneEvent(label, onset, onset + length))
    peak = np.abs(audio).max()
    if peak > 0.99:
        audio *= 0.99 / peak
    return audio.astype(np.float32), events
