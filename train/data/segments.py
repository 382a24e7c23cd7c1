"""Piczak's segments: fixed-length windows cut from each clip's frames.

Short windows are 41 frames (0.95 s) with 50% overlap, long ones 101 frames
(2.35 s) with 90% overlap. A window whose loudest log-mel value is below
``silence_db`` is dropped (Piczak discarded silent segments; here that removes
the digital silence that pads many ESC clips). A clip all of whose windows are
silent keeps its loudest one, so that every clip still gets a decision.

Segments are stored as frame indices into the cached, concatenated frames, not
as copies: :func:`gather` builds a batch's windows when it is needed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

WINDOWS = {"short": (41, 20), "long": (101, 10)}  # name: (frames, stride)
SILENCE_DB = -70.0


@dataclasses.dataclass
class Segments:
    starts: np.ndarray  # (n,) first frame of each window, in the array the windows are gathered from
    clip: np.ndarray  # (n,) which clip each window belongs to
    length: int


def window_starts(frames: np.ndarray, length: int, stride: int, silence_db: float | None = SILENCE_DB,
                  offset: int = 0) -> np.ndarray:
    """Starts of a clip's kept windows (every ``stride`` frames from ``offset``)."""
    starts = np.arange(offset, len(frames) - length + 1, stride)
    if len(starts) == 0:  # the offset pushed the only window out
        starts = np.array([0])
    if silence_db is None:
        return starts
    loud = frames[:, 0].max(axis=1)  # loudest band of each frame
    peak = np.array([loud[s:s + length].max() for s in starts])
    kept = starts[peak >= silence_db]
    return kept if len(kept) else starts[[int(np.argmax(peak))]]


def segments_of(frames: np.ndarray, frame_offsets: np.ndarray, clip_ids, length: int, stride: int,
                silence_db: float | None = SILENCE_DB) -> Segments:
    """Segments of the clips ``clip_ids`` of a concatenated frame array."""
    starts, clips = [], []
    for i in clip_ids:
        lo, hi = frame_offsets[i], frame_offsets[i + 1]
        s = window_starts(frames[lo:hi], length, stride, silence_db) + lo
        starts.append(s)
        clips.append(np.full(len(s), i))
    return Segments(np.concatenate(starts).astype(np.int64), np.concatenate(clips).astype(np.int64), length)


def gather(frames: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """Windows ``(n, 2, n_mels, length)`` float32 starting at ``starts``."""
    view = np.lib.stride_tricks.sliding_window_view(frames, length, axis=0)
    return np.ascontiguousarray(view[starts], dtype=np.float32)
