"""``streamtag live`` and ``streamtag demo``: the dashboard's command-line side.

Picks the source (a microphone, a file replayed in real time, or the
synthesised street scene), loads the model and runs the source through one
engine: with the dashboard when standard output is a terminal, else as a JSON
Lines stream of events (``streamtag live | jq``), so a pipe never receives
screen codes. Replayed files and the scene go through the same live path as
a microphone (written from a clock that never waits, dropped audio counted),
which is what makes them honest demos. Ctrl-C, the summary line and one-line
errors behave as in ``streamtag tag``, whose handling this reuses.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import numpy as np
from rich.console import Console

from streamtag.dashboard import HISTORY_FRAMES, Setup, session_table, show
from streamtag.engine import Engine
from streamtag.errors import DeviceError, StreamtagError
from streamtag.scene import synthesize_scene
from streamtag.sinks import JsonLinesSink
from streamtag.sources import MicrophoneSource, PacedSource, ReplaySource, Source, list_devices
from streamtag.tag import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, Interrupts, quiet_stdout, summary_line

SCENE_NAME = "scene (synthesised street)"
BLOCK_SECONDS = 0.02  # how often the scene's stand-in sound card delivers audio, like a real one


def scene_source(rate: int = 22050) -> PacedSource:
    """The demo street scene, delivered in real time as a sound card would."""
    audio, _ = synthesize_scene(rate)
    return PacedSource(audio, rate, blocks=round(rate * BLOCK_SECONDS), speed=1.0, name=SCENE_NAME)


def microphone(device: str | None) -> MicrophoneSource:
    try:
        return MicrophoneSource(device or None)
    except DeviceError as exc:
        raise DeviceError(f"{exc}; replay a file with --input FILE, or play the demo scene with --scene") from None


def parse_thresholds(values: list[str] | None, classes: list[str], defaults) -> np.ndarray | None:
    """``--threshold`` values, applied in order: ``P`` sets every class,
    ``LABEL=P`` one class. None when none were given (the model's own)."""
    if not values:
        return None
    out = np.array(defaults, dtype=np.float64)
    for value in values:
        label, named, number = value.rpartition("=")
        try:
            p = float(number)
        except ValueError:
            raise StreamtagError(f"--threshold {value!r}: give a probability P or LABEL=P") from None
        if not 0.0 <= p <= 1.0:
            raise StreamtagError(f"--threshold {value!r}: a probability lies in [0, 1]")
        if not named:
            out[:] = p
        elif label in classes:
            out[classes.index(label)] = p
        else:
            raise StreamtagError(f"--threshold {value!r}: the model has no class {label!r} "
                                 f"(its classes: {', '.join(classes)})")
    return out


def compute_device(device: str) -> str:
    """"CPU", or "CUDA (the GPU's name)"."""
    if not device.startswith("cuda"):
        return "CPU"
    import torch

    return f"CUDA ({torch.cuda.get_device_name(device)})"


def run_live(source: Source, model, console: Console | None, *, hop: int | None = None, thresholds=None,
             smooth: float | None = None, hysteresis: float | None = None, min_duration: float | None = None,
             filter: str | None = None, jsonl: str | None = None,
             max_seconds: float | None = None) -> int:
    """Tag ``source`` live with ``model`` and return the exit code: the
    dashboard on ``console``, or with ``console=None`` events as JSON Lines on
    standard output; ``jsonl`` names a file that logs the events as well.
    ``live`` and ``demo`` both end here."""
    if max_seconds is not None and not max_seconds > 0:
        raise StreamtagError(f"--duration must be positive, got {max_seconds:g}")
    engine = Engine(model, hop_frames=hop, thresholds=thresholds, smooth=smooth, hysteresis=hysteresis,
                    min_duration=min_duration, filter=filter, history_frames=HISTORY_FRAMES)
    err = Console(stderr=True)
    with contextlib.ExitStack() as files:
        sinks = []
        if jsonl:
            try:
                log_file = files.enter_context(open(jsonl, "w", encoding="utf-8"))
            except OSError as exc:
                raise StreamtagError(f"cannot write {jsonl}: {exc.strerror}") from None
            sinks.append(JsonLinesSink(log_file, model.classes))
        if console is None:
            sinks.append(JsonLinesSink(sys.stdout, model.classes))
        for sink in sinks:
            sink.begin(source.name)

        def on_event(kind, event) -> None:
            for sink in sinks:
                sink.event(kind, event)

        interrupts = Interrupts(engine)
        try:
            with interrupts.armed():
                if console is None:
                    summary, log = engine.run(source, on_event=on_event, max_seconds=max_seconds), None
                else:
                    setup = Setup(source=source.name, source_rate=source.sample_rate, model_name=model.name,
                                  model_rate=model.spec.sample_rate, compute=compute_device(model.device),
                                  thresholds=engine.tracker.on.copy(), hop_seconds=engine.hop_seconds,
                                  duration=source.frames / source.sample_rate if source.frames else None)
                    summary, log = show(engine, source, setup, console, on_event=on_event, max_seconds=max_seconds)
        except BrokenPipeError:  # `streamtag live | head`: the reader has gone
            quiet_stdout()
            return EXIT_OK
    if log is not None and log.closed:
        console.print(session_table(log.closed, model.classes))
    err.print(f"streamtag: {summary_line([summary], interrupts.hit)}", markup=False, highlight=False, soft_wrap=True)
    if summary.error is not None:
        err.print(f"streamtag: error: {summary.error}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_ERROR
    return EXIT_INTERRUPTED if interrupts.hit else EXIT_OK


def _run(args: argparse.Namespace, source: Source) -> int:
    import torch

    from streamtag.modelfile import load_model

    if args.threads < 1:
        raise StreamtagError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    console = Console() if sys.stdout.isatty() else None
    with console.status("loading the model…") if console else contextlib.nullcontext():
        model = load_model(args.model, int8=args.int8)
    return run_live(source, model, console, hop=args.hop,
                    thresholds=parse_thresholds(args.threshold, model.classes, model.thresholds),
                    smooth=args.smooth, hysteresis=args.hysteresis, min_duration=args.min_duration,
                    filter=args.filter, jsonl=args.jsonl,
                    max_seconds=args.duration)


def live(args: argparse.Namespace) -> int:
    """The ``live`` subcommand: a microphone (the default), ``--input FILE`` or ``--scene``."""
    if args.input is not None:
        source: Source = ReplaySource(args.input)
    elif args.scene:
        source = scene_source()
    else:
        source = microphone(args.mic)
    return _run(args, source)


def demo(args: argparse.Namespace) -> int:
    """The ``demo`` subcommand: the bundled model (or ``--model``) on the
    microphone when there is one, else on the synthesised street scene."""
    if not args.scene:
        try:
            args.scene = not list_devices()
        except DeviceError:  # no PortAudio at all
            args.scene = True
        if args.scene:
            print("streamtag: no microphone found: playing a synthesised street scene", file=sys.stderr)
    return _run(args, scene_source() if args.scene else microphone(None))
