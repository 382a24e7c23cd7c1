"""The Piczak CNN, its model file and ``streamtag info``."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from conftest import US8K_CLASSES
from streamtag.cli import main
from streamtag.errors import ModelError, ModelFileError, ModelNotFoundError
from streamtag.features import FeatureSpec
from streamtag.model import PiczakCNN, flat_size
from streamtag.modelfile import load_model, read_metadata, save_model
from streamtag.scorer import WindowScorer

SPEC = FeatureSpec()
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # the tests script nets too


def _windows(n: int, frames: int = 41, seed: int = 0) -> np.ndarray:
    """Feature-like windows: log-mel around -50 dB, delta around 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, 2, 60, frames)).astype(np.float32)
    x[:, 0] = x[:, 0] * 20 - 50
    x[:, 1] *= 10
    return x


def _trained_looking(net: PiczakCNN, seed: int = 1) -> PiczakCNN:
    """Give batch-norm statistics and normalisation non-trivial values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    net.set_normalization(mean=[[[-50.0]], [[0.0]]], std=[[[20.0]], [[10.0]]])
    return net.eval()


def _eager_probs(net: PiczakCNN, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.probabilities(net(torch.from_numpy(x))).numpy()


def _save(tmp_path, net: PiczakCNN, name: str = "m.pt", **kw):
    args = dict(classes=[f"c{i}" for i in range(net.n_classes)], spec=SPEC, window_frames=net.frames,
                hop_frames=10)
    args.update(kw)
    return save_model(tmp_path / name, net, **args)


@pytest.mark.parametrize("frames", [41, 101])
@pytest.mark.parametrize("head", ["multilabel", "single"])
def test_shapes_and_heads(frames, head):
    torch.manual_seed(0)
    net = PiczakCNN(7, frames=frames, dense=32, head=head).eval()
    assert net.fc1.in_features == {41: 240, 101: 800}[frames]  # 80 filters x 1 row x 3 or 10 columns
    x = torch.from_numpy(_windows(3, frames))
    logits = net(x)
    assert logits.shape == (3, 7)
    probs = net.probabilities(logits)
    assert ((probs >= 0) & (probs <= 1)).all()
    sums = probs.sum(dim=1)
    if head == "single":
        assert torch.allclose(sums, torch.ones(3), atol=1e-5)
    else:  # independent sigmoids: no reason to sum to one
        assert torch.allclose(probs, torch.sigmoid(logits))
    with pytest.raises(Exception, match="expected windows"):
        net(torch.zeros(1, 2, 60, frames + 1))


def test_first_layer_follows_piczak():
    net = PiczakCNN(10, dense=5000, batch_norm=False)
    assert net.conv1.weight.shape == (80, 2, 57, 6)
    assert net.conv2.weight.shape == (80, 80, 1, 3)
    assert net.fc2.weight.shape == (5000, 5000)
    assert net.conv1.bias is not None  # without batch norm the layers keep their bias
    assert PiczakCNN(10).conv1.bias is None


def test_bad_settings_raise_typed_errors():
    for kwargs in [dict(n_classes=0), dict(n_classes=3, frames=19), dict(n_classes=3, head="softmax"),
                   dict(n_classes=3, dropout=1.0), dict(n_classes=3, n_mels=3)]:
        with pytest.raises(ModelError):
            PiczakCNN(**kwargs)
    assert flat_size(60, 19) == 0 and flat_size(60, 20) > 0
    net = PiczakCNN(3, dense=8)
    with pytest.raises(ModelError, match="broadcast"):
        net.set_normalization(np.zeros(59), 1.0)
    with pytest.raises(ModelError, match="std > 0"):
        net.set_normalization(0.0, 0.0)


def test_normalisation_is_applied_inside():
    """A net with stored statistics on raw input equals a plain net on normalised input."""
    torch.manual_seed(0)
    plain = PiczakCNN(4, dense=16).eval()
    inside = PiczakCNN(4, dense=16).eval()
    inside.load_state_dict(plain.state_dict())
    mean = np.stack([np.linspace(-60, -40, 60), np.zeros(60)])[:, :, None]
    std = np.stack([np.linspace(10, 30, 60), np.full(60, 5.0)])[:, :, None]
    inside.set_normalization(mean, std)
    x = _windows(2)
    with torch.no_grad():
        expected = plain(torch.from_numpy(((x - mean) / std).astype(np.float32)))
        got = inside(torch.from_numpy(x))
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, plain(torch.from_numpy(x)), atol=1e-2)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_torchscript_matches_eager(batch_norm):
    torch.manual_seed(0)
    net = _trained_looking(PiczakCNN(10, frames=101, dense=48, batch_norm=batch_norm))
    scripted = torch.jit.script(net)
    x = torch.from_numpy(_windows(4, 101))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(scripted.probabilities(scripted(x)).numpy(),
                                   net.probabilities(net(x)).numpy(), atol=1e-6)


def test_round_trip_keeps_metadata_and_outputs(tmp_path):
    torch.manual_seed(0)
    net = _trained_looking(PiczakCNN(10, dense=48, head="single"))
    thresholds = np.linspace(0.1, 0.9, 10)
    provenance = {"dataset": "UrbanSound8K", "folds": {"train": [1], "validation": [2]}, "epochs": 3,
                  "metrics": {"accuracy": 0.5}, "code_version": "abc123"}
    path = _save(tmp_path, net, classes=US8K_CLASSES, hop_frames=7, thresholds=thresholds,
                 provenance=provenance, score_at=0.9)
    model = load_model(path, device="cpu")
    assert model.score_at == 0.9
    assert model.classes == US8K_CLASSES
    assert model.spec == SPEC
    assert (model.window_frames, model.hop_frames, model.head) == (41, 7, "single")
    np.testing.assert_allclose(model.thresholds, thresholds, rtol=1e-6)
    assert model.thresholds.dtype == np.float32 and model.thresholds.shape == (10,)
    for key, value in provenance.items():
        assert model.provenance[key] == value
    assert {"streamtag_version", "torch_version", "saved_at"} <= set(model.provenance)
    assert model.metadata["architecture"] == net.config()
    assert model.metadata["schema"] == 1 and model.metadata["quantized"] is False
    assert (model.device, model.name) == ("cpu", "m")
    mean, std = model.normalization()
    np.testing.assert_array_equal(mean, net.feature_mean.numpy())
    np.testing.assert_array_equal(std, net.feature_std.numpy())

    x = _windows(5)
    probs = model.predict(x)
    assert probs.dtype == np.float32 and probs.shape == (5, 10)
    np.testing.assert_allclose(probs, _eager_probs(net, x), atol=1e-6)
    assert net.training is False and not (tmp_path / "m.pt.partial").exists()


def test_predict_batches_and_validates(random_model_file):
    model = load_model(random_model_file)
    x = _windows(11)
    whole = model.predict(x)
    atol = 1e-6 if model.device == "cpu" else 1e-5  # cuDNN picks its algorithm, so its sum order, per batch size
    np.testing.assert_allclose(model.predict(x, batch_size=4), whole, atol=atol)
    np.testing.assert_allclose(model.predict(x[3:4]), whole[3:4], atol=atol)
    np.testing.assert_allclose(model.predict(x.astype(np.float64)), whole, atol=atol)
    assert model.predict(x[:0]).shape == (0, 10)
    assert len(np.unique(whole.round(4))) > 10  # the windows really give different answers
    with pytest.raises(ModelError, match="shape"):
        model.predict(x[:, :, :, :40])
    with pytest.raises(ModelError, match="shape"):
        model.predict(x[0])
    with pytest.raises(ModelError, match="batch_size"):
        model.predict(x, batch_size=0)
    bad = x.copy()
    bad[2, 0, 5, 5] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        model.predict(bad)


def _stretch(frames: int, seed: int = 0) -> np.ndarray:
    """A stretch of frames ``(T, 2, 60)`` as the frontend emits them."""
    return _windows(1, frames, seed)[0].transpose(2, 0, 1).copy()


@pytest.mark.parametrize("frames", [41, 101])
def test_stem_then_classify_is_the_network(frames):
    torch.manual_seed(0)
    net = _trained_looking(PiczakCNN(10, frames=frames, dense=32))
    x = torch.from_numpy(_windows(3, frames))
    with torch.no_grad():
        columns = net.stem(x)
        assert columns.shape == (3, 80, 4, frames - 5)
        assert torch.equal(net.classify(columns), net(x))
        # a column depends on its 6 frames only: the stem of a longer stretch holds every window's columns
        long = torch.from_numpy(_windows(1, frames + 30, seed=4))
        torch.testing.assert_close(net.stem(long)[..., 17:17 + frames - 5], net.stem(long[..., 17:17 + frames]),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("frames", [41, 101])
def test_first_pooling_is_piczaks_max_pool(frames):
    from streamtag.model import POOL1

    torch.manual_seed(0)
    net = PiczakCNN(10, frames=frames, dense=32).eval()
    columns = torch.randn(5, 80, 4, frames - 5)
    pooled = torch.nn.MaxPool2d(*POOL1)(columns)
    seen = []
    net.conv2.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        net.classify(columns)
    assert torch.equal(seen[0], pooled)


def _stream(scorer, frames: np.ndarray, cuts, ends: np.ndarray) -> np.ndarray:
    """Push ``frames`` to ``scorer`` in pieces split at ``cuts``, asking each piece for the windows it completes."""
    out = []
    for piece in np.split(np.arange(len(frames)), cuts):
        if len(piece):
            mine = ends[(ends >= piece[0]) & (ends <= piece[-1])]
            out.append(scorer.push(frames[piece], mine))
    return np.concatenate(out)


@pytest.mark.parametrize("frames", [41, 101])
def test_stem_scorer_equals_predict_on_the_windows(tmp_path, frames):
    from streamtag.modelfile import StemScorer
    from streamtag.scorer import CHUNK_FRAMES

    torch.manual_seed(0)
    net = _trained_looking(PiczakCNN(10, frames=frames, dense=48))
    model = load_model(_save(tmp_path, net), device="cpu")
    scorer = model.scorer()
    assert isinstance(scorer, StemScorer)
    stretch = _stretch(CHUNK_FRAMES + 300)
    view = np.lib.stride_tricks.sliding_window_view(stretch, frames, axis=0)
    rng = np.random.default_rng(0)
    last = len(stretch) - 1
    for ends, cuts in [
        (np.arange(frames - 1, 400), np.arange(1, 400)),  # live at a hop of one frame: a frame per call
        (np.arange(frames - 1, last + 1, 4), np.sort(rng.choice(last, 40, replace=False))),  # uneven reads
        (np.arange(frames - 1, last + 1, 150), []),  # far apart, all in one call longer than a chunk
        (np.array([frames - 1, frames + 2, frames + 40, 700, 701]), [frames, 600]),  # unevenly spaced
    ]:
        scorer.reset()
        expected = model.predict(np.ascontiguousarray(view[ends - (frames - 1)]))
        np.testing.assert_allclose(_stream(scorer, stretch, cuts, ends), expected, rtol=0, atol=1e-6)


def test_scorer_rejects_bad_frames_and_windows_it_cannot_score(tmp_path):
    torch.manual_seed(0)
    model = load_model(_save(tmp_path, _trained_looking(PiczakCNN(10, dense=48))), device="cpu")
    scorer = model.scorer()
    frames = _stretch(100)
    assert scorer.push(frames[:50], np.array([], dtype=np.int64)).shape == (0, 10)
    for ends in ([40], [49], [50, 50], [60, 55], [100]):  # before this call, not increasing, beyond it
        with pytest.raises(ModelError, match="window ends"):
            scorer.push(frames[50:], np.array(ends))
    with pytest.raises(ModelError, match="frames of shape"):
        scorer.push(frames[50:, :, :50], np.array([60]))
    bad = frames[50:].copy()
    bad[3, 1, 3] = np.inf
    with pytest.raises(ModelError, match="NaN"):
        scorer.push(bad, np.array([60]))


def test_int8_at_load_quantizes_the_dense_layers_of_a_float_file(tmp_path):
    torch.manual_seed(0)
    net = _trained_looking(PiczakCNN(10, frames=41, dense=48))
    path = _save(tmp_path, net)
    model, fast = load_model(path, device="cpu"), load_model(path, device="cpu", int8=True)
    assert not model.metadata["quantized"] and fast.metadata["quantized"]
    assert not read_metadata(path)["quantized"], "the file itself is left as it was"
    windows = _windows(16, 41, seed=3)
    exact, approx = model.predict(windows), fast.predict(windows)
    assert np.abs(approx - exact).max() < 0.02 and not np.array_equal(approx, exact)
    # the same as a file saved in int8, and its scorer shares the stem as before; activations are quantised
    # per batch, so compare window by window (live, a call scores one window)
    saved = load_model(_save(tmp_path, net, name="q.pt", quantize=True), device="cpu")
    np.testing.assert_allclose(approx, saved.predict(windows), atol=1e-6)
    frames, ends = _stretch(120), np.arange(40, 120, 3)
    view = np.lib.stride_tricks.sliding_window_view(frames, 41, axis=0)
    np.testing.assert_allclose(_stream(fast.scorer(), frames, ends + 1, ends),
                               fast.predict(np.ascontiguousarray(view[ends - 40]), batch_size=1), atol=1e-6)


def test_a_file_without_the_stem_is_scored_window_by_window(tmp_path):
    """Model files saved before the stem was exported hold ``forward`` only."""
    from streamtag.modelfile import METADATA_NAME

    class ForwardOnly(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.probabilities(self.net(x))

    torch.manual_seed(0)
    net = _trained_looking(PiczakCNN(10, dense=48))
    metadata = json.dumps(read_metadata(_save(tmp_path, net)))
    old = tmp_path / "old.pt"
    torch.jit.save(torch.jit.script(ForwardOnly(net)), str(old), _extra_files={METADATA_NAME: metadata})
    model = load_model(old, device="cpu")
    assert not hasattr(model.module, "classify_pooled")
    scorer = model.scorer()
    assert type(scorer) is WindowScorer
    frames, ends = _stretch(120), np.arange(40, 120, 4)
    view = np.lib.stride_tricks.sliding_window_view(frames, 41, axis=0)
    np.testing.assert_allclose(_stream(scorer, frames, [30, 45, 46, 90], ends), _eager_probs(net, view[ends - 40]),
                               atol=1e-6)


def test_a_file_from_before_score_at_scores_the_window_centre(tmp_path, random_model_file):
    _rewrite_metadata(random_model_file, tmp_path / "old.pt", lambda m: m.pop("score_at"))
    assert load_model(tmp_path / "old.pt").score_at == 0.5


def test_random_model_fixture_is_as_documented(random_model_file):
    meta = read_metadata(random_model_file)
    assert meta["classes"] == US8K_CLASSES and meta["thresholds"] == [0.5] * 10
    assert meta["window_frames"] == 41 and meta["architecture"]["dense"] == 64


def test_save_rejects_inconsistent_arguments(tmp_path):
    net = PiczakCNN(3, dense=8)
    for kwargs, match in [(dict(classes=["a", "b"]), "3 outputs"), (dict(classes=["a", "a", "b"]), "distinct"),
                          (dict(window_frames=101), "41 frames"), (dict(hop_frames=0), "hop_frames"),
                          (dict(thresholds=[0.5, 2.0, 0.5]), r"\[0, 1\]"), (dict(thresholds=[0.5]), "3 thresholds"),
                          (dict(spec=FeatureSpec(n_mels=40)), "40 mel bands"),
                          (dict(score_at=1.5), "score_at"), (dict(score_at=float("nan")), "score_at"),
                          (dict(provenance={"when": object()}), "JSON")]:
        with pytest.raises(ModelError, match=match):
            _save(tmp_path, net, **kwargs)
    assert list(tmp_path.iterdir()) == []


def _rewrite_metadata(src, dst, change) -> None:
    """Copy a model file, editing its streamtag.json."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("/extra/streamtag.json"):
                meta = json.loads(data)
                change(meta)
                data = json.dumps(meta).encode()
            zout.writestr(item, data)


