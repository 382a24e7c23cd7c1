"""Soundscapes: continuous scenes of many events over a background, with strong labels.

The URBAN-SED recipe (Salamon et al., "Scaper", WASPAA 2017) is the default
:class:`SceneRecipe`: 10-s scenes, 1-9 events whose classes are drawn uniformly
from the ten, each a whole UrbanSound8K clip drawn uniformly from that class's
clips, starting at a uniform time (so that it ends inside the scene), at a
signal-to-noise ratio uniform in 6-30 dB over a Brownian-noise background.
Levels are loudness (LUFS, ITU-R BS.1770, with pyloudnorm), as Scaper measures
them: the background sits at -50 LUFS and each event at that plus its SNR.
Beyond the recipe: ESC-10's ambient recordings as backgrounds (rain, sea waves,
crackling fire, helicopter), other event counts, SNR ranges and scene lengths.

Scaper itself (PyPI) mixes through SoX files on disk and, at 1.6.5, does not
import beside NumPy 2 (``np.Inf``); this module mixes in memory instead, so the
same code writes scenes to disk (:func:`write_scenes`: audio plus DCASE
annotations) and makes fresh ones every training epoch (:mod:`train.fit.strong`).

As with the two-clip overlays (:mod:`train.data.overlay`, whose fold rule this
keeps), a scene takes its events only from the folds it is asked for, so a test
fold's scenes hold that fold's clips alone; a plan is a pure function of the
random generator, and a render a pure function of its plan. Annotations are
exact to the sample: an event spans exactly the samples its clip's audio was
added to, and :class:`Soundscape` keeps each event's own track, so tests can
check that an annotation's event is really there.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import soundfile as sf
from rich.progress import track

from streamtag.audio import load_audio
from streamtag.errors import DatasetError
from train.data.datasets import Clip, Dataset, output_folds

BACKGROUND_LUFS = -50.0  # Scaper's reference level for URBAN-SED's background
ALONE_SNR_DB = 30.0  # a clip heard (nearly) alone: the top of URBAN-SED's SNR range
BACKGROUNDS = ("brown", "ambient", "both")  # what a recipe's scenes sound over
ONSETS = ("inside", "scaper")  # where an event may start: see SceneRecipe.onsets
AMBIENT_CLASSES = ("rain", "sea_waves", "crackling_fire", "helicopter")  # ESC-10's steady scenes
_LOUDNESS_BLOCK = 0.4  # seconds: BS.1770's gating block; a shorter sound is measured repeated to this length


@dataclasses.dataclass(frozen=True)
class SceneRecipe:
    """How scenes are drawn. Ranges are inclusive ``(min, max)``."""

    duration: float = 10.0  # seconds
    events: tuple[int, int] = (1, 9)  # events per scene, uniform
    snr_db: tuple[float, float] = (6.0, 30.0)  # event loudness over the background's, uniform
    background: str = "brown"  # "brown" (Brownian noise), "ambient" (ESC-10 recordings, needs backgrounds),
    # or "both" (each scene one or the other, evenly)
    background_lufs: float = BACKGROUND_LUFS
    onsets: str = "inside"  # "inside": uniform over the onsets where the event still ends inside the scene;
    # "scaper": uniform over the whole scene, an event that would run past its end moved back to end with it, as
    # Scaper placed URBAN-SED's events (so many end exactly at the scene's end)
    event_seconds: tuple[float, float] | None = None  # None: whole clips; else each event the start of its clip,
    # as long as drawn uniformly from this range (the whole clip if shorter), as URBAN-SED cut them (0.5-4 s)

    def __post_init__(self):
        if not 0.5 <= self.duration <= 600:
            raise DatasetError(f"scene length must lie in 0.5-600 s, got {self.duration}")
        lo, hi = self.events
        if not 0 <= lo <= hi <= 100:
            raise DatasetError(f"events per scene must satisfy 0 <= MIN <= MAX <= 100, got {lo}:{hi}")
        if not -20 <= self.snr_db[0] <= self.snr_db[1] <= 60:
            raise DatasetError(f"SNR range must satisfy -20 <= MIN <= MAX <= 60 dB, got {self.snr_db}")
        if self.background not in BACKGROUNDS:
            raise DatasetError(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        if self.onsets not in ONSETS:
            raise DatasetError(f"onsets must be one of {', '.join(ONSETS)}, got {self.onsets!r}")
        if self.event_seconds is not None and not 0.05 <= self.event_seconds[0] <= self.event_seconds[1] <= 600:
            raise DatasetError(f"event lengths must satisfy 0.05 <= MIN <= MAX <= 600 s, got {self.event_seconds}")


@dataclasses.dataclass(frozen=True)
class PlacedEvent:
    """One event of a planned scene: a clip (index into ``Dataset.clips``), where it starts
    (samples from the scene's start), its SNR over the background in dB, and how much of the
    clip's start it plays (samples; None: the whole clip)."""

    clip: int
    onset: int
    snr_db: float
    length: int | None = None


@dataclasses.dataclass(frozen=True)
class ScenePlan:
    """A planned scene: its fold, length in samples, events, and background: ``None`` for
    Brownian noise from ``noise_seed``, else background clip indices played one after another."""

    fold: int
    length: int
    events: tuple[PlacedEvent, ...]
    noise_seed: int
    background: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Annotation:
    """An event as DCASE annotates it: seconds from the scene's start, and its label."""

    onset: float
    offset: float
    label: str


@dataclasses.dataclass
class Soundscape:
    """A rendered scene: the mix, each event's own track as placed and scaled in it
    (``tracks.sum(axis=0) + background == audio``), and its annotations."""

    audio: np.ndarray  # (n,) float32
    background: np.ndarray  # (n,) float32
    tracks: np.ndarray  # (events, n) float32
    labels: list[int]  # class index of each event
    spans: list[tuple[int, int]]  # samples [start, stop) of each event
    gain: float  # applied to the whole scene so that it never clips (1.0 when it did not need to)


def parse_range(text: str, kind=float) -> tuple:
    """'6:30' or '5' as an inclusive range."""
    lo, _, hi = text.partition(":")
    try:
        return kind(lo), kind(hi or lo)
    except ValueError:
        raise DatasetError(f"expected a number or MIN:MAX, got {text!r}") from None


def loudness(audio: np.ndarray, rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770-4, pyloudnorm); a sound shorter than one
    400 ms gating block is measured repeated to that length; silence is ``-inf``."""
    import pyloudnorm

    audio = np.asarray(audio, dtype=np.float64)
    if not len(audio) or not np.any(audio):
        return -np.inf
    block = int(np.ceil(_LOUDNESS_BLOCK * rate)) + 1
    if len(audio) < block:
        audio = np.resize(audio, block)
    with np.errstate(divide="ignore"):
        return float(pyloudnorm.Meter(rate).integrated_loudness(audio))


def brown_noise(n: int, rng: np.random.Generator, rate: int) -> np.ndarray:
    """``n`` samples of Brownian noise (power falling 6 dB per octave), unit RMS: white
    noise shaped by ``1/f`` in amplitude above 20 Hz, so that it holds no DC drift."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / rate)
    spectrum *= 1.0 / np.maximum(f, 20.0)
    spectrum[0] = 0.0
    x = np.fft.irfft(spectrum, n)
    return (x / np.sqrt(np.mean(np.square(x)))).astype(np.float32)


def plan_scenes(clips: Sequence[Clip], ids, n: int, rng: np.random.Generator, recipe: SceneRecipe, rate: int,
                length_of: Callable[[int], int], background_ids: Sequence[Sequence[int]] = ()) -> list[ScenePlan]:
    """``n`` scenes whose events are clips ``ids`` (all of one fold, the scenes' fold).

    ``length_of(i)`` is clip ``i``'s length in samples at ``rate``.
    Each event's class is uniform over the classes present among ``ids``, its clip uniform
    among that class's, played whole or (``recipe.event_seconds``) its first few seconds, as many as
    drawn; it starts uniformly where it still ends inside the scene, or (``recipe.onsets``
    "scaper") anywhere in the scene and, if it would run past the end, as late as it still fits; a clip
    longer than the scene starts at 0 and is cut. ``background_ids`` (ambient recipes) holds
    one list of background clip indices per background class.
    """
    ids = _one_fold(clips, ids, n, "scenes")
    if recipe.background != "brown" and not any(len(b) for b in background_ids):
        raise DatasetError("the ambient background needs background clips (ESC-10's rain, sea_waves, ...)")
    by_class: dict[int, np.ndarray] = {}
    for i in ids:
        by_class.setdefault(clips[i].label, []).append(int(i))
    classes = sorted(by_class)
    length = int(round(recipe.duration * rate))
    plans = []
    for _ in range(n):
        events = []
        for _ in range(int(rng.integers(recipe.events[0], recipe.events[1] + 1))):
            label = classes[int(rng.integers(len(classes)))]
            clip = int(rng.choice(by_class[label]))
            played = int(length_of(clip))
            cut = None
            if recipe.event_seconds is not None:
                cut = played = min(played, int(round(rng.uniform(*recipe.event_seconds) * rate)))
            room = length - played
            if recipe.onsets == "scaper":
                onset = min(int(rng.integers(length)), max(room, 0))
            else:
                onset = int(rng.integers(0, room + 1)) if room > 0 else 0
            events.append(PlacedEvent(clip, onset, float(rng.uniform(*recipe.snr_db)), cut))
        background = None
        if recipe.background == "ambient" or (recipe.background == "both" and rng.random() < 0.5):
            pool = [b for b in background_ids if len(b)]
            choice = pool[int(rng.integers(len(pool)))]
            order, total = [], 0
            while total < length:  # clips of one ambient class, one after another, until the scene is full
                j = int(rng.choice(choice))
                order.append(j)
                total += max(int(length_of(j)), 1)
            background = tuple(order)
        plans.append(ScenePlan(clips[int(ids[0])].fold, length, tuple(events), int(rng.integers(2**31)), background))
    return plans


def plan_singles(clips: Sequence[Clip], ids, n: int, rng: np.random.Generator, length_of: Callable[[int], int],
                 min_length: int = 0) -> list[ScenePlan]:
    """``n`` scenes of one clip each (uniform among ``ids``, all of one fold), as long as the
    clip (at least ``min_length`` samples), the clip at :data:`ALONE_SNR_DB` over the
    background: clip-level training's single clips, mixed the way scenes are."""
    ids = _one_fold(clips, ids, n, "single clips")
    return [ScenePlan(clips[int(i)].fold, max(int(length_of(int(i))), min_length),
                      (PlacedEvent(int(i), 0, ALONE_SNR_DB),), int(rng.integers(2**31)))
            for i in rng.choice(ids, n)] if n else []


def plan_pairs(clips: Sequence[Clip], ids, n: int, rng: np.random.Generator, length_of: Callable[[int], int],
               level_db: tuple[float, float] = (0.0, 20.0), min_length: int = 0) -> list[ScenePlan]:
    """``n`` two-clip overlays as scenes: the pairs of :func:`train.data.overlay.plan_overlays`
    (another class, another recording, one fold), both starting at 0, the louder at
    :data:`ALONE_SNR_DB` over the background and the other ``level_db`` (uniform) under it."""
    from train.data.overlay import plan_overlays

    _one_fold(clips, ids, n, "overlays")
    plans = []
    for o in plan_overlays(list(clips), ids, n, rng, level_db):
        length = max(int(length_of(o.a)), int(length_of(o.b)), min_length)
        events = tuple(PlacedEvent(c, 0, ALONE_SNR_DB + level) for c, level in zip((o.a, o.b), o.level_db))
        plans.append(ScenePlan(o.fold, length, events, int(rng.integers(2**31))))
    return plans


def _one_fold(clips: Sequence[Clip], ids, n: int, what: str) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    if n and not len(ids):
        raise DatasetError(f"cannot plan {what}: no clips")
    folds = {clips[i].fold for i in ids}
    if len(folds) > 1:  # so that a test fold's examples hold that fold's clips alone
        raise DatasetError(f"{what} take their clips from one fold, got folds {sorted(folds)}")
    return ids


def render(plan: ScenePlan, load: Callable[[int], np.ndarray], labels: Sequence[int], rate: int,
           recipe: SceneRecipe, event_lufs: Callable[[int], float] | None = None) -> Soundscape:
    """Mix a planned scene. ``load(i)`` gives clip ``i``'s audio at ``rate``; ``labels[i]`` its
    class; ``event_lufs(i)`` its loudness (measured here when not given: training passes a cache).

    The background is set to ``recipe.background_lufs`` and each event to that plus its SNR;
    then, if the mix would clip, the whole scene (background and every track alike, so every
    SNR holds) is scaled down to peak at 0.99.
    """
    n = plan.length
    if plan.background is None:
        background = brown_noise(n, np.random.default_rng(plan.noise_seed), rate)
    else:
        background = np.concatenate([np.asarray(load(j), dtype=np.float32) for j in plan.background])[:n]
    bg_lufs = loudness(background, rate)
    if np.isfinite(bg_lufs):
        background = background * np.float32(10 ** ((recipe.background_lufs - bg_lufs) / 20))
    reference = recipe.background_lufs  # events are placed relative to the asked level, as Scaper does
    tracks = np.zeros((len(plan.events), n), dtype=np.float32)
    spans, event_labels = [], []
    for k, ev in enumerate(plan.events):
        x = np.asarray(load(ev.clip), dtype=np.float32)[:ev.length][:n - ev.onset]
        whole = event_lufs is not None and ev.length is None  # the cache knows whole clips only
        level = event_lufs(ev.clip) if whole else loudness(x, rate)
        gain = 10 ** ((reference + ev.snr_db - level) / 20) if np.isfinite(level) else 0.0
        tracks[k, ev.onset:ev.onset + len(x)] = x * np.float32(gain)
        spans.append((ev.onset, ev.onset + len(x)))
        event_labels.append(int(labels[ev.clip]))
    audio = background + tracks.sum(axis=0)
    peak = float(np.abs(audio).max(initial=0.0))
    gain = 0.99 / peak if peak > 0.99 else 1.0
    if gain != 1.0:
        audio, background, tracks = (a * np.float32(gain) for a in (audio, background, tracks))
    return Soundscape(audio.astype(np.float32), background.astype(np.float32), tracks, event_labels, spans, gain)


def spans_at_speed(spans: Sequence[tuple[int, int]], factor: float) -> list[tuple[int, int]]:
    """Where events spanning ``spans`` (samples) lie once their scene plays ``factor`` times as
    fast (:func:`train.data.augment.change_speed`, training's speed augmentation)."""
    return [(round(start / factor), round(stop / factor)) for start, stop in spans]


def annotations(scene: Soundscape, classes: Sequence[str], rate: int) -> list[Annotation]:
    """The scene's events in time order, in seconds, labelled by class name."""
    out = [Annotation(start / rate, stop / rate, classes[label]) for (start, stop), label in
           zip(scene.spans, scene.labels)]
    return sorted(out, key=lambda a: (a.onset, a.offset, a.label))


def write_tsv(path: str | os.PathLike, rows: list[tuple[str, Annotation]]) -> None:
    """DCASE annotations (sed_eval, sed_scores_eval, DESED): a header, then
    ``filename<TAB>onset<TAB>offset<TAB>event_label`` per event, times in seconds."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["filename", "onset", "offset", "event_label"])
        for name, a in rows:
            w.writerow([name, f"{a.onset:.6f}", f"{a.offset:.6f}", a.label])


def read_tsv(path: str | os.PathLike) -> dict[str, list[Annotation]]:
    """A DCASE annotation file as ``{filename: [events]}``; files listed without an event
    (a row with empty onset, offset and label) are kept with no events."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None
    if not rows or [c.strip() for c in rows[0][:4]] != ["filename", "onset", "offset", "event_label"]:
        raise DatasetError(f"{path}: not a DCASE annotation file (the header must be "
                           "filename, onset, offset, event_label separated by tabs)")
    out: dict[str, list[Annotation]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row or not row[0].strip():
            continue
        events = out.setdefault(row[0], [])
        if len(row) < 4 or not row[3].strip():
            continue
        try:
            onset, offset = float(row[1]), float(row[2])
        except ValueError:
            raise DatasetError(f"{path}, line {line}: onset and offset must be seconds, got {row[1:3]}") from None
        if not (0 <= onset <= offset) or not np.isfinite(offset):
            raise DatasetError(f"{path}, line {line}: need 0 <= onset <= offset, got {onset} and {offset}")
        events.append(Annotation(onset, offset, row[3]))
    return out


def ambient_backgrounds(dataset: Dataset, folds) -> list[list[int]]:
    """Indices of ESC-10's ambient clips (:data:`AMBIENT_CLASSES`) in ``folds``, one list per class present."""
    present = [c for c in AMBIENT_CLASSES if c in dataset.classes]
    if not present:
        raise DatasetError(f"{dataset.name} has none of {', '.join(AMBIENT_CLASSES)} for ambient backgrounds "
                           "(give the ESC-10 or ESC-50 folder)")
    ids = [[i for i, c in enumerate(dataset.clips) if dataset.classes[c.label] == name and c.fold in folds]
           for name in present]
    if not any(ids):
        raise DatasetError(f"no ambient background clips in fold(s) {sorted(folds)} of {dataset.name}")
    return ids


def ambient_audio(dataset: Dataset, folds, sample_rate: int) -> list[list[np.ndarray]]:
    """The audio of ESC-10's ambient clips in ``folds`` at ``sample_rate``, one list per class
    present: the backgrounds of scenes made while training (:mod:`train.fit.strong`)."""
    return [[dataset.load(dataset.clips[i], sample_rate) for i in ids]
            for ids in ambient_backgrounds(dataset, folds) if ids]


def write_scenes(dataset: Dataset, out: str | os.PathLike, per_fold: int, recipe: SceneRecipe = SceneRecipe(),
                 seed: int = 0, folds=None, backgrounds: Dataset | None = None, background_folds=None,
                 sample_rate: int = 22050, command: str | None = None, quiet: bool = False) -> Path:
    """Write ``per_fold`` scenes of each fold's clips to ``out``: ``audio/foldN/*.wav``
    (24-bit), ``metadata/foldN.tsv`` (DCASE annotations, one per fold, so a test fold is
    scored alone) and ``metadata/scenes.json`` (how they were made). Each fold's scenes depend
    only on ``seed`` and the fold number. Returns the metadata folder."""
    out, folds = output_folds(dataset, out, folds)
    pool: list[Clip] = list(dataset.clips)
    background_ids: list[list[int]] = []
    if recipe.background != "brown":
        if backgrounds is None:
            raise DatasetError("the ambient background needs --backgrounds (an ESC-10 or ESC-50 folder)")
        offset = len(pool)
        pool += backgrounds.clips
        background_ids = [[offset + i for i in ids] for ids in
                          ambient_backgrounds(backgrounds, background_folds or backgrounds.folds)]
    cache: dict[int, np.ndarray] = {}

    def load(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = load_audio(pool[i].path, sample_rate)
        return cache[i]

    labels = [c.label for c in pool]
    fold_of = np.array([c.fold for c in dataset.clips])
    meta = out / "metadata"
    meta.mkdir(parents=True)
    for fold in folds:
        rng = np.random.default_rng([seed, fold])
        ids = np.flatnonzero(fold_of == fold)
        plans = plan_scenes(pool, ids, per_fold, rng, recipe, sample_rate, lambda i: len(load(i)),
                            background_ids)
        folder = out / "audio" / f"fold{fold}"
        folder.mkdir(parents=True)
        rows = []
        for k, plan in enumerate(track(plans, description=f"scenes of fold {fold}", disable=quiet, transient=True)):
            scene = render(plan, load, labels, sample_rate, recipe)
            name = f"{fold}-{k:05d}.wav"
            sf.write(folder / name, scene.audio, sample_rate, subtype="PCM_24")
            rows += [(name, a) for a in annotations(scene, dataset.classes, sample_rate)]
        write_tsv(meta / f"fold{fold}.tsv", rows)
    (meta / "scenes.json").write_text(json.dumps({
        "source": str(dataset.root), "dataset": dataset.summary(), "folds": folds, "per_fold": per_fold,
        "seed": seed, "recipe": dataclasses.asdict(recipe), "classes": dataset.classes,
        "backgrounds": None if backgrounds is None else backgrounds.summary(),
        "sample_rate": sample_rate, "command": command}, indent=1) + "\n")
    return meta

