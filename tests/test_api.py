"""The Python API (``streamtag.Tagger``, ``Stream``) and scoring many streams together.

The API and ``streamtag tag`` must give the same events for the same audio; a
stream pushed in blocks of any size and sample type the same as the whole
input; and streams scored in one batch the scores each gets alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import streamtag
from streamtag.cli import main
from streamtag.engine import Engine
from streamtag.errors import NonFiniteAudioError, StreamtagError, UnsupportedAudioError
from streamtag.scene import synthesize_scene

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def tagger():
    return streamtag.Tagger()


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    """8 s of the demo street scene (siren, horn, jackhammer) at 44.1 kHz stereo, as 16-bit WAV."""
    audio = synthesize_scene(rate=44100)[0][:8 * 44100]
    stereo = np.stack([audio, 0.5 * audio], axis=1)
    path = tmp_path_factory.mktemp("api") / "street.wav"
    sf.write(path, stereo, 44100, subtype="PCM_16")
    return path


def _events(events) -> list[tuple[str, float, float]]:
    return [(e.label, round(e.onset, 6), round(e.offset, 6)) for e in events]


def test_api_and_the_command_line_give_identical_events(tagger, street, capsys):
    result = tagger.tag(street)
    assert result.events, "the scene holds events"
    assert main(["tag", str(street), "-f", "jsonl", "-q"]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(o["label"], o["onset"], o["offset"]) for o in cli] == _events(result.events)
    assert result.summary.windows > 0 and result.clip_scores.shape == (len(tagger.classes),)
    top = result.top(2)
    assert len(top) == 2 and top[0][1] >= top[1][1] and top[0][0] in tagger.classes


def test_an_array_gives_the_file_s_events(tagger, street):
    samples, rate = sf.read(street, dtype="int16")
    from_file = tagger.tag(street, windows=True)
    from_ints = tagger.tag(samples, sample_rate=rate, windows=True)
    from_floats = tagger.tag(samples / 32768.0, sample_rate=rate)
    assert _events(from_ints.events) == _events(from_file.events) == _events(from_floats.events)
    np.testing.assert_allclose([w.scores for w in from_ints.windows], [w.scores for w in from_file.windows],
                               atol=1e-6)


@pytest.mark.parametrize("kind", ["float32 blocks", "int16 blocks", "s16 bytes split inside frames"])
def test_a_stream_pushed_in_blocks_of_any_size_gives_the_file_s_events(tagger, street, kind):
    samples, rate = sf.read(street, dtype="int16")
    whole = tagger.tag(street, windows=True)
    rng = np.random.default_rng(7)
    stream = tagger.stream(rate, 2, sample_type="s16" if "bytes" in kind else None, windows=True)
    updates, i = [], 0
    data = samples.tobytes() if "bytes" in kind else samples.astype(np.float32) / 32768 if "float" in kind \
        else samples
    while i < len(data):
        n = int(rng.integers(1, 9000))
        updates += stream.push(data[i:i + n])
        i += n
    updates += stream.close()
    kinds = {kind for kind, _ in updates}
    assert kinds == {"window", "open", "close"}
    assert _events([e for k, e in updates if k == "close"]) == _events(whole.events)
    opened = [e.label for k, e in updates if k == "open"]
    assert sorted(opened) == sorted(e.label for e in whole.events)  # each event opened before it closed
    windows = [w for k, w in updates if k == "window"]
    np.testing.assert_allclose([w.scores for w in windows], [w.scores for w in whole.windows], atol=1e-6)
    assert stream.summary.windows == whole.summary.windows and stream.summary.dropped_samples == 0


def test_a_stream_says_what_is_wrong_with_its_input(tagger):
    stream = tagger.stream(16000)
    with pytest.raises(StreamtagError, match=r"shape \(frames, 1\)"):
        stream.push(np.zeros((100, 2), np.float32))
    with pytest.raises(StreamtagError, match="unsupported sample type int64"):
        stream.push(np.zeros(100, np.int64))
    with pytest.raises(StreamtagError, match="sample_type"):
        stream.push(b"\x00\x00")
    with pytest.raises(NonFiniteAudioError, match="NaN"):
        stream.push(np.array([0.0, np.nan], np.float32))
    stream.close()
    with pytest.raises(StreamtagError, match="closed"):
        stream.push(np.zeros(10, np.float32))
    with pytest.raises(StreamtagError, match="sample rate"):
        tagger.stream(44100.5)
    with pytest.raises(UnsupportedAudioError, match="'s12'"):
        tagger.stream(16000, sample_type="s12")
    with pytest.raises(StreamtagError, match="sample_rate"):
        tagger.tag(np.zeros(1000, np.float32))
    with pytest.raises(StreamtagError, match="inside a sample frame"):
        partial = tagger.stream(16000, sample_type="s16")
        partial.push(b"\x00\x00\x00")
        partial.close()


def test_a_gap_in_a_stream_is_counted_and_times_stay_true(tagger, street):
    samples, rate = sf.read(street, dtype="float32")
    engine = tagger.engine()
    events = []
    engine.open(rate, 2, on_event=lambda kind, e: events.append(e) if kind == "close" else None)
    engine.push(samples[:2 * rate])
    engine.skip(3 * rate)  # three seconds lost
    engine.push(samples[5 * rate:])
    summary = engine.close()
    assert summary.dropped_samples == 3 * rate and summary.gaps == 1
    assert summary.seconds == pytest.approx(len(samples) / rate)
    whole = tagger.tag(samples[5 * rate:], sample_rate=rate)
    after = [e for e in events if e.onset >= 5]
    # the audio after the gap is tagged as if it started at 5 s: the same events, shifted by the gap
    assert [(e.label, round(e.onset - 5, 5), round(e.offset - 5, 5)) for e in after] == \
           [(e.label, round(e.onset, 5), round(e.offset, 5)) for e in whole.events]


def test_streams_scored_together_get_the_scores_each_gets_alone(tagger):
    audio = synthesize_scene(rate=22050)[0]
    rng = np.random.default_rng(3)
    # four streams: different audio, rates and block sizes
    inputs = [(audio[:6 * 22050], 22050), (audio[5 * 22050:11 * 22050], 22050),
              (rng.standard_normal(6 * 16000).astype(np.float32) * 0.1, 16000),
              (audio[12 * 22050:19 * 22050][::-1].copy(), 22050)]
    engines, outputs, alone = [], [], []
    for samples, rate in inputs:
        result = tagger.tag(samples, sample_rate=rate, windows=True)
        alone.append((np.array([w.scores for w in result.windows]), _events(result.events)))
        engine, out = tagger.engine(), {"windows": [], "events": []}
        engine.open(rate, on_window=lambda w, out=out: out["windows"].append(w.scores),
                    on_event=lambda kind, e, out=out: out["events"].append(e) if kind == "close" else None)
        engines.append(engine)
        outputs.append(out)
    positions = [0] * len(inputs)
    batched = 0
    while any(p < len(s) for p, (s, _) in zip(positions, inputs)):
        for k, (samples, rate) in enumerate(inputs):
            n = int(rng.integers(rate // 50, rate // 10))  # 20-100 ms blocks, as sensors send them
            if positions[k] < len(samples):
                engines[k].push(samples[positions[k]:positions[k] + n], score=False)
                positions[k] += n
        batched += Engine.score_together(engines)
    for engine in engines:
        engine.close()
    assert batched > 0
    for (scores, events), out in zip(alone, outputs):
        np.testing.assert_allclose(np.array(out["windows"]), scores, atol=2e-6)  # float rounding of a bigger batch
        assert _events(out["events"]) == events
    # and the streams' scores are their own, not each other's
    assert not np.allclose(np.array(outputs[0]["windows"])[:20], np.array(outputs[1]["windows"])[:20], atol=1e-2)


def test_the_readme_example_runs(tagger, tmp_path, monkeypatch, capsys):
    text = README.read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md has the API example after <!-- api-example -->"
    audio = synthesize_scene(rate=44100)[0][:6 * 44100]
    sf.write(tmp_path / "street.wav", audio, 44100, subtype="PCM_16")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})
    out = capsys.readouterr().out
    events = tagger.tag(tmp_path / "street.wav").events
    assert events and all(f"{e.label:16s} {e.onset:6.2f} - {e.offset:6.2f} s" in out for e in events), out
    assert all(f"{e.onset:6.2f} s  {e.label} started" in out for e in events), out
    assert "clip: [('engine_idling'" in out and "0 samples dropped" in out, out
