"""The Python API: tag a file or an array, or a stream pushed block by block.

    import streamtag

    tagger = streamtag.Tagger()                     # the embedded model (or Tagger("my.pt"))
    result = tagger.tag("street.flac")              # or tagger.tag(samples, sample_rate=44100)
    for event in result.events:
        print(event.label, event.onset, event.offset)
    print(result.top(3))                            # clip-level: the best labels with their scores

    stream = tagger.stream(sample_rate=48000, channels=2)
    for kind, item in stream.push(block):           # any size; float, int16, int32, uint8 arrays or PCM bytes
        if kind == "close":                         # "open" / "close": an Event; "window": WindowScores
            print(item.label, item.onset, item.offset)
    stream.close()                                  # the last events; stream.summary says what happened

A :class:`Tagger` holds one model and its decoding settings; every call gets
its own :class:`~streamtag.engine.Engine`, so results do not depend on what was
tagged before. ``streamtag tag`` runs through :meth:`Tagger.engine` too, so the
command line and the API give the same events for the same audio.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from streamtag.audio import check_stream_format
from streamtag.engine import Engine, Summary, WindowScores
from streamtag.errors import StreamtagError
from streamtag.events import Event
from streamtag.sources import ArraySource, FileSource, PcmDecoder, as_float_samples

Update = tuple[str, "Event | WindowScores"]  # ("open" | "close", Event) or ("window", WindowScores)

@dataclasses.dataclass(frozen=True)
class Result:
    """What tagging one input found: its events (in the order they closed) and
    clip-level scores (the mean window probability of each class)."""

    classes: list[str]
    events: list[Event]
    clip_scores: np.ndarray | None  # (C,), None when the input held no samples
    windows: list[WindowScores]  # every window's scores, when asked for (windows=True)
    summary: Summary

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` classes with the highest clip scores, best first."""
        if self.clip_scores is None:
            return []
        order = np.argsort(-self.clip_scores, kind="stable")[:k]
        return [(self.classes[i], float(self.clip_scores[i])) for i in order]


class Tagger:
    """One model and how its scores become events.

    ``model`` is a model file's path, a loaded
    :class:`~streamtag.modelfile.TaggerModel`, or None for the embedded default.
    ``device`` ("cpu", "cuda") and ``int8`` apply when a file is loaded. The
    decoding settings (``hop_frames``, ``thresholds``, ``smooth``, ``hysteresis``,
    ``min_duration``, ``filter``, ``max_gap``) default to the model file's own;
    see :class:`~streamtag.engine.Engine`.
    """

    def __init__(self, model=None, *, device: str | None = None, int8: bool = False, **decoding):
        from streamtag.modelfile import TaggerModel, load_model

        self.model = model if isinstance(model, TaggerModel) else load_model(model, device=device, int8=int8)
        self.decoding = decoding
        self.engine()  # check the settings now, with a clear error, rather than at the first input

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    def engine(self, **options) -> Engine:
        """A new engine for this model and these settings (``options`` are the Engine's other arguments)."""
        return Engine(self.model, **self.decoding, **options)

    def tag(self, audio, sample_rate: int | None = None, *, windows: bool = False, name: str | None = None) -> Result:
        """Tag a whole input: a file's path, or an array of samples ``(frames,)`` or
        ``(frames, channels)`` at ``sample_rate``. Raises a
        :class:`~streamtag.errors.StreamtagError` subclass on unusable input
        (a missing or damaged file, NaN samples: everything before the fault is
        tagged first, as ``streamtag tag`` does, and the error says where)."""
        if isinstance(audio, (str, os.PathLike)):
            if sample_rate is not None:
                raise StreamtagError("a file carries its own sample rate: give sample_rate only with an array")
            source = FileSource(audio)
        else:
            if sample_rate is None:
                raise StreamtagError("tagging an array needs its sample_rate")
            samples = np.asarray(audio)
            channels = 1 if samples.ndim == 1 else samples.shape[-1] if samples.ndim == 2 else 0
            if not channels:
                raise StreamtagError(f"expected samples of shape (frames,) or (frames, channels), got {samples.shape}")
            rate, channels = check_stream_format(sample_rate, channels)
            source = ArraySource(as_float_samples(samples, channels), rate, name=name or "array")
        events: list[Event] = []
        scored: list[WindowScores] = []
        summary = self.engine().run(source, on_window=scored.append if windows else None,
                                    on_event=lambda kind, event: events.append(event) if kind == "close" else None)
        if summary.error is not None:
            raise summary.error
        return Result(self.classes, events, summary.clip_scores, scored, summary)

    def stream(self, sample_rate: int, channels: int = 1, *, sample_type: str | None = None,
               windows: bool = False, name: str = "stream") -> "Stream":
        """A stream to push audio into as it arrives (see :class:`Stream`)."""
        return Stream(self.engine(), sample_rate, channels, sample_type=sample_type, windows=windows, name=name)


class Stream:
    """Audio pushed block by block, tagged as it comes.

    :meth:`push` takes a block of any length: an array of float, int16, int32
    or uint8 samples, or, with ``sample_type`` ("u8", "s16", "s24", "s32",
    "f32", "f64": little-endian PCM), raw bytes, which may split a sample frame
    across pushes. It returns what the block decided, in order: ``("open",
    event)`` when an event has lasted long enough to count, ``("close", event)``
    when it ends, and with ``windows=True`` ``("window", scores)`` per window.
    :meth:`close` returns the rest; :attr:`summary` then says what the stream did.
    """

    def __init__(self, engine: Engine, sample_rate: int, channels: int = 1, *, sample_type: str | None = None,
                 windows: bool = False, name: str = "stream"):
        self.engine, self.channels = engine, channels
        self._decoder = None if sample_type is None else PcmDecoder(sample_type, channels, name)
        self._updates: list[Update] = []
        self.summary: Summary | None = None
        engine.open(sample_rate, channels, name,
                    on_window=(lambda w: self._updates.append(("window", w))) if windows else None,
                    on_event=lambda kind, event: self._updates.append((kind, event)))

    def push(self, block) -> list[Update]:
        """Tag the stream's next ``block``; what it decided."""
        if self.summary is not None:
            raise StreamtagError("the stream is closed")
        if isinstance(block, (bytes, bytearray, memoryview)):
            if self._decoder is None:
                raise StreamtagError("bytes need the stream's sample_type (e.g. 's16'); or push arrays")
            self.engine.push(self._decoder.decode(block))
        else:
            self.engine.push(block)
        return self._take()

    def close(self) -> list[Update]:
        """End the stream: score what is left, let the last score speak for the rest (an event
        still sounding lasts to the end; one may open there) and close open events. Raises
        :class:`~streamtag.errors.TruncatedAudioError` if PCM bytes ended inside a frame."""
        if self.summary is None:
            self.summary = self.engine.close()
            if self._decoder is not None:
                self._decoder.finish()
        return self._take()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        if self.summary is None:
            self.close()

    def _take(self) -> list[Update]:
        updates, self._updates = self._updates, []
        return updates


