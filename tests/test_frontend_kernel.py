"""The frontend's kernel compiled ahead of time: the same frames as numba's just-in-time
kernel, a process that runs it without numba, and the fall-back where it cannot be built."""

import fcntl
import io
import os
import select
import shutil
import subprocess
import sys

import numpy as np

from streamtag import frontend
from streamtag.features import FeatureSpec
from streamtag.frontend import Frontend
from streamtag.frontend_kernel import compile_just_in_time

from conftest import need

SPEC = FeatureSpec()
AUDIO = (np.random.default_rng(3).standard_normal(4 * SPEC.sample_rate) * 0.3).astype(np.float32)


def _ahead_of_time() -> bool:
    return frontend._push_kernel().__module__ == frontend._KERNEL_MODULE


def test_compiled_kernel_gives_the_just_in_time_kernels_frames_bit_for_bit():
    need(_ahead_of_time(), "the frontend's kernel could not be compiled ahead of time here (no C compiler?)")
    compiled, jitted = Frontend(SPEC, history=41), Frontend(SPEC, history=41)
    jitted._kernel = compile_just_in_time()
    assert compiled._kernel is not jitted._kernel
    sizes = np.random.default_rng(4).integers(1, 3000, size=200)
    a, b, pos = [], [], 0
    for n in sizes:
        a.append(compiled.push(AUDIO[pos:pos + n]))
        b.append(jitted.push(AUDIO[pos:pos + n]))
        pos += n
    a, b = np.concatenate(a), np.concatenate(b)
    assert len(a) > 100
    assert a.tobytes() == b.tobytes()
    assert compiled.window(41).tobytes() == jitted.window(41).tobytes()
    assert compiled._state.tobytes() == jitted._state.tobytes()


def _frontend_command(folder) -> list[str]:
    """A child process that writes its frames for ``AUDIO`` (handed over in ``folder``) to standard output,
    then whether it imported numba and llvmlite to standard error."""
    np.save(folder / "audio.npy", AUDIO)
    code = ("import sys, numpy as np\nfrom streamtag.frontend import Frontend\n"
            f"np.save(sys.stdout.buffer, Frontend().push(np.load({str(folder / 'audio.npy')!r})))\n"
            "print('numba' in sys.modules, 'llvmlite' in sys.modules, file=sys.stderr)")
    return [sys.executable, "-c", code]


def _run_frontend(folder, env: dict) -> tuple[subprocess.CompletedProcess, np.ndarray]:
    """:func:`_frontend_command`'s result and frames, under ``env``."""
    result = subprocess.run(_frontend_command(folder), capture_output=True, env={**os.environ, **env})
    return result, (np.load(io.BytesIO(result.stdout)) if result.returncode == 0 else None)


def test_streamtag_tag_runs_without_importing_numba(tmp_path):
    need(_ahead_of_time(), "the frontend's kernel could not be compiled ahead of time here (no C compiler?)")
    import soundfile as sf

    sf.write(tmp_path / "noise.wav", AUDIO, SPEC.sample_rate)
    code = ("import sys\nfrom streamtag.cli import main\n"
            f"code = main(['tag', {str(tmp_path / 'noise.wav')!r}, '-o', {str(tmp_path / 'events.jsonl')!r}])\n"
            "print(code, 'numba' in sys.modules, 'llvmlite' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["0", "False", "False"], result.stderr
    assert "compiling" not in result.stderr  # the module was cached: no second build


def test_without_a_compiler_it_says_why_once_and_runs_just_in_time(tmp_path):
    """``CC=false``: the build fails; the frames are still right; the reason is recorded and
    said once, and later processes go straight to numba's kernel."""
    cache, scratch = tmp_path / "cache", tmp_path / "tmp"
    scratch.mkdir()
    env = {"STREAMTAG_CACHE_DIR": str(cache), "CC": "false", "TMPDIR": str(scratch)}
    first, frames = _run_frontend(tmp_path, env)
    assert first.returncode == 0, first.stderr
    lines = first.stderr.decode().strip().splitlines()
    assert lines[0].startswith("streamtag: compiling the audio frontend")
    assert "just in time" in lines[1] and "no build of it for this machine" in lines[1] and "compiler" in lines[1]
    assert lines[2].split() == ["True", "True"]
    assert frames.tobytes() == Frontend().push(AUDIO).tobytes()
    records = list(cache.glob("frontend-*.failed"))
    assert len(records) == 1 and not list(cache.glob(f"frontend-*{frontend._EXTENSION}"))
    assert not list(scratch.iterdir())  # numba's compiler check leaves its folder in the build's own, deleted
    second, _ = _run_frontend(tmp_path, env)
    assert second.returncode == 0, second.stderr
    assert second.stderr.decode().split() == ["True", "True"]  # no second build, no second notice


def test_an_unwritable_cache_runs_just_in_time_and_says_why(tmp_path):
    result, frames = _run_frontend(tmp_path, {"STREAMTAG_CACHE_DIR": "/proc/streamtag-cannot-be-made"})
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 2 and "just in time" in lines[0] and "streamtag-cannot-be-made" in lines[0], lines
    assert lines[1].split() == ["True", "True"]
    assert frames.tobytes() == Frontend().push(AUDIO).tobytes()


def test_a_process_waiting_on_another_processs_build_says_so_and_loads_its_result(tmp_path):
    """While one process builds (here: this test, holding the build lock), another says it waits,
    then loads what was built, without building again."""
    need(_ahead_of_time(), "the frontend's kernel could not be compiled ahead of time here (no C compiler?)")
    cache = tmp_path / "cache"
    cache.mkdir()
    name = f"frontend-{frontend._kernel_key()}{frontend._EXTENSION}"
    with open(cache / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        child = subprocess.Popen(_frontend_command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env={**os.environ, "STREAMTAG_CACHE_DIR": str(cache)})
        try:
            ready, _, _ = select.select([child.stderr], [], [], 60)
            said = child.stderr.readline().decode() if ready else ""
            assert said.startswith("streamtag: waiting for another streamtag process"), said
            assert child.poll() is None  # still waiting on the lock
            shutil.copy(frontend.kernel_cache_dir() / name, cache / name)  # "the other process's" build
        except BaseException:
            child.kill()
            raise
        fcntl.flock(lock, fcntl.LOCK_UN)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert err.decode().split() == ["False", "False"]  # no build of its own, no notice, no numba
    assert np.load(io.BytesIO(out)).tobytes() == Frontend().push(AUDIO).tobytes()
