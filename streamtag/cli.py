"""The ``streamtag`` command line.

Each subcommand is a small function that imports what it needs when it runs,
so ``streamtag --help`` answers at once without loading torch or numba. Errors
caused by the user's input (:class:`~streamtag.errors.StreamtagError`) print as
one line on standard error and exit with code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2
INT8_HELP = ("run the network's dense layers in int8 on the CPU (dynamic quantisation): fewer bytes per window, "
             "so less time; probabilities move by about 0.001 on average, a few hundredths at most")


def _cmd_features(args: argparse.Namespace) -> int:
    import numpy as np

    from streamtag.audio import load_audio
    from streamtag.features import FeatureSpec
    from streamtag.frontend import compute_features

    spec = FeatureSpec()
    frames = compute_features(load_audio(args.file, spec.sample_rate), spec)
    try:
        np.save(args.output, frames)
    except OSError as exc:
        raise _usage_error(f"cannot write {args.output}: {exc.strerror}") from None
    print(f"{args.file}: {frames.shape[0]} frames x 2 x {spec.n_mels} -> {args.output}", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from streamtag.modelfile import DEFAULT_MODEL, load_model
    from streamtag.modelinfo import render_info

    model = load_model(args.model, device="cpu")
    Console().print(render_info(model, Path(args.model) if args.model else DEFAULT_MODEL))
    return 0


def _cmd_tag(args: argparse.Namespace) -> int:
    from streamtag.tag import run

    return run(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from rich.console import Console

    from streamtag.server import Limits, ServeConfig, Workers

    if args.threads < 1:
        raise _usage_error(f"--threads must be at least 1, got {args.threads}")
    if args.workers < 1:
        raise _usage_error(f"--workers must be at least 1, got {args.workers}")
    limits = Limits(max_streams=args.max_streams, max_message=args.max_message, max_behind=args.max_behind,
                    idle_timeout=args.idle_timeout, send_timeout=args.send_timeout)
    token = args.token if args.token is not None else os.environ.get("STREAMTAG_TOKEN") or None
    config = ServeConfig(model=args.model, device=args.device, int8=args.int8, decoding=decoding_options(args),
                         host=args.host,
                         port=args.port, token=token, limits=limits, max_wait=args.max_wait, max_batch=args.max_batch,
                         threads=args.threads)
    err = Console(stderr=True)

    def announce(port: int, model: str) -> None:
        err.print(f"streamtag serve: ws://{args.host}:{port}/  model {model}, {args.workers} worker"
                  f"{'s' * (args.workers > 1)}, {'token required' if token else 'no token (localhost only)'}; "
                  "Ctrl-C stops", highlight=False, soft_wrap=True)

    def report(st: dict) -> None:
        err.print(f"streams {st['streams']}  windows {st['windows']}  p50 {st['latency_p50_ms']:.1f} ms  "
                  f"p99 {st['latency_p99_ms']:.1f} ms  dropped {st['dropped_samples']}  closed {st['closed']}",
                  highlight=False, soft_wrap=True, markup=False)

    if args.workers > 1:  # processes sharing the port; this one only watches them
        workers = Workers(config, args.workers)
        announce(workers.port, args.model or "default")
        try:
            while workers.alive():
                time.sleep(args.stats or 1.0)
                if args.stats:
                    report(workers.stats())
        except KeyboardInterrupt:
            pass
        finally:
            workers.stop()
        return 0
    server = config.build()

    async def main() -> None:
        ready = asyncio.get_running_loop().create_future()
        serving = asyncio.ensure_future(server.run(ready))
        await asyncio.wait([ready, serving], return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # could not listen: raises
        announce(ready.result(), server.tagger.model.name)
        while args.stats:
            await asyncio.sleep(args.stats)
            report(server.stats())
        await serving

    try:
        asyncio.run(main())
    except OSError as exc:
        raise _usage_error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        return 0
    return 0


def _cmd_archive(args: argparse.Namespace) -> int:
    from streamtag.archive import main as archive

    return archive(args, decoding_options(args))


def _cmd_devices(args: argparse.Namespace) -> int:
    from streamtag.tag import devices

    return devices(args)


def _cmd_live(args: argparse.Namespace) -> int:
    from streamtag.live import live

    return live(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from streamtag.live import demo

    return demo(args)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from streamtag.doctor import report, run_checks

    lines, status = report(run_checks())
    print("\n".join(lines))
    return status


def _add_decoding_options(p: argparse.ArgumentParser) -> None:
    """How scores become events; each defaults to the model file's own (tuned on its validation scenes)."""
    p.add_argument("--hysteresis", type=float, metavar="P",
                   help="an event ends when its score falls below threshold - P (default: the model's, else 0.1)")
    p.add_argument("--smooth", type=float, metavar="SECONDS",
                   help="filter each class's score over this long (default: the model's, else 0.3)")
    p.add_argument("--filter", choices=["mean", "median"],
                   help="the smoothing filter (default: the model's, else mean)")
    p.add_argument("--min-duration", type=float, metavar="SECONDS",
                   help="drop events shorter than this (default: the model's, per class, else 0.25)")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """The model and its decoding, as ``tag``, ``serve`` and ``archive`` take them (see :func:`decoding_options`)."""
    p.add_argument("--model", metavar="FILE", help="model file (.pt); default: the model bundled with streamtag")
    p.add_argument("--hop", type=int, metavar="FRAMES",
                   help="frames between windows (1 frame = 23 ms; default: the model's)")
    p.add_argument("--threshold", type=float, metavar="P", help="one threshold for every class (default: the model's)")
    _add_decoding_options(p)
    p.add_argument("--int8", action="store_true", help=INT8_HELP)


