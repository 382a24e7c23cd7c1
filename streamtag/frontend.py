"""The incremental log-mel + delta frontend, and its batch entry points.

:class:`Frontend` takes audio in blocks of any size and emits each frame the
moment its last sample arrives. All per-frame work (window, FFT, mel, dB, delta)
runs inside one numba kernel per :meth:`Frontend.push`
(:mod:`streamtag.frontend_kernel`, with the power spectrum from
:mod:`streamtag.spectrum`), so there is no per-frame Python and no allocation
per frame. This module only builds the kernel's state and loads the kernel
compiled ahead of time, so it imports neither numba nor LLVM. A recording's features are, by
definition, what this frontend emits when fed that recording in one block:
:func:`compute_features` does exactly that, so training and live inference see
identical numbers by construction.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

from streamtag.errors import AudioError
from streamtag.features import FeatureSpec, hann_periodic, mel_filterbank
from streamtag.frontend_layout import (_BUFFER, _EMITTED, _END, _HEADER, _HISTORY, _HOP, _INTS, _KERNEL_MODULE, _NFFT,
                                       _NMELS, _NNZ, _RING, _SLOT, _START, _TWIDDLES, _USED)
from streamtag.spectrum_plan import make_plan

try:
    import fcntl
except ImportError:  # Windows: concurrent first builds each build, and the last rename wins
    fcntl = None

_FLOAT32 = np.dtype(np.float32)
_UNIT_STRIDE = (_FLOAT32.itemsize,)  # the strides of a C-contiguous float32 vector, and of nothing else
_SLAB_FRAMES = 256  # frames per block that push() carves its outputs from
_BUFFER_HOPS = 4  # the sample buffer holds a frame plus this many hops, so it is compacted once per 4 hops


# The kernel (streamtag.frontend_kernel) as this process runs it: an extension module compiled
# ahead of time for this machine, kept in a cache directory under a key of everything the
# machine code depends on, and built on first use in a child process. Loading it costs
# ~0 MB and ~0 s; importing numba and its LLVM to run the kernel just in time would cost
# ~120 MB (a fifth of a live process's memory) and ~1 s of every process's start-up. Where
# the build cannot be made (no C compiler; a numba without pycc), the kernel runs just in
# time instead: the same frames, that memory and start-up more.
_SOURCES = ("frontend.py", "frontend_layout.py", "frontend_kernel.py", "spectrum.py", "spectrum_plan.py")
_EXTENSION = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
_log = logging.getLogger("streamtag")


def kernel_cache_dir() -> Path:
    """Where compiled kernels are kept: ``$STREAMTAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/streamtag``
    (``~/.cache/streamtag``)."""
    if os.environ.get("STREAMTAG_CACHE_DIR"):
        return Path(os.environ["STREAMTAG_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamtag"


def _cpu_fingerprint() -> str:
    """The CPU's model and instruction-set flags: the module is compiled for this CPU's features."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().split("\n\n")[0]
        return "\n".join(line for line in info.splitlines() if line.startswith(("model name", "flags")))
    except OSError:  # not Linux
        return f"{platform.machine()} {platform.processor()} {platform.platform()}"


def _kernel_key() -> str:
    """A digest of what the compiled module depends on: the kernel's sources (its state layout
    included), numba's version, the Python ABI and the CPU."""
    digest = hashlib.sha256()
    here = Path(__file__).parent
    numba = Path(importlib.util.find_spec("numba").origin).parent  # found, not imported
    # numba's version file, not importlib.metadata: importing that costs 60 ms of every start-up
    for path in [here / name for name in _SOURCES] + [numba / "_version.py"]:
        digest.update(path.read_bytes())
    digest.update(f"{_EXTENSION} {_cpu_fingerprint()}".encode())
    return digest.hexdigest()[:16]


