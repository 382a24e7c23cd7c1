"""``python -m train scenes | strong | detect | score``: soundscapes and sound event detection.

    python -m train scenes DATA/UrbanSound8K --dataset us8k --folds 3 --per-fold 100 --out scenes-f3
    python -m train strong DATA/UrbanSound8K --dataset us8k --test-fold 3 --export strong-not3.pt
    python -m train strong DATA/UrbanSound8K --dataset us8k --all --export model.pt
    python -m train tune strong-not3.pt DATA/UrbanSound8K --export strong-not3-tuned.pt
    python -m train detect scenes-f3 --fold 3 --model model.pt --model default -o results/scenes-f3
    python -m train score reference.tsv events.tsv [--frames windows.jsonl]

``scenes`` writes soundscapes (audio plus DCASE annotations); ``strong`` trains
on fresh scenes every epoch, from every present fold but the test fold (or all,
``--all``), and exports a model with its thresholds and decoding tuned on
validation scenes; ``detect`` tags written scenes with models and reports the DCASE
metrics with a piano roll; ``score`` scores any annotated recordings against
the events ``streamtag tag -f dcase`` wrote for them (and PSDS from
``--frames`` window scores).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
from pathlib import Path


def _fail(message: str):
    raise SystemExit(f"python -m train: error: {message}")


def _command() -> str:
    return "python -m train " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _recipe_options(p) -> None:
    p.add_argument("--duration", type=float, default=10.0, help="scene length in seconds (default 10)")
    p.add_argument("--events", default="1:9", help="events per scene, N or MIN:MAX (default 1:9)")
    p.add_argument("--snr", default="6:30", help="event SNR over the background in dB, MIN:MAX (default 6:30)")
    p.add_argument("--background", choices=("brown", "ambient", "both"), default="brown",
                   help="Brownian noise (URBAN-SED), ESC-10's rain, sea waves, fire and helicopter recordings, or "
                        "both (each scene one or the other, evenly)")
    p.add_argument("--backgrounds", help="ESC-10 (or ESC-50) folder for --background ambient")
    p.add_argument("--background-folds", type=int, nargs="+", help="ESC folds the ambient backgrounds come from")
    p.add_argument("--onsets", choices=("inside", "scaper"), default="inside",
                   help="inside: each event starts uniformly where it still ends inside the scene (default); scaper: "
                        "anywhere, moved back to end with the scene if it would run past it (Scaper's URBAN-SED)")
    p.add_argument("--event-seconds", help="MIN:MAX: each event plays its clip's first MIN-MAX s, drawn uniformly "
                                           "(URBAN-SED: 0.5:4); default: whole clips")


def _scene_recipe(args):
    from train.data.scenes import SceneRecipe, parse_range

    return SceneRecipe(duration=args.duration, events=parse_range(args.events, int), snr_db=parse_range(args.snr),
                       background=args.background, onsets=args.onsets,
                       event_seconds=parse_range(args.event_seconds) if args.event_seconds else None)


def add_commands(sub, common) -> None:
    p = sub.add_parser("scenes", help="write soundscapes (URBAN-SED recipe) with DCASE annotations to disk")
    p.add_argument("data", help="UrbanSound8K folder")
    p.add_argument("--dataset", default="us8k", choices=("us8k",))
    p.add_argument("--out", required=True, type=Path, help="new folder: audio/foldN/*.wav, metadata/foldN.tsv")
    p.add_argument("--per-fold", type=int, default=100, help="scenes per fold (default 100)")
    p.add_argument("--folds", type=int, nargs="+", help="only these folds (default: every present fold)")
    p.add_argument("--seed", type=int, default=0)
    _recipe_options(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_cmd_scenes)

    p = sub.add_parser("strong", help="strong-label training on fresh soundscapes; exports a model, decoding tuned")
    common(p)
    p.add_argument("--test-fold", type=int, help="train on the other present folds (then `detect` on this fold's scenes)")
    p.add_argument("--all", action="store_true", help="train on every present fold")
    p.add_argument("--train-folds", type=int, nargs="+",
                   help="train on these folds only (default: every present fold but the test fold): a learning curve")
    p.add_argument("--train-share", type=float, default=1.0, metavar="SHARE",
                   help="train on this share (0-1] of the training folds' source recordings, drawn per fold and "
                        "class from --seed (default 1: all): a learning curve")
    p.add_argument("--export", type=Path, required=True, help="model file to write, thresholds and decoding tuned")
    p.add_argument("--window", choices=("short", "long"), default="short")
    p.add_argument("--hop-frames", type=int, default=4, help="live hop of the exported model, and the frames a "
                                                             "score describes (default 4: 93 ms)")
    p.add_argument("--describe-at", default="centre", metavar="centre|end|SHARE",
                   help="the moment of a window its score describes: its centre (default), its end (its last "
                        "--hop-frames frames: no look-ahead, so live events open about half a window sooner), or "
                        "a share of the window from 0 to 1; the model file keeps it")
    p.add_argument("--edge-weight", type=float, default=1.0,
                   help="weight of the loss for a class in a window whose moment is within 0.2 s of one of its "
                        "events' onsets or offsets (default 1: no weighting)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--scenes-per-epoch", type=int, default=500)
    p.add_argument("--clips-per-epoch", type=int, default=0,
                   help="single clips mixed into each epoch's scenes, each a short scene of its own (default 0)")
    p.add_argument("--overlays-per-epoch", type=int, default=0,
                   help="two-clip overlays (0-20 dB apart) mixed into each epoch's scenes (default 0)")
    p.add_argument("--val-scenes", type=int, default=60)
    p.add_argument("--pretrain-epochs", type=int, default=0, help="single-label epochs on clips first")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="cosine")
    p.add_argument("--dense", type=int, default=1500)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--augment", default="shift,gain=6",
                   help="shift, gain[=dB], speed[=F] (the whole scene up to F faster or slower: 0.1 = +-10 %%), specaugment "
                        "(default shift,gain=6)")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", help="cuda or cpu (default cuda when available)")
    _recipe_options(p)
    p.set_defaults(run=_cmd_strong)

    p = sub.add_parser("tune", help="tune a strong-label model's thresholds and decoding again, on its own "
                                    "validation scenes (made again from its provenance)")
    p.add_argument("model", type=Path, help="a model file `python -m train strong` wrote")
    p.add_argument("data", help="the UrbanSound8K folder it was trained on")
    p.add_argument("--dataset", default="us8k", choices=("us8k",))
    p.add_argument("--cache", help="feature cache folder (default $STREAMTAG_CACHE or ~/.cache/streamtag)")
    p.add_argument("--export", type=Path, required=True, help="model file to write")
    p.set_defaults(run=_cmd_tune)

    p = sub.add_parser("detect", help="tag written scenes with models; DCASE metrics table and a piano roll")
    p.add_argument("scenes", type=Path, help="a folder `python -m train scenes` wrote")
    p.add_argument("--fold", type=int, required=True, help="score this fold's scenes")
    p.add_argument("--model", action="append", required=True, metavar="FILE|default",
                   help="model file, or 'default' for the one embedded in streamtag; repeat to compare")
    p.add_argument("--name", action="append", help="a row name per --model (default: the file name)")
    p.add_argument("-o", "--out", type=Path, required=True, help="report prefix: OUT.md, OUT.json, OUT.png")
    p.add_argument("--clips", metavar="DATA", help="also the clip accuracy of each model on this UrbanSound8K "
                                                    "folder's clips of the same fold (mean window scores, top class)")
    p.add_argument("--roll", type=int, default=3, metavar="K", help="models drawn in the piano roll: the first K")
    p.add_argument("--title", default="Sound event detection on soundscapes")
    p.add_argument("--note", default="")
    p.set_defaults(run=_cmd_detect)

    p = sub.add_parser("curve", help="a learning curve: train detect's scores against the clips each model learnt "
                                     "from, a line on a log scale, and what it gives at more data")
    p.add_argument("detected", type=Path, nargs="+", help="JSON reports of `python -m train detect`")
    p.add_argument("--at", type=int, nargs="*", default=[], metavar="CLIPS",
                   help="also say what the line gives at these clip counts (a full copy's folds, say)")
    p.add_argument("-o", "--out", type=Path, required=True, help="report prefix: OUT.md, OUT.png")
    p.add_argument("--title", default="Learning curve: detection on held-out scenes")
    p.add_argument("--note", default="")
    p.set_defaults(run=_cmd_curve)

    p = sub.add_parser("score", help="DCASE metrics of streamtag's events against reference annotations")
    p.add_argument("reference", type=Path, help="reference annotations (DCASE TSV: filename onset offset event_label)")
    p.add_argument("estimated", type=Path, help="streamtag's events (streamtag tag -f dcase)")
    p.add_argument("--frames", type=Path, help="streamtag tag --frames output (JSON Lines), for PSDS")
    p.add_argument("-o", "--out", type=Path, help="also write OUT.md and OUT.json")
    p.set_defaults(run=_cmd_score)


def _cmd_scenes(args) -> int:
    from train.data.datasets import read_dataset
    from train.data.scenes import write_scenes

    dataset = read_dataset(args.dataset, args.data)
    backgrounds = read_dataset("esc10", args.backgrounds) if args.backgrounds else None
    meta = write_scenes(dataset, args.out, args.per_fold, _scene_recipe(args), args.seed, args.folds, backgrounds,
                        args.background_folds, command=_command(), quiet=args.quiet)
    print(f"{dataset.summary()} -> scenes in {args.out}, annotations in {meta}")
    return 0


def _read_scenes(folder: Path, fold: int):
    import soundfile as sf

    from train.data.scenes import read_tsv

    reference = read_tsv(folder / "metadata" / f"fold{fold}.tsv")
    scenes = []
    for name in sorted(reference):
        audio, rate = sf.read(folder / "audio" / f"fold{fold}" / name, dtype="float32")
        scenes.append((name, audio, rate))
    return scenes, reference


def _evaluate(model, scenes, reference) -> tuple[dict, dict]:
    from train.evaluate.detection import delays, score, tag_scenes

    tagged = tag_scenes(model, scenes)
    metrics = score(reference, {t.name: t.events for t in tagged}, model.classes,
                    {t.name: t.duration for t in tagged}, {t.name: (t.scores, t.boundaries) for t in tagged})
    metrics["delay"] = delays(reference, tagged)
    return metrics, {t.name: t.events for t in tagged}


def _clip_accuracy(model, data: str, fold: int) -> float:
    """The fold's clips through :func:`train.fit.strong.clip_accuracy`."""
    import numpy as np

    from streamtag.features import FeatureSpec
    from train.data.cache import load_features
    from train.data.datasets import read_dataset
    from train.fit.strong import clip_accuracy

    feats = load_features(read_dataset("us8k", data), FeatureSpec(), None, quiet=True)
    if feats.dataset.classes != model.classes:
        _fail(f"the model's classes are not UrbanSound8K's: {model.classes}")
    return clip_accuracy(model, feats, np.flatnonzero([c.fold == fold for c in feats.dataset.clips]))


