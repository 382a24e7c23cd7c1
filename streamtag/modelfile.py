"""One self-describing file per trained model, and the inference API around it.

A model file is a TorchScript archive (the zip ``torch.jit.save`` writes) whose
network takes raw feature windows and returns probabilities, so it runs
without this package's Python code. Everything needed to use it correctly
travels inside, as the extra file ``streamtag.json``::

    {
      "format": "streamtag-model",    # says the archive is ours
      "schema": 1,                    # bumped on any incompatible change
      "classes": ["air_conditioner", ...],
      "spec": {...},                  # FeatureSpec.to_dict(): how frames are made
      "window_frames": 41,            # frames per window the network takes
      "hop_frames": 10,               # default hop between windows when streaming
      "score_at": 0.5,                # optional: where in the window the time a score describes lies
                                      # (0 its first sample, 1 its last; 0.5, the centre, when absent)
      "head": "multilabel",           # or "single" (softmax)
      "thresholds": [0.5, ...],       # per-class decision thresholds
      "architecture": {...},          # PiczakCNN.config()
      "quantized": false,             # dense layers in int8 (CPU only)
      "provenance": {...},            # dataset, folds, epochs, metrics, versions, date
      "decoding": {...}               # optional: Decoding.to_dict(), tuned on validation scenes
    }

The normalisation statistics are the network's ``feature_mean`` and
``feature_std`` buffers, stored with the weights. :func:`load_model` checks the
zip, the metadata and that the network's output matches the class list, so a
truncated, foreign or outdated file fails with one clear
:class:`~streamtag.errors.ModelFileError` instead of wrong predictions later.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import streamtag
from streamtag.errors import ModelError, ModelFileError, ModelNotFoundError, SpecError
from streamtag.events import Decoding
from streamtag.features import FeatureSpec
from streamtag.model import CONV1_FRAMES, HEADS, POOL1_COLUMNS, PiczakCNN, quantize_dense
from streamtag.scorer import WindowScorer

FORMAT = "streamtag-model"
SCHEMA = 1
METADATA_NAME = "streamtag.json"
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.pt"
BATCH = 256  # windows per forward pass in predict(): bounded memory, most of the batching gain


@contextlib.contextmanager
def _torchscript():
    """TorchScript is deprecated in torch 2.11 in favour of torch.export, but it
    is still the one format that runs from a single file without our Python
    code; keep its deprecation notice out of every save and load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        yield


_STEM_METHODS = ("stem", "classify_pooled")  # files saved before these existed score window by window


class _Probabilities(nn.Module):
    """What the file holds: the network with its head's squashing applied."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.probabilities(self.net(x))

    @torch.jit.export
    def stem(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net.stem(frames)

    @torch.jit.export
    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net.probabilities(self.net.classify_pooled(pooled))


def _scripted(net: PiczakCNN, quantize: bool) -> torch.jit.ScriptModule:
    """What a model file holds: a copy of ``net`` in eval mode, its dense layers in
    int8 if ``quantize``, with its head's squashing, compiled by TorchScript."""
    frozen = quantize_dense(net) if quantize else copy.deepcopy(net).cpu().eval()
    with _torchscript():
        return torch.jit.script(_Probabilities(frozen).eval())


