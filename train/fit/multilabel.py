"""Multilabel training on two-event overlays, and the pretraining study.

The network is the same :class:`~streamtag.model.PiczakCNN` with its sigmoid
head, trained with binary cross-entropy (``loss_fn("multilabel")`` of
:mod:`train.fit.loop`) on examples rendered afresh every epoch: overlays planned
from the training clips (:mod:`train.data.overlay`) and single clips. Every example
goes through :func:`streamtag.frontend.compute_features` as audio, mixes
included (features are never mixed), so training sees exactly what the live
frontend emits for such a sound. A window's targets are the events that
actually sound in it (:func:`train.overlay.frame_activity`), so a short event
in a longer mix labels only its own windows.

Two ways to start: from scratch, or from a network first trained on single
clips with the softmax head (:func:`train.crossval.fit`, the ``cv`` command's
recipe), whose weights then continue on overlays. Either way, validation clips
are held out of the training folds by source recording; after each epoch the
mean average precision on them (single clips and mixes of them) is measured;
the last epoch's weights are kept (or, with ``keep="best"``, the best epoch's),
and per-class thresholds are tuned on them.

A clip's scores are the mean of its windows' probabilities (probability
voting, as in :mod:`train.evaluate.clips`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Callable

import numpy as np
import torch

from streamtag.errors import DatasetError
from train.data.augment import Augment, change_speed
from train.data.cache import DatasetFeatures, clip_features
from train.data.overlay import Overlay, frame_activity, mix, plan_overlays
from train.data.segments import SILENCE_DB, WINDOWS, Segments, gather, window_starts
from train.data.sources import shuffled_batches
from train.evaluate.clips import predict
from train.evaluate.multilabel import (average_precision, clip_means, found_per_class, mixes_by_alone, per_class,
                                      set_scores, tune_thresholds)
from train.fit.crossval import fit, make_net, normalization, split_validation
from train.fit.loop import Recipe, train

MIN_ACTIVE = 4  # frames (0.09 s) an event must sound in a window to be one of the window's targets
SETS = {"single": None, "equal": (0.0, 0.0), "minus20": (20.0, 20.0)}  # evaluation sets: name -> level difference


@dataclasses.dataclass
class Overlays:
    """The overlay stage's data: per epoch, ``mixes`` new overlays and ``singles``
    single clips of the training clips; ``pretrain_epochs`` > 0 starts from a
    single-label network trained that long. ``keep``: the weights of the last
    epoch ("last", a fixed schedule, which does not lean on a small validation
    set's noise: better in mAP on all 12 seeds of the default recipe, in
    both-right on 8), or of the epoch with the best validation mAP ("best")."""

    mixes: int = 500
    singles: int = 500
    level_db: tuple[float, float] = (0.0, 20.0)  # level difference range of the training mixes
    max_offset: float = 0.0  # seconds one event may start after the other
    pretrain_epochs: int = 0
    keep: str = "last"


def render(feats: DatasetFeatures, item, length: int, stride: int, augment: Augment | None = None,
           rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One example, an :class:`Overlay` or a clip index: its frames, the starts of
    its kept windows and their targets ``(n, C)``. ``augment`` (speed, gain,
    shift) draws from ``rng``; mixing and background options do not apply here.
    A speed change applies to the mix and to each event's part alike, so the
    targets follow the events to their new times."""
    spec, labels = feats.spec, feats.dataset.labels
    if isinstance(item, Overlay):
        m = mix(feats.clip_audio(item.a), feats.clip_audio(item.b), item)
        audio, parts, events = m.audio, m.parts, labels[[item.a, item.b]]
    else:
        audio = np.asarray(feats.clip_audio(int(item)), dtype=np.float32)
        parts, events = audio[None], labels[[int(item)]]
    grid = 0
    if augment is not None and augment.speed:
        factor = augment.speed_factor(rng)
        audio, parts = change_speed(audio, factor), change_speed(parts, factor)
    if augment is not None and augment.gain_db:
        audio = audio * np.float32(10 ** (rng.uniform(-augment.gain_db, augment.gain_db) / 20))
    if augment is not None and augment.shift:
        cut = int(rng.integers(spec.hop_length))
        audio, parts, grid = audio[cut:], parts[:, cut:], int(rng.integers(stride))
    frames = clip_features(audio, spec)
    starts = window_starts(frames, length, stride, SILENCE_DB, grid)
    active = np.cumsum(frame_activity(parts, spec, len(frames)), axis=0)
    active = np.concatenate([np.zeros((1, active.shape[1]), active.dtype), active])
    sounding = active[starts + length] - active[starts] >= MIN_ACTIVE  # (windows, events)
    targets = np.zeros((len(starts), len(feats.dataset.classes)), np.float32)
    for e, label in enumerate(events):
        targets[:, label] = np.maximum(targets[:, label], sounding[:, e])
    return frames, starts, targets