def _cmd_detect(args) -> int:
    from streamtag.modelfile import load_model
    from train.reports.detection import piano_roll, write

    if args.name and len(args.name) != len(args.model):
        _fail("give one --name per --model")
    scenes, reference = _read_scenes(args.scenes, args.fold)
    rows, detected = {}, {}
    for k, path in enumerate(args.model):
        model = load_model(None if path == "default" else path, device="cpu")
        name = args.name[k] if args.name else ("default model" if path == "default" else Path(path).name)
        rows[name], detected[name] = _evaluate(model, scenes, reference)
        if "train_clips" in model.provenance:  # what a learning curve (`train curve`) puts it at
            rows[name]["training_clips"] = model.provenance["train_clips"] + model.provenance.get("val_clips", 0)
        if args.clips:
            rows[name]["clip_accuracy"] = _clip_accuracy(model, args.clips, args.fold)
            print(f"{name}: clip accuracy on fold {args.fold} {100 * rows[name]['clip_accuracy']:.1f}%")
        m = rows[name]
        print(f"{name}: segment F1 {m['segment_f1']:.3f} ER {m['segment_er']:.3f}, event F1 {m['event_f1']:.3f} "
              f"ER {m['event_er']:.3f} (onsets alone {m['onset_f1']:.3f}, offsets alone {m['offset_f1']:.3f}), "
              f"PSDS {m['psds']:.3f}")
    write(args.out, rows, args.title, args.note or f"{len(scenes)} scenes of fold {args.fold} ({args.scenes}); "
                                                   f"command: `{_command()}`")
    names = [s[0] for s in scenes[:4]]
    piano_roll(Path(f"{args.out}.png"), names, reference, dict(list(detected.items())[:args.roll]), model.classes,
               {s[0]: len(s[1]) / s[2] for s in scenes})
    print(f"-> {args.out}.md, {args.out}.json, {args.out}.png")
    return 0


