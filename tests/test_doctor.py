"""The environment check: every compiled dependency loads here, and a drifted one
is named in one line with its fix."""

from __future__ import annotations

import importlib.abc
import subprocess
import sys

import pytest

from conftest import IN_CI
from streamtag import doctor


def test_every_compiled_dependency_loads_and_works():
    checks = {c.name: c for c in doctor.run_checks()}
    assert set(checks) == {"torch + torchaudio", "soxr", "soundfile", "sounddevice", "numba + numpy",
                           "frontend kernel"}
    failed = [f"{c.name}: {c.problem}" for c in checks.values() if c.required and not c.ok]
    assert not failed
    if IN_CI:  # CI installs PortAudio (make test's Debian packages), so live capture must work there
        assert checks["sounddevice"].ok, checks["sounddevice"].problem
    assert checks["frontend kernel"].detail == "compiled ahead of time"  # make test installs a C compiler
    # the lock pins torch and torchaudio as a pair, and this environment holds exactly that pair
    assert doctor.pinned("torch") == doctor.version("torch").split("+")[0]
    assert doctor.pinned("torchaudio") == doctor.version("torchaudio").split("+")[0]


class _BrokenTorchaudio(importlib.abc.MetaPathFinder):
    """Makes ``import torchaudio`` fail as torchaudio 2.11.1's extension does beside torch 2.11.0."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchaudio" or name.startswith("torchaudio."):
            raise OSError("/venv/lib/python3.11/site-packages/torchaudio/lib/libtorchaudio.abi3.so: "
                          "undefined symbol: torch_exception_get_what_without_backtrace")
        return None


def test_a_torchaudio_that_does_not_fit_torch_is_one_line_naming_the_pair_and_the_fix(monkeypatch):
    for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_BrokenTorchaudio(), *sys.meta_path])
    real_version = doctor.version
    monkeypatch.setattr(doctor, "version", lambda p: "2.11.1" if p == "torchaudio" else real_version(p))
    check = doctor.check_torch_pair()
    assert not check.ok and check.required
    assert "\n" not in check.problem
    assert check.problem.startswith(f"torchaudio 2.11.1 does not load beside torch {real_version('torch')} "
                                    "(OSError: ")
    assert "undefined symbol: torch_exception_get_what_without_backtrace" in check.problem
    assert check.problem.endswith(f"make setup` in the repository (it installs requirements.lock), "
                                  f"or pip install torchaudio=={doctor.pinned('torchaudio')}")
    lines, status = doctor.report([check, doctor.Check("soxr", "1.0")])
    assert status == 1 and lines[0].startswith("FAIL  torch + torchaudio: torchaudio 2.11.1") and lines[1] == "ok    soxr: 1.0"


def test_missing_portaudio_is_a_note_not_a_failure():
    lines, status = doctor.report([doctor.Check("sounddevice", "0.5", "PortAudio not found", required=False)])
    assert status == 0 and lines == ["note  sounddevice: PortAudio not found"]


def test_streamtag_doctor_command_exits_zero_here():
    done = subprocess.run([sys.executable, "-m", "streamtag", "doctor"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok    torch + torchaudio: torch " in done.stdout and "FAIL" not in done.stdout


@pytest.mark.parametrize("package", ["torch", "torchaudio"])
def test_pyproject_pins_the_pair_exactly(package):
    assert doctor.pinned(package) is not None
