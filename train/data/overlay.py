"""Two-event overlays: mixes of two clips of different classes from one fold.

The study that took Piczak's CNN to several sounds at once trained and tested
on such mixes, in two variants: both events at equal level after peak
normalisation, and one event 20 dB under the other, alternating which. Here one
planner (:func:`plan_overlays`) and one mixing function (:func:`mix`) serve both
ways of using them: writing an overlay dataset to disk (:func:`write_overlays`:
audio plus a CSV in the UrbanSound8K style) and mixing afresh every epoch while
training (:mod:`train.fit.multilabel`).

Pairs never cross folds, so the official fold protocol stays intact: a test
fold's mixes are made of that fold's clips only. Nor do they pair two slices of
one source recording. A plan is a list of :class:`Overlay` records, the same
for the same random generator; a mix is a pure function of its record.

Levels: each event is scaled so that its peak sits at ``PEAK`` times its level
(0 dB for the louder one, minus the level difference for the other). ``PEAK``
is -6 dBFS, so two events at full level still sum to at most 1.0 and a mix
written as PCM never clips.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf
from rich.progress import track

from streamtag.errors import DatasetError
from streamtag.features import FeatureSpec
from train.data.datasets import Clip, Dataset, output_folds

PEAK = 0.5  # each event's peak at 0 dB level: -6 dBFS, so that two of them never clip
ACTIVE_DB = 40.0  # an event is present in a frame whose energy is within this of its loudest frame's
COLUMNS = ("slice_file_name", "fold", "classID_a", "class_a", "classID_b", "class_b", "source_a", "source_b",
           "fsID_a", "fsID_b", "gain_a", "gain_b", "level_db_a", "level_db_b", "offset_a", "offset_b", "duration")


@dataclasses.dataclass(frozen=True)
class Overlay:
    """One planned mix: clip indices (into ``Dataset.clips``), each event's level
    in dB relative to peak normalisation, and where each starts, in samples."""

    a: int
    b: int
    fold: int
    level_db: tuple[float, float]  # 0 for the louder event, minus the level difference for the other
    offset: tuple[int, int]  # samples from the start of the mix; at least one is 0


@dataclasses.dataclass
class Mixture:
    """A rendered overlay: the mixed audio, the two events as placed and scaled in it
    (``parts.sum(axis=0) == audio``), and the gain applied to each source clip."""

    audio: np.ndarray  # (n,) float32
    parts: np.ndarray  # (2, n) float32
    gains: tuple[float, float]


def parse_levels(text: str) -> tuple[float, float]:
    """'0' (equal level), '20' (one event 20 dB under the other) or '0:20' (a range)."""
    lo, _, hi = text.partition(":")
    try:
        levels = (float(lo), float(hi or lo))
    except ValueError:
        raise DatasetError(f"level difference must be DB or MIN:MAX in dB, got {text!r}") from None
    if not (0 <= levels[0] <= levels[1] <= 120):
        raise DatasetError(f"level difference must satisfy 0 <= MIN <= MAX <= 120 dB, got {text!r}")
    return levels


def plan_overlays(clips: list[Clip], ids, n: int, rng: np.random.Generator, level_db=(0.0, 0.0),
                  max_offset: int = 0) -> list[Overlay]:
    """``n`` overlays of the clips ``ids``: each pairs a clip with a random clip of
    the same fold, of another class and another source recording.

    The first clips of the pairs run through the usable clips in a random order
    (each once before any repeats). The level difference is uniform in
    ``level_db`` (min, max); the quieter event alternates, ``b`` in even mixes and
    ``a`` in odd ones. With ``max_offset`` > 0 one event, chosen at random,
    starts up to that many samples after the other.
    """
    ids = np.asarray(ids, dtype=np.int64)
    fold = np.array([clips[i].fold for i in ids])
    label = np.array([clips[i].label for i in ids])
    group = np.array([clips[i].group for i in ids])
    partners = {}
    for f in np.unique(fold):
        members = np.flatnonzero(fold == f)
        ok = (label[members, None] != label[None, members]) & (group[members, None] != group[None, members])
        for row, m in enumerate(members):
            if ok[row].any():
                partners[m] = members[ok[row]]
    if n and not partners:
        raise DatasetError("cannot plan overlays: no two clips of different classes and recordings share a fold")
    usable = np.array(sorted(partners), dtype=np.int64)
    rounds = -(-n // len(usable)) if n else 0
    order = np.concatenate([rng.permutation(usable) for _ in range(rounds)])[:n] if rounds else usable[:0]
    lo, hi = level_db
    plan = []
    for k, m in enumerate(order):
        partner = int(rng.choice(partners[int(m)]))
        d = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
        levels = (0.0, 0.0 - d) if k % 2 == 0 else (0.0 - d, 0.0)  # 0.0 - d: never -0.0
        offset = (0, 0)
        if max_offset > 0:
            late = int(rng.integers(0, max_offset + 1))
            offset = (0, late) if rng.random() < 0.5 else (late, 0)
        plan.append(Overlay(int(ids[m]), int(ids[partner]), int(fold[m]), levels, offset))
    return plan


def mix(a: np.ndarray, b: np.ndarray, overlay: Overlay, peak: float = PEAK) -> Mixture:
    """Mix the audio ``a`` and ``b`` of the overlay's two clips.

    Each clip is scaled so that its peak is ``peak * 10 ** (level_db / 20)`` and
    placed at its offset; the mix lasts until the later event ends (clips of
    different lengths leave the shorter event's tail silent). A clip with no
    signal at all gets gain 0.
    """
    n = max(overlay.offset[0] + len(a), overlay.offset[1] + len(b))
    parts = np.zeros((2, n), dtype=np.float32)
    gains = []
    for row, (x, start, level) in enumerate(zip((a, b), overlay.offset, overlay.level_db)):
        x = np.asarray(x, dtype=np.float32)
        top = float(np.abs(x).max()) if len(x) else 0.0
        gain = peak * 10 ** (level / 20) / top if top > 0 else 0.0
        parts[row, start:start + len(x)] = x * np.float32(gain)
        gains.append(gain)
    return Mixture(parts.sum(axis=0), parts, (gains[0], gains[1]))


def frame_activity(parts: np.ndarray, spec: FeatureSpec, n_frames: int, range_db: float = ACTIVE_DB) -> np.ndarray:
    """``(n_frames, len(parts))`` bool: whether each event sounds in each frame.

    An event sounds in frame ``t`` (samples ``[t * hop, t * hop + n_fft)``) when
    its energy there is within ``range_db`` of its loudest frame; beyond the end
    of ``parts`` (padding) it is silent. This is what turns a mix of events of
    different lengths or offsets into honest per-window targets.
    """
    parts = np.atleast_2d(parts)
    starts = np.arange(n_frames) * spec.hop_length
    active = np.zeros((n_frames, len(parts)), dtype=bool)
    for e, x in enumerate(parts):
        cum = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
        energy = cum[np.minimum(starts + spec.n_fft, len(x))] - cum[np.minimum(starts, len(x))]
        top = energy.max(initial=0.0)
        if top > 0:
            active[:, e] = energy >= top * 10 ** (-range_db / 10)
    return active


def write_overlays(dataset: Dataset, out: str | os.PathLike, per_fold: int, seed: int = 0, level_db=(0.0, 0.0),
                   max_offset: float = 0.0, folds=None, sample_rate: int = 22050, command: str | None = None,
                   quiet: bool = False) -> Path:
    """Write ``per_fold`` overlays of each fold's clips to ``out``, in the
    UrbanSound8K layout: ``audio/foldN/*.flac`` (24-bit) and
    ``metadata/overlays.csv`` with both labels, both source clips, the gains
    applied to them, their levels and offsets; ``metadata/overlays.json`` records
    how the set was made. Each fold's plan depends only on ``seed`` and the fold
    number, so adding folds leaves the others' mixes unchanged. Returns the CSV's path.
    """
    out, folds = output_folds(dataset, out, folds)
    fold_of = np.array([c.fold for c in dataset.clips])
    plan = []
    for fold in folds:
        rng = np.random.default_rng([seed, fold])
        ids = np.flatnonzero(fold_of == fold)
        try:
            plan += plan_overlays(dataset.clips, ids, per_fold, rng, level_db, round(max_offset * sample_rate))
        except DatasetError as exc:
            raise DatasetError(f"fold {fold}: {exc}") from None
    rows, made = [], {f: 0 for f in folds}
    for ov in track(plan, description=f"overlays of {dataset.name}", disable=quiet, transient=True):
        ca, cb = dataset.clips[ov.a], dataset.clips[ov.b]
        m = mix(dataset.load(ca, sample_rate), dataset.load(cb, sample_rate), ov)
        name = f"{ov.fold}-{made[ov.fold]:05d}-{ca.path.stem}_{cb.path.stem}.flac"
        made[ov.fold] += 1
        folder = out / "audio" / f"fold{ov.fold}"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / name, m.audio, sample_rate, subtype="PCM_24")
        rows.append([name, ov.fold, ca.label, dataset.classes[ca.label], cb.label, dataset.classes[cb.label],
                     os.path.relpath(ca.path, dataset.root), os.path.relpath(cb.path, dataset.root), ca.group, cb.group,
                     f"{m.gains[0]:.9g}", f"{m.gains[1]:.9g}", f"{ov.level_db[0]:.3f}", f"{ov.level_db[1]:.3f}",
                     f"{ov.offset[0] / sample_rate:.6f}", f"{ov.offset[1] / sample_rate:.6f}",
                     f"{len(m.audio) / sample_rate:.6f}"])
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    path = out / "metadata" / "overlays.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)
    (out / "metadata" / "overlays.json").write_text(json.dumps({
        "source": str(dataset.root), "dataset": dataset.summary(), "folds": folds, "per_fold": per_fold,
        "seed": seed, "level_db": list(level_db), "max_offset_s": max_offset, "peak": PEAK,
        "sample_rate": sample_rate, "command": command}, indent=1) + "\n")
    return path