def _cmd_curve(args) -> int:
    from train.reports.curve import fits, markdown, plot, read_rows

    for path in args.detected:
        if not path.is_file():
            _fail(f"{path}: no such file (a JSON report of `python -m train detect`)")
    if any(n <= 0 for n in args.at):
        _fail(f"--at takes clip counts above 0, got {args.at}")
    try:
        rows = read_rows(args.detected)
        fitted = fits(rows)
    except ValueError as exc:
        _fail(f"{', '.join(map(str, args.detected))}: {exc}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(markdown(rows, fitted, args.at, args.title, args.note))
    plot(Path(f"{args.out}.png"), rows, fitted, args.at, args.title)
    for key, f in fitted.items():
        print(f"{key}: {f.slope:+.3f} a doubling of the clips (residual sd {f.residual_sd:.3f}, {f.n} models)")
    print(f"-> {args.out}.md, {args.out}.png")
    return 0


def _frames_scores(path: Path, classes) -> tuple[dict, dict]:
    """Window scores from ``streamtag tag --frames`` JSON Lines as sed_scores_eval spans:
    each window's score describes its moment ``at`` +- half the distance to its neighbours."""
    import numpy as np

    rows: dict[str, list] = {}
    try:
        with open(path) as f:
            for line in f:
                obj = json.loads(line)
                if obj.get("type") == "window":
                    at = obj.get("at", (obj["start"] + obj["end"]) / 2)  # output from before "at": the centre
                    rows.setdefault(Path(obj["source"]).name, []).append((at, [obj["scores"][c] for c in classes]))
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"{path}: not streamtag tag --frames output ({exc})")
    scores, durations = {}, {}
    for name, windows in rows.items():
        centres = np.array([c for c, _ in windows])
        half = np.diff(centres).mean() / 2 if len(centres) > 1 else 0.05
        bounds = np.concatenate([centres - half, centres[-1:] + half])
        scores[name] = (np.array([s for _, s in windows]), bounds)
        durations[name] = float(bounds[-1])
    return scores, durations


