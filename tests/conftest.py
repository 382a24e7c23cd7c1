"""Shared test fixtures.

Tests that need the real recordings in ``../shared/data``, a PulseAudio server
or a GPU skip with a reason on a user's machine. Under CI (``CI=true``) the data
and PulseAudio are provided, so a missing one is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("STREAMTAG_DATA", REPO.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(condition: bool, reason: str) -> None:
    """Skip (or, under CI, fail) when a test's outside resource is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


def pytest_sessionstart(session):
    """A drifted environment (a compiled dependency that does not load beside the others) stops the run at once
    with `streamtag doctor`'s one line and its fix, instead of failing deep inside a benchmark's test."""
    from streamtag.doctor import report, run_checks

    lines, status = report(run_checks())
    if status:
        failed = "\n".join(line for line in lines if line.startswith("FAIL"))
        pytest.exit(f"the environment has drifted from requirements.lock:\n{failed}", returncode=3)


@pytest.fixture(scope="session", autouse=True)
def frontend_kernel():
    """The frontend's kernel, compiled ahead of time before any test runs (about 20 s on
    first use), so that no test's output carries the one-off build notice."""
    from streamtag.frontend import _push_kernel

    return _push_kernel()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    need((DATA_DIR / "UrbanSound8K").is_dir() and (DATA_DIR / "ESC-10").is_dir(),
         f"real recordings not found in {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def us8k_dir(data_dir: Path) -> Path:
    return data_dir / "UrbanSound8K"


@pytest.fixture(scope="session")
def esc10_dir(data_dir: Path) -> Path:
    return data_dir / "ESC-10"


US8K_CLASSES = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
                "engine_idling", "gun_shot", "jackhammer", "siren", "street_music"]


@pytest.fixture(scope="session")
def random_model_file(tmp_path_factory) -> Path:
    """A small untrained model file (dense 64, 41 frames, the UrbanSound8K classes,
    thresholds 0.5) with plausible dB normalisation, for tests that need any model."""
    import torch

    from streamtag.features import FeatureSpec
    from streamtag.model import PiczakCNN
    from streamtag.modelfile import save_model

    torch.manual_seed(0)
    net = PiczakCNN(len(US8K_CLASSES), dense=64)
    net.set_normalization(mean=[[[-50.0]], [[0.0]]], std=[[[20.0]], [[10.0]]])
    path = tmp_path_factory.mktemp("model") / "random.pt"
    return save_model(path, net, classes=US8K_CLASSES, spec=FeatureSpec(), window_frames=41, hop_frames=10,
                      thresholds=[0.5] * len(US8K_CLASSES),
                      provenance={"dataset": "none (random weights)", "epochs": 0})