class ExampleSource:
    """Batches for :func:`train.loop.train`: each epoch, new overlays of the clips
    plus a random draw of single clips, rendered and shuffled."""

    def __init__(self, feats: DatasetFeatures, clip_ids, length: int, stride: int, overlays: Overlays,
                 augment: Augment, batch_size: int = 128):
        self.feats, self.clip_ids = feats, np.asarray(clip_ids)
        self.length, self.stride = length, stride
        self.overlays, self.augment, self.batch_size = overlays, augment, batch_size

    def epoch(self, rng: np.random.Generator):
        o = self.overlays
        items = plan_overlays(self.feats.dataset.clips, self.clip_ids, o.mixes, rng, o.level_db,
                              round(o.max_offset * self.feats.spec.sample_rate))
        items += [int(i) for i in rng.choice(self.clip_ids, min(o.singles, len(self.clip_ids)), replace=False)]
        windows, targets = [], []
        for item in items:
            frames, starts, t = render(self.feats, item, self.length, self.stride, self.augment, rng)
            windows.append(gather(frames, starts, self.length))
            targets.append(t)
        yield from shuffled_batches(windows, targets, self.batch_size, rng)


@dataclasses.dataclass
class ClipSet:
    """Fixed evaluation clips (single clips or mixes), rendered once."""

    name: str
    frames: np.ndarray  # every clip's frames, concatenated
    segments: Segments  # its windows; ``segments.clip`` indexes ``truth``
    truth: np.ndarray  # (clips, C) 0/1: the sounds in each clip
    window_truth: np.ndarray  # (windows, C) 0/1: the sounds in each window
    items: list  # what each clip is: a clip index, or an :class:`Overlay` of two


def clip_set(name: str, feats: DatasetFeatures, items: list, length: int, stride: int) -> ClipSet:
    n_classes, labels = len(feats.dataset.classes), feats.dataset.labels
    frames, starts, clip, window_truth = [], [], [], []
    truth = np.zeros((len(items), n_classes), np.float32)
    base = 0
    for k, item in enumerate(items):
        f, s, t = render(feats, item, length, stride)
        frames.append(f)
        starts.append(s + base)
        clip.append(np.full(len(s), k))
        window_truth.append(t)
        base += len(f)
        truth[k, labels[[item.a, item.b] if isinstance(item, Overlay) else [int(item)]]] = 1
    segments = Segments(np.concatenate(starts), np.concatenate(clip), length)
    return ClipSet(name, np.concatenate(frames), segments, truth, np.concatenate(window_truth), list(items))


def evaluation_sets(feats: DatasetFeatures, ids, length: int, stride: int, n_mixes: int, seed: int,
                    max_offset: float = 0.0) -> list[ClipSet]:
    """The clips ``ids`` on their own, and ``n_mixes`` overlays of them at equal
    level and at 20 dB difference (:data:`SETS`), planned from ``seed``."""
    sets = []
    for k, (name, levels) in enumerate(SETS.items()):
        if levels is None:
            items = [int(i) for i in ids]
        else:
            items = plan_overlays(feats.dataset.clips, ids, n_mixes, np.random.default_rng([seed, k]), levels,
                                  round(max_offset * feats.spec.sample_rate))
        sets.append(clip_set(name, feats, items, length, stride))
    return sets


