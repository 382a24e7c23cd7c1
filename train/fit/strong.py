"""Strong-label training: the Piczak CNN taught where events are, on soundscapes.

Every epoch, fresh scenes are planned from the training clips
(:mod:`train.data.scenes`, the URBAN-SED recipe unless told otherwise, over
Brownian noise or ESC-10's ambient recordings), rendered, optionally played
faster or slower as a whole (speed augmentation: the events' spans move with
it), sent through the frontend as audio, and cut into windows every ``stride``
frames (from a random first frame). The study's other kinds of example can join
an epoch through the same mixing path: single clips and two-clip overlays, each
rendered as a short scene of its own. A window's targets are the classes whose
annotated events overlap the part of the window its score is meant to describe:
the ``describe`` frames' span around one moment of the window, the time the
engine attributes a window's score to: its centre by default, or its end (a
score with no look-ahead, for the live event to open sooner), or anywhere
between (``describe_at``, stored in the model file). So a score says what sounds
*now*, at that moment, rather than anywhere in 2.35 s, which is what lets events
open and close where the sounds are. Binary cross-entropy, the same
network, optionally pretrained on single clips (:func:`train.crossval.fit`);
optionally weighted up where an event starts or ends near the moment a window
describes (``edge_weight``, after the onset and offset weighted loss of the
SED literature), as those windows place an event's edges.

Validation scenes come from clips held out of the training folds by source
recording; after training, the last epoch's network is kept (a fixed
schedule) and its thresholds and decoding are tuned on them
(:func:`train.detection.tune_decoding`).
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from streamtag.errors import DatasetError
from train.data.augment import Augment, change_speed
from train.data.cache import DatasetFeatures, clip_features
from train.data.datasets import share_of_recordings
from train.data.scenes import (Annotation, SceneRecipe, Soundscape, ambient_audio, annotations, loudness, plan_pairs,
                               plan_scenes, plan_singles, render, spans_at_speed)
from train.data.segments import WINDOWS, gather
from train.data.sources import shuffled_batches
from train.evaluate.multilabel import average_precision
from train.fit.crossval import split_validation
from train.fit.loop import Recipe, train
from train.fit.multilabel import starting_net


@dataclasses.dataclass
class Scenes:
    """The scene stage's data: ``per_epoch`` new scenes each epoch (and, to mix the study's
    kinds of example into one training, ``singles`` single clips and ``pairs`` two-clip
    overlays, rendered as short scenes), ``val_scenes`` fixed validation scenes, targets for
    the ``describe`` frames around the moment ``describe_at`` of each window (a share of
    it: 0.5 its centre; :func:`end_share` its last frames)."""

    per_epoch: int = 300
    val_scenes: int = 60
    recipe: SceneRecipe = SceneRecipe()
    describe: int = 4  # frames (93 ms): the part of a window its score describes...
    describe_at: float = 0.5  # ... centred this far into the window (0.5: its centre)
    pretrain_epochs: int = 0
    singles: int = 0  # single clips mixed into each epoch (each a short scene of its own)
    pairs: int = 0  # two-clip overlays mixed into each epoch (short scenes too)
    backgrounds: str | None = None  # ESC-10 folder (as the user typed it) for the recipe's ambient backgrounds
    background_folds: list[int] | None = None  # its folds the backgrounds come from (default: all)
    edge_weight: float = 1.0  # loss weight of a class in a window whose moment is within EDGE s of its onset or offset


def end_share(length: int, describe: int, hop: int, n_fft: int) -> float:
    """The ``describe_at`` of a score that describes a window's last ``describe`` frames:
    no look-ahead past them."""
    span = (length - 1) * hop + n_fft
    return 1 - describe * hop / 2 / span


def moments(starts: np.ndarray, length: int, hop: int, n_fft: int, at: float) -> np.ndarray:
    """The sample each window's score describes: ``at`` (a share) into the ``length``-frame
    windows that start at frames ``starts``, where the engine places it (``Engine.score_at``)."""
    return starts * hop + at * ((length - 1) * hop + n_fft)


def window_targets(scene: Soundscape, starts: np.ndarray, length: int, describe: int, hop: int, n_fft: int,
                   n_classes: int, at: float = 0.5) -> np.ndarray:
    """``(len(starts), n_classes)`` float32: 1 where an event of the class overlaps the
    ``describe``-frame span (``describe * hop`` samples) centred on each window's
    :func:`moments`."""
    moment = moments(starts, length, hop, n_fft, at)
    lo, hi = moment - describe * hop / 2, moment + describe * hop / 2
    targets = np.zeros((len(starts), n_classes), np.float32)
    for (start, stop), label in zip(scene.spans, scene.labels):
        targets[:, label] = np.maximum(targets[:, label], (start < hi) & (stop > lo))
    return targets


EDGE = 0.2  # seconds: how near an onset or offset a window's moment is to weigh as an edge (the metrics' collar)


def edge_weights(scene: Soundscape, starts: np.ndarray, length: int, hop: int, n_fft: int, n_classes: int,
                 at: float, weight: float, sample_rate: int) -> np.ndarray:
    """``(len(starts), n_classes)`` float32 loss weights: ``weight`` for a class in a window
    whose moment (:func:`moments`) is within :data:`EDGE` seconds of an onset or offset of an
    event of that class, 1 elsewhere."""
    moment = moments(starts, length, hop, n_fft, at)
    near = EDGE * sample_rate
    weights = np.ones((len(starts), n_classes), np.float32)
    for (start, stop), label in zip(scene.spans, scene.labels):
        edge = (np.abs(moment - start) <= near) | (np.abs(moment - stop) <= near)
        weights[edge, label] = weight
    return weights


def ambient(scenes: Scenes, sample_rate: int) -> list[list[np.ndarray]]:
    """The ambient backgrounds ``scenes`` asks for (none for Brownian noise), loaded once."""
    from train.data.datasets import read_dataset

    if scenes.recipe.background == "brown":
        return []
    if not scenes.backgrounds:
        raise DatasetError("the ambient background needs --backgrounds (an ESC-10 or ESC-50 folder)")
    esc = read_dataset("esc10", scenes.backgrounds)
    return ambient_audio(esc, scenes.background_folds or esc.folds, sample_rate)


class SceneMaker:
    """Plans and renders scenes of a set of clips, one fold at a time (a scene never mixes
    folds), with every clip's loudness measured once; ``backgrounds`` (audio at the
    features' rate, one list per ambient class) for the ambient recipes."""

    def __init__(self, feats: DatasetFeatures, clip_ids, recipe: SceneRecipe,
                 backgrounds: list[list[np.ndarray]] = ()):
        self.feats, self.recipe = feats, recipe
        # background k of the flat list is clip len(clips) + k to the planner and the mixer
        self._background = [audio for group in backgrounds for audio in group]
        self.background_ids, first = [], len(feats.dataset.clips)
        for group in backgrounds:
            self.background_ids.append(list(range(first, first + len(group))))
            first += len(group)
        self.clip_ids = np.asarray(clip_ids)
        self.rate = feats.spec.sample_rate
        self._lufs = {int(i): loudness(feats.clip_audio(int(i)), self.rate) for i in self.clip_ids}
        folds = np.array([feats.dataset.clips[i].fold for i in self.clip_ids])
        self.by_fold = {int(f): self.clip_ids[folds == f] for f in np.unique(folds)}

    def make(self, n: int, rng: np.random.Generator, kind: str = "scenes", min_length: int = 0) -> list[Soundscape]:
        """``n`` scenes, shared among the folds in proportion to their clips: the recipe's
        ("scenes"), one clip each ("singles") or two-clip overlays ("pairs"), the last two at
        least ``min_length`` samples long."""
        clips, labels = self.feats.dataset.clips, self.feats.dataset.labels
        counts = rng.multinomial(n, [len(v) / len(self.clip_ids) for v in self.by_fold.values()]) if n else []

        def length_of(i: int) -> int:
            return len(self.load(i))

        scenes = []
        for (fold, ids), k in zip(self.by_fold.items(), counts):
            if kind == "scenes":
                plans = plan_scenes(clips, ids, int(k), rng, self.recipe, self.rate, length_of, self.background_ids)
            elif kind == "singles":
                plans = plan_singles(clips, ids, int(k), rng, length_of, min_length)
            elif kind == "pairs":
                plans = plan_pairs(clips, ids, int(k), rng, length_of, min_length=min_length)
            else:
                raise ValueError(f"kind must be scenes, singles or pairs, got {kind!r}")
            scenes += [render(p, self.load, labels, self.rate, self.recipe, self._lufs.__getitem__) for p in plans]
        return scenes

    def load(self, i: int) -> np.ndarray:
        """Clip ``i``'s audio, or background ``i - len(clips)``'s."""
        first = len(self.feats.dataset.clips)
        return self.feats.clip_audio(int(i)) if i < first else self._background[int(i) - first]


