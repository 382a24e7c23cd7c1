"""The official protocols: cross-validation over the folds that are present.

Each present fold is the test fold once; the model trains on the other present
folds (a partial UrbanSound8K copy with folds 1 and 2: train on one, test on the other).
With early stopping, validation clips are held out of the training folds by
source recording (``Clip.group``), so no segment, and no clip cut from the same
recording, sits on both sides. Every fold's network is seeded from ``seed`` and
the fold number, so a run repeats exactly on the same machine.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from streamtag.model import PiczakCNN
from train.data.augment import Augment
from train.data.cache import DatasetFeatures
from train.data.segments import SILENCE_DB, WINDOWS, segments_of
from train.data.sources import AudioSource, SegmentSource
from train.evaluate.clips import predict, scores
from train.fit.loop import Recipe, train


def split_validation(feats: DatasetFeatures, clip_ids: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)``: about ``fraction`` of each class's clips held out, whole
    source recordings at a time."""
    clips = feats.dataset.clips
    groups: dict[str, list[int]] = {}
    for i in clip_ids:
        groups.setdefault(clips[i].group, []).append(int(i))
    names = list(groups)
    rng.shuffle(names)
    per_class = np.bincount([clips[i].label for i in clip_ids], minlength=len(feats.dataset.classes))
    taken = np.zeros_like(per_class)
    val = []
    for g in names:
        label = clips[groups[g][0]].label
        if taken[label] < round(fraction * per_class[label]):
            val += groups[g]
            taken[label] += len(groups[g])
    val = np.array(sorted(val), dtype=np.int64)
    return np.setdiff1d(clip_ids, val), val


def normalization(feats: DatasetFeatures, clip_ids, silence_db: float = SILENCE_DB) -> tuple[np.ndarray, np.ndarray]:
    """Per channel and band mean and std ``(2, n_mels, 1)`` over the clips' non-silent frames."""
    parts = [feats.clip_frames(i) for i in clip_ids]
    frames = np.concatenate(parts).astype(np.float64)
    frames = frames[frames[:, 0].max(axis=1) >= silence_db]
    return frames.mean(axis=0)[..., None], np.maximum(frames.std(axis=0)[..., None], 1e-3)


def make_net(feats: DatasetFeatures, window: str, recipe: Recipe) -> PiczakCNN:
    return PiczakCNN(len(feats.dataset.classes), feats.spec.n_mels, WINDOWS[window][0], dense=recipe.dense,
                     batch_norm=recipe.batch_norm, dropout=recipe.dropout, head=recipe.head)


def fit(feats: DatasetFeatures, train_ids: np.ndarray, window: str, recipe: Recipe, augment: Augment,
        seed: int, device: str = "cpu", val_fraction: float = 0.0, watch_ids: dict | None = None,
        on_epoch=None, eval_every: int = 1, train_stride: int | None = None) -> tuple[PiczakCNN, list[dict]]:
    """Train one network on ``train_ids``; returns it with its per-epoch history.

    ``train_stride`` spaces the training windows further apart than Piczak's
    overlap (evaluation keeps it): with the ``shift`` augmentation each epoch
    then cuts them at a new random offset, so the long windows' 90% overlap costs
    a third of the compute per epoch for the same coverage over a few epochs.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    length, stride = WINDOWS[window]
    train_stride = train_stride or stride
    watch_ids = dict(watch_ids or {})
    if recipe.patience:
        train_ids, watch_ids["val"] = split_validation(feats, train_ids, val_fraction or 0.15, rng)
    net = make_net(feats, window, recipe)
    net.set_normalization(*normalization(feats, train_ids))
    if augment.on_audio:
        source = AudioSource(feats, train_ids, length, train_stride, augment, recipe.batch_size)
    else:
        source = SegmentSource(feats, train_ids, length, train_stride, recipe.batch_size)
    labels = feats.dataset.labels
    watch = {name: (feats.frames, segments_of(feats.frames, feats.frame_offsets, ids, length, stride), labels)
             for name, ids in watch_ids.items()}
    history = train(net, source, recipe, rng, device, augment.specaugment, watch, on_epoch, eval_every)
    return net, history


def cross_validate(feats: DatasetFeatures, window: str, recipe: Recipe, augment: Augment, seeds: list[int],
                   device: str = "cpu", val_fraction: float = 0.15, folds: list[int] | None = None,
                   on_epoch=None, on_fold=None, eval_every: int = 1, train_stride: int | None = None) -> list[dict]:
    """One result dict per (seed, test fold): accuracies, decisions and history.
    ``on_fold(result, net)`` sees each fold's trained network."""
    dataset = feats.dataset
    fold_of = np.array([c.fold for c in dataset.clips])
    present = dataset.folds
    folds = folds or present
    if len(present) < 2:
        raise ValueError(f"{dataset.name}: cross-validation needs at least two folds, only {present} present")
    length, stride = WINDOWS[window]
    results = []
    for seed in seeds:
        for fold in folds:
            test_ids = np.flatnonzero(fold_of == fold)
            train_ids = np.flatnonzero(fold_of != fold)
            t0 = time.perf_counter()
            net, history = fit(feats, train_ids, window, recipe, augment, seed * 1000 + fold, device,
                               val_fraction, {"test": test_ids},
                               on_epoch and (lambda row, s=seed, f=fold: on_epoch(s, f, row)), eval_every,
                               train_stride)
            segments = segments_of(feats.frames, feats.frame_offsets, test_ids, length, stride)
            result = scores(predict(net, feats.frames, segments, device), segments.clip, dataset.labels)
            result.update(seed=seed, fold=fold, epochs=len(history), seconds=time.perf_counter() - t0,
                          history=history, n_train=len(train_ids), n_test=len(test_ids))
            results.append(result)
            if on_fold:
                on_fold(result, net)
    return results
