"""The pretraining study's report: a markdown table answering its three
questions, CSV files of every number, a JSON summary and one PNG.

``write_study(prefix, ...)`` writes ``PREFIX.md``, ``PREFIX.csv`` (one row per
test fold, model and evaluation set), ``PREFIX-classes.csv`` (per class),
``PREFIX.json`` and ``PREFIX.png``. It is called after every trained model, so
a long study leaves a readable partial report behind at any time.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np

from train.reports.runs import _pyplot

STUDY_BOTH_CORRECT = 0.14  # the study's share of equal-level mixes with both labels correct
TARGET_BOTH_CORRECT = 0.50  # issue 5's target for the same score
INITS = ("single-label", "scratch", "pretrained")
SET_NAMES = {"single": "single clips", "equal": "equal-level mixes", "minus20": "mixes 20 dB apart"}
SET_COLUMNS = ("all", "one", "exact", "extra")
_SPLIT = ("alone_right", "all_if_alone_right", "all_otherwise")  # train.evaluate.multilabel.mixes_by_alone


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def _mean(results: list[dict], init: str, get) -> float | None:
    values = [get(r) for r in results if r["init"] == init]
    return float(np.mean(values)) if values else None


def _macro_f1(entry: dict) -> float:
    return float(np.mean(entry["f1"]))


def _beside(prefix: Path, ending: str) -> Path:
    """``PREFIX`` + ``ending``, whatever dots the prefix holds (``frac0.5-seed0`` is no suffix to replace)."""
    return prefix.parent / f"{prefix.name}{ending}"


def write_study(prefix: str | Path, results: list[dict], classes: list[str], info: dict) -> None:
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    inits = [i for i in INITS if any(r["init"] == i for r in results)]
    folds = sorted({r["fold"] for r in results})
    _beside(prefix, ".json").write_text(json.dumps({**info, "classes": list(classes), "results": results}, indent=1)
                                        + "\n")
    with open(_beside(prefix, ".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fold", "model", "set", "clips", "all_topk", "one_topk", "exact_tuned", "extra_tuned",
                    "exact_0.5", "extra_0.5", "map", *_SPLIT])
        for r in results:
            for name, s in r["sets"].items():
                h = r["sets_05"][name]
                w.writerow([r["fold"], r["init"], name, s["n"], f"{s['all']:.4f}", f"{s['one']:.4f}",
                            f"{s['exact']:.4f}", f"{s['extra']:.4f}", f"{h['exact']:.4f}", f"{h['extra']:.4f}",
                            f"{r['map']:.4f}", *(f"{s[k]:.4f}" if k in s else "" for k in _SPLIT)])
    with open(_beside(prefix, "-classes.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fold", "model", "class", "ap", "threshold", "precision_tuned", "recall_tuned", "f1_tuned",
                    "precision_0.5", "recall_0.5", "f1_0.5", *(f"found_{name}" for name in SET_NAMES)])
        for r in results:
            for c, name in enumerate(classes):
                t = r.get("thresholds", [0.5] * len(classes))[c]
                w.writerow([r["fold"], r["init"], name, f"{r['ap'][c]:.4f}", f"{t:.2f}"]
                           + [f"{r[k][m][c]:.4f}" for k in ("tuned", "at_05") for m in ("precision", "recall", "f1")]
                           + [f"{r['found'][k][c]:.4f}" if k in r.get("found", {}) else "" for k in SET_NAMES])
    _plot(_beside(prefix, ".png"), results, inits, info["title"])
    _beside(prefix, ".md").write_text(_markdown(prefix, results, classes, info, inits, folds))


def _markdown(prefix: Path, results, classes, info, inits, folds) -> str:
    lines = [f"# {info['title']}", "", info["dataset_summary"], "", "Reproduce with:", "",
             "```", info["command"], "```", "", info["setup"], ""]
    if info.get("note"):
        lines += [f"**Note.** {info['note']}", ""]
    lines += [f"## The study's three questions (mean over test fold(s) {', '.join(map(str, folds))})", "",
              "Ranking scores need no threshold: a single clip is correct when its top output is its class, a mix "
              "has *both* correct when its top two outputs are its two classes and *one* when at least one of them "
              "is. *Exact* is the set of classes above the per-class thresholds (tuned on validation clips) being "
              "exactly the truth; *2nd sound* is how often a single clip gets two or more classes above threshold.",
              "",
              "| model | single: accuracy | single: exact | single: 2nd sound | equal: both | equal: one | "
              "equal: exact | 20 dB: both | 20 dB: one | 20 dB: exact | mAP | macro F1 @0.5 | macro F1 tuned |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    label = {"single-label": "single-label softmax (the pretraining alone)", "scratch": "multilabel, from scratch",
             "pretrained": "multilabel, pretrained"}
    for init in inits:
        def m(name, col):
            return _mean(results, init, lambda r: r["sets"][name][col])
        thresholded = init != "single-label"  # a softmax over classes cannot claim two sounds at 0.5
        cells = [m("single", "all"), m("single", "exact") if thresholded else None,
                 m("single", "extra") if thresholded else None,
                 m("equal", "all"), m("equal", "one"), m("equal", "exact") if thresholded else None,
                 m("minus20", "all"), m("minus20", "one"), m("minus20", "exact") if thresholded else None,
                 _mean(results, init, lambda r: r["map"]),
                 _mean(results, init, lambda r: _macro_f1(r["at_05"])) if thresholded else None,
                 _mean(results, init, lambda r: _macro_f1(r["tuned"])) if thresholded else None]
        lines.append(f"| {label[init]} | " + " | ".join(_pct(c) for c in cells) + " |")
    lines.append(f"| the study (reference) | | | | {_pct(STUDY_BOTH_CORRECT)} | | | | | | | | |")
    best = max(inits, key=lambda i: _mean(results, i, lambda r: r["sets"]["equal"]["all"]))
    both = _mean(results, best, lambda r: r["sets"]["equal"]["all"])
    lines += ["", f"**Target** (both labels correct on at least {_pct(TARGET_BOTH_CORRECT)}% of equal-level mixes): "
              f"{'met' if both >= TARGET_BOTH_CORRECT else 'not met'}; the best model here ({label[best]}) has both "
              f"correct on {_pct(both)}%, the study {_pct(STUDY_BOTH_CORRECT)}%."]
    if {"scratch", "pretrained"} <= set(inits):
        def delta(get):
            a, b = _mean(results, "pretrained", get), _mean(results, "scratch", get)
            return f"{100 * (a - b):+.1f}"
        lines += ["", "**Effect of pretraining** (pretrained minus scratch, percentage points): single-clip accuracy "
                  f"{delta(lambda r: r['sets']['single']['all'])}, single-clip exact "
                  f"{delta(lambda r: r['sets']['single']['exact'])}, 2nd-sound claims "
                  f"{delta(lambda r: r['sets']['single']['extra'])}, both correct on equal-level mixes "
                  f"{delta(lambda r: r['sets']['equal']['all'])}, on mixes 20 dB apart "
                  f"{delta(lambda r: r['sets']['minus20']['all'])}, mAP {delta(lambda r: r['map'])}."]
    if all("alone_right" in r["sets"]["equal"] for r in results):
        lines += ["", "## Recognition or masking?", "",
                  "Mixes split by whether the same network gets each of their two clips right when the clip plays "
                  "alone (its top output is its class): *clips right alone* is the share of mixes where both are; "
                  "*both* is then the share of mixes with both sounds right among those and among the rest. If "
                  "mixing did no harm, the first would be near 100 %.", "",
                  "| model | equal: clips right alone | equal: both, if so | equal: both, otherwise | "
                  "20 dB: clips right alone | 20 dB: both, if so | 20 dB: both, otherwise |", "|---" * 7 + "|"]
        for init in inits:
            cells = [_mean(results, init, lambda r, s=s, k=k: r["sets"][s][k])
                     for s in ("equal", "minus20") for k in _SPLIT]
            lines.append(f"| {label[init]} | " + " | ".join(_pct(c) for c in cells) + " |")
    lines += ["", "## Per test fold", "",
              "| fold | model | train / val / test clips | epochs (overlay epoch kept) | minutes | single acc | equal both | "
              "equal one | 20 dB both | 20 dB one | mAP | val mAP |", "|---" * 12 + "|"]
    for r in results:
        s = r["sets"]
        epochs = f"{r['epochs']}" + (f" ({r['best_epoch']})" if "best_epoch" in r else "")
        minutes = f"{r['seconds'] / 60:.1f}" if "seconds" in r else "–"
        cells = [s["single"]["all"], s["equal"]["all"], s["equal"]["one"], s["minus20"]["all"], s["minus20"]["one"],
                 r["map"], r.get("val_map")]
        lines.append(f"| {r['fold']} | {r['init']} | {r['n_train']} / {r['n_val']} / {r['n_test']} | {epochs} | "
                     f"{minutes} | " + " | ".join(_pct(c) for c in cells) + " |")
    ml = [i for i in inits if i != "single-label"]
    if ml:
        lines += ["", "## Per class (all test clips and mixes together, mean over folds)", "",
                  "| class | " + " | ".join(f"{i}: AP | {i}: F1 @0.5 | {i}: F1 tuned" for i in ml) + " |",
                  "|---|" + "---|---|---|" * len(ml)]
        for c, name in enumerate(classes):
            cells = []
            for i in ml:
                cells += [_mean(results, i, lambda r: r["ap"][c]), _mean(results, i, lambda r: r["at_05"]["f1"][c]),
                          _mean(results, i, lambda r: r["tuned"]["f1"][c])]
            lines.append(f"| {name} | " + " | ".join(_pct(x) for x in cells) + " |")
    if all("found" in r for r in results):
        lines += ["", "## Per class: found by ranking (mean over folds)", "",
                  "Of the test clips holding a class, the share where it is among the top *k* outputs (*k*: the "
                  "clip's number of sounds): per-class accuracy on single clips, and on mixes whether the sound "
                  "made the top two.", "",
                  "| class | " + " | ".join(f"{i}: single | {i}: equal | {i}: 20 dB" for i in inits) + " |",
                  "|---|" + "---|---|---|" * len(inits)]
        for c, name in enumerate(classes):
            cells = [_mean(results, i, lambda r, s=s: r["found"][s][c]) for i in inits for s in SET_NAMES]
            lines.append(f"| {name} | " + " | ".join(_pct(x) for x in cells) + " |")
    lines += ["", f"Every number: [{prefix.name}.csv]({prefix.name}.csv), "
              f"[{prefix.name}-classes.csv]({prefix.name}-classes.csv), [{prefix.name}.json]({prefix.name}.json).", "",
              f"![scores and validation curves]({prefix.name}.png)", ""]
    return "\n".join(lines)


def _plot(path: Path, results, inits, title) -> None:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    bars = [("single acc", "single", "all"), ("single 2nd sound", "single", "extra"), ("equal both", "equal", "all"),
            ("equal one", "equal", "one"), ("20 dB both", "minus20", "all"), ("20 dB one", "minus20", "one")]
    width = 0.8 / len(inits)
    for k, init in enumerate(inits):
        values = [100 * (_mean(results, init, lambda r, s=s, c=c: r["sets"][s][c]) or 0) for _, s, c in bars]
        if init == "single-label":
            values[1] = 0.0  # a softmax cannot claim a second sound
        left.bar(np.arange(len(bars)) + (k - (len(inits) - 1) / 2) * width, values, width, label=init)
    left.hlines(100 * STUDY_BOTH_CORRECT, 1.55, 2.45, color="black", ls="--", lw=1)  # over "equal both"
    left.text(2, 100 * STUDY_BOTH_CORRECT + 2, "study", ha="center", fontsize=8)
    left.set_xticks(range(len(bars)), [b[0] for b in bars], rotation=20, fontsize=8)
    left.set(ylabel="% of test clips", ylim=(0, 100), title="test scores (mean over folds)")
    left.legend(fontsize=8)
    left.grid(axis="y", alpha=0.3)
    for r in results:
        rows = [row for row in r["history"] if row.get("stage") == "overlays"]
        if rows:
            right.plot([row["epoch"] for row in rows], [100 * row["val_map"] for row in rows], marker="o", ms=3,
                       label=f"fold {r['fold']} {r['init']}")
    right.set(xlabel="overlay-stage epoch", ylabel="validation mAP %", title="validation mAP per epoch")
    right.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=10)
    right.grid(alpha=0.3)
    if right.lines:
        right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# What compare_studies reports: (column, evaluation set, score), for each model of each recipe.
# Scores added later are "–" for reports written before them.
_COMPARED = (("single: accuracy", "single", "all"), ("single: 2nd sound", "single", "extra"),
             ("equal: both", "equal", "all"), ("equal: one", "equal", "one"),
             ("equal: clips right alone", "equal", "alone_right"), ("equal: both, if so", "equal", "all_if_alone_right"),
             ("20 dB: both", "minus20", "all"))
_RUN_SETTINGS = ("seed", "device")  # settings that tell runs of one recipe apart
_OWN_COLUMNS = ("window", "dense")  # recipe settings with a column of their own
# Settings added after reports were written: a report without one ran with this value.
_ADDED_LATER = {"augment.speed": 0.0, "overlays.keep": "best", "train_fraction": 1.0}


def _settings(config: dict, prefix: str = ""):
    """A study's config as flat ``(name, JSON value)`` pairs: ``overlays.mixes``, ``augment.mix``..."""
    for name, value in config.items():
        if isinstance(value, dict):
            yield from _settings(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", json.dumps(value)


def _gather(paths) -> tuple[dict, list[str] | None]:
    """recipe -> seed -> model -> test fold -> result, and the class names of the first
    report that holds them (older reports do not). Reports of the same recipe and
    seed that test different folds are one run (a study split into one process per
    test fold); the same fold twice is an error, not a second sample."""
    recipes: dict = {}
    classes = None
    for path in paths:
        study = json.loads(Path(path).read_text())
        classes = classes or study.get("classes")
        config = study["config"]
        settings = {**{name: json.dumps(value) for name, value in _ADDED_LATER.items()}, **dict(_settings(config))}
        recipe = tuple(sorted(item for item in settings.items() if item[0] not in _RUN_SETTINGS))
        run = recipes.setdefault(recipe, {}).setdefault(config["seed"], {})
        for result in study["results"]:
            folds = run.setdefault(result["init"], {})
            if result["fold"] in folds:
                raise ValueError(f"{path}: seed {config['seed']} tests fold {result['fold']} with the "
                                 f"{result['init']} model a second time")
            folds[result["fold"]] = result
    return recipes, classes


def _seed_scores(runs: dict, init: str, recipe_name: str) -> dict[int, dict[str, float]]:
    """seed -> column -> score averaged over the run's test folds, for the runs that hold ``init``;
    every seed must test the same folds, or the seeds' spread would mix folds."""
    by_seed = {seed: models[init] for seed, models in sorted(runs.items()) if init in models}
    fold_sets = {tuple(sorted(folds)) for folds in by_seed.values()}
    if len(fold_sets) > 1:
        raise ValueError(f"the {init} runs of {recipe_name} test different folds per seed: "
                         + "; ".join(f"seed {seed}: {sorted(folds)}" for seed, folds in by_seed.items()))
    scores = {}
    for seed, folds in by_seed.items():
        results = list(folds.values())
        scores[seed] = {name: float(np.mean([r["sets"][s].get(k, np.nan) for r in results]))
                        for name, s, k in _COMPARED}
        scores[seed]["mAP"] = float(np.mean([r["map"] for r in results]))
        if all("found" in r for r in results):  # per class, for the per-class table
            scores[seed]["found"] = {name: np.mean([r["found"][name] for r in results], axis=0)
                                     for name in ("single", "equal")}
    return scores


def _spread(values: list[float], with_range: bool = True) -> str:
    """Mean and (unless not ``with_range``) range in percent; "–" if any value is missing
    (NaN: a score the report predates)."""
    values = [100 * v for v in values]
    if not values or np.isnan(values).any():
        return "–"
    return f"{np.mean(values):.1f}" + (f" ({min(values):.1f} to {max(values):.1f})"
                                       if with_range and len(values) > 1 else "")


@dataclasses.dataclass
class _Row:
    """One recipe's model in a comparison: per seed, its scores averaged over test folds."""

    window: str
    dense: int
    megabytes: float
    recipe: str  # the settings that set this recipe apart from the others compared, or "–"
    init: str
    scores: dict[int, dict[str, float]]


def _rows(paths) -> tuple[list[_Row], list[str] | None]:
    """The rows of a comparison, and the class names the reports give (or None)."""
    from streamtag.modelinfo import parameter_count
    from train.data.segments import WINDOWS

    recipes, classes = _gather(paths)
    varying = sorted({name for recipe in recipes for name, value in recipe if name not in _OWN_COLUMNS
                      and any((name, value) not in other for other in recipes)})
    rows = []
    for recipe, runs in sorted(recipes.items()):
        settings = {name: json.loads(value) for name, value in recipe}
        name = ", ".join(f"{key}={settings[key]}" for key in varying if key in settings) or "–"
        window, dense = settings["window"], settings["dense"]
        any_result = next(r for models in runs.values() for folds in models.values() for r in folds.values())
        architecture = {"n_classes": len(any_result["ap"]), "frames": WINDOWS[window][0], "dense": dense}
        megabytes = parameter_count(architecture) * 4 / 1e6
        for init in INITS:
            scores = _seed_scores(runs, init, f"{window} {dense}" + (f", {name}" if name != "–" else ""))
            if scores:
                rows.append(_Row(window, dense, megabytes, name, init, scores))
    return rows, classes


def compare_studies(paths) -> str:
    """Markdown: multilabel studies (their ``PREFIX.json``) side by side. One row per
    recipe and model (the single-label network alone, then multilabel from scratch and
    pretrained): each run's scores averaged over its test folds, then mean and range over
    the seeds. A recipe is its window length and dense width, with the network's size
    (which decides what can ship: the package holds at most 15 MB), and whatever other
    settings differ between the reports compared. A second table answers the study's
    question about pretraining seed by seed: pretrained minus scratch where a recipe
    has both for the same seeds."""
    columns = [name for name, _, _ in _COMPARED] + ["mAP"]
    lines = ["| window | dense | weights (MB) | recipe | model | seeds | " + " | ".join(columns) + " |",
             "|---|---:|---:|---|---|---|" + "---:|" * len(columns)]
    rows, classes = _rows(paths)
    for row in rows:
        # a softmax network's outputs sum to one: it cannot claim a second sound at 0.5
        cells = ["–" if row.init == "single-label" and c == "single: 2nd sound"
                 else _spread([s[c] for s in row.scores.values()]) for c in columns]
        lines.append(f"| {row.window} | {row.dense} | {row.megabytes:.1f} | {row.recipe} | {row.init} | "
                     f"{', '.join(map(str, row.scores))} | " + " | ".join(cells) + " |")
    effects = []
    for scratch in (r for r in rows if r.init == "scratch"):
        pretrained = next((r for r in rows if r.init == "pretrained" and (r.window, r.dense, r.recipe)
                           == (scratch.window, scratch.dense, scratch.recipe)), None)
        paired = sorted(set(scratch.scores) & set(pretrained.scores)) if pretrained else []
        if paired:
            cells = [_spread([pretrained.scores[s][c] - scratch.scores[s][c] for s in paired]) for c in columns]
            effects.append(f"| {scratch.window} | {scratch.dense} | {scratch.recipe} | {', '.join(map(str, paired))} | "
                           + " | ".join(cells) + " |")
    if effects:
        lines += ["", "Effect of pretraining: pretrained minus scratch, seed by seed (percentage points), "
                  "mean and range over the seeds.", "",
                  "| window | dense | recipe | seeds | " + " | ".join(columns) + " |",
                  "|---|---:|---|---|" + "---:|" * len(columns), *effects]
    lines += _found_table(rows, classes)
    return "\n".join(lines) + "\n"


def _found_table(rows: list[_Row], classes: list[str] | None) -> list[str]:
    """Per class, mean over seeds: single-clip accuracy and how often the sound is in the top
    two of an equal-level mix, for each row whose every seed's reports hold it. Classes by
    name where the reports name them (reports written before that: by index)."""
    rows = [r for r in rows if all("found" in s for s in r.scores.values())]
    if not rows:
        return []
    n_classes = len(next(iter(rows[0].scores.values()))["found"]["single"])
    names = classes if classes and len(classes) == n_classes else [str(c) for c in range(n_classes)]
    header = [f"{r.window} {r.dense}, {r.init}" + (f", {r.recipe}" if r.recipe != "–" else "") + f": {where}"
              for r in rows for where in ("single", "equal")]
    lines = ["", "Per class, mean over the seeds: *single* is the "
             "share of single clips of the class whose top output is the class, *equal* the share of "
             "equal-level mixes holding it where it is among the top two outputs.", "",
             "| class | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for c in range(n_classes):
        cells = [_spread([s["found"][where][c] for s in r.scores.values()], with_range=False)
                 for r in rows for where in ("single", "equal")]
        lines.append(f"| {names[c]} | " + " | ".join(cells) + " |")
    return lines


def plot_studies(paths, png: str | Path) -> None:
    """PNG: every seed's fold-averaged score of every row of :func:`compare_studies`, as
    dots around the mean, for single-clip accuracy and both labels right in
    equal-level mixes (with the study's figure and issue 5's target), so the seeds'
    spread is seen beside the differences between rows."""
    plt = _pyplot()
    rows, _ = _rows(paths)
    labels = [textwrap.fill(f"{r.window} {r.dense}" + (f", {r.recipe}" if r.recipe != "–" else ""), 40)
              + f"\n{r.init}" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.2 + 0.6 * len(rows)), sharey=True)
    titles = {"single: accuracy": "single clips: top class right", "equal: both": "equal-level mixes: both right"}
    for ax, column in zip(axes, titles):
        for k, row in enumerate(rows):
            values = [100 * s[column] for s in row.scores.values()]
            jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
            ax.plot(values, k + np.asarray(jitter), "o", ms=4, alpha=0.7, color=f"C{INITS.index(row.init)}")
            ax.plot([np.mean(values)] * 2, [k - 0.3, k + 0.3], color="black", lw=2)
        ax.set(title=titles[column], xlabel="% of test clips (dots: seeds, bar: their mean)", xlim=(0, 100))
        ax.grid(axis="x", alpha=0.3)
    axes[1].axvline(100 * STUDY_BOTH_CORRECT, color="gray", ls="--", lw=1)
    axes[1].axvline(100 * TARGET_BOTH_CORRECT, color="red", ls=":", lw=1)
    axes[1].text(100 * STUDY_BOTH_CORRECT + 1, -0.6, "study", fontsize=8, color="gray")
    axes[1].text(100 * TARGET_BOTH_CORRECT + 1, -0.6, "target", fontsize=8, color="red")
    axes[0].set_yticks(range(len(rows)), labels, fontsize=7)
    axes[0].set_ylim(len(rows) - 0.5, -0.8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
