"""What the training loop draws its batches from.

A source has one method, ``epoch(rng)``, that yields ``(windows, targets)``
batches: float32 ``(B, 2, n_mels, frames)`` raw features and float32 ``(B, C)``
targets. Targets are a matrix, not class indices, so one-hot labels, the soft
labels of between-class mixes and multilabel overlays all train the same way.

* :class:`SegmentSource`: the fixed segments of cached features, shuffled.
* :class:`AudioSource`: every epoch, each clip's audio is augmented and sent
  through the frontend again (about 3 ms a clip), then cut into windows.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from train.data.augment import Augment, add_background, between_class_mix, change_speed
from train.data.cache import DatasetFeatures, clip_features
from train.data.segments import SILENCE_DB, gather, segments_of, window_starts

Batch = tuple[np.ndarray, ...]  # (windows, targets) or (windows, targets, loss weights)


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[labels]


def shuffled_batches(windows: list[np.ndarray], targets: list[np.ndarray], batch_size: int,
                     rng: np.random.Generator, weights: list[np.ndarray] | None = None) -> Iterator[Batch]:
    """An epoch's examples, rendered in parts, as batches in a random order; with ``weights``
    (one per target), each batch carries its loss weights third."""
    windows, targets = np.concatenate(windows), np.concatenate(targets)
    weights = np.concatenate(weights) if weights is not None else None
    order = rng.permutation(len(windows))
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        yield (windows[idx], targets[idx]) if weights is None else (windows[idx], targets[idx], weights[idx])


class SegmentSource:
    """The clips' fixed segments, shuffled each epoch."""

    def __init__(self, feats: DatasetFeatures, clip_ids, length: int, stride: int,
                 batch_size: int = 128, silence_db: float | None = SILENCE_DB):
        self.frames = feats.frames
        self.targets = one_hot(feats.dataset.labels, len(feats.dataset.classes))
        self.segments = segments_of(feats.frames, feats.frame_offsets, clip_ids, length, stride, silence_db)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.segments.starts)

    def epoch(self, rng: np.random.Generator) -> Iterator[Batch]:
        seg = self.segments
        order = rng.permutation(len(seg.starts))
        for lo in range(0, len(order), self.batch_size):
            idx = order[lo:lo + self.batch_size]
            yield gather(self.frames, seg.starts[idx], seg.length), self.targets[seg.clip[idx]]


class AudioSource:
    """Clips augmented in the audio domain, featurised afresh every epoch."""

    def __init__(self, feats: DatasetFeatures, clip_ids, length: int, stride: int, augment: Augment,
                 batch_size: int = 128, silence_db: float | None = SILENCE_DB):
        self.feats = feats
        self.clip_ids = np.asarray(clip_ids)
        self.labels = feats.dataset.labels
        self.n_classes = len(feats.dataset.classes)
        self.length, self.stride = length, stride
        self.augment = augment
        self.batch_size = batch_size
        self.silence_db = silence_db

    def _partner(self, i: int, rng: np.random.Generator) -> int:
        """A random clip of another class."""
        while True:
            j = int(rng.choice(self.clip_ids))
            if self.labels[j] != self.labels[i] or self.n_classes == 1:
                return j

    def _clip(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        aug, spec = self.augment, self.feats.spec
        audio = np.array(self.feats.clip_audio(i), dtype=np.float32)
        target = one_hot(self.labels[[i]], self.n_classes)[0]
        if aug.mix and rng.random() < aug.mix:
            j = self._partner(i, rng)
            r = float(rng.random())
            audio = between_class_mix(audio, np.asarray(self.feats.clip_audio(j)), r)
            target = r * target + (1 - r) * one_hot(self.labels[[j]], self.n_classes)[0]
        elif aug.background and rng.random() < aug.background:
            j = self._partner(i, rng)
            audio = add_background(audio, np.asarray(self.feats.clip_audio(j)), float(rng.uniform(10, 20)))
        audio = change_speed(audio, aug.speed_factor(rng))
        if aug.gain_db:
            audio = audio * np.float32(10 ** (rng.uniform(-aug.gain_db, aug.gain_db) / 20))
        offset = 0
        if aug.shift:
            audio = audio[int(rng.integers(spec.hop_length)):]
            offset = int(rng.integers(self.stride))
        frames = clip_features(audio, spec)
        starts = window_starts(frames, self.length, self.stride, self.silence_db, offset)
        return gather(frames, starts, self.length), np.repeat(target[None], len(starts), axis=0)

    def epoch(self, rng: np.random.Generator) -> Iterator[Batch]:
        windows, targets = zip(*(self._clip(int(i), rng) for i in self.clip_ids))
        yield from shuffled_batches(list(windows), list(targets), self.batch_size, rng)
