"""``streamtag tag`` and ``streamtag devices``: the command-line side of the engine.

Picks the sources (files, ``-`` for standard input as WAV or ``--raw`` PCM, or
``--mic``), one engine for the model, and one sink for the output format, then
runs each input through the engine in turn. It also owns what only a command
line has: Ctrl-C (the first stops the engine, which closes open events and
lets a summary print; a second one aborts), a downstream pipe that closes
(``| head``: stop quietly), progress on a terminal, and one-line errors.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from streamtag.client import RemoteSession
from streamtag.engine import Summary
from streamtag.errors import StreamtagError
from streamtag.sinks import SUFFIXES, Sink, TextSink, file_sink
from streamtag.sources import FileSource, MicrophoneSource, RawSource, Source, WavStreamSource, list_devices

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130
_SUFFIX_FORMATS = {suffix: fmt for fmt, suffix in SUFFIXES.items()} | {".json": "jsonl"}


def _int_option(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise StreamtagError(f"{name} must be an integer, got {value!r}") from None


def _stdin_bytes():
    """Standard input as an unbuffered byte stream. Its reader thread may still be
    blocked in a read when the command ends; a buffered stream's lock would then
    abort the interpreter at exit, a raw one has none to hold."""
    try:
        return open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    except (AttributeError, OSError, ValueError):  # replaced by something without a descriptor
        return sys.stdin.buffer


def plan_inputs(args: argparse.Namespace, stdin_is_tty: bool) -> list[tuple[str, Callable[[], Source]]]:
    """What to tag, in order, as (name, opener) pairs; the openers run one at a
    time, so a bad file is reported when its turn comes and the rest still run."""
    if args.mic is not None:
        if args.inputs or args.raw:
            raise StreamtagError("--mic takes no input files and no --raw")
        return [("microphone", lambda: MicrophoneSource(args.mic or None))]
    names = list(args.inputs)
    if not names:
        if stdin_is_tty:
            raise StreamtagError("no input: give audio files, '-' for standard input, or --mic")
        names = ["-"]
    if names.count("-") > 1:
        raise StreamtagError("standard input ('-') can be read only once")
    rate, channels = _int_option(args.rate, "--rate"), _int_option(args.channels, "--channels")
    if args.raw:
        if "-" not in names:
            raise StreamtagError("--raw describes standard input; give '-' as the input")
        if rate is None:
            raise StreamtagError("--raw needs --rate (the sample rate in Hz)")
        RawSource(None, rate, 1 if channels is None else channels, args.sample_type)  # check the parameters now
    elif rate is not None or channels is not None:
        raise StreamtagError("--rate and --channels describe --raw input; a WAV stream or file carries its own")

    def opener(name: str) -> Callable[[], Source]:
        if name != "-":
            return lambda: FileSource(name)
        if args.raw:
            return lambda: RawSource(_stdin_bytes(), rate, 1 if channels is None else channels, args.sample_type)
        return lambda: WavStreamSource(_stdin_bytes())

    return [("stdin" if n == "-" else n, opener(n)) for n in names]


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    if args.output:
        return _SUFFIX_FORMATS.get(Path(args.output).suffix.lower(), "jsonl")
    return "text" if sys.stdout.isatty() else "jsonl"


def _check_format(fmt: str, args: argparse.Namespace, n_inputs: int) -> None:
    if args.frames and fmt != "jsonl":
        raise StreamtagError("--frames writes JSON Lines; use --format jsonl")
    if args.frames and args.clip:
        raise StreamtagError("--frames and --clip exclude each other")
    if fmt == "dcase" and args.clip:
        raise StreamtagError("DCASE annotations hold events; --clip writes clip scores (use jsonl or csv)")
    if fmt == "audacity" and (args.clip or n_inputs > 1):
        raise StreamtagError("an Audacity label track holds the events of one input; no --clip, one input")


def _make_sink(fmt: str, stream, classes: list[str], args: argparse.Namespace, n_inputs: int) -> Sink:
    if fmt in SUFFIXES:
        return file_sink(fmt, stream, classes, frames=args.frames, top=args.top)
    return TextSink(Console(file=stream) if args.output else Console(), classes, top=args.top,
                    show_source=n_inputs > 1 and not args.clip)


class Interrupts:
    """Ctrl-C (SIGINT) or SIGTERM while an input is tagged: the first stops the
    engine (or the remote session) cleanly, a second raises KeyboardInterrupt."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, engine):
        self.engine, self.hit = engine, False

    def _handle(self, signum, frame) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        self.engine.stop()

    @contextlib.contextmanager
    def armed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def summary_line(summaries: list[Summary], interrupted: bool) -> str:
    seconds = sum(s.seconds for s in summaries)
    wall = sum(s.wall_seconds for s in summaries)
    n = len(summaries)
    text = (f"{n} input{'s' * (n != 1)}, {seconds:.2f} s of audio, {sum(s.windows for s in summaries)} windows, "
            f"{sum(s.events for s in summaries)} events in {wall:.2f} s")
    if wall > 0 and not any(s.source.startswith("mic:") for s in summaries):
        text += f" ({seconds / wall:.1f}x real time)"
    dropped = sum(s.dropped_samples for s in summaries)
    if dropped or any(s.gaps for s in summaries):
        text += (f"; dropped {dropped} samples ({sum(s.dropped_seconds for s in summaries):.3f} s) in "
                 f"{sum(s.gaps for s in summaries)} gaps")
    overflows = sum(s.overflows for s in summaries)
    if overflows:
        text += f"; the sound card reported {overflows} overflows"
    return text + ("; interrupted" if interrupted else "")


