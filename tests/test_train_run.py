"""train/: tiny end-to-end runs (seconds, dense 16) of the protocol and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamtag.features import FeatureSpec
from streamtag.modelfile import load_model
from test_train_data import make_esc50, make_us8k
from train.data.augment import Augment
from train.data.cache import load_features
from train.data.datasets import read_us8k
from train.fit.crossval import cross_validate
from train.fit.loop import Recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    root = make_us8k(tmp_path_factory.mktemp("us8k"), folds=(1, 2), per_fold=12, missing=0)
    return load_features(read_us8k(root), FeatureSpec(), tmp_path_factory.mktemp("cache"), quiet=True)


@pytest.fixture
def one_thread():
    """Training numbers depend on torch's thread count; pin it so the outcome does not depend on test order."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cross_validation_learns_the_tiny_task(feats, one_thread):
    recipe = Recipe(epochs=15, dense=16, batch_size=16, lr=3e-3, dropout=0.0)
    results = cross_validate(feats, "short", recipe, Augment(), seeds=[0])
    assert [r["fold"] for r in results] == [1, 2]
    for r in results:
        assert r["n_train"] == 12 and r["n_test"] == 12 and len(r["history"]) == recipe.epochs
        assert set(r["clips"]) == {i for i, c in enumerate(feats.dataset.clips) if c.fold == r["fold"]}
    assert np.mean([r["prob"] for r in results]) > 0.6  # 3 pitch classes; chance is 1/3
    again = cross_validate(feats, "short", recipe, Augment(), seeds=[0], folds=[1])
    assert again[0]["pred_prob"].tolist() == results[0]["pred_prob"].tolist()  # seeded


def test_early_stopping_and_multilabel_targets_train(feats):
    recipe = Recipe(epochs=2, dense=16, batch_size=16, patience=1, head="multilabel", optimizer="sgd", lr=0.01,
                    weight_decay=1e-3, schedule="cosine")
    results = cross_validate(feats, "long", recipe, Augment(shift=True, gain_db=6, mix=0.5, specaugment=True),
                             seeds=[1], folds=[2], train_stride=30)
    r = results[0]
    assert r["epochs"] == 2 and "val_acc" in r["history"][0]
    assert r["n_test"] == 12 and 0.0 <= r["prob"] <= 1.0


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_command_line_writes_reports_and_a_loadable_model(tmp_path):
    data = make_esc50(tmp_path / "esc")
    out = tmp_path / "run"
    p = _run("cv", str(data), "--dataset", "esc10", "--epochs", "2", "--dense", "16", "--batch-size", "16",
             "--threads", "1", "--cache", str(tmp_path / "cache"), "--out", str(out), "--export", "fold", "--quiet",
             "--eval-every", "2",
             "--augment", "shift,gain")
    assert p.returncode == 0, p.stderr
    for name in ("results.md", "folds.csv", "summary.json", "confusion.png", "curves.png", "command.txt", "model.pt"):
        assert (out / name).is_file(), name
    assert len((out / "folds.csv").read_text().splitlines()) == 1 + 3  # folds 1-3 present
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folds"] == [1, 2, 3] and "folds 4-5 absent" in summary["dataset_summary"]
    assert (out / "command.txt").read_text().startswith("python -m train cv ")
    model = load_model(out / "model.pt", device="cpu")
    assert model.classes == ["dog", "sea_waves", "chainsaw"] and model.window_frames == 41
    assert model.provenance["tested_on_fold"] == 1 and model.provenance["trained_on_folds"] == [2, 3]
    probs = model.predict(np.zeros((3, 2, 60, 41), np.float32))
    assert probs.shape == (3, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    table = _run("compare", str(out))
    assert table.returncode == 0 and "| [run](run/results.md) | short |" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["cv", "/no/such/folder", "--dataset", "us8k"], "no such directory"),
    (["cv", ".", "--dataset", "esc10"], "meta/esc50.csv is missing"),
    (["cv", ".", "--dataset", "esc10", "--augment", "pitch"], "unknown augmentation"),
    (["compare", "/no/such/run"], "not a run folder"),
])
def test_bad_input_is_one_line_not_a_traceback(args, message):
    p = _run(*args)
    assert p.returncode != 0
    assert message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_early_stopping_stops_when_validation_stalls(feats):
    # lr 0 without batch norm or dropout: the network never changes, so validation
    # accuracy never improves after the first epoch and patience 2 stops at epoch 3
    recipe = Recipe(epochs=10, dense=8, batch_size=32, lr=0.0, patience=2, batch_norm=False, dropout=0.0)
    r = cross_validate(feats, "short", recipe, Augment(), seeds=[0], folds=[1])[0]
    assert r["epochs"] == 3
    assert len({row["val_acc"] for row in r["history"]}) == 1


def test_export_all_retrains_on_every_present_fold(tmp_path):
    data = make_esc50(tmp_path / "esc")
    out = tmp_path / "run"
    p = _run("cv", str(data), "--dataset", "esc10", "--epochs", "1", "--dense", "8", "--folds", "2",
             "--threads", "1", "--cache", str(tmp_path / "cache"), "--out", str(out), "--export", "all", "--quiet")
    assert p.returncode == 0, p.stderr
    assert len((out / "folds.csv").read_text().splitlines()) == 2
    model = load_model(out / "model.pt", device="cpu")
    assert model.provenance["trained_on_folds"] == [1, 2, 3] and model.provenance["epochs"] == 1