def _cmd_score(args) -> int:
    from train.evaluate.detection import score
    from train.reports.detection import write
    from train.data.scenes import read_tsv

    reference, estimated = read_tsv(args.reference), read_tsv(args.estimated)
    classes = sorted({a.label for v in reference.values() for a in v} | {a.label for v in estimated.values()
                                                                          for a in v})
    scores, durations = _frames_scores(args.frames, classes) if args.frames else (None, None)
    if scores is not None:
        missing = sorted(set(reference) - set(scores))
        if missing:
            _fail(f"{args.frames} has no window scores for {len(missing)} reference file(s), e.g. {missing[0]}")
    metrics = score(reference, estimated, classes, durations, scores)
    print(f"segment F1 {metrics['segment_f1']:.3f} ER {metrics['segment_er']:.3f}; event F1 "
          f"{metrics['event_f1']:.3f} ER {metrics['event_er']:.3f} (onsets alone {metrics['onset_f1']:.3f}, "
          f"offsets alone {metrics['offset_f1']:.3f})"
          + (f"; PSDS {metrics['psds']:.3f}" if "psds" in metrics else "")
          + f" ({metrics['files']} files, {metrics['reference_events']} reference events)")
    for c, m in metrics["classes"].items():
        print(f"  {c:20s} segment F1 {m['segment_f1'] or 0:.3f}  event F1 {m['event_f1'] or 0:.3f}")
    if args.out:
        write(args.out, {"streamtag": metrics}, "Sound event detection", f"`{_command()}`")
    return 0