def _build(path: Path, failed: Path) -> None:
    """Build the module at ``path`` in a child process; on failure record why in ``failed``.

    One process builds while others wait on a lock (a shell script's parallel jobs on first
    use), then find the module built. The child writes beside ``path`` and the result is
    renamed into place, so no process ever loads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "build.lock", "w") as lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                _log.warning("streamtag: waiting for another streamtag process to finish compiling the audio "
                             "frontend for this machine ...")
                fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() or failed.exists():
            return
        _log.warning("streamtag: compiling the audio frontend for this machine, once (about 20 s) ...")
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        # the child's own temporary folder: pycc leaves its build folder there when linking fails, and
        # numba's compiler check leaves one on every build
        scratch = tempfile.mkdtemp(prefix="streamtag-build-")
        try:
            child = subprocess.run([sys.executable, "-m", "streamtag.frontend_kernel", str(partial)],
                                   capture_output=True, text=True, env={**os.environ, "TMPDIR": scratch})
            if child.returncode == 0:
                os.replace(partial, path)
                return
        finally:  # a failed or interrupted build leaves nothing behind
            partial.unlink(missing_ok=True)
            shutil.rmtree(scratch, ignore_errors=True)
        lines = (child.stderr or child.stdout).strip().splitlines()
        failed.write_text(lines[-1] if lines else f"exit status {child.returncode}")


@functools.cache
def _push_kernel():
    """The compiled :func:`streamtag.frontend_kernel.push_kernel`: the cached extension module's,
    built first if need be, or numba's just-in-time one where that build cannot be made."""
    try:
        key, cache = _kernel_key(), kernel_cache_dir()
        path, failed = cache / f"frontend-{key}{_EXTENSION}", cache / f"frontend-{key}.failed"
        tried = not path.exists() and not failed.exists()
        if tried:
            _build(path, failed)
        if path.exists():
            spec = importlib.util.spec_from_file_location(_KERNEL_MODULE, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.push_kernel
        why = f"{failed.read_text()} (delete {failed} to try again)"
    except (OSError, ImportError, RuntimeError) as e:  # an unwritable cache or no home, a module that does not load
        tried = True
        why = f"{type(e).__name__}: {e}"
    # said once, when the build fails; later processes find the record and say it only at debug level
    _log.log(logging.WARNING if tried else logging.DEBUG,
             "streamtag: running the audio frontend just in time with numba (~120 MB more memory, ~1 s more "
             "start-up), having no build of it for this machine: %s", why)
    from streamtag import frontend_kernel
    return frontend_kernel.compile_just_in_time()


def kernel_is_compiled() -> bool:
    """Whether this process runs the kernel compiled ahead of time, rather than numba's just-in-time one."""
    return getattr(_push_kernel(), "__module__", None) == _KERNEL_MODULE


class Frontend:
    """Streaming log-mel + delta frontend for one :class:`FeatureSpec`.

    ``push(samples)`` accepts any number of samples (already at the spec's sample
    rate, mono, finite) and returns the frames they complete as float32
    ``(n, 2, n_mels)``: channel 0 log-mel in dB, channel 1 its causal delta.
    The newest ``history`` frames stay readable as a model window via
    :meth:`window`.
    """

    def __init__(self, spec: FeatureSpec | None = None, history: int = 101):
        self.spec = spec or FeatureSpec()
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be a positive int, got {history!r}")
        self.history = history
        s = self.spec
        self._n_mels = s.n_mels
        size = s.n_fft + _BUFFER_HOPS * s.hop_length
        fb = mel_filterbank(s)
        # each band as one run of bins, from its first nonzero weight to its last
        nonzero = fb != 0
        has = nonzero.any(axis=1)
        fb_start = np.where(has, nonzero.argmax(axis=1), 0)
        fb_stop = np.where(has, fb.shape[1] - nonzero[:, ::-1].argmax(axis=1), 0)
        fb_ptr = np.concatenate([[0], np.cumsum(fb_stop - fb_start)])
        fb_w = np.concatenate([fb[m, fb_start[m]:fb_stop[m]] for m in range(s.n_mels)])
        plan = make_plan(s.n_fft, hann_periodic(s.n_fft))
        tables = np.concatenate([fb_ptr, fb_start, plan.gather]).astype(np.int64)
        floats = np.concatenate([
            np.zeros((size + 1) // 2), np.zeros(_HISTORY * s.n_mels),  # buf (float32, 2 per word), hist: state
            plan.window, fb_w, [s.amin],
            plan.twiddles, plan.post_twiddles, plan.work,
            np.zeros(s.n_fft // 2 + 1 + 4 * s.n_mels)])  # power, energy, mantissa, logmel, delta: scratch
        ring_words = s.n_mels * 2 * history  # (2 * history, 2, n_mels) float32
        self._state = np.zeros(_HEADER + len(tables) + len(floats) + ring_words)
        self._ints = self._state.view(np.int64)
        header = [0] * _HEADER
        header[_HOP], header[_NFFT], header[_NMELS] = s.hop_length, s.n_fft, s.n_mels
        header[_NNZ], header[_TWIDDLES], header[_BUFFER] = len(fb_w), len(plan.twiddles), size
        header[_INTS], header[_RING] = _HEADER + len(tables), _HEADER + len(tables) + len(floats)
        self._ints[:_HEADER] = header
        self._ints[_HEADER:_HEADER + len(tables)] = tables
        self._state[header[_INTS]:header[_RING]] = floats
        self._ring = self._state[header[_RING]:].view(np.float32).reshape(2 * history, 2, s.n_mels)
        self._slab = np.empty((_SLAB_FRAMES, 2, s.n_mels), dtype=np.float32)
        self._used = 0  # mirror of the kernel's count of the slab's rows handed out
        self._kernel = _push_kernel()

    def reset(self) -> None:
        """Forget all audio: the next sample starts a new stream."""
        ints = self._ints
        ints[_START] = ints[_END] = ints[_EMITTED] = ints[_SLOT] = 0

    @property
    def frames_emitted(self) -> int:
        """Frames produced since the stream started."""
        return int(self._ints[_EMITTED])

    @property
    def samples_pending(self) -> int:
        """Samples received but not yet part of an emitted frame's hop."""
        return int(self._ints[_END] - self._ints[_START])

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed ``samples`` (1-D, any length); return the frames they complete, float32 ``(n, 2, n_mels)``.

        The returned array is the caller's: later pushes never write to it. It is
        a slice of a slab of frames that later pushes carve further: slicing costs
        a third of ``np.empty``, which is a tenth of a hop.
        """
        x = samples
        if type(x) is not np.ndarray or x.dtype is not _FLOAT32 or x.strides != _UNIT_STRIDE:  # not C-contiguous 1-D
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 1:
                raise AudioError(f"Frontend.push takes mono samples as a 1-D array, got shape {x.shape}")
            x = np.ascontiguousarray(x)  # the compiled kernel's signature
        first = self._used
        used = self._used = self._kernel(x, self._state, self._slab)
        if used < 0:  # the slab is full: start a new one, large enough for these frames
            self._slab = np.empty((max(_SLAB_FRAMES, -1 - used), 2, self._n_mels), dtype=np.float32)
            self._ints[_USED] = first = 0
            used = self._used = self._kernel(x, self._state, self._slab)
        return self._slab[first:used]

    def window(self, n_frames: int) -> np.ndarray:
        """The newest ``n_frames`` frames as a model window, float32 ``(2, n_mels, n_frames)``.

        Raises ``ValueError`` if fewer frames have been emitted or the ring is
        smaller than ``n_frames``.
        """
        if not 1 <= n_frames <= self.history:
            raise ValueError(f"window length must be 1..{self.history} (the ring's history), got {n_frames}")
        emitted = int(self._ints[_EMITTED])
        if n_frames > emitted:
            raise ValueError(f"only {emitted} frames emitted, cannot read a window of {n_frames}")
        end = int(self._ints[_SLOT])
        # the ring holds frames one after another: 120 scattered writes per frame in the window's own
        # layout cost the hop 0.3-0.4 us, and the transposing copy costs a read 0.7 us
        return self._ring[end - n_frames:end].transpose(1, 2, 0).copy()


def compute_features(audio: np.ndarray, spec: FeatureSpec | None = None) -> np.ndarray:
    """All frames of a recording, float32 ``(frames, 2, n_mels)``: what a
    :class:`Frontend` emits when fed the whole recording."""
    return Frontend(spec, history=1).push(audio)


def cut_windows(frames: np.ndarray, length: int, stride: int,
                silence_db: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut model windows from a recording's frames.

    Returns ``(windows, starts)``: float32 ``(n, 2, n_mels, length)`` and the
    first frame index of each window. Windows start at multiples of ``stride``;
    a trailing partial window is not produced. With ``silence_db`` set, windows
    whose loudest log-mel value is below it are dropped (Piczak's rule of
    discarding silent segments).
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[1] != 2:
        raise ValueError(f"frames must have shape (frames, 2, n_mels), got {frames.shape}")
    if not isinstance(length, (int, np.integer)) or length < 1:
        raise ValueError(f"window length must be a positive int, got {length!r}")
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    n_mels = frames.shape[2]
    if frames.shape[0] < length:
        return np.empty((0, 2, n_mels, length), dtype=np.float32), np.empty(0, dtype=np.int64)
    starts = np.arange(0, frames.shape[0] - length + 1, stride, dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(frames, length, axis=0)[starts]  # (n, 2, n_mels, length)
    if silence_db is not None:
        starts = starts[view[:, 0].max(axis=(1, 2)) >= silence_db]
        view = np.lib.stride_tricks.sliding_window_view(frames, length, axis=0)[starts]
    return np.ascontiguousarray(view), starts