def test_unusable_files_give_clear_errors(tmp_path, random_model_file):
    good = random_model_file.read_bytes()
    cases = {}
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    cases["truncated.pt"] = "truncated"
    (tmp_path / "text.pt").write_text("hello")
    cases["text.pt"] = "not a streamtag model"
    with zipfile.ZipFile(tmp_path / "foreign.pt", "w") as z:
        z.writestr("a/data.pkl", b"x")
    cases["foreign.pt"] = "no streamtag.json"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "plain_torchscript.pt"))
    cases["plain_torchscript.pt"] = "no streamtag.json"
    _rewrite_metadata(random_model_file, tmp_path / "schema.pt", lambda m: m.update(schema=2))
    cases["schema.pt"] = "schema 2.*upgrade"
    _rewrite_metadata(random_model_file, tmp_path / "classes.pt", lambda m: m.update(classes=["a", "b"],
                                                                                     thresholds=[0.5, 0.5]))
    cases["classes.pt"] = "10 outputs for 2 classes"
    _rewrite_metadata(random_model_file, tmp_path / "spec.pt", lambda m: m["spec"].update(hop_length=0))
    cases["spec.pt"] = "hop_length"
    _rewrite_metadata(random_model_file, tmp_path / "nothresh.pt", lambda m: m.pop("thresholds"))
    cases["nothresh.pt"] = "'thresholds' missing"
    _rewrite_metadata(random_model_file, tmp_path / "score_at.pt", lambda m: m.update(score_at="end"))
    cases["score_at.pt"] = "score_at must be a number"
    flipped = bytearray(good)
    at = good.index(b"PK\x03\x04", len(good) // 3) - 100  # inside some stored tensor
    flipped[at] ^= 0xFF
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    cases["flipped.pt"] = "corrupt|checksum"
    for name, match in cases.items():
        with pytest.raises(ModelFileError, match=match):
            load_model(tmp_path / name)
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(ModelFileError, match="directory"):
        load_model(tmp_path)


def test_device_choice(random_model_file):
    assert load_model(random_model_file).device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert load_model(random_model_file, device="cpu").device == "cpu"
    with pytest.raises(ModelError, match="unknown device"):
        load_model(random_model_file, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_model(random_model_file, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path(random_model_file):
    model = load_model(random_model_file)
    assert model.device == "cuda"
    assert next(model.module.parameters()).is_cuda
    x = _windows(300)  # more than one internal batch
    on_cpu = load_model(random_model_file, device="cpu").predict(x)
    np.testing.assert_allclose(model.predict(x), on_cpu, atol=1e-5)
    # batch 1 is where cuDNN picks TF32 convolutions unless load_model holds them to float32 (3e-4 off)
    np.testing.assert_allclose(model.predict(x[:20], batch_size=1), on_cpu[:20], atol=1e-5)


def test_int8_dense_layers_stay_close(tmp_path):
    torch.manual_seed(0)
    net = _trained_looking(PiczakCNN(10, dense=256))
    model = load_model(_save(tmp_path, net, quantize=True))
    assert model.metadata["quantized"] is True and model.device == "cpu"  # int8 runs on the CPU only
    x = _windows(16)
    diff = np.abs(model.predict(x) - _eager_probs(net, x))
    assert diff.max() < 0.02 and diff.max() > 0  # really int8, and still close


def test_info_prints_the_metadata(random_model_file, capsys):
    assert main(["info", str(random_model_file)]) == 0
    out = capsys.readouterr().out
    for text in ["schema 1", "multilabel", "41 frames", "0.95 s", "dense 64", "22050 Hz", "none (random weights)",
                 "its window's centre (look-ahead 0.488 s)", *US8K_CLASSES]:
        assert text in out


def test_info_on_a_bad_file_is_one_line_and_exit_2(tmp_path, random_model_file):
    bad = tmp_path / "cut.pt"
    bad.write_bytes(random_model_file.read_bytes()[:3000])
    run = subprocess.run([sys.executable, "-m", "streamtag", "info", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and "truncated" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("batch_norm", [True, False])
def test_the_cpu_module_holds_no_weights_it_never_reads(tmp_path, batch_norm):
    torch.manual_seed(0)
    net = _trained_looking(PiczakCNN(10, frames=41, dense=48, batch_norm=batch_norm))
    module = load_model(_save(tmp_path, net), device="cpu").module
    for method in ("forward", "stem", "classify_pooled"):
        unread = [n.output().debugName() for n in getattr(module, method).graph.nodes()
                  if n.kind() == "prim::Constant" and n.output().type().kind() == "TensorType"
                  and not n.output().uses()]
        assert unread == [], f"{method} holds tensors nothing reads: {unread}"