def decoding_options(args: argparse.Namespace) -> dict:
    """The decoding settings given on the command line, as :class:`~streamtag.tagger.Tagger` takes them;
    the ones not given are left to the model file."""
    return {name: value for name, value in dict(
        hop_frames=args.hop, thresholds=args.threshold, smooth=args.smooth, hysteresis=args.hysteresis,
        min_duration=args.min_duration, filter=args.filter).items() if value is not None}


def _add_live_options(p: argparse.ArgumentParser) -> None:
    """The options ``live`` and ``demo`` share."""
    p.add_argument("--model", metavar="FILE", help="model file (.pt); default: the model bundled with streamtag")
    p.add_argument("--jsonl", metavar="PATH", help="also log events to PATH as JSON Lines while the dashboard shows")
    p.add_argument("--threshold", action="append", metavar="P|LABEL=P",
                   help="event threshold for every class (P) or one class (LABEL=P); repeat it, later ones win "
                        "(default: the model's)")
    p.add_argument("--hop", type=int, metavar="FRAMES",
                   help="frames between windows (1 frame = 23 ms; default: the model's)")
    _add_decoding_options(p)
    p.add_argument("--duration", "--seconds", dest="duration", type=float, metavar="SECONDS",
                   help="stop after this many seconds of audio (default: until the input ends or Ctrl-C)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads for the network (default 1)")
    p.add_argument("--int8", action="store_true", help=INT8_HELP)