def _cmd_strong(args) -> int:
    from train.data.augment import Augment
    from train.data.datasets import read_dataset

    if args.all == (args.test_fold is not None):
        _fail("give --test-fold N (train on the other folds, for `detect` on N's scenes) or --all (every fold)")
    try:
        augment = Augment.parse(args.augment)
        if augment.background or augment.mix:
            raise ValueError("augmentations background and mix are for single clips; a scene mixes its own")
        recipe_scenes = _scene_recipe(args)
    except ValueError as exc:
        _fail(str(exc))
    counts = {"--scenes-per-epoch": args.scenes_per_epoch, "--clips-per-epoch": args.clips_per_epoch,
              "--overlays-per-epoch": args.overlays_per_epoch}
    if min(counts.values()) < 0 or not any(counts.values()):
        _fail(f"{', '.join(counts)} must be 0 or more, and not all 0; got {', '.join(map(str, counts.values()))}")
    if args.background != "brown" and not args.backgrounds:
        _fail(f"--background {args.background} needs --backgrounds (an ESC-10 or ESC-50 folder)")
    describe_at = _describe_at(args.describe_at, args.window, args.hop_frames)
    if not (math.isfinite(args.edge_weight) and args.edge_weight > 0):
        _fail(f"--edge-weight must be a positive number, got {args.edge_weight:g}")
    if not 0 < args.train_share <= 1:
        _fail(f"--train-share must be in (0, 1], got {args.train_share:g}")
    dataset = read_dataset(args.dataset, args.data)
    if args.test_fold is not None and args.test_fold not in dataset.folds:
        _fail(f"fold {args.test_fold} not present ({dataset.summary()})")

    import numpy as np
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from train.data.cache import read_features
    from train.data.datasets import share_of_recordings
    from train.data.segments import WINDOWS
    from train.fit import ranks
    from train.fit.loop import Recipe
    from train.fit.strong import Scenes, export_tuned, train_strong

    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    console = Console(stderr=True, quiet=not ranks.is_main())
    feats = ranks.local_first(lambda: read_features(args.dataset, args.data, args.cache, not ranks.is_main()))
    console.print(feats.dataset.summary())
    fold_of = np.array([c.fold for c in feats.dataset.clips])
    train_ids = np.flatnonzero(fold_of != args.test_fold) if args.test_fold is not None else np.arange(len(fold_of))
    if args.train_folds:
        if args.test_fold in args.train_folds or not set(args.train_folds) <= set(feats.dataset.folds):
            _fail(f"--train-folds must be present folds other than the test fold ({feats.dataset.summary()})")
        train_ids = train_ids[np.isin(fold_of[train_ids], args.train_folds)]
    train_ids = share_of_recordings(feats.dataset, train_ids, args.train_share, args.seed)
    recipe = Recipe(lr=args.lr, epochs=args.epochs, schedule=args.schedule, dense=args.dense, dropout=args.dropout,
                    head="multilabel")
    scenes = Scenes(per_epoch=args.scenes_per_epoch, val_scenes=args.val_scenes, recipe=recipe_scenes,
                    describe=args.hop_frames, describe_at=describe_at, pretrain_epochs=args.pretrain_epochs,
                    singles=args.clips_per_epoch, pairs=args.overlays_per_epoch, backgrounds=args.backgrounds,
                    background_folds=args.background_folds, edge_weight=args.edge_weight)
    total = args.epochs + args.pretrain_epochs
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("strong", total=total)

        def on_epoch(row):
            text = (f"{row['stage']} epoch {row['epoch']} loss {row['loss']:.3f} ({row['seconds']:.0f} s)"
                    + (f" val window mAP {100 * row['val_map']:.1f}%" if "val_map" in row else ""))
            progress.update(task, advance=1, description=text)
            if not console.is_terminal:  # a log file gets one line per epoch instead of a bar
                console.print(text, highlight=False)

        trained = train_strong(feats, train_ids, args.window, recipe, scenes, augment, args.seed, device,
                               args.val_fraction, on_epoch)
    if not ranks.is_main():
        return 0
    train_folds = sorted({int(f) for f in fold_of[train_ids]})
    provenance = {"dataset": feats.dataset.summary(), "data": args.data, "folds": train_folds,
                  "train_share": args.train_share,
                  "command": _command(), "recipe": "strong labels on soundscapes",
                  "scenes": dataclasses.asdict(scenes), "augment": augment.describe(), "seed": args.seed,
                  "epochs": len(trained.history), "train_clips": trained.n_train, "val_clips": len(trained.val_ids),
                  "val_fraction": args.val_fraction,
                  "val_window_map": [round(r["val_map"], 4) for r in trained.history if "val_map" in r]}
    console.print("tuning thresholds and decoding on the validation scenes")
    val = export_tuned(trained.net, args.export, feats, WINDOWS[args.window][0], args.hop_frames, provenance,
                       trained.val_scenes, trained.val_reference, trained.val_ids, describe_at)
    console.print(f"validation scenes: segment F1 {val['segment_f1']:.3f} ER {val['segment_er']:.3f}, event F1 "
                  f"{val['event_f1']:.3f} ER {val['event_er']:.3f} -> {args.export}")
    return 0


def _describe_at(text: str, window: str, describe: int) -> float:
    """--describe-at as a share of the window: centre 0.5, end its last ``describe`` frames."""
    from streamtag.features import FeatureSpec
    from train.data.segments import WINDOWS
    from train.fit.strong import end_share

    if text == "centre":
        return 0.5
    if text == "end":
        spec = FeatureSpec()  # the frames the training commands cut windows from
        return end_share(WINDOWS[window][0], describe, spec.hop_length, spec.n_fft)
    try:
        share = float(text)
    except ValueError:
        share = float("nan")
    if not 0 <= share <= 1:
        _fail(f"--describe-at takes centre, end or a share of the window from 0 to 1, got {text!r}")
    return share


def _cmd_tune(args) -> int:
    from train.data.cache import read_features
    from train.fit.strong import retune

    feats = read_features(args.dataset, args.data, args.cache)
    val = retune(args.model, feats, args.export)
    print(f"validation scenes: segment F1 {val['segment_f1']:.3f} ER {val['segment_er']:.3f}, event F1 "
          f"{val['event_f1']:.3f} ER {val['event_er']:.3f} -> {args.export}")
    return 0

