"""``python -m train overlay`` and ``python -m train multilabel``.

    python -m train overlay /data/UrbanSound8K --dataset us8k --per-fold 500 --level-db 20 --out /data/us8k-20db
    python -m train multilabel /data/UrbanSound8K --dataset us8k --out results/multilabel
    python -m train multilabel /data/UrbanSound8K --dataset us8k --all --export model.pt

The first writes an overlay dataset (audio and CSV) to disk. The second runs
the pretraining study (each present fold as the test fold once, from scratch
and pretrained) or, with ``--all``, trains one model on every present fold and
exports it with its tuned per-class thresholds.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path


def _fail(message: str):
    raise SystemExit(f"python -m train: error: {message}")


def add_commands(sub, common) -> None:
    p = sub.add_parser("overlay", help="write a two-event overlay dataset (audio + CSV) to disk")
    p.add_argument("data", help="dataset folder (UrbanSound8K layout, or ESC-50 layout for esc10/esc50)")
    p.add_argument("--dataset", required=True, choices=("us8k", "esc10", "esc50"))
    p.add_argument("--out", required=True, type=Path, help="new folder for the overlays (audio/foldN, metadata)")
    p.add_argument("--per-fold", type=int, default=500, help="mixes per fold")
    p.add_argument("--level-db", default="0",
                   help="level difference in dB: 0 (equal level, the default), 20 (one event 20 dB under the other, "
                        "alternating which) or a range MIN:MAX")
    p.add_argument("--max-offset", type=float, default=0.0, help="seconds one event may start after the other")
    p.add_argument("--folds", type=int, nargs="+", help="only these folds (default: every present fold)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_cmd_overlay)

    p = sub.add_parser("multilabel", help="the multilabel pretraining study, or (--all) train and export a model")
    common(p)
    p.add_argument("--all", action="store_true",
                   help="train on every present fold (no test fold) and export the model (needs --export)")
    p.add_argument("--export", type=Path, help="model file to write (with --all)")
    p.add_argument("--hop-frames", type=int, default=4, help="the exported model's live hop (default 4: 0.1 s)")
    p.add_argument("--init", choices=("scratch", "pretrained", "both"),
                   help="start from scratch, from single-label pretraining, or both (default: both for the study, "
                        "pretrained with --all)")
    p.add_argument("--window", choices=("short", "long"), default="short")
    p.add_argument("--folds", type=int, nargs="+", help="test only these folds (default: every present fold)")
    p.add_argument("--pretrain-epochs", type=int, default=10, help="single-label epochs before the overlays")
    p.add_argument("--epochs", type=int, default=10, help="overlay-stage epochs")
    p.add_argument("--mixes", type=int, default=500, help="new overlays per overlay-stage epoch")
    p.add_argument("--singles", type=int, default=500, help="single clips per overlay-stage epoch")
    p.add_argument("--level-db", default="0:20", help="level difference of the training mixes: DB or MIN:MAX")
    p.add_argument("--max-offset", type=float, default=0.0, help="seconds one event may start after the other")
    p.add_argument("--test-mixes", type=int, default=400, help="test mixes per level (equal, 20 dB) and fold")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--keep", choices=("best", "last"), default="last",
                   help="the overlay-stage epoch whose weights are kept: the last (a fixed schedule; the default: "
                        "better than the best on validation mAP in 8 to 12 of 12 seeds, results/multilabel-seeds.md) "
                        "or the best on validation mAP")
    p.add_argument("--train-fraction", type=float, default=1.0,
                   help="train on about this share of each class's training clips, whole recordings at a time "
                        "(a learning curve; default 1: all of them)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--lr", type=float, help="learning rate (default 0.001 for adam, 0.01 for sgd)")
    p.add_argument("--weight-decay", type=float, help="L2 penalty (default 0 for adam, 0.001 for sgd)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--dense", type=int, default=1500)
    p.add_argument("--no-batch-norm", dest="batch_norm", action="store_false")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--augment", default="none",
                   help="as for cv; the pretraining uses all of it, the overlay stage shift, gain, speed and "
                        "specaugment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("results/multilabel"),
                   help="report prefix: writes OUT.md, OUT.csv, OUT-classes.csv, OUT.json, OUT.png")
    p.add_argument("--note", help="a sentence for the report (e.g. what was cut to fit a time budget)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", help="cuda or cpu (default cuda when available)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of progress bars (for logs)")
    p.set_defaults(run=_cmd_multilabel)


def _command() -> str:
    return "python -m train " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _cmd_overlay(args) -> int:
    from rich.console import Console

    from train.data.datasets import read_dataset
    from train.data.overlay import parse_levels, write_overlays

    if args.per_fold < 1:
        _fail(f"--per-fold must be at least 1, got {args.per_fold}")
    if args.max_offset < 0:
        _fail(f"--max-offset must be >= 0 seconds, got {args.max_offset}")
    levels = parse_levels(args.level_db)
    dataset = read_dataset(args.dataset, args.data)
    path = write_overlays(dataset, args.out, args.per_fold, args.seed, levels, args.max_offset, args.folds,
                          command=_command(), quiet=args.quiet)
    n = sum(1 for _ in open(path)) - 1
    Console(stderr=True).print(f"{n} overlays of {dataset.name} -> {args.out} (list: {path})")
    return 0


def _check(args) -> None:
    """Refuse inconsistent options in one line; settle the default --init."""
    args.init = args.init or ("pretrained" if args.all else "both")
    if args.all and not args.export:
        _fail("--all trains a model to export: give --export FILE")
    if args.export and not args.all:
        _fail("--export needs --all (the study's models are trained without their test fold)")
    if args.all and args.init == "both":
        _fail("--all trains one model: choose --init scratch or --init pretrained")
    if args.all and args.folds:
        _fail("--all trains on every present fold and tests on none: drop --folds")
    for name in ("epochs", "test_mixes", "hop_frames", "batch_size"):
        if getattr(args, name) < 1:
            _fail(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("pretrain_epochs", "mixes", "singles"):
        if getattr(args, name) < 0:
            _fail(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.mixes + args.singles < 1:
        _fail("--mixes and --singles are both 0: the overlay stage has nothing to train on")
    if args.init in ("pretrained", "both") and args.pretrain_epochs < 1:
        _fail(f"--init {args.init} needs --pretrain-epochs >= 1")
    if not 0 < args.val_fraction < 1:
        _fail(f"--val-fraction must lie in (0, 1), got {args.val_fraction}")
    if not 0 < args.train_fraction <= 1:
        _fail(f"--train-fraction must lie in (0, 1], got {args.train_fraction}")
    if args.all and args.train_fraction < 1:
        _fail("--train-fraction is for the study's learning curve; --all trains the exported model on every clip")
    if args.max_offset < 0:
        _fail(f"--max-offset must be >= 0 seconds, got {args.max_offset}")


def _cmd_multilabel(args) -> int:
    from train.data.augment import Augment
    from train.data.datasets import read_dataset
    from train.data.overlay import parse_levels

    _check(args)
    try:
        augment = Augment.parse(args.augment)
    except ValueError as exc:
        _fail(str(exc))
    levels = parse_levels(args.level_db)
    read_dataset(args.dataset, args.data)  # bad paths fail here, before torch loads

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from streamtag.features import FeatureSpec
    from train.data.cache import load_features
    from train.fit import ranks
    from train.fit.loop import Recipe
    from train.fit.multilabel import Overlays

    sgd = args.optimizer == "sgd"
    recipe = Recipe(optimizer=args.optimizer, lr=args.lr or (0.01 if sgd else 1e-3),
                    weight_decay=args.weight_decay if args.weight_decay is not None else (1e-3 if sgd else 0.0),
                    epochs=args.epochs, batch_size=args.batch_size, schedule=args.schedule, dense=args.dense,
                    batch_norm=args.batch_norm, dropout=args.dropout, head="multilabel")
    overlays = Overlays(mixes=args.mixes, singles=args.singles, level_db=levels, max_offset=args.max_offset,
                        pretrain_epochs=args.pretrain_epochs, keep=args.keep)
    init = args.init
    inits = ["scratch", "pretrained"] if init == "both" else [init]
    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        _fail(f"--device {device}: CUDA is not available here; use --device cpu")
    console = Console(stderr=True, quiet=not ranks.is_main())
    feats = ranks.local_first(lambda: load_features(read_dataset(args.dataset, args.data), FeatureSpec(), args.cache,
                                                    quiet=args.quiet or not ranks.is_main()))
    dataset = feats.dataset
    console.print(dataset.summary())
    folds = args.folds or dataset.folds
    absent = sorted(set(folds) - set(dataset.folds))
    if absent:
        _fail(f"fold(s) {absent} not present ({dataset.summary()})")
    recipe_text = (f"{recipe.optimizer} lr={recipe.lr:g} wd={recipe.weight_decay:g} {recipe.schedule}, batch "
                   f"{recipe.batch_size}, dense {recipe.dense}{'+bn' if recipe.batch_norm else ''}, dropout "
                   f"{recipe.dropout:g}")
    data_text = (f"{args.epochs} overlay-stage epochs of {args.mixes} new mixes (level difference "
                 f"{levels[0]:g}-{levels[1]:g} dB, alternating the quieter event"
                 + (f", offsets up to {args.max_offset:g} s" if args.max_offset else "")
                 + f") + {args.singles} single clips each")
    per_fold = sum(args.epochs + (args.pretrain_epochs if i == "pretrained" else 0) for i in inits)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
                  TimeRemainingColumn(), console=console, disable=args.quiet) as progress:
        task = progress.add_task("multilabel", total=per_fold * (1 if args.all else len(folds)))

        def on_epoch(where: str, row: dict) -> None:
            text = (f"{where}{row['stage']} epoch {row['epoch']} loss {row['loss']:.3f} ({row['seconds']:.0f} s)"
                    + (f" val mAP {100 * row['val_map']:.1f}%" if "val_map" in row else ""))
            progress.update(task, advance=1, description=text)
            if args.quiet:
                console.print(text, highlight=False)

        if args.all:
            _train_and_export(args, feats, recipe, overlays, augment, init, device, recipe_text, data_text,
                              lambda row: on_epoch("", row), console)
        else:
            _study(args, feats, recipe, overlays, augment, inits, folds, device, recipe_text, data_text,
                   lambda f, i, row: on_epoch(f"fold {f} {i} ", row), console)
    return 0


def _study(args, feats, recipe, overlays, augment, inits, folds, device, recipe_text, data_text, on_epoch,
           console) -> None:
    from train.fit import ranks
    from train.fit.multilabel import study
    from train.reports.multilabel import write_study

    dataset = feats.dataset
    info = {"title": f"Multilabel tagging of two-event overlays: {dataset.name}, folds {' <-> '.join(map(str, folds))}"
                     if len(folds) == 2 else f"Multilabel tagging of two-event overlays: {dataset.name}",
            "dataset_summary": dataset.summary(), "command": _command(), "note": args.note,
            "setup": (f"Window {args.window}; {recipe_text}; "
                      + (f"pretraining: {args.pretrain_epochs} single-label (softmax) epochs on the training "
                         "clips; " if "pretrained" in inits else "")
                      + f"then {data_text}, binary cross-entropy on sigmoid outputs; "
                      + ("the epoch with the best validation mAP is kept. " if args.keep == "best"
                         else "the last epoch is kept. ")
                      + (f"Training clips: about {args.train_fraction:g} of each class's clips in the training "
                         "folds, whole source recordings at a time. " if args.train_fraction < 1 else "")
                      + f"Validation: {args.val_fraction:g} of the training clips, held out "
                      f"by source recording, with as many mixes of them per level. Test: each test fold's single "
                      f"clips and {args.test_mixes} mixes of them per level (equal level after peak normalisation; "
                      f"one event 20 dB under the other, alternating which), pairs of different classes. A "
                      f"clip's scores are the mean of its windows' probabilities. Augmentation {augment.describe()}; "
                      f"seed {args.seed}; device {device}."),
            "config": {**dataclasses.asdict(recipe), "overlays": dataclasses.asdict(overlays),
                       "augment": dataclasses.asdict(augment), "window": args.window, "seed": args.seed,
                       "test_mixes": args.test_mixes, "val_fraction": args.val_fraction,
                       "train_fraction": args.train_fraction, "device": device}}

    def on_result(results):
        if not ranks.is_main():
            return
        write_study(args.out, results, dataset.classes, info)
        r = results[-1]
        console.print(f"fold {r['fold']} {r['init']}: single-clip accuracy {100 * r['sets']['single']['all']:.1f}%, "
                      f"both correct {100 * r['sets']['equal']['all']:.1f}% (equal level), "
                      f"{100 * r['sets']['minus20']['all']:.1f}% (20 dB apart), mAP {100 * r['map']:.1f}% "
                      f"-> {args.out}.md")

    study(feats, args.window, recipe, overlays, augment, inits, args.seed, device, args.val_fraction,
          args.test_mixes, folds, on_epoch, on_result, args.train_fraction)


def _train_and_export(args, feats, recipe, overlays, augment, init, device, recipe_text, data_text, on_epoch,
                      console) -> None:
    import numpy as np

    from streamtag.modelfile import save_model
    from train.fit import ranks
    from train.fit.multilabel import train_multilabel
    from train.data.segments import WINDOWS

    dataset = feats.dataset
    if init == "scratch":
        overlays = dataclasses.replace(overlays, pretrain_epochs=0)
    trained = train_multilabel(feats, np.arange(len(dataset.clips)), args.window, recipe, overlays, augment,
                               args.seed, device, args.val_fraction, on_epoch)
    if not ranks.is_main():
        return
    val = trained.val
    metrics = {"val_map": val["map"], "val_single_accuracy": val["sets"]["single"]["all"],
               "val_equal_both_correct": val["sets"]["equal"]["all"],
               "val_minus20_both_correct": val["sets"]["minus20"]["all"],
               "val_single_second_sound": val["sets"]["single"]["extra"],
               "val_macro_f1_tuned": float(np.mean(val["tuned"]["f1"]))}
    provenance = {
        "command": _command(), "dataset": dataset.summary(), "folds": dataset.folds,
        "train_clips": trained.n_train, "val_clips": trained.n_val, "init": init,
        "window": args.window, "recipe": recipe_text,
        "pretraining": (f"{overlays.pretrain_epochs} single-label (softmax) epochs" if overlays.pretrain_epochs
                        else "none"),
        "overlays": data_text, "augment": augment.describe(), "seed": args.seed,
        "epochs": len(trained.history), "keep": overlays.keep, "kept_overlay_epoch": trained.kept_epoch,
        "thresholds": "per class, maximising F1 on the validation clips' windows (single clips and mixes)",
        "metrics": metrics}
    length = WINDOWS[args.window][0]
    args.export.parent.mkdir(parents=True, exist_ok=True)
    save_model(args.export, trained.net.cpu(), classes=dataset.classes, spec=feats.spec, window_frames=length,
               hop_frames=args.hop_frames, thresholds=trained.window_thresholds, provenance=provenance)
    console.print(f"validation: mAP {100 * metrics['val_map']:.1f}%, single-clip accuracy "
                  f"{100 * metrics['val_single_accuracy']:.1f}%, both correct on equal-level mixes "
                  f"{100 * metrics['val_equal_both_correct']:.1f}% -> {args.export}")
