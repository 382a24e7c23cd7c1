"""`streamtag features FILE -o OUT.npy` and the command line's error handling."""

import subprocess
import sys

import numpy as np
import soundfile as sf

from streamtag.audio import load_audio
from streamtag.frontend import compute_features


def run(*args):
    return subprocess.run([sys.executable, "-m", "streamtag", *args], capture_output=True, text=True, timeout=120)


def test_features_writes_the_frames_a_model_sees(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "clip.wav"
    sf.write(path, (rng.standard_normal((44100 * 2, 2)) * 0.1), 44100, subtype="PCM_24")
    out = tmp_path / "frames.npy"
    result = run("features", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    frames = np.load(out)
    assert frames.dtype == np.float32 and frames.shape[1:] == (2, 60)
    np.testing.assert_array_equal(frames, compute_features(load_audio(path)))


def test_features_on_real_clip(tmp_path, us8k_dir):
    clip = next((us8k_dir / "audio" / "fold1").glob("*.flac"))
    out = tmp_path / "real.npy"
    assert run("features", str(clip), "-o", str(out)).returncode == 0
    frames = np.load(out)
    assert frames.shape[0] == 1 + (sf.info(clip).frames - 1024) // 512


def test_bad_input_gives_one_line_and_exit_2(tmp_path):
    text = tmp_path / "x.wav"
    text.write_text("not audio at all")
    for args, message in [
        (("features", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "o.npy")), "no such file"),
        (("features", str(text), "-o", str(tmp_path / "o.npy")), "not a readable audio file"),
        (("features", str(text)), "required: -o"),
    ]:
        result = run(*args)
        assert result.returncode == 2, result
        assert message in result.stderr
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") <= 1 or "usage" in result.stderr


def test_help_answers_without_loading_torch():
    code = "import sys; from streamtag.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules and 'numba' not in sys.modules, 'heavy import at --help'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