class SceneSource:
    """Batches for :func:`train.loop.train`: each epoch, new scenes cut into windows
    with strong targets, shuffled."""

    def __init__(self, maker: SceneMaker, n: int, length: int, stride: int, describe: int, augment: Augment,
                 batch_size: int = 128, singles: int = 0, pairs: int = 0, describe_at: float = 0.5,
                 edge_weight: float = 1.0):
        self.maker, self.n, self.singles, self.pairs = maker, n, singles, pairs
        self.length, self.stride, self.describe, self.describe_at = length, stride, describe, describe_at
        self.augment, self.batch_size, self.edge_weight = augment, batch_size, edge_weight

    def epoch(self, rng: np.random.Generator):
        spec = self.maker.feats.spec
        n_classes = len(self.maker.feats.dataset.classes)
        windows, targets, weights = [], [], []
        shortest = (self.length - 1) * spec.hop_length + spec.n_fft  # a single clip or a pair makes one window at least
        examples = (self.maker.make(self.n, rng) + self.maker.make(self.singles, rng, "singles", shortest)
                    + self.maker.make(self.pairs, rng, "pairs", shortest))
        for scene in examples:
            audio = scene.audio
            if self.augment.gain_db:
                audio = audio * np.float32(10 ** (rng.uniform(-self.augment.gain_db, self.augment.gain_db) / 20))
            if self.augment.speed:  # the whole scene faster or slower: its events' times scale with it
                factor = self.augment.speed_factor(rng)
                audio = change_speed(audio, factor)
                scene = dataclasses.replace(scene, spans=spans_at_speed(scene.spans, factor))
            frames = clip_features(audio, spec)
            first = int(rng.integers(self.stride)) if self.augment.shift else 0
            starts = np.arange(first, len(frames) - self.length + 1, self.stride)
            windows.append(gather(frames, starts, self.length))
            targets.append(window_targets(scene, starts, self.length, self.describe, spec.hop_length, spec.n_fft,
                                          n_classes, self.describe_at))
            if self.edge_weight != 1:
                weights.append(edge_weights(scene, starts, self.length, spec.hop_length, spec.n_fft, n_classes,
                                            self.describe_at, self.edge_weight, spec.sample_rate))
        yield from shuffled_batches(windows, targets, self.batch_size, rng, weights or None)


