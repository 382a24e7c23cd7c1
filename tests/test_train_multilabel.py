"""train/multilabel*.py: scores, rendering examples from audio, a tiny end-to-end
study and the exported model (dense 16-32, seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamtag.errors import DatasetError
from streamtag.features import FeatureSpec
from streamtag.modelfile import load_model
from test_train_data import make_us8k
from train.data.augment import Augment, change_speed
from train.data.cache import clip_features, load_features
from train.data.datasets import read_us8k
from train.data.overlay import Overlay, mix
from train.data.segments import SILENCE_DB, window_starts
from train.evaluate.multilabel import (average_precision, clip_means, found_per_class, mixes_by_alone, per_class,
                                      set_scores, tune_thresholds)
from train.fit.loop import Recipe
from train.fit.multilabel import ExampleSource, Overlays, clip_set, render, study
from train.reports.multilabel import compare_studies, write_study

REPO = Path(__file__).resolve().parents[1]


# --- scores -------------------------------------------------------------------

def test_average_precision_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    truth = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    ap = average_precision(scores, truth)
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2) and np.isnan(ap[1])  # no positives: undefined
    assert average_precision(-scores, truth)[0] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_set_scores_rank_pairs_and_count_extra_sounds():
    pairs = np.array([[1, 1, 0]] * 3)
    probs = np.array([[0.9, 0.8, 0.1],  # top two are the pair; both above 0.5
                      [0.9, 0.1, 0.8],  # one right, one wrong
                      [0.2, 0.6, 0.7]])  # one right
    s = set_scores(probs, pairs, [0.5, 0.5, 0.5])
    assert s == {"all": pytest.approx(1 / 3), "one": 1.0, "exact": pytest.approx(1 / 3), "extra": 0.0, "n": 3}
    assert set_scores(probs, pairs, [0.5, 0.5, 0.75])["exact"] == pytest.approx(1 / 3)
    single = np.array([[1, 0, 0], [1, 0, 0]])
    s = set_scores(np.array([[0.6, 0.55, 0.1], [0.2, 0.9, 0.1]]), single, [0.5, 0.5, 0.5])
    assert (s["all"], s["one"], s["exact"], s["extra"]) == (0.5, 0.5, 0.0, 0.5)  # a second sound claimed once


def test_found_per_class_counts_a_sound_among_the_top_k():
    truth = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 0]])  # two mixes and a single clip
    probs = np.array([[0.9, 0.8, 0.1],  # both found
                      [0.9, 0.8, 0.1],  # class 0 found, class 2 ranked third
                      [0.1, 0.2, 0.3]])  # class 1 ranked second of a single clip's one: not found
    np.testing.assert_allclose(found_per_class(probs, truth), [1.0, 0.5, 0.0])
    assert np.isnan(found_per_class(probs[:1], truth[:1])[2])  # no clip holds class 2


def test_mixes_split_by_whether_their_clips_are_right_alone():
    truth = np.array([[1, 1, 0]] * 4)
    probs = np.array([[0.9, 0.8, 0.1], [0.9, 0.1, 0.8], [0.9, 0.8, 0.1], [0.1, 0.8, 0.9]])  # both right: 1st, 3rd
    pairs = np.array([[0, 1], [0, 1], [1, 2], [2, 0]])
    s = mixes_by_alone(probs, truth, pairs, np.array([True, True, False]))  # clip 2 is wrong alone
    assert s == {"alone_right": 0.5, "all_if_alone_right": 0.5, "all_otherwise": 0.5}
    s = mixes_by_alone(probs, truth, pairs, np.array([True, True, True]))
    assert s["alone_right"] == 1.0 and s["all_if_alone_right"] == 0.5 and np.isnan(s["all_otherwise"])


def test_thresholds_maximise_f1_per_class():
    scores = np.array([[0.3, 0.9], [0.4, 0.8], [0.1, 0.7], [0.2, 0.6]])
    truth = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    t = tune_thresholds(scores, truth)
    assert 0.2 < t[0] <= 0.3 and t[1] == 0.5  # class 1 has no positives: the default
    assert per_class(scores >= t, truth)["f1"][0] == 1.0
    m = per_class(scores >= 0.5, truth)
    assert m["precision"].tolist() == [0.0, 0.0] and m["recall"].tolist() == [0.0, 0.0]


def test_clip_means_average_windows():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(clip_means(probs, np.array([0, 0, 2]), 3), [[0.5, 0.5], [0, 0], [0.5, 0.5]])


# --- examples rendered from audio ------------------------------------------------

@pytest.fixture(scope="module")
def feats(tmp_path_factory):
    root = make_us8k(tmp_path_factory.mktemp("us8k"), folds=(1, 2), per_fold=12, missing=0)
    return load_features(read_us8k(root), FeatureSpec(), tmp_path_factory.mktemp("cache"), quiet=True)


def _clip(feats, fold: int, k: int) -> int:
    """Index of the k-th clip of a fold (label k % 3; the last of each fold lasts 0.6 s)."""
    return [i for i, c in enumerate(feats.dataset.clips) if c.fold == fold][k]


def test_mix_features_are_computed_on_the_mixed_audio(feats):
    a, b = _clip(feats, 1, 0), _clip(feats, 1, 11)  # 2.5 s of class 0; 0.6 s of class 2
    ov = Overlay(a, b, 1, (0.0, 0.0), (0, 26460))  # b starts 1.2 s in (frame 51.7)
    frames, starts, targets = render(feats, ov, 41, 20)
    expected = clip_features(mix(feats.clip_audio(a), feats.clip_audio(b), ov).audio, feats.spec)
    np.testing.assert_array_equal(frames, expected)  # the frontend run on the mix, never mixed features
    assert starts.tolist() == window_starts(expected, 41, 20, SILENCE_DB).tolist() == [0, 20, 40, 60]
    # window 0 (frames 0-40) ends before b starts; the others hold at least MIN_ACTIVE frames of it
    assert targets.tolist() == [[1, 0, 0], [1, 0, 1], [1, 0, 1], [1, 0, 1]]
    # a single clip renders as its cached frames, its class on every kept window
    frames, starts, targets = render(feats, a, 41, 20)
    np.testing.assert_array_equal(frames, feats.clip_frames(a))
    assert (targets == [1, 0, 0]).all() and len(targets) == len(starts)


def test_a_speed_change_moves_the_mix_and_its_targets_together(feats):
    a, b = _clip(feats, 1, 0), _clip(feats, 1, 11)
    ov = Overlay(a, b, 1, (0.0, 0.0), (0, 26460))  # b starts 1.2 s in: windows from frame 20 on hold it
    aug = Augment(speed=0.3)
    seed = next(s for s in range(100) if aug.speed_factor(np.random.default_rng(s)) < 0.75)
    factor = aug.speed_factor(np.random.default_rng(seed))  # slower: b now starts after 1.6 s (frame 69)
    frames, starts, targets = render(feats, ov, 41, 20, aug, np.random.default_rng(seed))
    mixed = mix(feats.clip_audio(a), feats.clip_audio(b), ov).audio
    np.testing.assert_array_equal(frames, clip_features(change_speed(mixed, factor), feats.spec))
    assert starts[:3].tolist() == [0, 20, 40]
    # frames 20-60 end before b's new start; frames 40-80 hold at least MIN_ACTIVE frames of it
    assert targets[:3].tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 1]]


def test_example_source_mixes_afresh_each_epoch(feats):
    ids = [i for i, c in enumerate(feats.dataset.clips) if c.fold == 1]
    src = ExampleSource(feats, ids, 41, 20, Overlays(mixes=10, singles=4), Augment(shift=True, gain_db=6), 16)
    first = list(src.epoch(np.random.default_rng(0)))
    x, y = np.concatenate([b[0] for b in first]), np.concatenate([b[1] for b in first])
    assert x.shape[1:] == (2, 60, 41) and y.shape == (len(x), 3) and np.isfinite(x).all()
    assert set(y.sum(axis=1).tolist()) <= {0.0, 1.0, 2.0} and (y.sum(axis=1) == 2).mean() > 0.4
    again = np.concatenate([b[0] for b in src.epoch(np.random.default_rng(0))])
    other = np.concatenate([b[0] for b in src.epoch(np.random.default_rng(1))])
    assert np.array_equal(x, again) and (len(other) != len(x) or not np.array_equal(other, x))


def test_clip_set_truth_names_both_events(feats):
    ids = [_clip(feats, 2, k) for k in range(3)]
    s = clip_set("mixes", feats, [Overlay(ids[0], ids[1], 2, (0.0, -20.0), (0, 0)), ids[2]], 41, 20)
    assert s.truth.tolist() == [[1, 1, 0], [0, 0, 1]]
    assert set(s.segments.clip.tolist()) == {0, 1} and len(s.window_truth) == len(s.segments.starts)


# --- end to end -----------------------------------------------------------------

def test_tiny_study_learns_to_tag_pairs_and_writes_its_report(feats, tmp_path):
    recipe = Recipe(epochs=5, dense=32, batch_size=16, lr=3e-3, dropout=0.0)
    results = study(feats, "short", recipe, Overlays(mixes=30, singles=12, pretrain_epochs=2), Augment(),
                    ["pretrained"], seed=1, val_fraction=0.3, test_mixes=12, folds=[1])
    assert [r["init"] for r in results] == ["single-label", "pretrained"]
    r = results[1]
    assert r["n_test"] == 12 and r["n_train"] + r["n_val"] == 12
    assert [row["stage"] for row in r["history"]] == ["pretrain"] * 2 + ["overlays"] * 5
    assert 1 <= r["best_epoch"] <= 5 and all(0 < t < 1 for t in r["thresholds"])
    assert {s: r["sets"][s]["n"] for s in r["sets"]} == {"single": 12, "equal": 12, "minus20": 12}
    # three pitch classes: chance mAP on these sets is about 0.45
    assert r["map"] > 0.85, r["map"]
    assert r["sets"]["equal"]["one"] == 1.0
    # mixes split by whether each clip is right alone: the two groups make up the whole
    for name in ("equal", "minus20"):
        m = r["sets"][name]
        split = [(m["alone_right"], m["all_if_alone_right"]), (1 - m["alone_right"], m["all_otherwise"])]
        assert sum(w * v for w, v in split if w > 0) == pytest.approx(m["all"])
    assert "alone_right" not in r["sets"]["single"]
    assert r["found"]["single"] == pytest.approx(results[1]["found"]["single"])
    assert np.mean(r["found"]["equal"]) > 0.5 and len(r["found"]["minus20"]) == 3
    write_study(tmp_path / "ml", results, feats.dataset.classes,
                {"title": "tiny", "dataset_summary": "tiny set", "command": "python -m train multilabel x",
                 "setup": "setup text", "note": "cut short"})
    text = (tmp_path / "ml.md").read_text()
    assert "| multilabel, pretrained | " in text and "| the study (reference) | | | | 14.0 |" in text
    row = next(line for line in text.splitlines() if line.startswith("| multilabel, pretrained |")).split(" | ")
    assert row[1] == f"{100 * r['sets']['single']['all']:.1f}" and row[10] == f"{100 * r['map']:.1f}"
    masking = next(line for line in text.split("## Recognition or masking?")[1].splitlines()
                   if line.startswith("| multilabel, pretrained |")).split(" | ")
    assert len(masking) == 7
    assert masking[1:3] == [f"{100 * r['sets']['equal'][k]:.1f}" for k in ("alone_right", "all_if_alone_right")]
    per_class_rows = text.split("## Per class: found by ranking")[1].splitlines()
    row = next(line for line in per_class_rows if line.startswith(f"| {feats.dataset.classes[0]} |")).split(" | ")
    assert row[4] == f"{100 * r['found']['single'][0]:.1f}"  # after the single-label model's three columns
    for name in ("ml.csv", "ml-classes.csv", "ml.json", "ml.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert len((tmp_path / "ml.csv").read_text().splitlines()) == 1 + 2 * 3
    assert json.loads((tmp_path / "ml.json").read_text())["results"][1]["map"] == r["map"]
    # a prefix with a dot in it (a learning curve's fraction) is a prefix, not a name with a suffix
    write_study(tmp_path / "ml-frac0.5", results, feats.dataset.classes, json.loads((tmp_path / "ml.json").read_text()))
    assert sorted(f.name for f in tmp_path.glob("ml-frac*")) == [
        "ml-frac0.5-classes.csv", "ml-frac0.5.csv", "ml-frac0.5.json", "ml-frac0.5.md", "ml-frac0.5.png"]
    # two seeds of the same recipe compare as one row per model: mean and range over the seeds
    report = json.loads((tmp_path / "ml.json").read_text())
    for seed, scale in ((1, 1.0), (2, 0.5)):
        report["config"] = {"window": "short", "dense": 32, "seed": seed}
        report["results"][1]["map"] = r["map"] * scale
        (tmp_path / f"seed{seed}.json").write_text(json.dumps(report))
    table, per_class = compare_studies([tmp_path / "seed2.json", tmp_path / "seed1.json"]).split("\n\n", 1)
    table = table.splitlines()
    assert len(table) == 4 and [row.split(" | ")[4] for row in table[2:]] == ["single-label", "pretrained"]
    cells = table[3].split(" | ")
    assert cells[:6] == ["| short", "32", cells[2], "–", "pretrained", "1, 2"]
    assert cells[-1] == f"{75 * r['map']:.1f} ({50 * r['map']:.1f} to {100 * r['map']:.1f}) |"
    assert table[2].split(" | ")[7] == "–"  # a softmax network claims no second sound
    assert cells[10].startswith(f"{100 * r['sets']['equal']['alone_right']:.1f} (")
    # per class, by name: single-clip accuracy and top-two share in equal mixes, for each model
    rows = {line.split(" | ")[0]: line.split(" | ") for line in per_class.splitlines() if line.startswith("| ")}
    first = rows[f"| {feats.dataset.classes[0]}"]
    assert len(rows) == 1 + 3 and len(first) == 1 + 2 * 2
    assert first[3] == f"{100 * r['found']['single'][0]:.1f}"  # pretrained: single, after the softmax's two


def test_study_on_a_share_of_the_training_clips_keeps_whole_recordings_from_the_seed(tmp_path):
    root = make_us8k(tmp_path / "us8k", folds=(1, 2), per_fold=24, missing=0)  # 12 recordings of 2 clips a fold
    feats = load_features(read_us8k(root), FeatureSpec(), tmp_path / "cache", quiet=True)
    recipe = Recipe(epochs=1, dense=16, batch_size=16)

    def run(fraction: float, val_fraction: float = 0.3):
        return study(feats, "short", recipe, Overlays(mixes=6, singles=4), Augment(), ["scratch"], seed=0,
                     val_fraction=val_fraction, test_mixes=4, folds=[1], train_fraction=fraction)[0]

    full, half = run(1.0), run(0.5)
    assert full["n_train"] + full["n_val"] == 24  # every clip of fold 2
    assert half["n_test"] == full["n_test"] == 24
    # about half of each class's 8 clips, in whole recordings of two clips: an even count near 12
    kept = half["n_train"] + half["n_val"]
    assert 10 <= kept <= 14 and kept % 2 == 0
    again = run(0.5)
    assert (again["n_train"], again["n_val"], again["map"]) == (half["n_train"], half["n_val"], half["map"])
    with pytest.raises(DatasetError, match="left none to train on"):
        run(0.1, val_fraction=0.9)


def test_keeping_the_last_epoch_is_a_fixed_schedule(feats):
    def run(keep: str) -> dict:
        return study(feats, "short", Recipe(epochs=3, dense=16, batch_size=16), Overlays(mixes=6, singles=4, keep=keep),
                     Augment(), ["scratch"], seed=0, val_fraction=0.3, test_mixes=4, folds=[1])[0]

    best, last = run("best"), run("last")
    val = [row["val_map"] for row in best["history"]]
    assert [row["val_map"] for row in last["history"]] == val  # the same training, epoch by epoch
    assert best["best_epoch"] == 1 + int(np.argmax(val)) and last["best_epoch"] == 3
    assert (best["map"] == last["map"]) == (best["best_epoch"] == 3)  # other weights, other test scores
    with pytest.raises(ValueError, match="keep must be 'best' or 'last', got 'lst'"):
        run("lst")


def _study(fold: int, init: str, single: float, seed: int = 0, mix: float = 0.0) -> dict:
    """A study report as write_study saves it, holding one model's scores on one test fold."""
    sets = {name: {"all": single, "one": 1.0, "exact": 0.5, "extra": 0.25, "n": 10}
            for name in ("single", "equal", "minus20")}
    return {"config": {"window": "long", "dense": 1500, "seed": seed, "device": "cpu", "augment": {"mix": mix}},
            "results": [{"fold": fold, "init": init, "sets": sets, "map": single, "ap": [0.5] * 10}]}