def _source_root():
    """The folder holding the ``streamtag`` package: a clone of the repository when installed from one."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess
    from pathlib import Path

    root = _source_root()
    if not ((root / "benchmarks" / "__main__.py").is_file() and (root / "pyproject.toml").is_file()):
        raise _usage_error("the benchmarks are not installed with streamtag; run `streamtag bench` from a clone of "
                           "the streamtag repository (pip install -e .), or `python -m benchmarks` in one")
    # A separate process: the streamtag package never imports benchmarks/.
    cmd = [sys.executable, "-m", "benchmarks", *(["--quick"] if args.quick else [])]
    cmd += [f"--only={args.only}"] if args.only else []
    cmd += [f"--out={Path(args.out).resolve()}"] if args.out else []  # the child runs in the repository
    return subprocess.run(cmd, cwd=root).returncode


def _usage_error(message: str):
    from streamtag.errors import StreamtagError

    return StreamtagError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamtag",
        description="Real-time sound event tagger: log-mel + delta features into a multilabel Piczak CNN.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("features", help="write the feature frames a model sees for an audio file (.npy)",
                       description="Write float32 (frames, 2, 60) features: channel 0 log-mel in dB, channel 1 "
                                   "its causal delta, exactly as the streaming frontend emits them.")
    p.add_argument("file", help="audio file (anything libsndfile reads; any rate and channel count)")
    p.add_argument("-o", "--output", required=True, help="output .npy path")
    p.set_defaults(run=_cmd_features)

    p = sub.add_parser("info", help="show a model file's classes, features, thresholds and provenance",
                       description="Check a model file and print its metadata as a table.")
    p.add_argument("model", nargs="?", help="model file (.pt); default: the model bundled with streamtag")
    p.set_defaults(run=_cmd_info)

    p = sub.add_parser("tag", help="tag audio files, a WAV or raw PCM pipe, or a microphone",
                       description="Tag sound events in audio files, in a stream on standard input (a WAV stream, "
                                   "e.g. from arecord or sox, or raw PCM with --raw), or live from a microphone. "
                                   "Writes events as JSON Lines when standard output is not a terminal, a live "
                                   "list when it is; --clip writes one line of clip-level scores per input.")
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="audio files (anything libsndfile reads), or '-' for standard input; default: standard "
                        "input when it is a pipe")
    p.add_argument("--mic", nargs="?", const="", metavar="DEVICE",
                   help="tag live from a microphone: the default input, or a device index or name "
                        "(see `streamtag devices`); Ctrl-C stops")
    p.add_argument("--raw", action="store_true", help="standard input is headerless little-endian PCM")
    p.add_argument("--rate", metavar="HZ", help="sample rate of --raw input")
    p.add_argument("--channels", metavar="N", help="channels of --raw input (default 1)")
    p.add_argument("--sample-type", default="s16", metavar="TYPE", help="s16, s32 or f32 for --raw input (default s16)")
    p.add_argument("-f", "--format", choices=["jsonl", "csv", "dcase", "audacity", "text"],
                   help="output format: dcase is the DCASE annotation TSV that sed_eval reads (default: text on a "
                        "terminal, else from the -o suffix: .jsonl, .csv, .tsv, .txt for audacity; else jsonl)")
    p.add_argument("-o", "--output", metavar="FILE", help="write results to FILE instead of standard output")
    p.add_argument("--frames", action="store_true", help="also write every window's class scores (JSON Lines)")
    p.add_argument("--clip", action="store_true",
                   help="one line per input with clip-level scores (mean over its windows) and the top labels")
    p.add_argument("--top", type=int, default=3, metavar="K", help="labels named per clip (default 3)")
    _add_model_options(p)
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this much of each input")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for the network (default: torch's, one per core, for files and standard "
                        "input, whose windows come in large batches; 1 with --mic, a window at a time)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary or progress on standard error")
    p.add_argument("--server", metavar="URL",
                   help="tag through a `streamtag serve` (ws://HOST:PORT/) instead of a local model: the same "
                        "inputs and outputs, the server's model and decoding")
    p.add_argument("--token", metavar="TOKEN", help="the server's token (default: $STREAMTAG_TOKEN)")
    p.set_defaults(run=_cmd_tag)

    p = sub.add_parser("serve", help="tag many live audio streams over WebSockets, their windows scored together",
                       description="Serve WebSocket clients, each streaming audio (raw PCM or WAV) and receiving "
                                   "events as JSON Lines; the windows of all streams are scored together, one "
                                   "network call per tick. Binds to localhost unless --host says otherwise; any "
                                   "other address needs a token. The protocol is in the README.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--token", metavar="TOKEN",
                   help="a shared secret every client must send (default: $STREAMTAG_TOKEN; required off localhost)")
    _add_model_options(p)
    p.add_argument("--device", choices=["cpu", "cuda"], help="where the network runs (default: cuda when present)")
    p.add_argument("--max-streams", type=int, default=1000, metavar="N", help="streams at once, per worker (default 1000)")
    p.add_argument("--max-message", type=int, default=1 << 20, metavar="BYTES",
                   help="largest message a client may send (default 1 MiB)")
    p.add_argument("--max-behind", type=float, default=2.0, metavar="SECONDS",
                   help="audio a stream may queue before a live one loses its oldest (counted, reported) and any "
                        "other is slowed down (default 2)")
    p.add_argument("--idle-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="close a stream silent this long (default 30)")
    p.add_argument("--send-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="close a stream whose client does not read its results this long (default 10)")
    p.add_argument("--max-wait", type=float, default=0.02, metavar="SECONDS",
                   help="longest a window waits for its batch (default 0.02)")
    p.add_argument("--max-batch", type=int, default=512, metavar="N", help="start a batch early at N windows")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="CPU threads for the network, per worker (default 1)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes sharing the port, each a whole server: one event loop uses one core, so give "
                        "one per core for the most streams (default 1)")
    p.add_argument("--stats", type=float, default=0, metavar="SECONDS",
                   help="print streams, windows, latency and drops every SECONDS on standard error")
    p.set_defaults(run=_cmd_serve)

    p = sub.add_parser("archive", help="tag a folder or manifest of recordings on a Ray cluster, resumable",
                       description="Tag every audio file under FOLDER (or listed in --manifest) with a pool of "
                                   "workers on Ray (a local cluster, or a running one with --address): per file the "
                                   "outputs `streamtag tag` writes, plus merged tables (events.*, files.csv). A "
                                   "rerun skips the files already done; a worker lost mid-run has its files redone. "
                                   "Needs the cluster extra: pip install 'streamtag[cluster]'.")
    p.add_argument("folder", nargs="?", help="folder of recordings (searched recursively)")
    p.add_argument("--manifest", metavar="FILE",
                   help="a text file listing the recordings, one path per line (relative to its folder)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder (made if missing)")
    p.add_argument("-f", "--format", default="csv,dcase", metavar="LIST",
                   help="comma list of jsonl, csv, dcase, audacity (default csv,dcase)")
    _add_model_options(p)
    p.add_argument("--address", metavar="ADDRESS",
                   help="a running Ray cluster (auto, or HOST:6379, or ray://HOST:10001); default: start a local "
                        "one for this run")
    p.add_argument("--workers", type=int, metavar="N",
                   help="workers, each a process with one model (default: as many as the cores allow, --threads "
                        "each, or the GPUs with --gpus-per-worker; here or on the cluster)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads per worker (default 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs each worker takes, its network running there (e.g. 1, or 0.25 to share one by four; "
                        "default 0: CPU)")
    p.add_argument("--report-every", type=float, default=30.0, metavar="SECONDS",
                   help="a progress line this often when standard error is not a terminal (default 30)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on standard error")
    p.set_defaults(run=_cmd_archive)

    p = sub.add_parser("live", help="a live dashboard of sound tags from a microphone, a file or the demo scene",
                       description="Tag sound live with a terminal dashboard: a bar per class, an event log, the "
                                   "input level, a log-mel spectrogram and the pipeline's latency. Listens to the "
                                   "default microphone unless --mic, --input or --scene says otherwise. When "
                                   "standard output is not a terminal, writes events as JSON Lines instead. "
                                   "Ctrl-C stops and prints a summary.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--mic", metavar="DEVICE",
                        help="input device index or name (see `streamtag devices`); default: the default input")
    source.add_argument("--input", metavar="FILE",
                        help="replay an audio file in real time through the same live path (no microphone needed)")
    source.add_argument("--scene", action="store_true",
                        help="play the synthesised street scene in real time (no microphone needed)")
    _add_live_options(p)
    p.set_defaults(run=_cmd_live)

    p = sub.add_parser("demo", help="the live dashboard on the microphone, or on a synthesised street scene",
                       description="Run `streamtag live` with the bundled model on the default microphone, or, "
                                   "where there is none, on a street scene synthesised in code (siren, car horn, "
                                   "jackhammer, idling engine), played in real time.")
    p.add_argument("--scene", action="store_true", help="play the scene even when a microphone exists")
    _add_live_options(p)
    p.set_defaults(run=_cmd_demo)

    p = sub.add_parser("bench", help="run the benchmarks (latency, throughput, memory) from a source checkout",
                       description="Run `python -m benchmarks` in the streamtag repository this command comes from: "
                                   "frontend, model, GPU, live end-to-end latency, dashboard, files, soak, "
                                   "serve (many streams) and archive (Ray) benchmarks, written as JSON, a Markdown "
                                   "table and PNG plots.")
    p.add_argument("--quick", action="store_true", help="tiny inputs: proves every part works; figures mean nothing")
    p.add_argument("--only", metavar="PARTS",
                   help="comma-separated parts: frontend, model, gpu, live, dashboard, files, soak, serve, archive")
    p.add_argument("--out", metavar="DIR", help="where to write (default: benchmarks/results, or runs/bench-quick "
                                                "with --quick)")
    p.set_defaults(run=_cmd_bench)

    p = sub.add_parser("doctor", help="check that every compiled dependency loads and works here",
                       description="Load torch with torchaudio, soxr, libsndfile, PortAudio, numba and the frontend's "
                                   "compiled kernel, and make each do a little work. A failure is one line naming "
                                   "the packages and the fix; exit status 1 if a required one fails (PortAudio, "
                                   "needed only for live capture, is a note).")
    p.set_defaults(run=_cmd_doctor)

    p = sub.add_parser("devices", help="list the audio input devices --mic can use",
                       description="List audio input devices: index, name, host API, channels, default rate.")
    p.set_defaults(run=_cmd_devices)
    return parser


def main(argv: list[str] | None = None) -> int:
    # torch's CPU threads (OpenMP) spin between parallel regions by default; beside another busy process, such as a
    # second streamtag tag in a shell script's parallel jobs, the spinning threads starve it and each other (two
    # jobs of 2 threads on 2 cores took 1.35-1.9x as long as two of 1). Sleeping instead cost one job nothing
    # measurable. OpenMP reads this once, when torch loads it, so it is set before any command imports torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    from streamtag.errors import StreamtagError

    try:
        return args.run(args)
    except StreamtagError as exc:
        print(f"streamtag: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def entry_point() -> None:
    """The ``streamtag`` program: :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> None:
    """Flush the standard streams and end the process without Python's shutdown.

    The shutdown tears down every object that torch (and numba, where loaded) created, and
    torch's libraries then run their C++ destructors: 1.2-1.5 s here, more than
    the tagging of ten minutes of audio, paid by every call in a shell script,
    and 128 MB more resident memory than ``import torch`` itself needs (its
    CUDA libraries' pages are read in to be torn down). When :func:`main`
    returns, its outputs are closed and its threads have ended, so once the
    standard streams are flushed nothing is left that the teardown would do for us."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # a reader that has gone (| head): nothing more to tell it
            pass
    os._exit(code)
