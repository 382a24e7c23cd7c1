"""What the end-to-end benchmarks feed streamtag: model files and street audio.

Latency does not depend on the weights, so the benchmarks save untrained
:class:`~streamtag.model.PiczakCNN` networks of the shapes the targets name:
dense 1500 with batch norm and the paper's dense 5000, on short windows, with
the hop an exported short-window model carries (``train.segments.WINDOWS``).
The model embedded in the package (long windows, dense 1500) is measured
beside them where a user would meet it: live (:mod:`benchmarks.live`) and on
files (:mod:`benchmarks.files`, ``streamtag tag`` at default settings).

Audio is the demo street scene (:func:`streamtag.scene.synthesize_scene`)
looped: an hour of it is never held in memory, so a memory figure measures
streamtag, not the benchmark's input.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from streamtag.features import FeatureSpec
from streamtag.ringbuffer import RingBuffer
from streamtag.scene import synthesize_scene
from streamtag.sources import PacedSource
from train.data.segments import WINDOWS

SPEC = FeatureSpec()
FRAMES, DEFAULT_HOP = WINDOWS["short"]
CLASSES = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
           "engine_idling", "gun_shot", "jackhammer", "siren", "street_music"]


def network(dense: int = 1500):
    """An untrained PiczakCNN in eval mode, the same weights every call: dense 1500
    gets batch norm (the study's live default), any other width none (the paper's).
    Plausible dB normalisation."""
    import torch

    from streamtag.model import PiczakCNN

    torch.manual_seed(0)
    net = PiczakCNN(len(CLASSES), frames=FRAMES, dense=dense, batch_norm=dense == 1500).eval()
    net.set_normalization(mean=[[[-50.0]], [[0.0]]], std=[[[20.0]], [[10.0]]])
    return net


def model_file(folder, dense: int = 1500, quantize: bool = False) -> Path:
    """:func:`network` saved as a model file in ``folder``."""
    from streamtag.modelfile import save_model

    name = f"dense{dense}{'-int8' if quantize else ''}.pt"
    return save_model(Path(folder) / name, network(dense), classes=CLASSES, spec=SPEC, window_frames=FRAMES,
                      hop_frames=DEFAULT_HOP, quantize=quantize,
                      provenance={"dataset": "none (random weights, for benchmarks)", "epochs": 0})


def scene(rate: int = SPEC.sample_rate) -> np.ndarray:
    """The 20 s demo street scene at ``rate``: the unit every longer input loops."""
    return synthesize_scene(rate=rate)[0]


def street(seconds: float, rate: int = SPEC.sample_rate) -> np.ndarray:
    """``seconds`` of looped street scene in memory (for inputs of minutes, not hours)."""
    clip = scene(rate)
    n = int(round(seconds * rate))
    return np.resize(clip, n)


def write_street(path, seconds: float, rate: int = SPEC.sample_rate) -> Path:
    """Write ``seconds`` of looped street scene as a 16-bit WAV file, one clip at a time."""
    import soundfile as sf

    clip = scene(rate)
    left = int(round(seconds * rate))
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        while left > 0:
            f.write(clip[:left])
            left -= min(left, len(clip))
    return Path(path)


class LoopedSource(PacedSource):
    """A :class:`~streamtag.sources.PacedSource` playing ``clip`` until
    ``seconds`` of audio have been delivered, at ``speed`` times real time,
    so that an hour-long live run keeps only the clip in memory."""

    def __init__(self, clip: np.ndarray, sample_rate: int, seconds: float, blocks: int = 512,
                 speed: float | None = 1.0, name: str = "looped"):
        super().__init__(clip, sample_rate, blocks=blocks, speed=speed, name=name)
        self.frames = int(round(seconds * sample_rate))
        self._looped = np.concatenate([self.samples, self.samples[:blocks]])  # a block may wrap around

    def _run(self, ring: RingBuffer) -> None:
        t0 = time.perf_counter()
        pos, block, period = 0, self._sizes[0], len(self.samples)
        while pos < self.frames and not self._stop.is_set():
            end = min(pos + block, self.frames)
            if self.speed:
                delay = t0 + end / self.sample_rate / self.speed - time.perf_counter()
                if delay > 0:
                    self._stop.wait(delay)
            start = pos % period
            ring.write_nowait(self._looped[start:start + end - pos])
            pos = end
        ring.close()
