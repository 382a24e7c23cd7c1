"""Piczak's CNN for log-mel + delta windows, with a multilabel head.

The network follows Piczak (2015), "Environmental sound classification with
convolutional neural networks": a first convolution whose filters span all but
three mel bands (57 x 6 for 60 bands), so they see almost the whole spectrum
and tolerate only a small shift in frequency; a small second convolution along
time; two wide dense layers with dropout. The study that extended it used 1500
dense units with batch norm instead of 5000 without; both are options here.

Two decisions make the network safe to ship on its own:

* it takes the raw frames exactly as :mod:`streamtag.frontend` emits them and
  normalises inside, with per-channel, per-band statistics held as buffers, so
  the statistics travel with the weights and no caller can forget them;
* ``forward`` returns logits (what the training losses want), and
  :meth:`PiczakCNN.probabilities` applies the head's own squashing: sigmoid per
  class for ``"multilabel"`` (several sounds at once, the live case), softmax
  for ``"single"`` (one label per clip, as in the original benchmarks).

The module is TorchScript-compatible; :mod:`streamtag.modelfile` scripts it.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from streamtag.errors import ModelError

HEADS = ("multilabel", "single")
CONV_FILTERS = 80
BAND_MARGIN = 3  # the first filters span n_mels - 3 bands (57 of 60)
CONV1_FRAMES = 6
POOL1 = ((4, 3), (1, 3))  # (kernel, stride)
POOL1_COLUMNS = POOL1[0][1]  # its kernel width, which is also its stride: the pools do not overlap
assert POOL1[0] == (BAND_MARGIN + 1, POOL1_COLUMNS) and POOL1[1] == (1, POOL1_COLUMNS)
CONV2_FRAMES = 3
POOL2 = ((1, 3), (1, 3))


def flat_size(n_mels: int, frames: int) -> int:
    """Number of features after the convolutional part, or 0 if the window is
    too small for it (for 60 bands: 240 at 41 frames, 800 at 101)."""
    rows = BAND_MARGIN + 1  # the first filters span n_mels - BAND_MARGIN bands
    cols = frames - CONV1_FRAMES + 1
    rows = (rows - POOL1[0][0]) // POOL1[1][0] + 1
    cols = (cols - POOL1[0][1]) // POOL1[1][1] + 1
    cols = cols - CONV2_FRAMES + 1
    cols = (cols - POOL2[0][1]) // POOL2[1][1] + 1
    return CONV_FILTERS * rows * cols if rows > 0 and cols > 0 else 0


class PiczakCNN(nn.Module):
    """Input (N, 2, n_mels, frames) float32 raw features; output (N, n_classes) logits."""

    def __init__(self, n_classes: int, n_mels: int = 60, frames: int = 41, dense: int = 1500,
                 batch_norm: bool = True, dropout: float = 0.5, head: str = "multilabel"):
        super().__init__()
        if not (isinstance(n_classes, int) and n_classes >= 1):
            raise ModelError(f"n_classes must be a positive int, got {n_classes!r}")
        if not (isinstance(n_mels, int) and n_mels > BAND_MARGIN):
            raise ModelError(f"n_mels must be an int > {BAND_MARGIN}, got {n_mels!r}")
        if not (isinstance(frames, int) and flat_size(n_mels, frames) > 0):
            raise ModelError(f"frames must be an int long enough for both convolutions (>= 20), got {frames!r}")
        if not (isinstance(dense, int) and dense >= 1):
            raise ModelError(f"dense must be a positive int, got {dense!r}")
        if not (0.0 <= dropout < 1.0):
            raise ModelError(f"dropout must be in [0, 1), got {dropout!r}")
        if head not in HEADS:
            raise ModelError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.n_classes = n_classes
        self.n_mels = n_mels
        self.frames = frames
        self.dense = dense
        self.batch_norm = bool(batch_norm)
        self.dropout = float(dropout)
        self.head = head

        # Identity statistics until training sets real ones.
        self.register_buffer("feature_mean", torch.zeros(2, n_mels, 1))
        self.register_buffer("feature_std", torch.ones(2, n_mels, 1))

        bias = not batch_norm  # a batch norm right after a layer makes its bias redundant
        self.conv1 = nn.Conv2d(2, CONV_FILTERS, (n_mels - BAND_MARGIN, CONV1_FRAMES), bias=bias)
        self.bn1 = nn.BatchNorm2d(CONV_FILTERS) if batch_norm else nn.Identity()
        self.pool1_columns = POOL1_COLUMNS
        self.conv2 = nn.Conv2d(CONV_FILTERS, CONV_FILTERS, (1, CONV2_FRAMES), bias=bias)
        self.bn2 = nn.BatchNorm2d(CONV_FILTERS) if batch_norm else nn.Identity()
        self.pool2 = nn.MaxPool2d(*POOL2)
        self.fc1 = nn.Linear(flat_size(n_mels, frames), dense, bias=bias)
        self.bn3 = nn.BatchNorm1d(dense) if batch_norm else nn.Identity()
        self.fc2 = nn.Linear(dense, dense, bias=bias)
        self.bn4 = nn.BatchNorm1d(dense) if batch_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dense, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.size(1) != 2 or x.size(2) != self.n_mels or x.size(3) != self.frames:
            raise ValueError("expected windows of shape (N, 2, " + str(self.n_mels) + ", "
                             + str(self.frames) + "), got " + str(list(x.shape)))
        return self.classify(self.stem(x))

    @torch.jit.export
    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Normalisation and the first convolution (with its batch norm and ReLU)
        over frames ``(N, 2, n_mels, T)``, ``T >= 6``: ``(N, 80, 4, T - 5)``.

        Column ``t`` depends on frames ``t .. t + 5`` only, so over a stretch of
        overlapping windows the stem is computed once and each window takes its
        ``frames - 5`` columns: the layer that costs most of the network's
        arithmetic (74 % for 41-frame windows, 84 % for 101) is then computed
        once per frame instead of once per window holding the frame.
        """
        x = (x - self.feature_mean) / self.feature_std
        return F.relu(self.bn1(self.conv1(x)))

    @torch.jit.export
    def classify(self, columns: torch.Tensor) -> torch.Tensor:
        """The rest of the network on windows of stem columns ``(N, 80, 4, frames - 5)``: logits.
        Rows already max-pooled, ``(N, 80, 1, frames - 5)``, give the same logits."""
        return self.classify_pooled(self.pool1(columns))

    def pool1(self, columns: torch.Tensor) -> torch.Tensor:
        """Piczak's first max pooling on stem columns: ``(N, 80, 1, (frames - 5) // 3)``.

        It spans all 4 rows of the stem: a max over rows, then over each 3 columns; the same numbers as
        ``nn.MaxPool2d(POOL1)``, which has no fast CPU kernel for this shape (1.5 ms instead of 0.1 for 43
        windows)."""
        x = columns.amax(dim=2, keepdim=True)
        step = self.pool1_columns
        width = x.size(3) // step * step
        return x[:, :, :, :width].reshape(x.size(0), x.size(1), 1, width // step, step).amax(dim=4)

    @torch.jit.export
    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The rest of the network on windows of pooled stem columns (:meth:`pool1`'s output): logits.

        Pooled column ``j`` of a window starting at stem column ``s`` is the max of columns
        ``s + 3j .. s + 3j + 2`` (and of the rows), so over a stream of overlapping windows the pooling is
        taken once per column and each window reads every third pooled column: the engine's scorer does
        that, and this is the part of the network that remains per window."""
        x = self.pool2(F.relu(self.bn2(self.conv2(pooled))))
        x = torch.flatten(x, 1)
        x = self.drop(F.relu(self.bn3(self.fc1(x))))
        x = self.drop(F.relu(self.bn4(self.fc2(x))))
        return self.out(x)

    @torch.jit.export
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits to probabilities: independent sigmoids, or a softmax over classes."""
        if self.head == "single":
            return torch.softmax(logits, dim=1)
        return torch.sigmoid(logits)

    @torch.jit.ignore
    def set_normalization(self, mean, std) -> None:
        """Store the training set's feature statistics; anything that broadcasts
        to (2, n_mels, 1) works: per channel and band, per channel, or scalars."""
        shape = (2, self.n_mels, 1)
        try:
            mean = np.broadcast_to(np.asarray(mean, dtype=np.float32), shape)
            std = np.broadcast_to(np.asarray(std, dtype=np.float32), shape)
        except ValueError:
            raise ModelError(f"normalisation statistics must broadcast to {shape}, got "
                             f"{np.shape(mean)} and {np.shape(std)}") from None
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ModelError("normalisation statistics must be finite, with every std > 0")
        with torch.no_grad():
            self.feature_mean.copy_(torch.from_numpy(mean.copy()))
            self.feature_std.copy_(torch.from_numpy(std.copy()))

    @torch.jit.ignore
    def config(self) -> dict:
        """The constructor arguments: ``PiczakCNN(**net.config())`` rebuilds the shape."""
        return {"n_classes": self.n_classes, "n_mels": self.n_mels, "frames": self.frames,
                "dense": self.dense, "batch_norm": self.batch_norm, "dropout": self.dropout,
                "head": self.head}


def quantize_dense(net: PiczakCNN) -> PiczakCNN:
    """A copy of ``net`` in eval mode whose dense layers run in int8 (dynamic
    quantisation: weights stored as int8, activations quantised per batch).
    CPU only. The dense layers hold almost every weight, so this is where the
    time goes at batch 1; the convolutions stay float."""
    quantized = copy.deepcopy(net).cpu().eval()
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao, still works
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated", DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(quantized, {nn.Linear}, dtype=torch.qint8)
