"""``streamtag doctor``: does every compiled dependency load and work here?

A Python environment drifts when a package is released that a loose range lets
in: torchaudio 2.11.1 asks only for ``torch>=2.11``, yet its extension does not
load beside torch 2.11.0 (``undefined symbol``), and the failure surfaced as a
traceback deep inside a benchmark. The install itself is locked
(``requirements.lock``, installed by ``make setup``); this module is the alarm
for an environment that left the lock anyway (a ``pip install`` by hand, a
library user's own resolver). Each check loads one compiled dependency and makes
it do a little real work, and a failure is one line that names the packages and
the fix. ``make setup`` runs it after installing, and a test runs it.

PortAudio is the one optional library: only live capture needs it, so its
absence is a note, not a failure.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import re
from typing import Callable

import numpy as np

FIX = "run `make setup` in the repository (it installs requirements.lock)"


@dataclasses.dataclass(frozen=True)
class Check:
    """One dependency: what loaded (``detail``), or why not and the fix (``problem``).
    ``required`` is False for what only some commands need."""

    name: str
    detail: str
    problem: str | None = None
    required: bool = True

    @property
    def ok(self) -> bool:
        return self.problem is None


def version(package: str) -> str:
    """The installed version of ``package``, or ``"not installed"``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def pinned(package: str) -> str | None:
    """The exact version streamtag's own metadata pins ``package`` to (``==``), if any."""
    try:
        requirements = importlib.metadata.requires("streamtag") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return None
    for requirement in requirements:
        match = re.fullmatch(rf"{re.escape(package)}\s*==\s*([\w.]+)", requirement.split(";")[0].strip())
        if match:
            return match.group(1)
    return None


def _short(exc: BaseException) -> str:
    """The first line of the exception at the root of ``exc``'s chain, with its type: torch's
    "Could not load this library" wraps the loader's "undefined symbol" that says why."""
    while (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"


def check_torch_pair() -> Check:
    """torch and torchaudio must be built for each other: load torchaudio's extension and run
    the two torchaudio functions the project uses (SpecAugment's masks, the mel spectrogram)."""
    import torch

    pair = f"torch {version('torch')} + torchaudio {version('torchaudio')}"
    try:
        import torchaudio

        x = torch.zeros(1, 1, 8, 16)
        torchaudio.functional.mask_along_axis_iid(x, 2, 0.0, 2)
        torchaudio.transforms.MelSpectrogram(sample_rate=22050, n_fft=64, n_mels=4)(torch.zeros(1, 256))
    except Exception as exc:  # an undefined symbol is an OSError, a missing operator a RuntimeError
        want = [f"{p}=={pinned(p)}" for p in ("torch", "torchaudio")
                if pinned(p) and pinned(p) != version(p).split("+")[0]]  # 2.11.0+cu130 is 2.11.0
        fix = f"{FIX}, or pip install {' '.join(want)}" if want else FIX
        return Check("torch + torchaudio", pair,
                     f"torchaudio {version('torchaudio')} does not load beside torch {version('torch')} "
                     f"({_short(exc)}); they must be a matching pair: {fix}")
    return Check("torch + torchaudio", pair)


def check_soxr() -> Check:
    """soxr resamples every input that is not at the model's rate."""
    try:
        import soxr

        soxr.resample(np.zeros(441, dtype=np.float32), 44100, 22050)
    except Exception as exc:
        return Check("soxr", version("soxr"), f"soxr {version('soxr')} does not work ({_short(exc)}): {FIX}")
    return Check("soxr", version("soxr"))


def check_soundfile() -> Check:
    """soundfile's libsndfile must read FLAC (UrbanSound8K) and Ogg Vorbis (ESC-50)."""
    try:
        import soundfile as sf

        for fmt, subtype in (("FLAC", "PCM_16"), ("OGG", "VORBIS")):
            buffer = io.BytesIO()
            sf.write(buffer, np.zeros(2205, dtype=np.float32), 22050, format=fmt, subtype=subtype)
            buffer.seek(0)
            sf.read(buffer)
        detail = f"{version('soundfile')} (libsndfile {sf.__libsndfile_version__})"
    except Exception as exc:
        return Check("soundfile", version("soundfile"),
                     f"soundfile {version('soundfile')} cannot read and write FLAC and Ogg Vorbis ({_short(exc)}): "
                     f"{FIX}, or install a libsndfile with FLAC and Vorbis")
    return Check("soundfile", detail)


def check_sounddevice() -> Check:
    """PortAudio, through sounddevice: live capture (``--mic``, ``live``) needs it, files do not."""
    try:
        import sounddevice

        detail = f"{version('sounddevice')} ({sounddevice.get_portaudio_version()[1]})"
    except OSError as exc:
        return Check("sounddevice", version("sounddevice"),
                     f"PortAudio not found ({_short(exc)}): live capture needs it; install libportaudio2 "
                     f"(make test installs it)", required=False)
    except Exception as exc:
        return Check("sounddevice", version("sounddevice"), f"sounddevice does not load ({_short(exc)}): {FIX}")
    return Check("sounddevice", detail)


def check_numba() -> Check:
    """numba pins the numpy versions it supports: a newer numpy stops it at import."""
    pair = f"numba {version('numba')} + numpy {np.__version__}"
    try:
        import numba

        numba.njit(lambda v: v + 1)(1)
    except Exception as exc:
        return Check("numba + numpy", pair,
                     f"numba {version('numba')} does not work beside numpy {np.__version__} ({_short(exc)}): {FIX}")
    return Check("numba + numpy", pair)


def check_kernel() -> Check:
    """The frontend's kernel, compiled ahead of time for this machine (built now if need be)."""
    from streamtag.features import FeatureSpec
    from streamtag.frontend import Frontend, kernel_is_compiled

    try:
        spec = FeatureSpec()
        frames = Frontend(spec).push(np.zeros(spec.n_fft, dtype=np.float32))
        if frames.shape != (1, 2, spec.n_mels):
            raise RuntimeError(f"one frame's samples gave frames of shape {frames.shape}")
    except Exception as exc:
        return Check("frontend kernel", "", f"the audio frontend does not run ({_short(exc)}): {FIX}")
    how = "compiled ahead of time" if kernel_is_compiled() else "just in time (no build for this machine: see above)"
    return Check("frontend kernel", how)


CHECKS: tuple[Callable[[], Check], ...] = (check_torch_pair, check_soxr, check_soundfile, check_sounddevice,
                                           check_numba, check_kernel)


def run_checks() -> list[Check]:
    return [check() for check in CHECKS]


def report(checks: list[Check]) -> tuple[list[str], int]:
    """Lines to print, and the exit status: 1 when a required check failed."""
    lines = []
    for c in checks:
        if c.ok:
            lines.append(f"ok    {c.name}: {c.detail}")
        else:
            lines.append(f"{'FAIL' if c.required else 'note'}  {c.name}: {c.problem}")
    failed = [c for c in checks if c.required and not c.ok]
    return lines, int(bool(failed))
