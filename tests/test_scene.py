"""The synthesised demo scene: deterministic, events where the script says, no clipping."""

import numpy as np
import pytest

from streamtag.scene import SCRIPT, synthesize_scene


def rms_db(x):
    return 10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-20)


def test_scene_is_deterministic_and_bounded():
    a, events = synthesize_scene(seed=3)
    b, _ = synthesize_scene(seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and np.abs(a).max() <= 0.99
    assert [e.label for e in events] == [s[0] for s in SCRIPT]
    assert not np.array_equal(a, synthesize_scene(seed=4)[0])


def test_events_stand_out_of_the_street_noise():
    rate = 8000
    audio, events = synthesize_scene(rate=rate)
    street = rms_db(audio[: int(0.9 * rate)])  # nothing but street noise before the first event
    for event in events:
        inside = audio[int(event.onset * rate) + rate // 10: int(event.offset * rate) - rate // 10]
        assert rms_db(inside) > street + 15, event
    assert np.abs(audio).max() < 0.99, "levels leave headroom: the scene is never rescaled"


def test_bad_script_is_rejected():
    with pytest.raises(ValueError, match="no synthesiser"):
        synthesize_scene(script=(("dog_bark", 0.0, 1.0, -10.0),))
    with pytest.raises(ValueError, match="runs past"):
        synthesize_scene(script=(("siren", 19.5, 1.0, -10.0),))
