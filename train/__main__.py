"""``python -m train``: cross-validate a recipe, build a feature cache, compare runs.

    python -m train cv /data/ESC-10 --dataset esc10 --window short --seeds 0 1 2 --out runs/esc10-short
    python -m train features /data/UrbanSound8K --dataset us8k
    python -m train compare runs/esc10-* -o results/esc10.md
    python -m train compare results/default-model-cv*.json
    torchrun --nproc_per_node 2 -m train cv /data/ESC-10 --dataset esc10 --threads 1 --out runs/esc10-short

Under torchrun the training commands (:data:`TRAINING`) split every batch among
the ranks and rank 0 writes (:mod:`train.fit.ranks`); the other commands run on rank 0 only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

TRAINING = ("cv", "multilabel", "strong")  # the commands that train on every rank under torchrun


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="dataset folder (UrbanSound8K layout, or ESC-50 layout for esc10/esc50)")
    p.add_argument("--dataset", required=True, choices=("us8k", "esc10", "esc50"))
    p.add_argument("--cache", help="feature cache folder (default $STREAMTAG_CACHE or ~/.cache/streamtag)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("cv", help="cross-validation over the official folds present")
    _common(p)
    p.add_argument("--window", choices=("short", "long"), default="short")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--folds", type=int, nargs="+", help="test only these folds (default: every present fold)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=float, help="learning rate (default 0.001 for adam, 0.01 for sgd)")
    p.add_argument("--weight-decay", type=float, help="L2 penalty (default 0 for adam, 0.001 for sgd)")
    p.add_argument("--epochs", type=_positive, default=30)
    p.add_argument("--batch-size", type=_positive, default=128)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--patience", type=int, default=0, help="> 0: early stopping on held-out validation clips")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--dense", type=_positive, default=1500)
    p.add_argument("--no-batch-norm", dest="batch_norm", action="store_false")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--head", choices=("single", "multilabel"), default="single")
    p.add_argument("--augment", default="none",
                   help="comma list of shift, gain[=dB], background[=p], mix[=p], speed[=max change], specaugment; "
                        "or none")
    p.add_argument("--out", help="run folder (default runs/DATASET-WINDOW)")
    p.add_argument("--export", choices=("fold", "all"),
                   help="save model.pt in the run folder: 'fold' the network of the first test fold (no extra "
                        "training; its held-out accuracy is known), 'all' a network retrained on every present fold")
    p.add_argument("--eval-every", type=_positive, default=1, help="score the test fold for the curves every N epochs")
    p.add_argument("--train-stride", type=_positive,
                   help="frames between training windows (default: the window's own; tests always use it)")
    p.add_argument("--threads", type=_positive, default=2)
    p.add_argument("--device", help="cuda or cpu (default cuda when available)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars (for logs)")
    p.set_defaults(run=_cmd_cv)

    p = sub.add_parser("features", help="compute and cache a dataset's features, then print its summary")
    _common(p)
    p.set_defaults(run=_cmd_features)

    p = sub.add_parser("compare", help="markdown table of several run folders, or of multilabel studies' JSON")
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, help="write the table here instead of standard output")
    p.add_argument("--plot", type=Path, help="multilabel studies: also plot every seed's scores to this PNG")
    p.set_defaults(run=_cmd_compare)

    from train.commands import multilabel as multilabel_cli, scenes as scenes_cli

    multilabel_cli.add_commands(sub, _common)  # overlay, multilabel
    scenes_cli.add_commands(sub, _common)  # scenes, strong, detect, score
    return parser


def _cmd_features(args) -> int:
    from train.data.cache import read_features

    feats = read_features(args.dataset, args.data, args.cache)
    print(f"{feats.dataset.summary()}; {len(feats.frames)} frames cached")
    return 0


def _cmd_compare(args) -> int:
    from train.reports.multilabel import compare_studies, plot_studies
    from train.reports.runs import compare

    if all(run.suffix == ".json" and run.is_file() for run in args.runs):  # multilabel studies
        try:
            table = compare_studies(args.runs)
            if args.plot:
                plot_studies(args.runs, args.plot)
        except KeyError as exc:
            raise SystemExit(f"python -m train: error: not a multilabel study report: no {exc} in it") from None
        except ValueError as exc:
            raise SystemExit(f"python -m train: error: {exc}") from None
    else:
        if args.plot:
            raise SystemExit("python -m train: error: --plot draws multilabel studies (their .json reports) only")
        for run in args.runs:
            if not (run / "summary.json").is_file():
                raise SystemExit(f"python -m train: error: {run} is not a run folder (no summary.json) "
                                 "or a multilabel study's JSON")
        table = compare(args.runs)
    if args.output:
        args.output.write_text(table)
    else:
        print(table, end="")
    return 0


def _cmd_cv(args) -> int:
    from train.data.augment import Augment
    from train.data.datasets import read_dataset

    try:
        augment = Augment.parse(args.augment)
    except ValueError as exc:
        raise SystemExit(f"python -m train: error: {exc}")
    read_dataset(args.dataset, args.data)  # bad paths fail here, before torch loads

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from train.data.cache import read_features
    from train.fit import ranks
    from train.fit.crossval import cross_validate, fit
    from train.fit.loop import Recipe
    from train.reports.runs import write_run
    from train.data.segments import WINDOWS

    sgd = args.optimizer == "sgd"
    recipe = Recipe(optimizer=args.optimizer, lr=args.lr or (0.01 if sgd else 1e-3),
                    weight_decay=args.weight_decay if args.weight_decay is not None else (1e-3 if sgd else 0.0),
                    epochs=args.epochs, batch_size=args.batch_size, schedule=args.schedule, patience=args.patience,
                    dense=args.dense, batch_norm=args.batch_norm, dropout=args.dropout, head=args.head)
    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out or f"runs/{args.dataset}-{args.window}")
    console = Console(stderr=True, quiet=not ranks.is_main())
    feats = ranks.local_first(lambda: read_features(args.dataset, args.data, args.cache,
                                                     args.quiet or not ranks.is_main()))
    console.print(feats.dataset.summary())
    folds = args.folds or feats.dataset.folds
    absent = sorted(set(folds) - set(feats.dataset.folds))
    if absent:
        raise SystemExit(f"python -m train: error: fold(s) {absent} not present ({feats.dataset.summary()})")

    recipe_text = (f"{recipe.optimizer} lr={recipe.lr:g} wd={recipe.weight_decay:g} {recipe.schedule} "
                   + (f"train-stride {args.train_stride} " if args.train_stride else "")
                   + f"{recipe.epochs} epochs" + (f" early-stop(patience {recipe.patience})" if recipe.patience else "")
                   + f" batch {recipe.batch_size} dense {recipe.dense}{'+bn' if recipe.batch_norm else ''}")
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
                  TimeRemainingColumn(), console=console, disable=args.quiet) as progress:
        task = progress.add_task("cv", total=len(args.seeds) * len(folds) * recipe.epochs)

        def on_epoch(seed, fold, row):
            text = (f"seed {seed} fold {fold} epoch {row['epoch']} loss {row['loss']:.3f}"
                    + "".join(f" {k[:-4]} {100 * row[k]:.1f}%" for k in ("test_acc", "val_acc") if k in row))
            progress.update(task, advance=1, description=text)
            if args.quiet:  # a log file gets one line per epoch instead of a bar
                console.print(text, highlight=False)

        def on_fold(r, net):
            progress.update(task, advance=recipe.epochs - r["epochs"])  # epochs early stopping skipped
            console.print(f"seed {r['seed']} fold {r['fold']}: segment {100 * r['segment']:.1f}%, clip prob "
                          f"{100 * r['prob']:.1f}%, majority {100 * r['majority']:.1f}% ({r['seconds']:.0f} s)")
            if args.export == "fold" and "model" not in exported:
                exported["model"] = (net.cpu(), r)

        exported: dict = {}
        results = cross_validate(feats, args.window, recipe, augment, args.seeds, device, args.val_fraction,
                                 folds, on_epoch, on_fold, args.eval_every, args.train_stride)
    command = "python -m train " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    info = {"name": out.name, "dataset": feats.dataset.name, "dataset_summary": feats.dataset.summary(),
            "window": args.window, "recipe": recipe_text, "augment": augment.describe(), "command": command,
            "config": {**dataclasses.asdict(recipe), "augment": dataclasses.asdict(augment), "device": device}}
    if ranks.is_main():
        summary = write_run(out, results, feats.dataset.classes, info)
        console.print(f"{out.name}: clip accuracy {100 * summary['prob']['mean']:.1f}% (prob vote), "
                      f"{100 * summary['majority']['mean']:.1f}% (majority), segment "
                      f"{100 * summary['segment']['mean']:.1f}% -> {out}/results.md")
    if args.export == "all":  # every rank trains it
        import numpy as np

        console.print("training the exported model on every present fold")
        net, history = fit(feats, np.arange(len(feats.dataset.clips)), args.window, recipe, augment,
                           args.seeds[0], device, args.val_fraction, train_stride=args.train_stride)
    if args.export and ranks.is_main():
        from streamtag.modelfile import save_model

        provenance = {"dataset": feats.dataset.summary(), "command": command, "recipe": recipe_text,
                      "augment": augment.describe(), "cv_clip_accuracy_prob": summary["prob"]["mean"]}
        if args.export == "fold":
            net, r = exported["model"]
            train_folds = [f for f in feats.dataset.folds if f != r["fold"]]
            provenance.update(trained_on_folds=train_folds, tested_on_fold=r["fold"], test_clip_accuracy_prob=r["prob"],
                              test_clip_accuracy_majority=r["majority"], seed=r["seed"], epochs=r["epochs"])
        else:
            provenance.update(trained_on_folds=feats.dataset.folds, seed=args.seeds[0], epochs=len(history))
        length, stride = WINDOWS[args.window]
        save_model(out / "model.pt", net.cpu(), classes=feats.dataset.classes, spec=feats.spec,
                   window_frames=length, hop_frames=stride, provenance=provenance)
        console.print(f"model -> {out / 'model.pt'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from streamtag.errors import StreamtagError

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.command in TRAINING
    if not distributed and os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, a command that trains nothing runs once, on rank 0
    if distributed:
        from train.fit import ranks

        ranks.start()
    try:
        return args.run(args)
    except StreamtagError as exc:
        print(f"python -m train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if distributed:
            ranks.stop()


if __name__ == "__main__":
    sys.exit(main())
