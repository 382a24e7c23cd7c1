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
