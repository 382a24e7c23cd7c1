"""train/: dataset readers, feature cache, segments, augmentation and voting,
on tiny datasets written here in both layouts (with missing clips and folds)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamtag.errors import DatasetError
from streamtag.features import FeatureSpec
from streamtag.frontend import compute_features
from train.data.augment import Augment, add_background, between_class_mix, change_speed, loudness_db
from train.data.cache import MIN_FRAMES, load_features, pad_audio
from train.data.datasets import Clip, Dataset, read_dataset, read_esc50, read_us8k, share_of_recordings
from train.data.segments import WINDOWS, gather, segments_of, window_starts
from train.data.sources import AudioSource, SegmentSource
from train.evaluate.clips import clip_votes, confusion, scores
from train.fit.crossval import split_validation

SR = 22050


def tone(label: int, seconds: float, rate: int, seed: int) -> np.ndarray:
    """A clip of class ``label``: a tone whose pitch encodes the class, in noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    freq = 400.0 * 2 ** (label * 1.3) * (1 + 0.02 * rng.standard_normal())
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def make_us8k(root: Path, classes: int = 3, folds=(1, 2, 3), per_fold: int = 4, absent_fold: int = 4,
              missing: int = 2) -> Path:
    """UrbanSound8K layout. ``absent_fold`` is listed but has no folder; ``missing``
    clips of fold 1 are listed but not written. One clip is FLAC listed as .wav."""
    rows = []
    for fold in list(folds) + [absent_fold]:
        (root / "audio" / f"fold{fold}").mkdir(parents=True, exist_ok=True) if fold != absent_fold else None
        for k in range(per_fold):
            label = k % classes
            fs_id = 1000 * fold + k // 2  # two slices per source recording
            name = f"{fs_id}-{label}-0-{k}.wav"
            rows.append([name, fs_id, 0.0, 1.0, 1, fold, label, f"class{label}"])
            if fold == absent_fold or (fold == 1 and k < missing):
                continue
            seconds = 0.6 if k == per_fold - 1 else 2.5  # one clip shorter than any window
            path = root / "audio" / f"fold{fold}" / name
            audio = tone(label, seconds, SR, seed=fold * 100 + k)
            if fold == 2 and k == 0:
                sf.write(path.with_suffix(".flac"), audio, SR)
            else:
                sf.write(path, audio, SR, subtype="PCM_16")
    (root / "metadata").mkdir(parents=True)
    with open(root / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        w.writerows(rows)
    return root


ESC_TARGETS = {0: "dog", 11: "sea_waves", 41: "chainsaw"}


def make_esc50(root: Path, folds=(1, 2, 3), per_class: int = 2) -> Path:
    """ESC-50 layout at 44.1 kHz Ogg: three ESC-10 classes with sparse target ids,
    plus one non-ESC-10 class; folds 4 and 5 absent; one listed clip missing."""
    (root / "audio").mkdir(parents=True)
    rows = []
    for fold in folds:
        for label, (target, name) in enumerate(sorted({**ESC_TARGETS, 5: "cat"}.items())):
            for k in range(per_class):
                fname = f"{fold}-{target}{k}-A-{target}.ogg"
                rows.append([fname, fold, target, name, str(target in ESC_TARGETS), f"{target}{k}", "A"])
                if fold == 3 and target == 41 and k == 0:
                    continue
                sf.write(root / "audio" / fname, tone(label, 1.5, 44100, seed=fold * 10 + k), 44100)
    (root / "meta").mkdir()
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def us8k(tmp_path_factory) -> Path:
    return make_us8k(tmp_path_factory.mktemp("us8k"))


@pytest.fixture(scope="module")
def esc(tmp_path_factory) -> Path:
    return make_esc50(tmp_path_factory.mktemp("esc50"))


@pytest.fixture(scope="module")
def us8k_feats(us8k, tmp_path_factory):
    return load_features(read_us8k(us8k), FeatureSpec(), tmp_path_factory.mktemp("cache"), quiet=True)


# --- readers -----------------------------------------------------------------

def test_us8k_reader_uses_present_folds_and_reports_missing(us8k):
    d = read_us8k(us8k)
    assert d.folds == [1, 2, 3]
    assert d.absent_folds == [4, 5, 6, 7, 8, 9, 10]
    assert len(d.clips) == 3 * 4 - 2
    assert sorted(d.missing) == sorted(["fold1/1000-0-0-0.wav", "fold1/1000-1-0-1.wav"] + [
        f"fold4/{4000 + k // 2}-{k % 3}-0-{k}.wav" for k in range(4)])
    assert d.classes == ["class0", "class1", "class2"]
    flac = [c for c in d.clips if c.path.suffix == ".flac"]
    assert len(flac) == 1 and flac[0].fold == 2  # listed as .wav, found by its stem
    text = d.summary()
    assert "folds 1-3 present" in text and "folds 4-10 absent" in text and "6 listed clips missing" in text


def test_esc10_subset_maps_sparse_targets_to_contiguous_labels(esc):
    d = read_esc50(esc, esc10=True)
    assert d.name == "ESC-10"
    assert d.classes == ["dog", "sea_waves", "chainsaw"]
    assert d.folds == [1, 2, 3] and d.absent_folds == [4, 5]
    assert d.missing == ["3-410-A-41.ogg"]
    assert sorted(set(d.labels.tolist())) == [0, 1, 2]
    chainsaw = [c for c in d.clips if c.label == 2]
    assert all("-41" in c.path.stem for c in chainsaw)
    full = read_dataset("esc50", esc)
    assert full.classes == ["dog", "cat", "sea_waves", "chainsaw"] and len(full.clips) == len(d.clips) + 6


@pytest.mark.parametrize("breakage, message", [
    ("no_dir", "no such directory"),
    ("no_csv", "metadata/UrbanSound8K.csv is missing"),
    ("bad_column", "missing column(s) classID"),
    ("bad_fold", "line 2: fold must be an integer"),
    ("no_audio", "none is on disk"),
])
def test_us8k_reader_says_what_is_wrong(tmp_path, breakage, message):
    root = tmp_path / "u"
    if breakage != "no_dir":
        make_us8k(root, folds=(1,), per_fold=2, missing=0)
        meta = root / "metadata" / "UrbanSound8K.csv"
        text = meta.read_text()
        if breakage == "no_csv":
            meta.unlink()
        elif breakage == "bad_column":
            meta.write_text(text.replace("classID", "klass"))
        elif breakage == "bad_fold":
            lines = text.splitlines()
            lines[1] = lines[1].replace(",1,0,", ",one,0,")
            meta.write_text("\n".join(lines) + "\n")
        elif breakage == "no_audio":
            for p in (root / "audio").rglob("*.wav"):
                p.unlink()
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_us8k(root)


def test_esc_reader_rejects_a_us8k_folder(us8k):
    with pytest.raises(DatasetError, match="not a ESC-50 folder: meta/esc50.csv is missing"):
        read_esc50(us8k)


def test_readers_accept_the_shared_partial_copies(us8k_dir, esc10_dir):
    u = read_us8k(us8k_dir)
    # folds 1 and 2 are complete; later folds may be present in part (the shared copy holds part of fold 3) or
    # whole (a full copy): every clip the CSV lists is there, and the folds are the official ones
    assert u.folds[:2] == [1, 2] and set(u.folds) <= set(range(1, 11)) and len(u.classes) == 10 and not u.missing
    per_class = np.bincount([c.label for c in u.clips if c.fold in (1, 2)], minlength=10)
    assert per_class.tolist() == [200, 78, 200, 200, 200, 196, 70, 240, 177, 200]  # folds 1-2: 1761 clips
    e = read_dataset("esc10", esc10_dir)
    assert e.folds == [1, 2, 3, 4, 5] and len(e.clips) == 400
    assert np.bincount(e.labels).tolist() == [40] * 10


# --- cache and segments -----------------------------------------------------

def test_a_share_of_recordings_keeps_folds_classes_and_recordings_whole():
    rng = np.random.default_rng(0)
    clips = [Clip(Path(f"{fold}-{label}-{rec}-{k}.wav"), fold, label, f"{fold}{label}{rec}")
             for fold in (1, 2) for label in range(3) for rec in range(8) for k in range(rng.integers(1, 5))]
    d = Dataset("toy", Path("."), ["a", "b", "c"], clips, [1, 2, 3], [])
    ids = np.array([i for i, c in enumerate(clips) if c.fold != 2 or c.label != 0])  # a stratum left out already
    kept = share_of_recordings(d, ids, 0.25, seed=1)
    assert set(kept) < set(ids)
    strata = {(c.fold, c.label) for c in (clips[i] for i in ids)}
    for fold, label in strata:  # every fold keeps every class, a quarter of its recordings, each whole
        groups = {clips[i].group for i in kept if (clips[i].fold, clips[i].label) == (fold, label)}
        assert len(groups) == 2
        assert {i for i in ids if clips[i].group in groups} <= set(kept)
    assert {(clips[i].fold, clips[i].label) for i in kept} == strata
    assert share_of_recordings(d, ids, 0.25, seed=1).tolist() == kept.tolist()
    assert share_of_recordings(d, ids, 0.25, seed=2).tolist() != kept.tolist()
    assert len(share_of_recordings(d, ids, 0.01, seed=1)) >= len(strata)  # at least one recording each
    assert share_of_recordings(d, ids, 1.0, seed=1).tolist() == ids.tolist()
    for share in (0.0, 1.5, float("nan")):
        with pytest.raises(DatasetError, match="a share of the recordings must be in"):
            share_of_recordings(d, ids, share, seed=1)


def test_short_clips_are_padded_with_silence_at_the_end():
    spec = FeatureSpec()
    audio = tone(0, 0.6, SR, 0)
    padded = pad_audio(audio, spec)
    assert len(padded) == spec.n_fft + (MIN_FRAMES - 1) * spec.hop_length
    assert np.array_equal(padded[:len(audio)], audio) and not padded[len(audio):].any()
    frames = compute_features(padded, spec)
    assert len(frames) == MIN_FRAMES
    # the frames the clip completes on its own are unchanged by the padding
    alone = compute_features(audio, spec)
    np.testing.assert_array_equal(frames[:len(alone)], alone)
    long_enough = tone(0, 3.0, SR, 0)
    assert pad_audio(long_enough, spec) is long_enough


def test_feature_cache_is_computed_once_and_keyed_by_spec(us8k, tmp_path, monkeypatch):
    d = read_us8k(us8k)
    first = load_features(d, FeatureSpec(), tmp_path, quiet=True)
    assert len(first.frame_offsets) == len(d.clips) + 1
    np.testing.assert_array_equal(first.clip_frames(3), compute_features(pad_audio(d.load(d.clips[3], SR),
                                                                                   FeatureSpec()), FeatureSpec()))
    np.testing.assert_array_equal(first.clip_audio(3), d.load(d.clips[3], SR))

    def refuse(*_):
        raise AssertionError("audio decoded again although cached")

    monkeypatch.setattr(type(d), "load", refuse)
    again = load_features(d, FeatureSpec(), tmp_path, quiet=True)
    np.testing.assert_array_equal(again.frames, first.frames)
    with pytest.raises(AssertionError, match="decoded again"):
        load_features(d, FeatureSpec(n_mels=40), tmp_path, quiet=True)  # another spec, another entry


def test_window_starts_drop_silence_but_keep_one_window():
    frames = np.full((100, 2, 60), -100.0, np.float32)
    frames[45:50, 0, 10] = -20.0  # a short event
    starts = window_starts(frames, 41, 20, -70.0)
    assert starts.tolist() == [20, 40]  # 0 ends before the event at 41; 40 covers 40..80
    assert window_starts(frames, 41, 20, None).tolist() == [0, 20, 40]
    silent = np.full((100, 2, 60), -100.0, np.float32)
    assert len(window_starts(silent, 41, 20, -70.0)) == 1


def test_segments_follow_piczak_overlaps_and_gather_windows(us8k_feats):
    f = us8k_feats
    assert WINDOWS == {"short": (41, 20), "long": (101, 10)}
    seg = segments_of(f.frames, f.frame_offsets, [0, 1], 41, 20, silence_db=None)
    n0 = (len(f.clip_frames(0)) - 41) // 20 + 1
    assert (seg.clip == 0).sum() == n0
    windows = gather(f.frames, seg.starts, 41)
    assert windows.shape == (len(seg.starts), 2, 60, 41)
    first_of_clip1 = f.clip_frames(1)[:41]
    np.testing.assert_array_equal(windows[n0], first_of_clip1.transpose(1, 2, 0))


def test_segment_source_yields_shuffled_one_hot_batches(us8k_feats):
    d = us8k_feats.dataset
    src = SegmentSource(us8k_feats, np.arange(len(d.clips)), 41, 20, batch_size=8)
    batches = list(src.epoch(np.random.default_rng(0)))
    assert sum(len(x) for x, _ in batches) == len(src)
    x, y = batches[0]
    assert x.dtype == np.float32 and x.shape[1:] == (2, 60, 41) and y.shape == (len(x), 3)
    assert np.array_equal(y.sum(axis=1), np.ones(len(x)))


# --- augmentation -----------------------------------------------------------

def test_augment_parse():
    a = Augment.parse("shift, gain=3,mix,specaugment")
    assert (a.shift, a.gain_db, a.background, a.mix, a.specaugment) == (True, 3.0, 0.0, 0.5, True)
    assert a.describe() == "shift,gain=3,mix=0.5,specaugment"
    assert not Augment.parse("none").on_audio
    with pytest.raises(ValueError, match="unknown augmentation 'pitch'"):
        Augment.parse("pitch")
    speed = Augment.parse("speed")
    assert speed.speed == 0.1 and speed.on_audio and speed.describe() == "speed=0.1"
    with pytest.raises(ValueError, match=r"speed .* in \[0, 0.5\), got 0.6"):
        Augment.parse("speed=0.6")


def test_speed_change_moves_pitch_and_length_together():
    a = np.sin(2 * np.pi * 1000.0 * np.arange(SR) / SR).astype(np.float32)  # 1 s at 1 kHz
    fast = change_speed(a, 1.1)
    assert fast.dtype == np.float32 and len(fast) == pytest.approx(SR / 1.1, abs=2)
    peak = np.argmax(np.abs(np.fft.rfft(fast))) * SR / len(fast)
    assert peak == pytest.approx(1100.0, abs=3)
    rows = change_speed(np.stack([a, 0.5 * a]), 0.9)  # each event's part, alike
    assert rows.shape == (2, len(change_speed(a, 0.9))) and np.allclose(rows[1], 0.5 * rows[0], atol=1e-6)
    assert change_speed(a, 1.0) is a
    aug = Augment(speed=0.1)
    factors = [aug.speed_factor(np.random.default_rng(s)) for s in range(200)]
    assert 0.9 <= min(factors) < 0.92 and 1.08 < max(factors) <= 1.1
    assert Augment().speed_factor(np.random.default_rng(0)) == 1.0


def test_between_class_mix_balances_loudness():
    a = tone(0, 1.0, SR, 1)
    b = 0.1 * tone(2, 1.0, SR, 2)  # 20 dB quieter
    assert np.array_equal(between_class_mix(a, b, 1.0), a)
    half = between_class_mix(a, b, 0.5)
    # at r = 0.5 both sources are equally loud in the mix
    spectrum = np.abs(np.fft.rfft(half))
    fa, fb = 400.0, 400.0 * 2 ** 2.6
    pa = spectrum[int(fa) - 20:int(fa) + 20].max()
    pb = spectrum[int(fb) - 40:int(fb) + 40].max()
    assert abs(20 * np.log10(pa / pb)) < 1.5
    mixed = add_background(a, b, 15.0)
    assert loudness_db(mixed - a) == pytest.approx(loudness_db(a) - 15.0, abs=0.1)


def test_audio_source_recomputes_features_and_mixes_targets(us8k_feats):
    d = us8k_feats.dataset
    ids = np.arange(len(d.clips))
    plain = AudioSource(us8k_feats, ids, 41, 20, Augment(), batch_size=1000)
    x, y = next(plain.epoch(np.random.default_rng(0)))
    ref = SegmentSource(us8k_feats, ids, 41, 20, batch_size=1000)
    x_ref, _ = next(ref.epoch(np.random.default_rng(0)))
    # without augmentation, the same windows as the cache (in another order)
    assert sorted(w.tobytes() for w in x) == sorted(w.tobytes() for w in x_ref)
    mixing = AudioSource(us8k_feats, ids, 41, 20, Augment(shift=True, gain_db=6, mix=1.0), batch_size=1000)
    x, y = next(mixing.epoch(np.random.default_rng(1)))
    assert np.allclose(y.sum(axis=1), 1.0)
    assert ((y > 0).sum(axis=1) == 2).mean() > 0.9  # every clip mixed with another class
    assert np.isfinite(x).all()


# --- decisions and splits ---------------------------------------------------

def test_probability_and_majority_voting_can_disagree():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.4, 0.6],  # clip 0: mean says 0, votes say 1
                      [0.2, 0.8]], np.float32)  # clip 5
    seg_clip = np.array([0, 0, 0, 5])
    clips, prob_vote, majority = clip_votes(probs, seg_clip)
    assert clips.tolist() == [0, 5]
    assert prob_vote.tolist() == [0, 1] and majority.tolist() == [1, 1]
    labels = np.zeros(6, np.int64)
    labels[5] = 1
    s = scores(probs, seg_clip, labels)
    assert (s["segment"], s["prob"], s["majority"]) == (0.5, 1.0, 0.5)
    assert confusion(s["truth"], s["pred_majority"], 2).tolist() == [[0, 1], [0, 1]]


def test_validation_split_keeps_recordings_whole(us8k_feats):
    d = us8k_feats.dataset
    ids = np.arange(len(d.clips))
    train, val = split_validation(us8k_feats, ids, 0.3, np.random.default_rng(0))
    assert len(val) and len(train) and sorted(np.concatenate([train, val]).tolist()) == ids.tolist()
    assert not {d.clips[i].group for i in train} & {d.clips[i].group for i in val}