def scores_of(net, sets: list[ClipSet], device: str = "cpu") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Window probabilities and clip scores (mean of windows) of each set."""
    windows = [predict(net, s.frames, s.segments, device) for s in sets]
    clips = [clip_means(p, s.segments.clip, len(s.truth)) for p, s in zip(windows, sets)]
    return windows, clips


def evaluate(net, sets: list[ClipSet], thresholds, device: str = "cpu") -> dict:
    """Every score of the study on ``sets``: per set (ranking, and decisions at the
    tuned thresholds and at 0.5; on mixes also both right split by whether each
    clip is right alone) and per set and class how often a sound present is
    ranked among the top ``k``; over all their clips together mAP and per-class
    precision, recall and F1 at both."""
    _, clips = scores_of(net, sets, device)
    probs, truth = np.concatenate(clips), np.concatenate([s.truth for s in sets])
    ap = average_precision(probs, truth)
    scores = {s.name: set_scores(p, s.truth, thresholds) for s, p in zip(sets, clips)}
    _split_mixes(sets, clips, scores)
    return {"sets": scores, "found": {s.name: found_per_class(p, s.truth).tolist() for s, p in zip(sets, clips)},
            "sets_05": {s.name: set_scores(p, s.truth, np.full(truth.shape[1], 0.5)) for s, p in zip(sets, clips)},
            "ap": ap.tolist(), "map": float(np.nanmean(ap)),
            "tuned": {k: v.tolist() for k, v in per_class(probs >= np.asarray(thresholds), truth).items()},
            "at_05": {k: v.tolist() for k, v in per_class(probs >= 0.5, truth).items()}}


def _split_mixes(sets: list[ClipSet], clips: list[np.ndarray], scores: dict) -> None:
    """Add :func:`~train.evaluate.multilabel.mixes_by_alone` to the ``scores`` of each
    set of mixes whose clips all play alone in the ``single`` set."""
    single = next((k for k, s in enumerate(sets) if s.name == "single"), None)
    if single is None:
        return
    where = {item: k for k, item in enumerate(sets[single].items)}
    right = clips[single].argmax(axis=1) == sets[single].truth.argmax(axis=1)
    for s, p in zip(sets, clips):
        mixes = [item for item in s.items if isinstance(item, Overlay)]
        if mixes and len(mixes) == len(s.items) and all(m.a in where and m.b in where for m in mixes):
            pairs = np.array([[where[m.a], where[m.b]] for m in mixes])
            scores[s.name].update(mixes_by_alone(p, s.truth, pairs, right))


@dataclasses.dataclass
class Trained:
    net: torch.nn.Module  # the multilabel network, at the epoch kept (Overlays.keep)
    thresholds: np.ndarray  # per class, tuned on validation clip scores
    window_thresholds: np.ndarray  # per class, tuned on validation window scores (what live tagging applies)
    history: list[dict]  # one row per epoch, pretraining first
    kept_epoch: int  # the overlay-stage epoch whose weights were kept
    val: dict  # evaluate() on the validation sets
    n_train: int
    n_val: int
    single_net: torch.nn.Module | None = None  # the pretrained softmax network, when pretrained


def starting_net(feats: DatasetFeatures, fit_ids, window: str, multilabel: Recipe, pretrain_epochs: int,
                 augment: Augment, seed: int, device: str, note: Callable[[dict], None]):
    """``(net, single_net, history)``: the multilabel network a training starts from. With
    ``pretrain_epochs``, a single-label network trained that long on the clips (``single_net``,
    its epochs in ``history``, marked "pretrain") lends it its weights; otherwise it is fresh from
    ``seed``, normalised on the clips ``fit_ids``."""
    if not pretrain_epochs:
        torch.manual_seed(seed)
        net = make_net(feats, window, multilabel)
        net.set_normalization(*normalization(feats, fit_ids))
        return net, None, []
    single = dataclasses.replace(multilabel, head="single", patience=0, epochs=pretrain_epochs)
    single_net, history = fit(feats, fit_ids, window, single, augment, seed, device,
                              on_epoch=lambda row: note({"stage": "pretrain", **row}))
    for row in history:
        row["stage"] = "pretrain"
    net = make_net(feats, window, multilabel)
    net.load_state_dict(single_net.state_dict())  # same shapes; only the squashing and loss differ
    return net, single_net, history


def train_multilabel(feats: DatasetFeatures, train_ids, window: str, recipe: Recipe, overlays: Overlays,
                     augment: Augment, seed: int, device: str = "cpu", val_fraction: float = 0.15,
                     on_epoch: Callable[[dict], None] | None = None) -> Trained:
    """Pretrain (if asked) and train one multilabel network on the clips
    ``train_ids``, less the validation clips held out of them."""
    if overlays.keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {overlays.keep!r}")
    length, stride = WINDOWS[window]
    fit_ids, val_ids = split_validation(feats, np.asarray(train_ids), val_fraction, np.random.default_rng(seed))
    if len(val_ids) == 0:
        raise DatasetError(f"no validation clips held out of {len(fit_ids)} (val fraction {val_fraction}); "
                           "use more clips or a larger fraction")
    if len(fit_ids) == 0:
        raise DatasetError(f"holding out {val_fraction:g} of {len(val_ids)} clips for validation left none to train "
                           "on (whole recordings are held out); use more clips or a smaller fraction")
    val = evaluation_sets(feats, val_ids, length, stride, len(val_ids), seed + 1, overlays.max_offset)
    note = on_epoch or (lambda row: None)
    multilabel = dataclasses.replace(recipe, head="multilabel", patience=0)
    net, single_net, history = starting_net(feats, fit_ids, window, multilabel, overlays.pretrain_epochs, augment,
                                            seed, device, note)
    best = {"map": -1.0, "epoch": recipe.epochs}  # with keep="last", the last epoch is the one kept

    def after_epoch(row: dict) -> None:
        _, clips = scores_of(net, val, device)
        row.update(stage="overlays", val_map=float(np.nanmean(average_precision(
            np.concatenate(clips), np.concatenate([s.truth for s in val])))))
        if overlays.keep == "best" and row["val_map"] > best["map"]:
            best.update(map=row["val_map"], epoch=row["epoch"], state=copy.deepcopy(net.state_dict()))
        note(row)

    source = ExampleSource(feats, fit_ids, length, stride, overlays, augment, recipe.batch_size)
    history += train(net, source, multilabel, np.random.default_rng([seed, 1]), device, augment.specaugment,
                     None, after_epoch)
    if overlays.keep == "best":
        net.load_state_dict(best["state"])
    net.eval()
    windows, clips = scores_of(net, val, device)
    thresholds = tune_thresholds(np.concatenate(clips), np.concatenate([s.truth for s in val]))
    window_thresholds = tune_thresholds(np.concatenate(windows), np.concatenate([s.window_truth for s in val]))
    return Trained(net, thresholds, window_thresholds, history, best["epoch"], evaluate(net, val, thresholds, device),
                   len(fit_ids), len(val_ids), single_net)


def study(feats: DatasetFeatures, window: str, recipe: Recipe, overlays: Overlays, augment: Augment,
          inits: list[str], seed: int = 0, device: str = "cpu", val_fraction: float = 0.15, test_mixes: int = 400,
          folds: list[int] | None = None, on_epoch=None, on_result=None, train_fraction: float = 1.0) -> list[dict]:
    """For each test fold, and for each start in ``inits`` ("scratch",
    "pretrained"): train on the other present folds and score on the test
    fold's single clips and mixes. The pretrained run also scores its softmax
    network alone (init "single-label"), by ranking only. ``train_fraction`` < 1
    trains on about that share of each class's training clips, whole source
    recordings at a time (drawn from the seed), for a learning curve: how the
    scores grow with the training data."""
    fold_of = np.array([c.fold for c in feats.dataset.clips])
    present = feats.dataset.folds
    if len(present) < 2:
        raise DatasetError(f"{feats.dataset.name}: the study needs at least two folds, only {present} present")
    length, stride = WINDOWS[window]
    results = []
    for fold in folds or present:
        test_ids, train_ids = np.flatnonzero(fold_of == fold), np.flatnonzero(fold_of != fold)
        if train_fraction < 1:  # the share split_validation would hold out is the share kept
            train_ids = split_validation(feats, train_ids, train_fraction, np.random.default_rng([seed, fold, 2]))[1]
        tests = evaluation_sets(feats, test_ids, length, stride, test_mixes, seed * 1000 + fold, overlays.max_offset)
        for init in inits:
            t0 = time.perf_counter()
            o = dataclasses.replace(overlays, pretrain_epochs=overlays.pretrain_epochs if init == "pretrained" else 0)
            trained = train_multilabel(feats, train_ids, window, recipe, o, augment, seed * 1000 + fold, device,
                                       val_fraction, on_epoch and (lambda row, f=fold, i=init: on_epoch(f, i, row)))
            base = {"fold": fold, "n_train": trained.n_train, "n_val": trained.n_val, "n_test": len(test_ids)}
            if trained.single_net is not None:
                r = evaluate(trained.single_net, tests, np.full(len(feats.dataset.classes), 0.5), device)
                results.append({**base, **r, "init": "single-label", "epochs": o.pretrain_epochs,
                                "history": trained.history[:o.pretrain_epochs]})
            r = evaluate(trained.net, tests, trained.thresholds, device)
            results.append({**base, **r, "init": init, "epochs": len(trained.history),
                            # "best_epoch": the key reports have always used for the overlay epoch kept
                            "best_epoch": trained.kept_epoch, "seconds": time.perf_counter() - t0,
                            "thresholds": trained.thresholds.tolist(), "val_map": trained.val["map"],
                            "history": trained.history})
            if on_result:
                on_result(results)
    return results
