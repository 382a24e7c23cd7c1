"""The embedded default model: shipped in the package, used whenever no --model is given."""

import csv
import json
import subprocess
import sys

import numpy as np
import soundfile as sf

from streamtag.modelfile import DEFAULT_MODEL, load_model
from streamtag.scene import synthesize_scene
from conftest import US8K_CLASSES  # not tests.conftest: dcase_util installs a package named tests


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "streamtag", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_default_model_is_packaged_small_and_reproducible():
    assert DEFAULT_MODEL.is_file()
    assert DEFAULT_MODEL.stat().st_size <= 15 * 2 ** 20
    model = load_model(device="cpu")
    assert model.classes == US8K_CLASSES
    assert model.head == "multilabel" and model.hop_frames == 4 and model.window_frames == 41
    provenance = model.provenance
    assert provenance["command"].startswith("python -m train strong") and "--all" in provenance["command"]
    assert provenance["folds"] == [1, 2, 3] and "UrbanSound8K" in provenance["dataset"]
    # the data folder as the user typed it, never a path of the machine it was trained on
    assert provenance["data"] in provenance["command"] and not provenance["data"].startswith("/")
    assert 0 < provenance["metrics"]["val_single_accuracy"] <= 1
    assert 0 < provenance["val_detection"]["segment_f1"] <= 1
    assert np.all((model.thresholds > 0) & (model.thresholds < 1))
    # events are decoded as tuned on its validation scenes, by default
    assert model.decoding is not None and len(model.decoding.min_durations(len(model.classes))) == 10


def test_tag_works_without_model_option(tmp_path):
    audio, _ = synthesize_scene(seed=1)
    path = tmp_path / "scene.wav"
    sf.write(path, audio, 22050)
    result = run("tag", str(path))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events and all(e["label"] in US8K_CLASSES for e in events)


def test_real_clips_get_their_true_class(us8k_dir):
    """Smoke test on real clips (training clips are fine here): top-1 accuracy at least the model's recorded
    validation accuracy. The model card's figures come from cross-fold runs, not from this."""
    with open(us8k_dir / "metadata" / "UrbanSound8K.csv") as f:
        rows = list(csv.DictReader(f))
    rows = rows[::len(rows) // 60][:60]  # spread over both folds and all classes
    paths = [str(us8k_dir / "audio" / f"fold{r['fold']}" / r["slice_file_name"]) for r in rows]
    result = run("tag", "--clip", *paths)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == len(rows)
    truth = {p: r["class"] for p, r in zip(paths, rows)}
    correct = sum(line["top"][0] == truth[line["source"]] for line in lines)
    recorded = load_model(device="cpu").provenance["metrics"]["val_single_accuracy"]
    assert correct / len(rows) >= recorded, f"{correct}/{len(rows)} below the recorded {recorded:.1%}"


def test_demo_runs_on_the_default_model_without_a_sound_card():
    result = run("demo", "--seconds", "3", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "3.00 s of audio" in result.stderr, result.stderr  # the session summary
    if "synthesised street scene" in result.stderr:  # no microphone: the scene's sounds get tagged
        assert [json.loads(line)["label"] for line in result.stdout.splitlines()]