def test_compare_studies_merges_folds_pairs_seeds_and_refuses_duplicates(tmp_path):
    def write(name: str, *studies: dict) -> Path:
        merged = dict(studies[0], results=[r for s in studies for r in s["results"]])
        (tmp_path / name).write_text(json.dumps(merged))
        return tmp_path / name

    # seed 0 split into one report per test fold, seed 1 in one report; a second recipe differs in mixing
    paths = [write("s0f1.json", _study(1, "scratch", 0.2), _study(1, "pretrained", 0.3)),
             write("s0f2.json", _study(2, "scratch", 0.4), _study(2, "pretrained", 0.7)),
             write("s1.json", *(_study(f, i, v, seed=1) for f, i, v in (
                 (1, "scratch", 0.5), (2, "scratch", 0.5), (1, "pretrained", 0.4), (2, "pretrained", 0.6)))),
             write("mix.json", _study(1, "pretrained", 0.9, mix=0.5))]
    main, effects = compare_studies(paths).split("\n\n", 1)
    rows = {tuple(row.split(" | ")[3:5]): row.split(" | ") for row in main.splitlines()[2:]}
    assert set(rows) == {("augment.mix=0.0", "scratch"), ("augment.mix=0.0", "pretrained"),
                         ("augment.mix=0.5", "pretrained")}
    scratch = rows["augment.mix=0.0", "scratch"]
    assert scratch[5] == "0, 1" and scratch[6] == "40.0 (30.0 to 50.0)"  # fold means 30 and 50
    assert rows["augment.mix=0.0", "pretrained"][6] == "50.0 (50.0 to 50.0)"  # both seeds' fold means are 50
    assert rows["augment.mix=0.5", "pretrained"][5] == "0"
    assert scratch[10:12] == ["–", "–"]  # reports from before mixes were split by their clips alone
    # pretraining, paired by seed: +20 on seed 0, 0 on seed 1; only the recipe with both models has a row
    effect = [row for row in effects.splitlines() if row.startswith("| long")]
    assert len(effect) == 1 and effect[0].split(" | ")[2:5] == ["augment.mix=0.0", "0, 1", "10.0 (0.0 to 20.0)"]
    with pytest.raises(ValueError, match="fold 1 with the scratch model a second time"):
        compare_studies(paths + [paths[0]])
    write("s2.json", _study(1, "scratch", 0.5, seed=2))
    with pytest.raises(ValueError, match="test different folds per seed"):
        compare_studies(paths + [tmp_path / "s2.json"])
    # the command: the table, every seed's dots in a PNG, and a one-line error for a seed counted twice
    p = _run("compare", *map(str, paths), "--plot", str(tmp_path / "seeds.png"))
    assert p.returncode == 0 and p.stdout == compare_studies(paths), p.stderr
    assert (tmp_path / "seeds.png").read_bytes()[:4] == b"\x89PNG"
    p = _run("compare", *map(str, paths + [paths[0]]))
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [f"python -m train: error: {tmp_path / 's0f1.json'}: seed 0 tests fold 1 "
                                             "with the scratch model a second time"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_all_folds_command_exports_a_model_with_tuned_thresholds(feats, tmp_path):
    out = tmp_path / "ml.pt"
    p = _run("multilabel", str(feats.dataset.root), "--dataset", "us8k", "--all", "--init", "scratch",
             "--export", str(out), "--epochs", "2", "--mixes", "12", "--singles", "6", "--dense", "16",
             "--batch-size", "16", "--threads", "1", "--val-fraction", "0.3", "--cache", str(tmp_path / "cache"),
             "--quiet")
    assert p.returncode == 0, p.stderr
    model = load_model(out, device="cpu")
    assert model.head == "multilabel" and model.hop_frames == 4 and model.window_frames == 41
    assert model.classes == ["class0", "class1", "class2"]
    assert ((model.thresholds > 0) & (model.thresholds < 1)).all()
    prov = model.provenance
    assert prov["command"].startswith("python -m train multilabel ") and "--all" in prov["command"]
    assert prov["folds"] == [1, 2] and prov["train_clips"] + prov["val_clips"] == 24
    assert prov["epochs"] == 2 and 0 <= prov["metrics"]["val_map"] <= 1 and "UrbanSound8K" in prov["dataset"]
    probs = model.predict(np.zeros((2, 2, 60, 41), np.float32))
    assert probs.shape == (2, 3) and ((probs > 0) & (probs < 1)).all()


@pytest.mark.parametrize("args, message", [
    (["--all"], "give --export FILE"),
    (["--export", "m.pt"], "--export needs --all"),
    (["--all", "--export", "m.pt", "--init", "both"], "--all trains one model"),
    (["--all", "--export", "m.pt", "--folds", "1"], "drop --folds"),
    (["--mixes", "0", "--singles", "0"], "nothing to train on"),
    (["--init", "pretrained", "--pretrain-epochs", "0"], "needs --pretrain-epochs >= 1"),
    (["--val-fraction", "1"], "--val-fraction must lie in (0, 1)"),
    (["--train-fraction", "0"], "--train-fraction must lie in (0, 1]"),
    (["--all", "--export", "m.pt", "--init", "scratch", "--train-fraction", "0.5"], "--all trains the exported model"),
    (["--level-db", "30:10"], "level difference must satisfy"),
    (["--augment", "pitch"], "unknown augmentation"),
])
def test_multilabel_command_refuses_bad_options_in_one_line(args, message, tmp_path):
    p = _run("multilabel", str(tmp_path), "--dataset", "us8k", *args)
    assert p.returncode != 0 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_multilabel_command_names_a_missing_dataset():
    p = _run("multilabel", "/no/such/folder", "--dataset", "us8k")
    assert p.returncode == 2 and "no such directory" in p.stderr and "Traceback" not in p.stderr
