"""The frontend benchmark runs, and its baselines compute the same window as the frontend."""

import numpy as np
import pytest

from benchmarks.frontend import SPEC, _librosa_recompute, _torchaudio_recompute, run
from streamtag.frontend import Frontend


@pytest.mark.parametrize("make", [_torchaudio_recompute, _librosa_recompute])
@pytest.mark.parametrize("frames", [41, 101])
def test_baselines_compute_the_frontends_window(make, frames):
    audio = (np.random.default_rng(0).standard_normal(6 * SPEC.sample_rate) * 0.1).astype(np.float32)
    frontend = Frontend(SPEC)
    emitted = frontend.push(audio)
    audio = audio[: (len(emitted) - 1) * SPEC.hop_length + SPEC.n_fft]  # end on the newest frame's last sample
    np.testing.assert_allclose(make(frames)(audio), frontend.window(frames), atol=1e-3)


def test_quick_run_reports_every_figure():
    result = run(quick=True)
    for key in ("hop_us_block512", "hop_us_block64", "window_read_us_41", "torchaudio_ratio_101", "librosa_ratio_41"):
        assert result[key] > 0
