"""train/data/overlay.py: planning and mixing two-event overlays, and writing them to disk.

Levels are measured on the output audio, by fitting each source's tone in it;
a written dataset is checked against its CSV by rebuilding every mix from the
source clips, gains and offsets the CSV lists.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamtag.audio import load_audio
from streamtag.errors import DatasetError
from streamtag.features import FeatureSpec
from test_train_data import SR, make_us8k
from train.data.datasets import Clip, read_us8k
from train.data.overlay import PEAK, Overlay, frame_activity, mix, parse_levels, plan_overlays, write_overlays

REPO = Path(__file__).resolve().parents[1]


def sine(freq: float, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def amplitude_of(audio: np.ndarray, freq: float, lo: int, hi: int) -> float:
    """Amplitude of the sinusoid at ``freq`` in ``audio[lo:hi]`` (least squares on sin and cos)."""
    t = np.arange(lo, hi) / SR
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, audio[lo:hi].astype(np.float64), rcond=None)
    return float(np.hypot(*coef))


def db(x: float) -> float:
    return float(20 * np.log10(x))


@pytest.mark.parametrize("levels", [(0.0, 0.0), (0.0, -20.0), (-20.0, 0.0), (-7.5, 0.0)])
def test_mix_levels_measured_on_the_output(levels):
    a = sine(441.0, 1.0, 0.9)  # loud, long
    b = sine(1764.0, 0.6, 0.05)  # 25 dB quieter in its file, shorter, starts later
    ov = Overlay(0, 1, 1, levels, (0, 4410))
    m = mix(a, b, ov)
    assert len(m.audio) == max(len(a), 4410 + len(b)) and np.array_equal(m.audio, m.parts.sum(axis=0))
    lo, hi = 4410, 4410 + len(b)  # both sound here
    measured_a = amplitude_of(m.audio, 441.0, lo, hi)
    measured_b = amplitude_of(m.audio, 1764.0, lo, hi)
    # each event's peak sits at PEAK times its level, whatever its level in its own file
    assert db(measured_a) == pytest.approx(db(PEAK) + levels[0], abs=0.05)
    assert db(measured_b) == pytest.approx(db(PEAK) + levels[1], abs=0.05)
    assert db(measured_a / measured_b) == pytest.approx(levels[0] - levels[1], abs=0.05)
    assert not m.parts[1, :4410].any() and not m.parts[1, hi:].any()  # b is silent outside its span
    assert np.abs(m.audio).max() <= 2 * PEAK + 1e-6
    assert m.gains[0] == pytest.approx(PEAK * 10 ** (levels[0] / 20) / np.abs(a).max(), rel=1e-6)


def test_mix_of_a_silent_clip_gets_gain_zero():
    m = mix(sine(441.0, 0.5, 0.5), np.zeros(100, np.float32), Overlay(0, 1, 1, (0.0, 0.0), (0, 0)))
    assert m.gains[1] == 0.0 and np.isfinite(m.audio).all()


def _clips() -> list[Clip]:
    """Fold 1: three classes; fold 2: three classes, two clips sharing a recording;
    fold 3: one class only (no partner anywhere)."""
    spec = [(1, 0, "r1"), (1, 1, "r2"), (1, 2, "r3"), (1, 0, "r4"), (1, 1, "r5"),
            (2, 0, "s1"), (2, 1, "s1"), (2, 2, "s2"), (2, 0, "s3"),
            (3, 0, "t1"), (3, 0, "t2")]
    return [Clip(Path(f"fold{f}/{k}.wav"), f, label, group) for k, (f, label, group) in enumerate(spec)]


def test_plan_keeps_folds_apart_and_pairs_different_classes_and_recordings():
    clips = _clips()
    ids = np.arange(len(clips))
    plan = plan_overlays(clips, ids, 300, np.random.default_rng(0), (0.0, 20.0), max_offset=1000)
    assert len(plan) == 300
    for k, ov in enumerate(plan):
        a, b = clips[ov.a], clips[ov.b]
        assert a.fold == b.fold == ov.fold
        assert a.label != b.label and a.group != b.group
        quiet = 1 if k % 2 == 0 else 0  # b is the quieter one in even mixes, a in odd ones
        assert ov.level_db[1 - quiet] == 0.0 and -20.0 <= ov.level_db[quiet] <= 0.0
        assert min(ov.offset) == 0 and 0 <= max(ov.offset) <= 1000
    assert {ov.fold for ov in plan} == {1, 2}  # fold 3 has a single class: its clips are never used
    usable = 9
    assert sorted(ov.a for ov in plan[:usable]) == list(range(usable))  # every usable clip once before repeats
    assert len({ov.level_db for ov in plan}) > 100 and len({ov.offset for ov in plan}) > 50
    # the same generator state gives the same plan; another gives another
    assert plan == plan_overlays(clips, ids, 300, np.random.default_rng(0), (0.0, 20.0), max_offset=1000)
    assert plan != plan_overlays(clips, ids, 300, np.random.default_rng(1), (0.0, 20.0), max_offset=1000)
    equal = plan_overlays(clips, ids, 10, np.random.default_rng(0))
    assert all(ov.level_db == (0.0, 0.0) and ov.offset == (0, 0) for ov in equal)
    with pytest.raises(DatasetError, match="no two clips of different classes"):
        plan_overlays(clips, [9, 10], 5, np.random.default_rng(0))
    assert plan_overlays(clips, [9, 10], 0, np.random.default_rng(0)) == []


def test_frame_activity_marks_the_frames_an_event_sounds_in():
    spec = FeatureSpec()
    part = np.zeros(20 * 512 + 1024, np.float32)
    part[3584:4096] = 0.5  # frame t covers samples [512 t, 512 t + 1024): frames 6 and 7 hold these
    quiet = np.zeros_like(part)
    quiet[:100] = 1e-6  # faint, but an event is judged against its own loudest frame
    active = frame_activity(np.stack([part, quiet, np.zeros_like(part)]), spec, 25)
    assert np.flatnonzero(active[:, 0]).tolist() == [6, 7]
    assert np.flatnonzero(active[:, 1]).tolist() == [0]
    assert not active[:, 2].any()  # a silent event sounds nowhere
    assert not active[21:].any()  # frames past the end of the audio (padding) are silent


def test_parse_levels():
    assert parse_levels("0") == (0.0, 0.0) and parse_levels("20") == (20.0, 20.0)
    assert parse_levels("0:20") == (0.0, 20.0)
    for bad in ("x", "20:0", "-3", "0:200"):
        with pytest.raises(DatasetError):
            parse_levels(bad)


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    return make_us8k(tmp_path_factory.mktemp("us8k"), folds=(1, 2), per_fold=6, missing=0)


def _rows(root: Path) -> list[dict]:
    with open(root / "metadata" / "overlays.csv", newline="") as f:
        return list(csv.DictReader(f))


def _peak_db(audio: np.ndarray, freq: float, lo: int, hi: int) -> float:
    """Level of the strongest component within 5% of ``freq`` in ``audio[lo:hi]``."""
    spectrum = np.abs(np.fft.rfft(audio[lo:hi] * np.hanning(hi - lo)))
    bins = np.fft.rfftfreq(hi - lo, 1 / SR)
    return db(spectrum[(bins > 0.95 * freq) & (bins < 1.05 * freq)].max())


def test_written_dataset_keeps_folds_and_matches_its_csv(tones, tmp_path):
    d = read_us8k(tones)
    out = tmp_path / "overlays"
    path = write_overlays(d, out, per_fold=5, seed=3, level_db=(20.0, 20.0), max_offset=0.2, quiet=True)
    rows = _rows(out)
    assert path == out / "metadata" / "overlays.csv" and len(rows) == 10
    assert (out / "metadata" / "overlays.json").is_file()
    assert sorted({int(r["fold"]) for r in rows}) == [1, 2]
    for r in rows:
        fold = int(r["fold"])
        file = out / "audio" / f"fold{fold}" / r["slice_file_name"]
        # folds stay apart: the mix and both its sources live in the same fold
        assert file.is_file()
        assert r["source_a"].startswith(f"audio/fold{fold}/") and r["source_b"].startswith(f"audio/fold{fold}/")
        assert r["classID_a"] != r["classID_b"] and r["class_a"] == f"class{r['classID_a']}"
        written, rate = sf.read(file, dtype="float32")
        assert rate == SR and len(written) / SR == pytest.approx(float(r["duration"]), abs=1e-5)
        # the CSV rebuilds the audio: sources times gains at offsets
        rebuilt = np.zeros(len(written))
        for s in "ab":
            src = load_audio(tones / r[f"source_{s}"], SR)
            at = round(float(r[f"offset_{s}"]) * SR)
            rebuilt[at:at + len(src)] += float(r[f"gain_{s}"]) * src
        np.testing.assert_allclose(written, rebuilt, atol=2e-6)
        # the level difference, measured on the written audio at each source's pitch, is 20 dB either way
        level_a, level_b = float(r["level_db_a"]), float(r["level_db_b"])
        assert sorted([level_a, level_b]) == [-20.0, 0.0]
        lo = max(round(float(r["offset_a"]) * SR), round(float(r["offset_b"]) * SR))
        hi = lo + 8192
        pitch = {s: 400.0 * 2 ** (int(r[f"classID_{s}"]) * 1.3) for s in "ab"}
        measured = _peak_db(written, pitch["a"], lo, hi) - _peak_db(written, pitch["b"], lo, hi)
        assert measured == pytest.approx(level_a - level_b, abs=1.5)
    # the quieter event alternates within each fold
    for fold in (1, 2):
        quiet = [r["level_db_a"] == "-20.000" for r in rows if int(r["fold"]) == fold]
        assert quiet == [k % 2 == 1 for k in range(len(quiet))]


def test_written_dataset_is_reproducible_from_its_seed(tones, tmp_path):
    d = read_us8k(tones)
    for name, seed in (("one", 7), ("two", 7), ("other", 8)):
        write_overlays(d, tmp_path / name, per_fold=4, seed=seed, quiet=True)
    one, two, other = (_rows(tmp_path / n) for n in ("one", "two", "other"))
    assert one == two and one != other
    for r in one:
        rel = Path("audio") / f"fold{r['fold']}" / r["slice_file_name"]
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
    # one fold's mixes do not depend on which other folds are written
    only2 = tmp_path / "only2"
    write_overlays(d, only2, per_fold=4, seed=7, folds=[2], quiet=True)
    assert _rows(only2) == [r for r in one if r["fold"] == "2"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_overlay_command_writes_a_dataset_and_refuses_bad_input(tones, tmp_path):
    out = tmp_path / "cli"
    p = _run("overlay", str(tones), "--dataset", "us8k", "--out", str(out), "--per-fold", "3", "--level-db", "0:20",
             "--quiet")
    assert p.returncode == 0, p.stderr
    assert len(_rows(out)) == 6 and "6 overlays of UrbanSound8K" in p.stderr
    assert "python -m train overlay" in (out / "metadata" / "overlays.json").read_text()
    for args, message in [
        (["--out", str(out)], "already exists and is not an empty folder"),
        (["--out", str(tmp_path / "x"), "--level-db", "loud"], "level difference must be"),
        (["--out", str(tmp_path / "x"), "--folds", "7"], "fold(s) [7] not present"),
        (["--out", str(tmp_path / "x"), "--per-fold", "0"], "--per-fold must be at least 1"),
    ]:
        p = _run("overlay", str(tones), "--dataset", "us8k", *args)
        assert p.returncode != 0 and message in p.stderr, p.stderr
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_real_urbansound8k_overlays_stay_in_their_folds(us8k_dir, tmp_path):
    d = read_us8k(us8k_dir)
    write_overlays(d, tmp_path / "o", per_fold=2, seed=0, level_db=(0.0, 0.0), quiet=True)
    rows = _rows(tmp_path / "o")
    assert sorted(int(r["fold"]) for r in rows) == sorted(f for f in d.folds for _ in range(2))
    for r in rows:
        assert r["source_a"].split("/")[1] == r["source_b"].split("/")[1] == f"fold{r['fold']}"
        assert r["classID_a"] != r["classID_b"] and r["fsID_a"] != r["fsID_b"]
        audio, _ = sf.read(tmp_path / "o" / "audio" / f"fold{r['fold']}" / r["slice_file_name"])
        assert 0.5 <= np.abs(audio).max() <= 1.0  # both at -6 dBFS peak: the mix peaks between -6 and 0 dBFS
