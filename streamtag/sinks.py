"""Where results go: JSON Lines, CSV, DCASE annotations, an Audacity label track, or a live list.

A sink turns the engine's plain objects into one output format. It is told
when a new input begins, receives windows and event changes as the engine
produces them, and clip-level scores when an input is done (``--clip``).
Every line is flushed as soon as it is written, so a pipe or a terminal sees
each event the moment it is known.

Times are seconds of the input with microsecond resolution (finer than one
sample at any common rate); ``time`` in JSON Lines and CSV is the wall-clock
moment the event was reported.
"""

from __future__ import annotations

import csv
import datetime
import json
from pathlib import Path
from typing import TextIO

import numpy as np
from rich.console import Console
from rich.markup import escape

from streamtag.engine import WindowScores
from streamtag.events import Event


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")


def top_labels(classes: list[str], scores: np.ndarray, k: int) -> list[tuple[str, float]]:
    """The ``k`` best (label, score) pairs, best first."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:k]
    return [(classes[i], float(scores[i])) for i in order]


class Sink:
    """Receives what the engine produces; every method does nothing by default."""

    wants_windows = False  # whether window() writes anything: if not, the engine need not build each window for it

    def __init__(self, classes: list[str], top: int = 3):
        self.classes, self.top, self.source = list(classes), top, ""

    def begin(self, source: str) -> None:
        """A new input starts; what follows belongs to it."""
        self.source = source

    def window(self, window: WindowScores) -> None:
        pass

    def event(self, kind: str, event: Event) -> None:
        """``kind`` is "open" (the event has lasted long enough to count) or "close"."""

    def clip(self, scores: np.ndarray | None, windows: int) -> None:
        """Clip-level scores (mean window probabilities) of the input just finished."""


class JsonLinesSink(Sink):
    """One JSON object per line: ``"type": "event"`` when an event closes,
    ``"window"`` per window (with ``frames=True``), ``"clip"`` per input."""

    def __init__(self, stream: TextIO, classes: list[str], frames: bool = False, top: int = 3):
        super().__init__(classes, top)
        self.stream, self.wants_windows = stream, frames

    def _write(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj) + "\n")
        self.stream.flush()

    def window(self, window: WindowScores) -> None:
        if self.wants_windows:
            self._write({"type": "window", "source": self.source, "index": window.index,
                         "start": round(window.start, 6), "end": round(window.end, 6),
                         "at": round(window.at, 6),
                         "scores": {c: round(float(s), 6) for c, s in zip(self.classes, window.scores)}})

    def event(self, kind: str, event: Event) -> None:
        if kind == "close":
            self._write({"type": "event", "source": self.source, "label": event.label,
                         "onset": round(event.onset, 6), "offset": round(event.offset, 6),
                         "score": round(event.score, 4), "time": _now()})

    def clip(self, scores: np.ndarray | None, windows: int) -> None:
        self._write({"type": "clip", "source": self.source, "windows": windows,
                     "top": [c for c, _ in top_labels(self.classes, scores, self.top)] if windows else [],
                     "scores": {c: round(float(s), 6) for c, s in zip(self.classes, scores)} if windows else {}})


class CsvSink(Sink):
    """Events as ``source,onset,offset,label,score,time`` rows, or with clips
    one ``source,windows,top,<class>...`` row per input; a header first."""

    def __init__(self, stream: TextIO, classes: list[str], top: int = 3):
        super().__init__(classes, top)
        self.stream, self.writer, self._header = stream, csv.writer(stream, lineterminator="\n"), False

    def _row(self, header: list[str], row: list) -> None:
        if not self._header:
            self.writer.writerow(header)
            self._header = True
        self.writer.writerow(row)
        self.stream.flush()

    def event(self, kind: str, event: Event) -> None:
        if kind == "close":
            self._row(["source", "onset", "offset", "label", "score", "time"],
                      [self.source, f"{event.onset:.6f}", f"{event.offset:.6f}", event.label, f"{event.score:.4f}",
                       _now()])

    def clip(self, scores: np.ndarray | None, windows: int) -> None:
        top = " ".join(c for c, _ in top_labels(self.classes, scores, self.top)) if windows else ""
        values = [f"{s:.6f}" for s in scores] if windows else [""] * len(self.classes)
        self._row(["source", "windows", "top", *self.classes], [self.source, windows, top, *values])


class DcaseSink(Sink):
    """Events as DCASE annotations, the TSV that sed_eval, sed_scores_eval and the DCASE
    challenge tools read: a header, then ``filename<TAB>onset<TAB>offset<TAB>event_label``
    per event, the filename without its folder (as reference annotations name files)."""

    def __init__(self, stream: TextIO, classes: list[str]):
        super().__init__(classes)
        self.stream = stream
        self.stream.write("filename\tonset\toffset\tevent_label\n")
        self.stream.flush()

    def event(self, kind: str, event: Event) -> None:
        if kind == "close":
            self.stream.write(f"{Path(self.source).name}\t{event.onset:.6f}\t{event.offset:.6f}\t{event.label}\n")
            self.stream.flush()


class AudacitySink(Sink):
    """An Audacity label track: ``onset<TAB>offset<TAB>label`` per event
    (File > Import > Labels)."""

    def __init__(self, stream: TextIO, classes: list[str]):
        super().__init__(classes)
        self.stream = stream

    def event(self, kind: str, event: Event) -> None:
        if kind == "close":
            self.stream.write(f"{event.onset:.6f}\t{event.offset:.6f}\t{event.label}\n")
            self.stream.flush()


SUFFIXES = {"jsonl": ".jsonl", "csv": ".csv", "dcase": ".tsv", "audacity": ".txt"}  # file formats, their endings


def file_sink(fmt: str, stream: TextIO, classes: list[str], frames: bool = False, top: int = 3) -> Sink:
    """The sink of a file format (a key of :data:`SUFFIXES`) writing to ``stream``."""
    if fmt == "jsonl":
        return JsonLinesSink(stream, classes, frames=frames, top=top)
    if fmt == "csv":
        return CsvSink(stream, classes, top=top)
    if fmt == "dcase":
        return DcaseSink(stream, classes)
    if fmt == "audacity":
        return AudacitySink(stream, classes)
    raise ValueError(f"no file format {fmt!r}; one of {', '.join(SUFFIXES)}")


class TextSink(Sink):
    """A readable live list for a terminal: a line when an event starts and
    one when it ends; with clips, one line per input with its best labels."""

    def __init__(self, console: Console, classes: list[str], top: int = 3, show_source: bool = False):
        super().__init__(classes, top)
        self.console, self.show_source = console, show_source

    def _prefix(self) -> str:  # the file's name, not its whole path: the line must fit a terminal
        return f"[dim]{escape(Path(self.source).name)}[/]  " if self.show_source else ""

    def event(self, kind: str, event: Event) -> None:
        label = escape(event.label)
        if kind == "open":
            self.console.print(f"{self._prefix()}{event.onset:9.3f} s            [bold green]▶ {label}[/]"
                               f"  {event.score:.2f}", highlight=False)
        else:
            self.console.print(f"{self._prefix()}{event.onset:9.3f} – {event.offset:9.3f} s  [bold]■ {label}[/]"
                               f"  peak {event.score:.2f}  ({event.duration:.2f} s)", highlight=False)

    def clip(self, scores: np.ndarray | None, windows: int) -> None:
        if not windows:
            self.console.print(f"{escape(self.source)}  [dim](no windows)[/]", highlight=False)
            return
        best = "  ".join(f"[bold]{escape(c)}[/] {s:.2f}" for c, s in top_labels(self.classes, scores, self.top))
        self.console.print(f"{escape(self.source)}  {best}", highlight=False)