def save_model(path, net: PiczakCNN, *, classes, spec: FeatureSpec, window_frames: int, hop_frames: int,
               thresholds=None, provenance: dict | None = None, quantize: bool = False,
               decoding: Decoding | None = None, score_at: float = 0.5) -> Path:
    """Write ``net`` (in eval mode; the caller's module is left untouched) and its
    metadata to one file. ``quantize`` stores the dense layers in int8 (CPU only).
    ``decoding``: how the engine turns this model's scores into events by default.
    ``score_at``: the moment a window's score describes, as a share of the window
    (0.5: its centre; near 1: its end, a score with no look-ahead), the part of the
    window the network was trained to describe, so that events open where the
    sounds are.
    ``provenance`` gets ``streamtag_version``, ``torch_version`` and ``saved_at``
    added when missing."""
    if not isinstance(net, PiczakCNN):
        raise ModelError(f"save_model needs a PiczakCNN, got {type(net).__name__}")
    classes = list(classes)
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise ModelError("classes must be distinct non-empty strings")
    if len(classes) != net.n_classes:
        raise ModelError(f"{len(classes)} class names for a network with {net.n_classes} outputs")
    if not isinstance(spec, FeatureSpec):
        raise ModelError(f"spec must be a FeatureSpec, got {type(spec).__name__}")
    if spec.n_mels != net.n_mels:
        raise ModelError(f"spec has {spec.n_mels} mel bands but the network takes {net.n_mels}")
    if window_frames != net.frames:
        raise ModelError(f"window_frames={window_frames} but the network takes {net.frames} frames")
    if not (isinstance(hop_frames, int) and hop_frames >= 1):
        raise ModelError(f"hop_frames must be a positive int, got {hop_frames!r}")
    if not _is_share(score_at):
        raise ModelError(f"score_at must be a number in [0, 1], got {score_at!r}")
    thresholds = _check_thresholds(np.full(len(classes), 0.5) if thresholds is None else thresholds, len(classes),
                                   ModelError)
    provenance = dict(provenance or {})
    provenance.setdefault("streamtag_version", streamtag.__version__)
    provenance.setdefault("torch_version", torch.__version__)
    provenance.setdefault("saved_at", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    metadata = {
        "format": FORMAT,
        "schema": SCHEMA,
        "classes": classes,
        "spec": spec.to_dict(),
        "window_frames": int(window_frames),
        "hop_frames": int(hop_frames),
        "score_at": float(score_at),
        "head": net.head,
        "thresholds": [float(t) for t in thresholds],
        "architecture": net.config(),
        "quantized": bool(quantize),
        "provenance": provenance,
    }
    if decoding is not None:
        try:
            decoding.min_durations(len(classes))
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        metadata["decoding"] = decoding.to_dict()
    try:
        text = json.dumps(metadata, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"provenance must be plain JSON values (no NaN): {exc}") from None

    scripted = _scripted(net, quantize)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        with _torchscript():
            torch.jit.save(scripted, str(partial), _extra_files={METADATA_NAME: text})
        os.replace(partial, path)  # never leave a half-written model under the real name
    except (OSError, RuntimeError) as exc:
        partial.unlink(missing_ok=True)
        raise ModelFileError(f"cannot write model file {path}: {exc}") from None
    return path


class TaggerModel:
    """A loaded model file: metadata as attributes, :meth:`predict` for windows."""

    def __init__(self, module: torch.jit.ScriptModule, metadata: dict, name: str, device: str):
        net = module.net
        self._normalization = (net.feature_mean.cpu().numpy(), net.feature_std.cpu().numpy())
        self._shares_stem = all(hasattr(module, m) for m in _STEM_METHODS)
        self.module = _for_inference(module, device)
        self.metadata = metadata
        self.name = name
        self.device = device
        self.classes: list[str] = list(metadata["classes"])
        self.spec = FeatureSpec.from_dict(metadata["spec"])
        self.window_frames: int = metadata["window_frames"]
        self.hop_frames: int = metadata["hop_frames"]
        self.score_at: float = float(metadata.get("score_at", 0.5))  # files from before it: the centre
        self.thresholds = np.asarray(metadata["thresholds"], dtype=np.float32)
        self.head: str = metadata["head"]
        self.provenance: dict = metadata["provenance"]
        self.decoding = Decoding.from_dict(metadata["decoding"]) if "decoding" in metadata else None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one window: (2, n_mels, window_frames)."""
        return (2, self.spec.n_mels, self.window_frames)

    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """The (2, n_mels, 1) feature mean and std stored with the weights."""
        mean, std = self._normalization
        return mean.copy(), std.copy()

    def predict(self, windows: np.ndarray, batch_size: int = BATCH) -> np.ndarray:
        """Probabilities (N, C) float32 for windows (N, 2, n_mels, window_frames)."""
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ModelError(f"batch_size must be a positive int, got {batch_size!r}")
        windows = np.asarray(windows)
        if windows.ndim != 4 or windows.shape[1:] != self.input_shape:
            raise ModelError(f"expected windows of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {windows.shape}")
        if not np.issubdtype(windows.dtype, np.floating):
            raise ModelError(f"windows must be floating point, got {windows.dtype}")
        if not np.isfinite(windows).all():
            raise ModelError("windows hold NaN or infinite values")
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        out = np.empty((windows.shape[0], len(self.classes)), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, windows.shape[0], batch_size):
                batch = torch.from_numpy(windows[i:i + batch_size]).to(self.device)
                out[i:i + batch_size] = self.module(batch).float().cpu().numpy()
        return out

    def scorer(self) -> WindowScorer:
        """A scorer for a stream of frames (:mod:`streamtag.scorer`): one that
        computes and pools each frame's first-layer output once, or, for model
        files saved before the network exported ``stem`` and ``classify_pooled``,
        one that scores window by window."""
        return StemScorer(self) if self._shares_stem else WindowScorer(self)

    def __repr__(self) -> str:
        return (f"TaggerModel({self.name!r}, {len(self.classes)} classes, {self.head}, "
                f"{self.window_frames} frames, device={self.device!r})")


class StemScorer(WindowScorer):
    """Scores a stream's windows from the stem's columns (``PiczakCNN.stem``),
    each computed and pooled once, when its last frame arrives.

    Column ``t`` of the first convolution depends on frames ``t .. t + 5``
    only, and the first pooling of a window's columns is a max over each 3 of
    them, so the scores equal ``predict`` on the same windows (to float
    rounding; in practice bit for bit) while each window costs only
    ``classify_pooled``: live at a hop of one frame, one new column per window
    instead of all of them (a 41-frame window has 36), and for files no column
    is computed twice across the engine's reads. Between calls it keeps the
    last 5 frames and the last window's columns but one, max-pooled over the
    stem's rows, as a numpy array: the work per stream between the network's
    calls is a few numpy operations of about a microsecond each, where torch's
    cost 5-10 (a server scoring hundreds of streams per tick does it per stream).
    """

    def __init__(self, model: TaggerModel):
        super().__init__(model)
        self.keep_frames = CONV1_FRAMES - 1
        self._width = self.window_frames - CONV1_FRAMES + 1  # stem columns per window
        self._pooled = self._width // POOL1_COLUMNS  # pooled columns per window
        self._module, self._device = model.module, model.device

    def reset(self) -> None:
        super().reset()
        self._columns = None  # (80, k): the stem of frames frames_seen - 5 - k .. frames_seen - 6, rows pooled

    def _push(self, piece: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return self._push_many([self], [piece], [ends])[0]

    @staticmethod
    def _push_many(scorers: list, pieces: list[np.ndarray], ends: list[np.ndarray]) -> list[np.ndarray]:
        """Each scorer's new stem columns from one stem call over all their frames, the streams' spans
        laid end to end (a column depends on its 6 frames only, so the 5 columns that straddle two streams
        are dropped and no other mixes them), then every stream's windows in one ``classify_pooled`` call
        per ``BATCH``."""
        first = scorers[0]
        module, device = first._module, first._device
        for piece in pieces:
            if not np.isfinite(piece).all():
                raise ModelError("frames hold NaN or infinite values")
        spans = [s._extend(p) for s, p in zip(scorers, pieces)]
        with torch.inference_mode():
            grow = [i for i, span in enumerate(spans) if len(span) >= CONV1_FRAMES]
            if grow:
                joined = spans[grow[0]] if len(grow) == 1 else np.concatenate([spans[i] for i in grow])
                stretch = torch.from_numpy(np.ascontiguousarray(joined.transpose(1, 2, 0)))[None]
                if device != "cpu":
                    stretch = stretch.to(device)
                # the first pooling's max over the stem's 4 rows, the same for every window holding the column:
                # taken once here, it shrinks what is kept fourfold
                new = module.stem(stretch)[0].amax(dim=1)
                new = (new if device == "cpu" else new.float().cpu()).numpy()
                at = 0
                for i in grow:
                    scorers[i]._add_columns(new[:, at:at + len(spans[i]) - CONV1_FRAMES + 1])
                    at += len(spans[i])
            windows = [s._window_columns(len(p), e) for s, p, e in zip(scorers, pieces, ends)]
            sizes = [len(w) for w in windows]
            out = np.empty((sum(sizes), first.n_classes), dtype=np.float32)
            if len(out):
                held = [w for w in windows if len(w)]
                columns = np.concatenate(held) if len(held) > 1 else held[0]  # (n, 80, span)
                # the first pooling's max over each 3 columns: exact, so the network's own numbers, and taken
                # for every stream's windows at once
                pooled = columns.reshape(len(out), columns.shape[1], first._pooled, POOL1_COLUMNS).max(axis=3)
                together = torch.from_numpy(pooled)[:, :, None]
                if device != "cpu":
                    together = together.to(device)
                for i in range(0, len(out), BATCH):
                    scores = module.classify_pooled(together[i:i + BATCH])
                    out[i:i + BATCH] = (scores if device == "cpu" else scores.float().cpu()).numpy()
        for scorer in scorers:
            scorer._trim()
        return np.split(out, np.cumsum(sizes)[:-1])

    def _add_columns(self, new: np.ndarray) -> None:
        self._columns = new if self._columns is None else np.concatenate([self._columns, new], axis=1)

    def _window_columns(self, new: int, ends: np.ndarray) -> np.ndarray:
        """``(n, 80, 3 * (width // 3))``: the stem columns of the windows ending at ``ends`` after a
        piece of ``new`` frames (a view of the kept columns where it can be)."""
        span = POOL1_COLUMNS * self._pooled
        if not len(ends):
            return np.empty((0, 0, span), dtype=np.float32)
        # the column of frame f sits at f - first; a window ending at frame e starts at e - window + 1
        first = self.frames_seen + new - (CONV1_FRAMES - 1) - self._columns.shape[1]
        starts = ends - (self.window_frames - 1) - first
        if len(starts) == 1:
            s = int(starts[0])
            return self._columns[None, :, s:s + span]
        view = np.lib.stride_tricks.sliding_window_view(self._columns, span, axis=1)[:, starts]  # (80, n, span)
        return view.transpose(1, 0, 2)

    def _trim(self) -> None:
        if self._columns is not None:
            self._columns = self._columns[:, -(self._width - 1):]  # what a later window can still need


def _for_inference(module: torch.jit.ScriptModule, device: str) -> torch.jit.ScriptModule:
    """On the CPU, the module frozen and optimised for inference: batch norms
    folded into the layers before them and weights prepacked for oneDNN, which
    measured 1.0 ms instead of 1.7 per window at batch 1 and a quarter less
    time per window at batch 256 (outputs equal to 1e-6). On CUDA the module as
    saved, with cuDNN's convolutions held to full float32: by default they may
    use TF32, which on an H200 moved batch-1 probabilities by up to 3e-4 from
    the CPU's and flipped 0.03 % of decisions (2e-6 and none in full float32).
    The setting is process-wide; a window costs the same either way, the GPU
    being bound by kernel launches at this size."""
    if device != "cpu":
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        return module
    methods = [m for m in _STEM_METHODS if hasattr(module, m)]  # preserved through freezing
    with _torchscript():
        frozen = torch.jit.freeze(module.eval(), preserved_attrs=methods)
        optimized = torch.jit.optimize_for_inference(frozen, other_methods=methods)
    # optimize_for_inference leaves each dense layer's weights in every method's graph twice: as saved, which
    # nothing reads any more, and transposed for the matrix product that replaced the layer. Dropping the unread
    # constants halves what the bundled model holds (53 -> 26 MB; a dense-5000 model's 300 -> 200 MB).
    for name in ("forward", *methods):
        torch._C._jit_pass_dce(getattr(optimized, name).graph)
    return optimized


def load_model(path=None, device: str | None = None, int8: bool = False) -> TaggerModel:
    """Load and check a model file (``None``: the model bundled with streamtag)
    onto ``device`` (default: "cuda" when available, else "cpu"), and warm it up
    so the first real window is not the slow one. ``int8`` runs the dense layers
    in int8 (dynamic quantisation, CPU only): they hold almost every weight, so a
    window at batch 1 reads a quarter of the bytes (see the model benchmark for
    the speed and the change in probabilities). Activations are quantised per
    batch, so an int8 window's scores also depend a little on its batch."""
    if path is None:
        if not DEFAULT_MODEL.is_file():
            raise ModelNotFoundError("no default model is bundled with this streamtag yet; pass --model PATH")
        path, name = DEFAULT_MODEL, "default"
    else:
        path = Path(path)
        name = path.stem
    metadata = read_metadata(path)
    if (metadata["quantized"] or int8) and device is None:
        device = "cpu"  # int8 kernels exist for the CPU only
    device = _pick_device(device)
    if metadata["quantized"] and device != "cpu":
        raise ModelFileError(f"{path} has int8 dense layers, which run on the CPU only; use device 'cpu'")
    if int8 and device != "cpu":
        raise ModelError(f"int8 dense layers run on the CPU only, not on {device!r}")
    try:
        with _torchscript():
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch raises RuntimeError and friends with multi-line C++ messages
        raise ModelFileError(f"{path} is corrupt: TorchScript cannot load it ({_first_line(exc)})") from None
    module.eval()
    if int8 and not metadata["quantized"]:
        module = _quantized(module, metadata, path)
        metadata = {**metadata, "quantized": True}
    model = TaggerModel(module, metadata, name, device)
    window = torch.zeros((1, *model.input_shape), device=device)
    try:
        with torch.inference_mode():
            for _ in range(3):  # the profiling executor optimises after the first runs
                probs = module(window)
    except Exception as exc:
        raise ModelFileError(f"{path}: the network fails on a {model.input_shape} window "
                             f"({_first_line(exc)})") from None
    if tuple(probs.shape) != (1, len(model.classes)):
        raise ModelFileError(f"{path}: the network gives {probs.shape[-1]} outputs for {len(model.classes)} classes")
    return model


def _quantized(module: torch.jit.ScriptModule, metadata: dict, path: Path) -> torch.jit.ScriptModule:
    """The file's network rebuilt from its weights with int8 dense layers, as
    ``save_model(..., quantize=True)`` would have written it."""
    net = PiczakCNN(**metadata["architecture"])
    try:
        net.load_state_dict(module.net.state_dict())
    except (AttributeError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: cannot rebuild the network to run it in int8 ({_first_line(exc)})") from None
    return _scripted(net, quantize=True)


def load_network(path) -> PiczakCNN:
    """The trainable :class:`PiczakCNN` inside a model file (float weights and normalisation), for
    training or tuning it further; a file with int8 dense layers has none to give."""
    path = Path(path)
    meta = read_metadata(path)
    if meta["quantized"]:
        raise ModelFileError(f"{path}: its dense layers are int8; save the float model to train or tune it")
    net = PiczakCNN(**meta["architecture"])
    with _torchscript():
        module = torch.jit.load(str(path), map_location="cpu")
    net.load_state_dict(module.net.state_dict())
    return net.eval()


def read_metadata(path) -> dict:
    """The checked ``streamtag.json`` of a model file, without loading the network."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"not a model file: {path} is a directory or device")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/extra/" + METADATA_NAME)]
            if not names:
                raise ModelFileError(f"{path} is a TorchScript or zip file but not a streamtag model "
                                     f"(no {METADATA_NAME} inside)")
            broken = archive.testzip()  # CRC of every member: catches damage inside the weights too
            if broken is not None:
                raise ModelFileError(f"{path} is corrupt: {broken} fails its checksum")
            text = archive.read(names[0]).decode("utf-8")
    except zipfile.BadZipFile:
        raise ModelFileError(f"{path} is not a streamtag model file, or it is truncated "
                             "(not a complete TorchScript zip archive)") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc}") from None
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: {METADATA_NAME} is not valid JSON ({exc})") from None
    _check_metadata(metadata, path)
    return metadata


def _check_metadata(meta, path: Path) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ModelFileError(f"{path}: bad metadata: {what}")

    need(isinstance(meta, dict) and meta.get("format") == FORMAT, f"format is not {FORMAT!r}")
    schema = meta.get("schema")
    if schema != SCHEMA:
        newer = isinstance(schema, int) and schema > SCHEMA
        raise ModelFileError(f"{path}: model file schema {schema!r}, but this streamtag reads schema {SCHEMA}"
                             + ("; upgrade streamtag" if newer else ""))
    fields = {"classes": list, "spec": dict, "window_frames": int, "hop_frames": int, "head": str,
              "thresholds": list, "architecture": dict, "quantized": bool, "provenance": dict}
    for key, kind in fields.items():
        need(isinstance(meta.get(key), kind), f"{key!r} missing or not a {kind.__name__}")
    classes = meta["classes"]
    need(len(classes) >= 1 and all(isinstance(c, str) and c for c in classes), "classes must be non-empty strings")
    need(meta["head"] in HEADS, f"head {meta['head']!r} is not one of {', '.join(HEADS)}")
    need(meta["window_frames"] >= 1 and meta["hop_frames"] >= 1, "window_frames and hop_frames must be positive")
    need(_is_share(meta.get("score_at", 0.5)), "score_at must be a number in [0, 1]")
    try:
        spec = FeatureSpec.from_dict(meta["spec"])
    except (SpecError, TypeError) as exc:
        raise ModelFileError(f"{path}: bad metadata: {exc}") from None
    need(meta["architecture"].get("n_mels") == spec.n_mels, "architecture and spec disagree on n_mels")
    _check_thresholds(meta["thresholds"], len(classes), lambda m: ModelFileError(f"{path}: bad metadata: {m}"))
    if "decoding" in meta:
        try:
            Decoding.from_dict(meta["decoding"]).min_durations(len(classes))
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: bad metadata: decoding: {exc}") from None


def _is_share(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


def _check_thresholds(values, n: int, error) -> np.ndarray:
    try:
        t = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise error("thresholds must be numbers") from None
    if t.shape != (n,):
        raise error(f"need {n} thresholds, one per class, got shape {t.shape}")
    if not (np.isfinite(t).all() and (t >= 0).all() and (t <= 1).all()):
        raise error("thresholds must lie in [0, 1]")
    return t


def _pick_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available")
    if kind not in ("cpu", "cuda"):
        raise ModelError(f"unsupported device {device!r}; use 'cpu' or 'cuda'")
    return str(device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
