"""Soundscapes, strong-label targets and training, DCASE metrics and the decoding a model file carries,
on tiny datasets of tones written here."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamtag.errors import DatasetError
from streamtag.events import Decoding, Event, Smoother
from streamtag.features import FeatureSpec
from test_train_data import SR, make_us8k
from train.data.cache import load_features
from train.data.datasets import read_us8k, share_of_recordings
from train.data.scenes import (Annotation, SceneRecipe, annotations, loudness, plan_scenes, read_tsv, render, write_scenes,
                          write_tsv)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    return make_us8k(tmp_path_factory.mktemp("us8k"), folds=(1, 2), per_fold=12, missing=0)


def _plans(d, fold, seed, n=5, recipe=SceneRecipe()):
    ids = [i for i, c in enumerate(d.clips) if c.fold == fold]
    return plan_scenes(d.clips, ids, n, np.random.default_rng(seed), recipe, SR,
                       lambda i: len(d.load(d.clips[i], SR)))


def test_scenes_keep_folds_apart_and_repeat_from_their_seed(tones):
    d = read_us8k(tones)
    for fold in (1, 2):
        plans = _plans(d, fold, seed=3)
        assert all(d.clips[e.clip].fold == fold for p in plans for e in p.events)
        assert all(p.fold == fold for p in plans)
    assert _plans(d, 1, seed=3) == _plans(d, 1, seed=3)
    assert _plans(d, 1, seed=3) != _plans(d, 1, seed=4)
    with pytest.raises(DatasetError, match="one fold"):
        plan_scenes(d.clips, range(len(d.clips)), 1, np.random.default_rng(0), SceneRecipe(), SR, lambda i: SR)
    counts = [len(p.events) for p in _plans(d, 1, seed=0, n=60)]
    assert min(counts) >= 1 and max(counts) <= 9 and len(set(counts)) > 4  # 1-9 events, uniform


def test_scaper_onsets_place_events_anywhere_and_move_back_those_that_would_run_past_the_end(tones):
    d = read_us8k(tones)
    ids = [i for i, c in enumerate(d.clips) if c.fold == 1]
    length_of = lambda i: len(d.load(d.clips[i], SR))  # noqa: E731
    n = int(10.0 * SR)
    placed = {kind: [(e.onset, e.onset + length_of(e.clip)) for p in plan_scenes(
        d.clips, ids, 80, np.random.default_rng(5), SceneRecipe(onsets=kind), SR, length_of) for e in p.events]
        for kind in ("inside", "scaper")}
    for kind, spans in placed.items():
        assert all(0 <= a < b <= n for a, b in spans), kind
    # uniform over the scene, as Scaper draws: an event drawn within its own length of the end is moved back to
    # end there, which happens to a share of events equal to their mean length over the scene's (411 events here)
    at_end = np.mean([b == n for _, b in placed["scaper"]])
    assert abs(at_end - np.mean([(b - a) / n for a, b in placed["scaper"]])) < 0.06 and at_end > 0.1
    assert not any(b == n for _, b in placed["inside"])
    with pytest.raises(DatasetError, match="onsets must be one of"):
        SceneRecipe(onsets="late")
    with pytest.raises(DatasetError, match="event lengths must satisfy"):
        SceneRecipe(event_seconds=(4.0, 0.5))


@pytest.mark.parametrize("recipe", [SceneRecipe(), SceneRecipe(onsets="scaper", event_seconds=(0.3, 0.5))],
                         ids=["whole clips", "cut as URBAN-SED cut them"])
def test_each_annotated_event_sounds_where_annotated_at_the_snr_asked(tones, recipe):
    d = read_us8k(tones)
    for plan in _plans(d, 2, seed=1, recipe=recipe):
        if recipe.event_seconds:  # each event plays its clip's first 0.3-0.5 s (every clip here is longer)
            assert all(0.3 * SR <= e.length <= 0.5 * SR for e in plan.events)
        else:
            assert all(e.length is None for e in plan.events)
        cache = {}  # whole clips' loudness, as training passes it: an excerpt must be measured itself
        scene = render(plan, lambda i: d.load(d.clips[i], SR), d.labels, SR, recipe,
                       lambda i: cache.setdefault(i, loudness(d.load(d.clips[i], SR), SR)))
        np.testing.assert_allclose(scene.background + scene.tracks.sum(axis=0), scene.audio, atol=1e-6)
        assert np.abs(scene.audio).max() <= 0.99 + 1e-6
        assert abs(loudness(scene.background, SR) - (recipe.background_lufs + 20 * np.log10(scene.gain))) < 0.01
        for track, (start, stop), event in zip(scene.tracks, scene.spans, plan.events):
            energy = np.square(track, dtype=np.float64)
            assert energy[start:stop].sum() > 0 and not energy[:start].any() and not energy[stop:].any()
            # the SNR is measured on the output: the event's loudness over the background's
            snr = loudness(track[start:stop], SR) - loudness(scene.background, SR)
            assert abs(snr - event.snr_db) < 0.05
        labels = {(a.onset, a.offset, a.label) for a in annotations(scene, d.classes, SR)}
        assert labels == {(s / SR, e / SR, d.classes[d.labels[ev.clip]])
                          for (s, e), ev in zip(scene.spans, plan.events)}


def test_written_scenes_hold_dcase_annotations_of_their_audio(tones, tmp_path):
    d = read_us8k(tones)
    meta = write_scenes(d, tmp_path / "scenes", per_fold=3, seed=2, folds=[2], quiet=True)
    reference = read_tsv(meta / "fold2.tsv")
    assert len(reference) == 3 and all(reference.values())
    for name, events in reference.items():
        audio, rate = sf.read(tmp_path / "scenes" / "audio" / "fold2" / name)
        assert rate == SR and len(audio) == 10 * SR
        assert all(0 <= a.onset < a.offset <= 10 for a in events)
    again = write_scenes(d, tmp_path / "again", per_fold=3, seed=2, folds=[2], quiet=True)
    assert (again / "fold2.tsv").read_text() == (meta / "fold2.tsv").read_text()
    assert json.loads((meta / "scenes.json").read_text())["recipe"]["events"] == [1, 9]
    with pytest.raises(DatasetError, match="not an empty folder"):
        write_scenes(d, tmp_path / "scenes", per_fold=1, folds=[2], quiet=True)


def test_window_targets_follow_the_annotations():
    from train.data.scenes import Soundscape
    from train.fit.strong import end_share, window_targets

    spec = FeatureSpec()
    hop, n_fft = spec.hop_length, spec.n_fft
    # one event of class 1 over samples [10 hops, 20 hops); windows of 5 frames, centre at first + (4 hop + n_fft) / 2
    scene = Soundscape(np.zeros(1), np.zeros(1), np.zeros((1, 1)), [1], [(10 * hop, 20 * hop)], 1.0)
    starts = np.arange(0, 30)
    t = window_targets(scene, starts, 5, 2, hop, n_fft, 3)
    centre = starts * hop + (4 * hop + n_fft) / 2
    expected = (10 * hop < centre + hop) & (20 * hop > centre - hop)
    np.testing.assert_array_equal(t[:, 1], expected)
    assert expected.any() and not expected.all() and not t[:, [0, 2]].any()
    # a score that describes the window's end: its last 2 frames' span, [end - 2 hops, end)
    end = window_targets(scene, starts, 5, 2, hop, n_fft, 3, end_share(5, 2, hop, n_fft))
    last = starts * hop + 4 * hop + n_fft
    np.testing.assert_array_equal(end[:, 1], (10 * hop < last) & (20 * hop > last - 2 * hop))
    assert not np.array_equal(end[:, 1], expected)


def test_edge_weights_weigh_the_windows_near_an_events_onset_and_offset():
    from train.data.scenes import Soundscape
    from train.fit.strong import EDGE, edge_weights

    spec = FeatureSpec()
    hop, n_fft, sr = spec.hop_length, spec.n_fft, spec.sample_rate
    onset, offset = 30 * hop, 80 * hop  # one event of class 1
    scene = Soundscape(np.zeros(1), np.zeros(1), np.zeros((1, 1)), [1], [(onset, offset)], 1.0)
    starts = np.arange(0, 120)
    w = edge_weights(scene, starts, 5, hop, n_fft, 3, 0.5, 4.0, sr)
    moment = starts * hop + (4 * hop + n_fft) / 2
    near = (np.abs(moment - onset) <= EDGE * sr) | (np.abs(moment - offset) <= EDGE * sr)
    np.testing.assert_array_equal(w[:, 1], np.where(near, 4.0, 1.0))
    assert near.any() and not near.all() and (w[:, [0, 2]] == 1).all()
    # windows well inside the event, and well outside it, keep weight 1
    assert w[np.argmin(np.abs(moment - (onset + offset) / 2)), 1] == 1 and w[-1, 1] == 1


def test_loss_weights_reach_the_loss():
    import torch

    from streamtag.model import PiczakCNN
    from train.fit.loop import Recipe, loss_fn, train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 2, 60, 41)).astype(np.float32)
    y = (rng.random((8, 3)) < 0.5).astype(np.float32)

    class Source:
        def __init__(self, w):
            self.w = w

        def epoch(self, rng):
            yield (x, y) if self.w is None else (x, y, np.full_like(y, self.w))

    def trained(w):
        torch.manual_seed(0)
        net = PiczakCNN(3, dense=16)
        history = train(net, Source(w), Recipe(epochs=1, dense=16, head="multilabel"), np.random.default_rng(0))
        return net, history[0]["loss"]

    plain, loss = trained(None)
    ones, loss_ones = trained(1.0)
    assert loss_ones == loss and all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                                          ones.state_dict().values()))
    doubled, loss_doubled = trained(2.0)
    assert loss_doubled == pytest.approx(2 * loss)
    torch.manual_seed(0)
    untouched = PiczakCNN(3, dense=16)
    zero, loss_zero = trained(0.0)  # no weight, no gradient: Adam leaves every weight where it was
    assert loss_zero == 0 and all(torch.equal(a, b) for a, b in zip(zero.parameters(), untouched.parameters()))
    with pytest.raises(ValueError, match="multilabel"):  # a single-label head has no per-target weights
        loss_fn("single")(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))


HAND_REF = {"a.wav": [Annotation(1.0, 3.0, "dog")], "b.wav": [Annotation(2.0, 4.0, "siren")]}
HAND_EST = {"a.wav": [Event("dog", 0, 1.1, 3.1, 0.9), Event("siren", 1, 5.0, 6.0, 0.8)], "b.wav": []}


def test_metrics_match_a_hand_made_case():
    from train.evaluate.detection import score

    m = score(HAND_REF, HAND_EST, ["dog", "siren"])
    # segments of 1 s: dog true in [1,2) [2,3) of a; estimated in [1,2) [2,3) [3,4); siren in [5,6) of a, missed in b
    # TP 2, FP 2, FN 2: F1 = 4 / (4 + 2 + 2) = 0.5; ER = (S + D + I) / N over segments = (2 + 0 + 0) ... computed below
    assert m["segment_precision"] == pytest.approx(0.5) and m["segment_recall"] == pytest.approx(0.5)
    assert m["segment_f1"] == pytest.approx(0.5)
    # per segment: a[3,4) insertion, a[5,6) insertion, b[2,3) and b[3,4) deletions: ER = 4 / 4 = 1.0
    assert m["segment_er"] == pytest.approx(1.0)
    # events: dog matched (onset 0.1 s off, offset 0.1 s off), siren in a inserted, siren in b deleted
    assert m["event_f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1)) and m["event_er"] == pytest.approx(1.0)
    assert m["classes"]["dog"]["event_f1"] == pytest.approx(1.0) and m["classes"]["siren"]["event_f1"] == 0.0
    assert m["onset_f1"] == pytest.approx(0.5) and m["offset_f1"] == pytest.approx(0.5)
    # dog: onset 0.5 s late (outside its 200 ms collar), offset 0.3 s late (inside 20 % of 2 s): only its onset fails;
    # siren: onset 0.1 s late, offset 1 s early (outside 0.4 s): only its offset fails
    late = score(HAND_REF, {"a.wav": [Event("dog", 0, 1.5, 3.3, 0.9)], "b.wav": [Event("siren", 1, 2.1, 3.0, 0.9)]},
                 ["dog", "siren"])
    assert late["event_f1"] == 0.0
    assert late["onset_f1"] == pytest.approx(0.5) and late["offset_f1"] == pytest.approx(0.5)
    assert late["classes"]["dog"]["event_f1"] == 0.0


def test_score_command_agrees_with_sed_eval(tmp_path):
    from train.evaluate.detection import score

    write_tsv(tmp_path / "ref.tsv", [(n, a) for n, v in HAND_REF.items() for a in v])
    est = tmp_path / "est.tsv"
    est.write_text("filename\tonset\toffset\tevent_label\n" + "".join(
        f"{n}\t{e.onset}\t{e.offset}\t{e.label}\n" for n, v in HAND_EST.items() for e in v))
    done = subprocess.run([sys.executable, "-m", "train", "score", str(tmp_path / "ref.tsv"), str(est), "-o",
                           str(tmp_path / "report")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = score(HAND_REF, HAND_EST, ["dog", "siren"])
    assert (f"segment F1 {expected['segment_f1']:.3f} ER {expected['segment_er']:.3f}; event F1 "
            f"{expected['event_f1']:.3f} ER {expected['event_er']:.3f}") in done.stdout
    assert json.loads((tmp_path / "report.json").read_text())["streamtag"]["segment_f1"] == expected["segment_f1"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("file,onset\n")
    done = subprocess.run([sys.executable, "-m", "train", "score", str(bad), str(est)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2 and "not a DCASE annotation file" in done.stderr and "Traceback" not in done.stderr


def test_median_smoothing_is_the_same_however_the_windows_are_split():
    rng = np.random.default_rng(0)
    scores, centres = rng.random((40, 3)), np.arange(40) * 0.1
    whole = Smoother(3, 5, "median").push(scores, centres)
    parts = Smoother(3, 5, "median")
    split = [parts.push(scores[a:b], centres[a:b]) for a, b in ((0, 1), (1, 7), (7, 8), (8, 40))]
    np.testing.assert_array_equal(np.concatenate([s for s, _ in split]), whole[0])
    np.testing.assert_array_equal(whole[0][10], np.median(scores[6:11], axis=0).astype(np.float32))
    np.testing.assert_array_equal(whole[0][1], np.median(scores[:2], axis=0).astype(np.float32))


def test_decoding_round_trips_through_the_model_file_and_drives_the_engine(random_model_file, tmp_path):
    from streamtag.engine import Engine
    from streamtag.modelfile import load_model, read_metadata, save_model
    from streamtag.model import PiczakCNN

    model = load_model(random_model_file, device="cpu")
    assert model.decoding is None
    decoding = Decoding("median", 0.6, 0.05, tuple(0.1 * k for k in range(10)))
    net = PiczakCNN(10, dense=64)
    path = save_model(tmp_path / "tuned.pt", net, classes=model.classes, spec=model.spec, window_frames=41,
                      hop_frames=4, decoding=decoding)
    loaded = load_model(path, device="cpu")
    assert loaded.decoding == decoding and read_metadata(path)["decoding"]["filter"] == "median"
    engine = Engine(loaded)
    assert engine.smoother.kind == "median" and engine.smooth_windows == round(0.6 / engine.hop_seconds)
    np.testing.assert_allclose(engine.tracker.min_duration, decoding.min_duration)
    np.testing.assert_allclose(engine.tracker.on - engine.tracker.off, np.minimum(0.05, engine.tracker.on))
    overridden = Engine(loaded, smooth=0.3, filter="mean", min_duration=0.2)
    assert overridden.smoother.kind == "mean" and (overridden.tracker.min_duration == 0.2).all()
    with pytest.raises(ValueError, match="minimum durations"):
        Decoding(min_duration=(-1.0,))


def test_a_tiny_strong_label_training_exports_a_tuned_model_that_tags_dcase(tones, tmp_path):
    import torch

    from streamtag.modelfile import load_model
    from train.data.augment import Augment
    from train.fit.loop import Recipe
    from train.fit.strong import Scenes, end_share, export_tuned, retune, train_strong

    torch.set_num_threads(1)
    feats = load_features(read_us8k(tones), FeatureSpec(), tmp_path / "cache", quiet=True)
    at = end_share(41, 4, feats.spec.hop_length, feats.spec.n_fft)  # scores that describe the windows' ends
    scenes = Scenes(per_epoch=6, val_scenes=3, recipe=SceneRecipe(duration=4.0, events=(1, 3)), describe_at=at,
                    edge_weight=3.0)
    train_ids = share_of_recordings(feats.dataset, np.arange(len(feats.dataset.clips)), 0.5, seed=0)
    trained = train_strong(feats, train_ids, "short", Recipe(epochs=2, dense=32),
                           scenes, Augment(shift=True), seed=0, val_fraction=0.3)
    assert [r["stage"] for r in trained.history] == ["scenes", "scenes"]
    assert all(0 <= r["val_map"] <= 1 for r in trained.history)
    path = tmp_path / "strong.pt"
    provenance = {"dataset": "tones", "recipe": "strong labels on soundscapes", "folds": [1, 2], "train_share": 0.5,
                  "seed": 0, "val_fraction": 0.3, "scenes": dataclasses.asdict(scenes)}
    metrics = export_tuned(trained.net, path, feats, 41, 4, provenance, trained.val_scenes,
                           trained.val_reference, trained.val_ids, scenes.describe_at)
    model = load_model(path, device="cpu")
    assert model.score_at == at
    assert model.decoding is not None and len(model.decoding.min_durations(len(model.classes))) == 3
    assert model.provenance["val_detection"]["segment_f1"] == metrics["segment_f1"]
    assert 0 <= model.provenance["metrics"]["val_single_accuracy"] <= 1
    name, audio, rate = trained.val_scenes[0]
    sf.write(tmp_path / name, audio, rate)
    done = subprocess.run([sys.executable, "-m", "streamtag", "tag", "--model", str(path), "-f", "dcase",
                           str(tmp_path / name)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("filename\tonset\toffset\tevent_label\n")
    (tmp_path / "est.tsv").write_text(done.stdout)
    assert set(read_tsv(tmp_path / "est.tsv")) <= {name}
    # the user's path: their annotations, streamtag's events and window scores, the DCASE metrics and PSDS
    write_tsv(tmp_path / "ref.tsv", [(name, a) for a in trained.val_reference[name]])
    frames = subprocess.run([sys.executable, "-m", "streamtag", "tag", "--model", str(path), "--frames", "-f", "jsonl",
                             str(tmp_path / name)], capture_output=True, text=True, timeout=300)
    assert frames.returncode == 0, frames.stderr
    (tmp_path / "frames.jsonl").write_text(frames.stdout)
    windows = [w for w in map(json.loads, frames.stdout.splitlines()) if w["type"] == "window"]
    assert windows and all(abs(w["at"] - (w["start"] + at * (w["end"] - w["start"]))) < 2e-6 for w in windows)
    scored = subprocess.run([sys.executable, "-m", "train", "score", str(tmp_path / "ref.tsv"),
                             str(tmp_path / "est.tsv"), "--frames", str(tmp_path / "frames.jsonl")],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert scored.returncode == 0, scored.stderr
    assert "; PSDS " in scored.stdout and "(1 files, " in scored.stdout
    # tuned again from its provenance alone (its folds, their share, the seed): the same validation scenes, so the
    # same tuning and figures
    again = retune(path, feats, tmp_path / "again.pt")
    assert again == metrics
    retuned = load_model(tmp_path / "again.pt", device="cpu")
    assert retuned.decoding == model.decoding and np.array_equal(retuned.thresholds, model.thresholds)
    assert retuned.score_at == at


def test_ambient_backgrounds_come_from_the_folds_asked(tones, tmp_path):
    from test_train_data import make_esc50
    from train.data.datasets import read_dataset

    d = read_us8k(tones)
    esc = read_dataset("esc10", make_esc50(tmp_path / "esc"))
    recipe = SceneRecipe(duration=4.0, events=(1, 2), background="ambient")
    meta = write_scenes(d, tmp_path / "scenes", per_fold=2, recipe=recipe, folds=[1], backgrounds=esc,
                        background_folds=[2], quiet=True)
    assert len(read_tsv(meta / "fold1.tsv")) == 2
    from train.data.scenes import ambient_backgrounds
    ids = ambient_backgrounds(esc, [2])
    assert ids and all(esc.clips[i].fold == 2 and esc.classes[esc.clips[i].label] == "sea_waves"
                       for group in ids for i in group)
    with pytest.raises(DatasetError, match="no ambient background clips"):
        ambient_backgrounds(esc, [9])
    with pytest.raises(DatasetError, match="needs --backgrounds"):
        write_scenes(d, tmp_path / "none", per_fold=1, recipe=recipe, folds=[1], quiet=True)
    # a background of ESC clips played one after another: the scene's background is ESC audio, set to -50 LUFS
    pool = list(d.clips) + list(esc.clips)
    offset = len(d.clips)
    ids1 = [i for i, c in enumerate(d.clips) if c.fold == 1]
    plan = plan_scenes(pool, ids1, 1, np.random.default_rng(0), recipe, SR, lambda i: 2 * SR,
                       [[offset + i for i in group] for group in ids])[0]
    assert plan.background and all(j >= offset for j in plan.background)
    scene = render(plan, lambda i: np.resize(esc.load(esc.clips[i - offset], SR), 2 * SR) if i >= offset
                   else d.load(d.clips[i], SR), [c.label for c in pool], SR, recipe)
    assert abs(loudness(scene.background, SR) - (-50.0 + 20 * np.log10(scene.gain))) < 0.05


def test_detect_command_reports_written_scenes(tones, random_model_file, tmp_path):
    from streamtag.modelfile import load_network, read_metadata, save_model

    d = read_us8k(tones)
    write_scenes(d, tmp_path / "scenes", per_fold=2, recipe=SceneRecipe(duration=4.0), folds=[2], quiet=True)
    meta = read_metadata(random_model_file)  # the same network, as a training run would have recorded it
    trained = save_model(tmp_path / "trained.pt", load_network(random_model_file), classes=meta["classes"],
                         spec=FeatureSpec(), window_frames=41, hop_frames=10, thresholds=meta["thresholds"],
                         provenance={"train_clips": 100, "val_clips": 20})
    done = subprocess.run([sys.executable, "-m", "train", "detect", str(tmp_path / "scenes"), "--fold", "2",
                           "--model", str(random_model_file), "--model", str(trained), "--name", "a",
                           "--name", "b", "-o", str(tmp_path / "report")], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "report.json").read_text())
    assert list(rows) == ["a", "b"] and rows["a"]["segment_f1"] == rows["b"]["segment_f1"]
    assert "training_clips" not in rows["a"] and rows["b"]["training_clips"] == 120  # for `train curve`
    assert rows["a"]["files"] == 2 and set(rows["a"]["delay"]) == {"detected", "median", "p90"}
    table = (tmp_path / "report.md").read_text()
    assert "| a | " in table and "Scaper paper: CNN" in table
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_single_clips_and_overlays_mix_as_short_scenes_of_one_fold_at_the_levels_asked(tones):
    from train.data.scenes import ALONE_SNR_DB, plan_pairs, plan_singles

    d = read_us8k(tones)

    def length_of(i):
        return len(d.load(d.clips[i], SR))

    ids = [i for i, c in enumerate(d.clips) if c.fold == 2]
    singles = plan_singles(d.clips, ids, 8, np.random.default_rng(0), length_of, min_length=SR)
    assert singles == plan_singles(d.clips, ids, 8, np.random.default_rng(0), length_of, min_length=SR)
    for plan in singles:
        (event,) = plan.events
        assert plan.fold == d.clips[event.clip].fold == 2 and event.onset == 0 and event.snr_db == ALONE_SNR_DB
        assert plan.length == max(length_of(event.clip), SR)  # a clip shorter than a window is padded
    recipe = SceneRecipe()
    pairs = plan_pairs(d.clips, ids, 8, np.random.default_rng(1), length_of, level_db=(0.0, 20.0))
    assert len(pairs) == 8 and len({min(e.snr_db for e in p.events) for p in pairs}) > 1
    for plan in pairs:
        a, b = plan.events
        assert d.labels[a.clip] != d.labels[b.clip] and d.clips[a.clip].group != d.clips[b.clip].group
        assert d.clips[a.clip].fold == d.clips[b.clip].fold == plan.fold == 2 and a.onset == b.onset == 0
        assert max(a.snr_db, b.snr_db) == ALONE_SNR_DB and min(a.snr_db, b.snr_db) >= ALONE_SNR_DB - 20
        scene = render(plan, lambda i: d.load(d.clips[i], SR), d.labels, SR, recipe)
        for track, (start, stop), event in zip(scene.tracks, scene.spans, plan.events):
            assert abs(loudness(track[start:stop], SR) - loudness(scene.background, SR) - event.snr_db) < 0.05
    with pytest.raises(DatasetError, match="one fold"):
        plan_singles(d.clips, range(len(d.clips)), 1, np.random.default_rng(0), length_of)
    with pytest.raises(DatasetError, match="one fold"):
        plan_pairs(d.clips, range(len(d.clips)), 1, np.random.default_rng(0), length_of)


@pytest.mark.parametrize("factor", [0.9, 1.12])
def test_a_scene_played_faster_or_slower_keeps_its_events_inside_their_moved_spans(tones, factor):
    from train.data.augment import change_speed
    from train.data.scenes import spans_at_speed

    d = read_us8k(tones)
    plan = _plans(d, 1, seed=5)[0]
    scene = render(plan, lambda i: d.load(d.clips[i], SR), d.labels, SR, SceneRecipe())
    moved = spans_at_speed(scene.spans, factor)
    played = change_speed(scene.audio, factor)
    tracks = [change_speed(t, factor) for t in scene.tracks]
    # the mix played at another speed is its parts played at that speed (so the spans apply to the mix)
    np.testing.assert_allclose(change_speed(scene.background, factor) + np.sum(tracks, axis=0), played, atol=1e-5)
    for track, (start, stop), (was_start, was_stop) in zip(tracks, moved, scene.spans):
        assert abs((stop - start) - (was_stop - was_start) / factor) <= 1
        energy = np.square(track, dtype=np.float64)
        edge = 64  # samples: the resampling filter's reach
        outside = energy[:max(start - edge, 0)].sum() + energy[stop + edge:].sum()
        assert outside < 1e-6 * energy.sum()
        tenth = max((stop - start) // 10, 1)
        assert energy[start:start + tenth].sum() > 0 and energy[stop - tenth:stop].sum() > 0


def test_training_scenes_sound_over_ambient_backgrounds_and_take_clips_and_overlays(tones, tmp_path):
    from test_train_data import make_esc50
    from train.data.augment import Augment
    from train.data.datasets import read_dataset
    from train.fit.strong import SceneMaker, Scenes, SceneSource, ambient

    feats = load_features(read_us8k(tones), FeatureSpec(), tmp_path / "cache", quiet=True)
    esc_root = make_esc50(tmp_path / "esc")
    scenes = Scenes(recipe=SceneRecipe(duration=3.0, events=(1, 2), background="both"), backgrounds=str(esc_root),
                    background_folds=[1])
    backgrounds = ambient(scenes, SR)
    esc = read_dataset("esc10", esc_root)
    sea = [esc.load(c, SR) for c in esc.clips if c.fold == 1 and esc.classes[c.label] == "sea_waves"]
    assert len(backgrounds) == 1 and len(sea) == 2  # the fixture's one ambient class, fold 1: two clips
    assert all(np.array_equal(a, b) for a, b in zip(backgrounds[0], sea))
    with pytest.raises(DatasetError, match="needs --backgrounds"):
        ambient(dataclasses.replace(scenes, backgrounds=None), SR)
    assert ambient(Scenes(), SR) == []
    ids = np.arange(len(feats.dataset.clips))
    maker = SceneMaker(feats, ids, scenes.recipe, backgrounds)
    made = maker.make(12, np.random.default_rng(0))

    def over_ambient(scene):  # its background starts with one of the ESC clips, scaled
        n = min(len(backgrounds[0][0]), len(scene.background))
        return any(np.corrcoef(scene.background[:n], clip[:n])[0, 1] > 0.999 for clip in backgrounds[0])

    kinds = [over_ambient(s) for s in made]
    assert any(kinds) and not all(kinds)  # "both": some scenes over each
    # single clips and overlays join the epoch as short scenes: one or two classes a window
    source = SceneSource(maker, 0, 41, 4, 4, Augment(), batch_size=10_000, singles=4, pairs=4)
    (x, y), = list(source.epoch(np.random.default_rng(1)))
    assert x.shape[0] == y.shape[0] > 0 and x.shape[1:] == (2, 60, 41)
    assert y.sum(axis=1).max() == 2 and (y.sum(axis=1) == 1).any()
    # with an edge weight, each batch carries its loss weights: heavier only at a class's onsets and offsets
    source = SceneSource(maker, 3, 41, 4, 4, Augment(), batch_size=10_000, edge_weight=5.0)
    (x, y, w), = list(source.epoch(np.random.default_rng(1)))
    assert w.shape == y.shape and set(np.unique(w)) == {1.0, 5.0}
    assert 0 < (w == 5).mean() < 0.5


def test_strong_refuses_bad_counts_and_options_in_one_line(tmp_path):
    for extra, message in ((["--clips-per-epoch", "-1"], "must be 0 or more"),
                           (["--scenes-per-epoch", "0"], "not all 0"),
                           (["--augment", "mix"], "a scene mixes its own"),
                           (["--background", "both"], "needs --backgrounds"),
                           (["--describe-at", "late"], "--describe-at takes centre, end or a share"),
                           (["--describe-at", "1.5"], "--describe-at takes centre, end or a share"),
                           (["--edge-weight", "0"], "--edge-weight must be a positive number"),
                           (["--edge-weight", "nan"], "--edge-weight must be a positive number"),
                           (["--train-share", "0"], "--train-share must be in (0, 1]")):
        done = subprocess.run([sys.executable, "-m", "train", "strong", str(tmp_path), "--dataset", "us8k",
                               "--test-fold", "1", "--export", str(tmp_path / "m.pt"), *extra],
                              capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_curve_fits_a_line_per_doubling_and_says_where_it_meets_the_targets(tmp_path):
    from train.reports.curve import fit

    exact = fit([100, 200, 400, 800], [0.30, 0.35, 0.40, 0.45])
    assert exact.slope == pytest.approx(0.05) and exact.residual_sd == pytest.approx(0, abs=1e-12)
    assert exact.at(1600) == pytest.approx((0.50, 0.50, 0.50))
    assert exact.reaches(0.60, higher_is_better=True) == pytest.approx(6400)
    assert exact.reaches(0.60, higher_is_better=False) is None  # more data takes an error rate up
    noisy = fit([100, 100, 400, 400], [0.30, 0.34, 0.42, 0.38])
    value, low, high = noisy.at(1600)
    assert value == pytest.approx(0.48) and low < 0.45 and high > 0.51  # the scatter widens the interval ...
    assert noisy.at(400)[2] - noisy.at(400)[1] < high - low  # ... the more, the farther from the points
    with pytest.raises(ValueError, match="two amounts of data"):
        fit([100, 100, 100], [0.3, 0.4, 0.5])

    def row(clips, f1, er, ev):
        return {"training_clips": clips, "segment_f1": f1, "segment_er": er, "event_f1": ev}

    (tmp_path / "a.json").write_text(json.dumps({"quarter": row(400, 0.40, 0.75, 0.06),
                                                 "held in": {"segment_f1": 0.9, "segment_er": 0.1, "event_f1": 0.5}}))
    (tmp_path / "b.json").write_text(json.dumps({"half": row(800, 0.45, 0.70, 0.08),
                                                 "all": row(1600, 0.50, 0.65, 0.10)}))
    done = subprocess.run([sys.executable, "-m", "train", "curve", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                           "--at", "6400", "-o", str(tmp_path / "curve")], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "curve.md").read_text()
    assert "| quarter | 400 |" in table and "held in" not in table  # only models that say what they learnt from
    assert "| segment F1 | +0.050 | 0.000 | 0.60 | 6,400 | 0.600 (0.600 to 0.600) |" in table
    assert "| event F1 | +0.020 | 0.000 | 0.30 | more than a million | 0.140 (0.140 to 0.140) |" in table
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    (tmp_path / "list.json").write_text("[1, 2]")
    for args, message in (([str(tmp_path / "none.json")], "no such file"),
                          ([str(tmp_path / "list.json")], "not a report of `python -m train detect`"),
                          ([str(tmp_path / "a.json")], "three models or more")):
        bad = subprocess.run([sys.executable, "-m", "train", "curve", *args, "-o", str(tmp_path / "x")],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
        assert bad.returncode != 0 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
