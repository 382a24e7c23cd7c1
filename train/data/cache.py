"""Features (and audio) of a whole dataset, computed once and kept on disk.

Each clip is decoded, resampled to the spec's rate and run through
:func:`streamtag.frontend.compute_features` whole, so its frames are exactly
what the streaming frontend emits for that recording. A clip shorter than the
longest model window (101 frames, 2.37 s) is zero-padded at the END of its audio
before features are computed: its frames are then what the frontend emits for
the clip followed by silence, as a live stream would deliver a lone event.

The cache lives in ``$STREAMTAG_CACHE`` or ``~/.cache/streamtag`` (outside the
repository), one folder per dataset, keyed by a hash of the FeatureSpec and the
clip list (paths, sizes, folds, labels): a changed spec or a new clip makes a new
entry, never a stale read. The audio is cached too, unpadded, because
augmentation mixes audio and recomputes features on the fly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from rich.progress import track

from streamtag.features import FeatureSpec
from streamtag.frontend import compute_features
from train.data.datasets import Dataset, read_dataset

MIN_FRAMES = 101  # the long window: every clip yields at least one window of any length used


def default_cache_dir() -> Path:
    return Path(os.environ.get("STREAMTAG_CACHE") or Path.home() / ".cache" / "streamtag")


def pad_audio(audio: np.ndarray, spec: FeatureSpec, min_frames: int = MIN_FRAMES) -> np.ndarray:
    """Zero-pad the end of ``audio`` so that it yields at least ``min_frames`` frames."""
    need = spec.n_fft + (min_frames - 1) * spec.hop_length
    if len(audio) >= need:
        return audio
    return np.concatenate([audio, np.zeros(need - len(audio), dtype=np.float32)])


def clip_features(audio: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """A clip's frames ``(T, 2, n_mels)``, T >= MIN_FRAMES."""
    return compute_features(pad_audio(audio, spec), spec)


@dataclasses.dataclass
class DatasetFeatures:
    """Every clip's frames and audio, concatenated; clip ``i`` owns
    ``frames[frame_offsets[i]:frame_offsets[i + 1]]`` and likewise for audio."""

    dataset: Dataset
    spec: FeatureSpec
    frames: np.ndarray  # (total frames, 2, n_mels) float32
    frame_offsets: np.ndarray  # (n_clips + 1,) int64
    audio: np.ndarray  # (total samples,) float32, at spec.sample_rate, unpadded
    audio_offsets: np.ndarray  # (n_clips + 1,) int64

    def clip_frames(self, i: int) -> np.ndarray:
        return self.frames[self.frame_offsets[i]:self.frame_offsets[i + 1]]

    def clip_audio(self, i: int) -> np.ndarray:
        return self.audio[self.audio_offsets[i]:self.audio_offsets[i + 1]]


def cache_key(dataset: Dataset, spec: FeatureSpec) -> str:
    h = hashlib.sha256(spec.to_json().encode())
    h.update(str(MIN_FRAMES).encode())
    for c in dataset.clips:
        rel = os.path.relpath(c.path, dataset.root)
        h.update(f"\n{rel}|{c.path.stat().st_size}|{c.fold}|{c.label}".encode())
    return h.hexdigest()[:16]


def load_features(dataset: Dataset, spec: FeatureSpec, cache_dir: str | os.PathLike | None = None,
                  quiet: bool = False) -> DatasetFeatures:
    """The dataset's features from the cache, computing them first if absent."""
    folder = Path(cache_dir or default_cache_dir()) / f"{dataset.name}-{cache_key(dataset, spec)}"
    if not (folder / "index.json").is_file():
        _build(dataset, spec, folder, quiet)
    frames = np.load(folder / "frames.npy", mmap_mode="r")
    audio = np.load(folder / "audio.npy", mmap_mode="r")
    offsets = np.load(folder / "offsets.npz")
    return DatasetFeatures(dataset, spec, frames, offsets["frames"], audio, offsets["audio"])


def read_features(kind: str, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  quiet: bool = False) -> DatasetFeatures:
    """The dataset of ``kind`` at ``root`` (:func:`~train.data.datasets.read_dataset`) with its
    features at the project's frontend settings: what every training command starts from."""
    return load_features(read_dataset(kind, root), FeatureSpec(), cache_dir, quiet)


def _build(dataset: Dataset, spec: FeatureSpec, folder: Path, quiet: bool) -> None:
    frames, audio = [], []
    clips = dataset.clips
    for clip in track(clips, description=f"features of {dataset.name}", disable=quiet, transient=True):
        samples = dataset.load(clip, spec.sample_rate)
        audio.append(samples)
        frames.append(clip_features(samples, spec))
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "frames.npy", np.concatenate(frames))
    np.save(tmp / "audio.npy", np.concatenate(audio))
    np.savez(tmp / "offsets.npz", frames=np.cumsum([0] + [len(f) for f in frames]),
             audio=np.cumsum([0] + [len(a) for a in audio]))
    (tmp / "index.json").write_text(json.dumps({
        "dataset": dataset.name, "root": str(dataset.root), "spec": spec.to_dict(),
        "clips": [os.path.relpath(c.path, dataset.root) for c in clips]}, indent=1))
    try:
        tmp.rename(folder)
    except OSError:  # another process finished the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
