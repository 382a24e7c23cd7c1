"""Scoring a stream's windows as its frames arrive.

The engine hands a scorer each batch of frames the frontend emits and the
windows that batch completes; the scorer keeps whatever it needs of earlier
frames between calls. :class:`WindowScorer` keeps the last ``window_frames - 1``
frames and scores each window with the model's ``predict``: it works with any
model. :class:`streamtag.modelfile.StemScorer` keeps the first convolution's
output instead, so that each frame's share of that layer is computed once, not
once per window that contains it. Neither knows torch or the engine's clock.
"""

from __future__ import annotations

import numpy as np

from streamtag.errors import ModelError

CHUNK_FRAMES = 1024  # frames taken at a time: bounds the memory of one call, whatever its input


class WindowScorer:
    """Scores windows of ``model.window_frames`` frames of a stream with ``model.predict``.

    Call :meth:`push` with the stream's frames in order; :meth:`reset` starts
    a new stream.
    """

    def __init__(self, model):
        self.model = model
        self.window_frames = int(model.window_frames)
        self.n_mels = int(model.spec.n_mels)
        self.n_classes = len(model.classes)
        self.keep_frames = self.window_frames - 1  # earlier frames a window may still need
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next frame pushed is frame 0."""
        self.frames_seen = 0
        self._tail = np.empty((0, 2, self.n_mels), dtype=np.float32)

    def push(self, frames: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Append ``frames`` ``(n, 2, n_mels)``, the stream's next frames, and return
        the probabilities ``(len(ends), C)`` of the windows whose last frames are
        the stream indices ``ends``.

        Every window asked for must end among the frames of this call (a window
        is scored when its last frame arrives), and ``ends`` must increase.
        """
        frames, ends = self._check(frames, ends)
        out = np.empty((len(ends), self.n_classes), dtype=np.float32)
        done = 0
        for i in range(0, len(frames), CHUNK_FRAMES):
            piece = frames[i:i + CHUNK_FRAMES]
            last = int(np.searchsorted(ends, self.frames_seen + len(piece)))
            out[done:last] = self._push(np.ascontiguousarray(piece, dtype=np.float32), ends[done:last])
            self.frames_seen += len(piece)
            done = last
        return out

    @classmethod
    def push_together(cls, scorers: list, frames: list, ends: list) -> list[np.ndarray]:
        """:meth:`push` for several streams of one model at once (a server's
        streams, each with its own scorer): each scorer takes its own frames and
        returns its own windows' scores, but the network runs once for them all,
        where it is cheapest per window. Each stream's frames here are at most
        ``CHUNK_FRAMES``, which bounds the call's memory. The scores equal each
        scorer's own :meth:`push` up to float rounding (about 1e-6: a matrix
        product's sums may be ordered differently in a batch of another size)."""
        checked = [s._check(f, e) for s, f, e in zip(scorers, frames, ends, strict=True)]
        if any(len(f) > CHUNK_FRAMES for f, _ in checked):
            raise ModelError(f"push_together takes at most {CHUNK_FRAMES} frames per stream; push() takes more")
        scores = cls._push_many(scorers, [np.ascontiguousarray(f, dtype=np.float32) for f, _ in checked],
                                [e for _, e in checked])
        for scorer, (f, _) in zip(scorers, checked):
            scorer.frames_seen += len(f)
        return scores

    @staticmethod
    def _push_many(scorers: list, pieces: list[np.ndarray], ends: list[np.ndarray]) -> list[np.ndarray]:
        windows = [s._windows_of(s._extend(p), len(p), e) for s, p, e in zip(scorers, pieces, ends)]
        sizes = np.cumsum([len(w) for w in windows])[:-1]
        if not sizes.size:
            return []
        return np.split(scorers[0].model.predict(np.concatenate(windows)), sizes)

    def _check(self, frames: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = np.asarray(frames)
        ends = np.asarray(ends, dtype=np.int64)
        if frames.ndim != 3 or frames.shape[1:] != (2, self.n_mels):
            raise ModelError(f"expected frames of shape (n, 2, {self.n_mels}), got {frames.shape}")
        stop = self.frames_seen + len(frames)
        if ends.ndim != 1 or (len(ends) and (
                ends[0] < max(self.frames_seen, self.window_frames - 1) or ends[-1] >= stop
                or (len(ends) > 1 and (np.diff(ends) <= 0).any()))):
            raise ModelError(f"window ends must increase and lie among this call's frames "
                             f"({self.frames_seen}..{stop - 1}) at or after frame {self.window_frames - 1}")
        return frames, ends

    def _extend(self, piece: np.ndarray) -> np.ndarray:
        """The kept frames followed by ``piece``; the newest ``keep_frames`` of them are kept for the next call."""
        span = np.concatenate([self._tail, piece]) if len(self._tail) else piece
        self._tail = span[max(0, len(span) - self.keep_frames):].copy()
        return span

    def _push(self, piece: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Take ``piece``, the next frames; score the windows ending at ``ends``, all among them."""
        windows = self._windows_of(self._extend(piece), len(piece), ends)
        return self.model.predict(windows) if len(ends) else np.empty((0, self.n_classes), dtype=np.float32)

    def _windows_of(self, span: np.ndarray, new: int, ends: np.ndarray) -> np.ndarray:
        """The windows ending at ``ends`` cut from ``span``, whose last ``new`` frames have just arrived."""
        base = self.frames_seen + new - len(span)  # stream index of span[0]
        if not len(ends):
            return np.empty((0, 2, self.n_mels, self.window_frames), dtype=np.float32)
        view = np.lib.stride_tricks.sliding_window_view(span, self.window_frames, axis=0)
        return np.ascontiguousarray(view[ends - (self.window_frames - 1) - base])
