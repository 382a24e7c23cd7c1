"""Scores for a tagger that may name several sounds at once.

Everything works on a probability matrix ``(N, C)`` and a 0/1 truth matrix of
the same shape, one row per clip (or window), so single-event clips and mixes
are scored by the same code. The study's questions need three kinds of number:

* ranking: are the top ``k`` outputs the ``k`` sounds present (both correct on a
  mix, plain accuracy on a single clip), is at least one of them right, and the
  threshold-free average precision per class (mAP is its mean);
* decisions after per-class thresholds: exact match of the predicted set, how
  often more sounds are claimed than are there (a second sound on a single
  clip), and per-class precision, recall and F1;
* the thresholds themselves, tuned per class on validation data to maximise F1.

Two more tell recognition from masking when a mix goes wrong: per class, how
often a sound present is among the top ``k`` (:func:`found_per_class`), and
whether the mixes whose two clips the network gets right on their own fare
better than the rest (:func:`mixes_by_alone`).
"""

from __future__ import annotations

import numpy as np

GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)  # candidate thresholds


def clip_means(probs: np.ndarray, seg_clip: np.ndarray, n_clips: int) -> np.ndarray:
    """Mean window probability per clip ``(n_clips, C)``: probability voting."""
    sums = np.zeros((n_clips, probs.shape[1]))
    np.add.at(sums, seg_clip, probs)
    return sums / np.maximum(np.bincount(seg_clip, minlength=n_clips), 1)[:, None]


def average_precision(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-class average precision ``(C,)``: the mean precision at the rank of each
    positive; NaN for a class without positives."""
    ap = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        hits = truth[np.argsort(-scores[:, c], kind="stable"), c].astype(bool)
        if hits.any():
            precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            ap[c] = precision[hits].mean()
    return ap


def per_class(pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall and F1 ``(C,)`` of boolean decisions (0 where undefined)."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    tp = (pred & truth).sum(axis=0)
    fp = (pred & ~truth).sum(axis=0)
    fn = (~pred & truth).sum(axis=0)
    return {"precision": tp / np.maximum(tp + fp, 1), "recall": tp / np.maximum(tp + fn, 1),
            "f1": 2 * tp / np.maximum(2 * tp + fp + fn, 1)}


def tune_thresholds(scores: np.ndarray, truth: np.ndarray, grid: np.ndarray = GRID) -> np.ndarray:
    """Per class, the threshold on ``grid`` that maximises F1 (the middle of the
    best plateau, which generalises better than its edge); 0.5 for a class
    without positives."""
    thresholds = np.full(scores.shape[1], 0.5)
    truth = truth.astype(bool)
    for c in range(scores.shape[1]):
        if not truth[:, c].any():
            continue
        pred = scores[:, c, None] >= grid[None, :]
        tp = (pred & truth[:, c, None]).sum(axis=0)
        f1 = 2 * tp / (pred.sum(axis=0) + truth[:, c].sum())
        best = np.flatnonzero(f1 == f1.max())
        thresholds[c] = grid[best[len(best) // 2]]
    return thresholds


def _found(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``(N, C)`` bool: the sounds present that are among each row's top ``k`` outputs (``k``: sounds present)."""
    truth = truth.astype(bool)
    ranked = np.argsort(-probs, axis=1, kind="stable")
    top = np.zeros_like(truth)
    np.put_along_axis(top, ranked, np.arange(probs.shape[1])[None, :] < truth.sum(axis=1)[:, None], axis=1)
    return top & truth


def found_per_class(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per class ``(C,)``: of the clips holding it, the share where it is among the top
    ``k`` outputs (``k``: the clip's number of sounds): recall by ranking, per-class accuracy
    on single clips. NaN for a class no clip holds."""
    held = truth.astype(bool).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(held > 0, _found(probs, truth).sum(axis=0) / held, np.nan)


def mixes_by_alone(mix_probs: np.ndarray, mix_truth: np.ndarray, pairs: np.ndarray,
                   alone_right: np.ndarray) -> dict[str, float]:
    """Both sounds right in mixes (top ``k`` = the sounds present), split by whether the
    network also gets each of the mix's clips right when it plays alone.

    ``pairs`` ``(N, 2)`` indexes each mix's two clips in ``alone_right`` (bool per
    clip: its top output is its class). ``alone_right``: the share of mixes whose
    clips are both right alone; ``all_if_alone_right`` and ``all_otherwise``: the
    share with both sounds right among those and among the rest (NaN for an empty
    group). A low first score with a high ``alone_right`` means the sounds mask
    each other; a low ``alone_right`` means the clips are not recognised at all."""
    both = _found(mix_probs, mix_truth).sum(axis=1) == mix_truth.astype(bool).sum(axis=1)
    right = np.asarray(alone_right, dtype=bool)[np.asarray(pairs)].all(axis=1)

    def share(mask: np.ndarray) -> float:
        return float(both[mask].mean()) if mask.any() else float("nan")

    return {"alone_right": float(right.mean()) if len(right) else float("nan"),
            "all_if_alone_right": share(right), "all_otherwise": share(~right)}


def set_scores(probs: np.ndarray, truth: np.ndarray, thresholds) -> dict[str, float]:
    """Scores of one set of clips, each with ``k`` >= 1 sounds present.

    ``all``: the top ``k`` outputs are exactly the sounds present (accuracy on
    single clips, both correct on mixes); ``one``: at least one of the top ``k``
    is present; ``exact``: the set above threshold is the truth; ``extra``: more
    sounds above threshold than present (on a single clip: a second sound that
    is not there).
    """
    truth = truth.astype(bool)
    k = truth.sum(axis=1)
    found = _found(probs, truth).sum(axis=1)
    pred = probs >= np.asarray(thresholds)[None, :]
    return {"all": float((found == k).mean()), "one": float((found >= 1).mean()),
            "exact": float((pred == truth).all(axis=1).mean()), "extra": float((pred.sum(axis=1) > k).mean()),
            "n": int(len(probs))}
