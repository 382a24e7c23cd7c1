"""From segment probabilities to clip decisions, and the accuracies reported.

A clip's decision is either the class of the highest mean segment probability
(probability voting) or the class most segments chose (majority voting, ties
broken by mean probability). Both come from the same forward pass.
"""

from __future__ import annotations

import numpy as np
import torch

from train.data.segments import Segments, gather


@torch.no_grad()
def predict(net: torch.nn.Module, frames: np.ndarray, segments: Segments, device: str = "cpu",
            batch_size: int = 512) -> np.ndarray:
    """Probabilities ``(n_segments, C)`` of the segments, in eval mode."""
    was_training = net.training
    net.eval()
    out = []
    for lo in range(0, len(segments.starts), batch_size):
        x = torch.from_numpy(gather(frames, segments.starts[lo:lo + batch_size], segments.length)).to(device)
        out.append(net.probabilities(net(x)).cpu().numpy())
    net.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, net.n_classes), np.float32)


def clip_votes(probs: np.ndarray, seg_clip: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(clips, prob_vote, majority_vote)``: the distinct clip ids, sorted, and
    each one's decision by either rule."""
    clips, inverse = np.unique(seg_clip, return_inverse=True)
    n, c = len(clips), probs.shape[1]
    mean = np.zeros((n, c))
    np.add.at(mean, inverse, probs)
    mean /= np.bincount(inverse, minlength=n)[:, None]
    votes = np.zeros((n, c))
    np.add.at(votes, (inverse, probs.argmax(axis=1)), 1.0)
    majority = (votes + 1e-6 * mean).argmax(axis=1)  # ties go to the higher mean probability
    return clips, mean.argmax(axis=1), majority


def scores(probs: np.ndarray, seg_clip: np.ndarray, labels: np.ndarray) -> dict:
    """Segment accuracy and clip accuracy by both votes; ``labels`` indexed by clip id."""
    clips, prob_vote, majority = clip_votes(probs, seg_clip)
    truth = labels[clips]
    return {"segment": float((probs.argmax(axis=1) == labels[seg_clip]).mean()),
            "prob": float((prob_vote == truth).mean()),
            "majority": float((majority == truth).mean()),
            "clips": clips, "truth": truth, "pred_prob": prob_vote, "pred_majority": majority}


def confusion(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``m[i, j]`` = clips of class i decided as j."""
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (truth, pred), 1)
    return m