@dataclasses.dataclass
class TrainedStrong:
    net: torch.nn.Module
    history: list[dict]
    val_scenes: list[tuple[str, np.ndarray, int]]  # (name, audio, rate)
    val_reference: dict[str, list[Annotation]]
    val_ids: np.ndarray  # the held-out clips the validation scenes are made of
    n_train: int


def render_set(maker: SceneMaker, n: int, seed, prefix: str) -> tuple[list, dict]:
    """``n`` fixed scenes as ``[(name, audio, rate)]`` and their annotations by name."""
    scenes = maker.make(n, np.random.default_rng(seed))
    classes, rate = maker.feats.dataset.classes, maker.rate
    named = [(f"{prefix}-{k:05d}.wav", s) for k, s in enumerate(scenes)]
    return ([(name, s.audio, rate) for name, s in named],
            {name: annotations(s, classes, rate) for name, s in named})


def window_map(net, scenes: list, reference: dict, classes: list[str], length: int, describe: int, spec,
               device: str = "cpu", at: float = 0.5) -> float:
    """Mean average precision of window scores against their strong targets, on fixed scenes:
    the validation curve (cheap; the DCASE metrics are for the end)."""
    from train.evaluate.clips import predict
    from train.data.segments import Segments

    probs, truth = [], []
    for name, audio, _ in scenes:
        frames = clip_features(audio, spec)
        starts = np.arange(0, len(frames) - length + 1, describe)
        segments = Segments(starts, np.zeros(len(starts), np.int64), length)
        probs.append(predict(net, frames, segments, device))
        spans = [(round(a.onset * spec.sample_rate), round(a.offset * spec.sample_rate)) for a in reference[name]]
        scene = Soundscape(audio, audio, np.zeros((0, len(audio)), np.float32),
                           [classes.index(a.label) for a in reference[name]], spans, 1.0)
        truth.append(window_targets(scene, starts, length, describe, spec.hop_length, spec.n_fft, len(classes), at))
    return float(np.nanmean(average_precision(np.concatenate(probs), np.concatenate(truth))))


