"""The ``streamtag`` command line.

Each subcommand is a small function that imports what it needs when it runs,
so ``streamtag --help`` answers at once without loading torch or numba. Errors
caused by the user's input (:class:`~streamtag.errors.StreamtagError`) print as
one line on standard error and exit with code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


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
    return parser


def main(argv: list[str] | None = None) -> int:
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