def quiet_stdout() -> None:
    """The reader of standard output has gone (``| head``): point the
    descriptor at /dev/null so the final flush at exit cannot fail loudly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _local_tagger(args: argparse.Namespace):
    import torch

    from streamtag.cli import decoding_options
    from streamtag.tagger import Tagger

    if args.threads is not None and args.threads < 1:
        raise StreamtagError(f"--threads must be at least 1, got {args.threads}")
    if args.threads is not None or args.mic is not None:  # else torch's default: one thread per core
        torch.set_num_threads(args.threads or 1)
    return Tagger(args.model, int8=args.int8, **decoding_options(args))


def _check_remote(args: argparse.Namespace) -> None:
    """With --server the model and its decoding are the server's."""
    local = [name for name, value in (("--model", args.model), ("--int8", args.int8 or None), ("--hop", args.hop),
                                      ("--threshold", args.threshold), ("--smooth", args.smooth),
                                      ("--hysteresis", args.hysteresis), ("--filter", args.filter),
                                      ("--min-duration", args.min_duration), ("--threads", args.threads))
             if value is not None]
    if local:
        raise StreamtagError(f"{', '.join(local)} set the local model; with --server the server's model and "
                             "decoding are used")


def run(args: argparse.Namespace) -> int:
    """The ``tag`` subcommand; returns the exit code."""
    plan = plan_inputs(args, sys.stdin.isatty())
    fmt = _format(args)
    _check_format(fmt, args, len(plan))
    if args.server:
        _check_remote(args)
        tagger = engine = None
    else:
        if args.token is not None:
            raise StreamtagError("--token goes with --server")
        tagger = _local_tagger(args)
        engine = tagger.engine()  # one for every input: run() starts each afresh
    try:
        stream = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    except OSError as exc:
        raise StreamtagError(f"cannot write {args.output}: {exc.strerror}") from None
    err = Console(stderr=True)
    show_progress = err.is_terminal and not args.quiet and all(name != "stdin" for name, _ in plan) \
        and args.mic is None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total}"),
                        TimeRemainingColumn(), console=err, transient=True, disable=not show_progress)

    def say(line: str) -> None:  # one unwrapped line on standard error, above the progress bar if there is one
        err.print(line, markup=False, highlight=False, soft_wrap=True)

    summaries: list[Summary] = []
    failed = 0
    sink: Sink | None = None
    interrupted = False

    def make_sink(classes: list[str]) -> None:
        nonlocal sink
        if sink is None:
            sink = _make_sink(fmt, stream, classes, args, len(plan))

    try:
        with progress, contextlib.closing(stream) if args.output else contextlib.nullcontext():
            task = progress.add_task("tagging", total=len(plan))
            for i, (name, open_source) in enumerate(plan):
                if interrupted:
                    break
                progress.update(task, description=Path(name).name, completed=i)
                try:
                    source = open_source()
                    tagging = RemoteSession(args.server, args.token) if args.server else engine
                    duration = source.frames / source.sample_rate if source.frames else None

                    def on_window(window, i=i, duration=duration):
                        sink.window(window)
                        if duration:
                            progress.update(task, completed=i + min(window.end / duration, 1.0))

                    def on_ready(classes, name=source.name):
                        make_sink(classes)
                        sink.begin(name)

                    if tagger is not None:
                        on_ready(tagger.classes)
                    wants_windows = show_progress or (sink.wants_windows if sink else bool(args.frames))
                    interrupts = Interrupts(tagging)
                    with interrupts.armed():
                        options = dict(on_window=on_window if wants_windows else None,
                                       on_event=None if args.clip else (lambda kind, event: sink.event(kind, event)),
                                       max_seconds=args.duration)
                        summary = tagging.run(source, on_ready=on_ready, **options) if args.server \
                            else tagging.run(source, **options)
                    interrupted = interrupts.hit
                except StreamtagError as exc:
                    say(f"streamtag: error: {exc}")
                    failed += 1
                    continue
                summaries.append(summary)
                if args.clip:
                    sink.clip(summary.clip_scores, summary.windows)
                if summary.error is not None:
                    say(f"streamtag: error: {summary.error}")
                    failed += 1
    except BrokenPipeError:
        quiet_stdout()
        return EXIT_OK
    if not args.quiet and summaries:
        say(f"streamtag: {summary_line(summaries, interrupted)}")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_ERROR if failed else EXIT_OK


def devices(args: argparse.Namespace) -> int:
    """The ``devices`` subcommand: list the input devices ``--mic`` can use."""
    found = list_devices()
    console = Console()
    if not found:
        console.print("no audio input devices found", highlight=False)
        return EXIT_OK
    if not console.is_terminal:
        for d in found:
            print(f"{d['index']}\t{d['name']}\t{d['hostapi']}\t{d['channels']}\t{d['sample_rate']}"
                  f"{chr(9) + 'default' if d['default'] else ''}")
        return EXIT_OK
    table = Table(title="Audio input devices (streamtag tag --mic INDEX|NAME)")
    for column in ("index", "name", "host API", "channels", "rate (Hz)", ""):
        table.add_column(column, justify="right" if column in ("index", "channels", "rate (Hz)") else "left")
    for d in found:
        table.add_row(str(d["index"]), d["name"], d["hostapi"], str(d["channels"]), str(d["sample_rate"]),
                      "default" if d["default"] else "")
    console.print(table)
    return EXIT_OK