def validation(feats: DatasetFeatures, train_ids, scenes: Scenes, seed: int, val_fraction: float,
               backgrounds: list[list[np.ndarray]] = ()):
    """``(fit_ids, val_ids, val_scenes, val_reference)``: the clips held out of ``train_ids``
    (whole recordings, drawn from ``seed``) and their fixed validation scenes; the same for the
    same arguments, so a model's validation scenes can be made again from its provenance."""
    fit_ids, val_ids = split_validation(feats, np.asarray(train_ids), val_fraction, np.random.default_rng(seed))
    if not len(val_ids) or not len(fit_ids):
        raise DatasetError(f"need clips on both sides of the validation split, got {len(fit_ids)} to train on and "
                           f"{len(val_ids)} held out (val fraction {val_fraction:g})")
    val_scenes, val_reference = render_set(SceneMaker(feats, val_ids, scenes.recipe, backgrounds), scenes.val_scenes,
                                           [seed, 7], "val")
    return fit_ids, val_ids, val_scenes, val_reference


def train_strong(feats: DatasetFeatures, train_ids, window: str, recipe: Recipe, scenes: Scenes, augment: Augment,
                 seed: int, device: str = "cpu", val_fraction: float = 0.15,
                 on_epoch: Callable[[dict], None] | None = None) -> TrainedStrong:
    """Pretrain (if asked) and train one strong-label network on scenes of ``train_ids``,
    less the validation clips held out of them (whole recordings), whose scenes it scores."""
    length, _ = WINDOWS[window]
    stride = scenes.describe
    backgrounds = ambient(scenes, feats.spec.sample_rate)
    fit_ids, val_ids, val_scenes, val_reference = validation(feats, train_ids, scenes, seed, val_fraction,
                                                             backgrounds)
    note = on_epoch or (lambda row: None)
    multilabel = dataclasses.replace(recipe, head="multilabel", patience=0)
    net, _, history = starting_net(feats, fit_ids, window, multilabel, scenes.pretrain_epochs, augment, seed, device,
                                   note)
    classes = list(feats.dataset.classes)

    def after_epoch(row: dict) -> None:
        row.update(stage="scenes", val_map=window_map(net, val_scenes, val_reference, classes, length,
                                                      scenes.describe, feats.spec, device, scenes.describe_at))
        net.train()
        note(row)

    source = SceneSource(SceneMaker(feats, fit_ids, scenes.recipe, backgrounds), scenes.per_epoch, length, stride,
                         scenes.describe, augment, recipe.batch_size, scenes.singles, scenes.pairs, scenes.describe_at,
                         scenes.edge_weight)
    history += train(net, source, multilabel, np.random.default_rng([seed, 1]), device, augment.specaugment,
                     None, after_epoch)
    net.eval()
    return TrainedStrong(net, history, val_scenes, val_reference, val_ids, len(fit_ids))


def clip_accuracy(model, feats: DatasetFeatures, clip_ids) -> float:
    """Share of the clips whose top class, from the mean of their windows' scores through the
    engine (as ``streamtag tag --clip`` gives it), is their label."""
    from streamtag.engine import Engine
    from streamtag.sources import ArraySource

    engine, rate = Engine(model), feats.spec.sample_rate
    labels = feats.dataset.labels
    right = sum(int(np.argmax(engine.run(ArraySource(np.asarray(feats.clip_audio(int(i))), rate)).clip_scores))
                == labels[i] for i in clip_ids)
    return right / len(clip_ids)


def export_tuned(net: torch.nn.Module, path: Path, feats: DatasetFeatures, window_frames: int, hop_frames: int,
                 provenance: dict, val_scenes: list, val_reference: dict, val_ids, score_at: float = 0.5) -> dict:
    """Save ``net``, tune its thresholds and decoding on the validation scenes through the
    engine (the model file as ``streamtag tag`` loads it), measure its clip accuracy on the
    validation clips, and save it again with all that. Returns the validation metrics."""
    from streamtag.modelfile import load_model, save_model
    from train.evaluate.detection import tune_decoding

    classes = list(feats.dataset.classes)
    net = net.cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        draft = save_model(Path(tmp) / "draft.pt", net, classes=classes, spec=feats.spec,
                           window_frames=window_frames, hop_frames=hop_frames, provenance=provenance,
                           score_at=score_at)
        model = load_model(draft, device="cpu")
        thresholds, decoding, metrics = tune_decoding(model, val_scenes, val_reference)
        accuracy = clip_accuracy(model, feats, val_ids)
    provenance = {**provenance, "val_detection": {k: v for k, v in metrics.items() if k != "classes"},
                  "metrics": {"val_single_accuracy": accuracy}}
    save_model(path, net, classes=classes, spec=feats.spec, window_frames=window_frames, hop_frames=hop_frames,
               thresholds=thresholds, provenance=provenance, decoding=decoding, score_at=score_at)
    return metrics


def retune(model_path: Path, feats: DatasetFeatures, path: Path) -> dict:
    """Tune a strong-label model file's thresholds and decoding again, on the validation scenes
    its provenance says it was tuned on (made again from the same folds, seed and recipe), and
    write it to ``path``: for when the tuning itself changes, without training again."""
    from streamtag.modelfile import load_network, read_metadata

    meta = read_metadata(model_path)
    prov = meta["provenance"]
    if prov.get("recipe") != "strong labels on soundscapes":
        raise DatasetError(f"{model_path}: not a strong-label model (python -m train strong made none of it)")
    if feats.dataset.classes != meta["classes"]:
        raise DatasetError(f"{model_path}: its classes are not {feats.dataset.name}'s")
    recorded = dict(prov["scenes"])
    scenes = Scenes(**{**recorded, "recipe": SceneRecipe(**{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in recorded["recipe"].items()})})
    fold_of = np.array([c.fold for c in feats.dataset.clips])
    train_ids = share_of_recordings(feats.dataset, np.flatnonzero(np.isin(fold_of, prov["folds"])),
                                    prov.get("train_share", 1.0), prov["seed"])
    _, val_ids, val_scenes, val_reference = validation(feats, train_ids, scenes, prov["seed"],
                                                       prov.get("val_fraction", 0.15),
                                                       ambient(scenes, feats.spec.sample_rate))
    net = load_network(model_path)
    kept = {k: v for k, v in prov.items() if k not in ("val_detection", "metrics", "saved_at")}
    return export_tuned(net, path, feats, meta["window_frames"], meta["hop_frames"], kept, val_scenes,
                        val_reference, val_ids, meta.get("score_at", 0.5))
