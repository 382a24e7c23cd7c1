"""Run reports: per-fold and mean accuracy (markdown and CSV), a confusion
matrix and training curves (PNG), and a comparison table across runs.

A run folder holds ``results.md``, ``folds.csv``, ``summary.json``,
``confusion.png``, ``curves.png`` and ``command.txt``; :func:`compare` reads
the ``summary.json`` of several runs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from train.evaluate.clips import confusion

METRICS = ("segment", "prob", "majority")
COLUMNS = ("seed", "fold", "n_train", "n_test", "epochs", "seconds", "segment", "prob", "majority")


def summarize(results: list[dict]) -> dict:
    """Per metric: the mean over folds for each seed, then mean and spread (std) over seeds."""
    seeds = sorted({r["seed"] for r in results})
    out = {"seeds": seeds, "folds": sorted({r["fold"] for r in results}),
           "seconds": float(sum(r["seconds"] for r in results))}
    for m in METRICS:
        per_seed = [float(np.mean([r[m] for r in results if r["seed"] == s])) for s in seeds]
        out[m] = {"per_seed": per_seed, "mean": float(np.mean(per_seed)), "std": float(np.std(per_seed))}
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _mean_spread(entry: dict) -> str:
    if len(entry["per_seed"]) == 1:
        return _pct(entry["mean"])
    return f"{_pct(entry['mean'])} ± {_pct(entry['std'])}"


def write_run(folder: Path, results: list[dict], classes: list[str], info: dict) -> dict:
    """Write every report of a cross-validation run; returns the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = {**info, **summarize(results)}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (folder / "command.txt").write_text(info["command"] + "\n")
    with open(folder / "folds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in results:
            w.writerow([r[c] if not isinstance(r[c], float) else f"{r[c]:.4f}" for c in COLUMNS])
    n = len(classes)
    matrix = sum(confusion(r["truth"], r["pred_prob"], n) for r in results)
    plot_confusion(matrix, classes, folder / "confusion.png", f"{info['name']}: clip decisions (probability voting)")
    plot_curves(results, folder / "curves.png", info["name"])
    lines = [f"# {info['name']}", "", info["dataset_summary"], "",
             "Reproduce with:", "", "```", info["command"], "```", "",
             f"Window {info['window']}, recipe {info['recipe']}, augmentation {info['augment']}.", "",
             "| seed | fold | train clips | test clips | epochs | seconds | segment % | clip % (prob vote) | clip % (majority) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['seed']} | {r['fold']} | {r['n_train']} | {r['n_test']} | {r['epochs']} | "
                     f"{r['seconds']:.0f} | {_pct(r['segment'])} | {_pct(r['prob'])} | {_pct(r['majority'])} |")
    lines += ["", f"**Mean over folds** (± std over {len(summary['seeds'])} seed(s)): segment "
              f"{_mean_spread(summary['segment'])} %, clip by probability voting {_mean_spread(summary['prob'])} %, "
              f"clip by majority voting {_mean_spread(summary['majority'])} %.", "",
              "![confusion](confusion.png)", "", "![curves](curves.png)", ""]
    (folder / "results.md").write_text("\n".join(lines))
    return summary


def compare(folders: list[Path]) -> str:
    """A markdown table of several runs' mean accuracies."""
    rows = ["| run | window | recipe | augmentation | seeds | segment % | clip % prob vote | clip % majority | wall min |",
            "|---|---|---|---|---|---|---|---|---|"]
    for folder in folders:
        s = json.loads((Path(folder) / "summary.json").read_text())
        rows.append(f"| [{s['name']}]({Path(folder).name}/results.md) | {s['window']} | {s['recipe']} | {s['augment']} | "
                    f"{len(s['seeds'])} | {_mean_spread(s['segment'])} | {_mean_spread(s['prob'])} | "
                    f"{_mean_spread(s['majority'])} | {s['seconds'] / 60:.1f} |")
    return "\n".join(rows) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(classes), 0.8 + 0.5 * len(classes)))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("decided")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(results: list[dict], path: Path, title: str) -> None:
    """Training loss and per-epoch clip accuracy (test fold, validation if used), one line per fold."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in results:
        h = r["history"]
        epochs = [row["epoch"] for row in h]
        label = f"s{r['seed']} f{r['fold']}"
        left.plot(epochs, [row["loss"] for row in h], lw=1, alpha=0.7, label=label)
        tested = [row for row in h if "test_acc" in row]
        line, = right.plot([row["epoch"] for row in tested], [100 * row["test_acc"] for row in tested],
                           lw=1, alpha=0.7, marker="o" if len(tested) < len(h) else None, ms=3, label=label)
        if "val_acc" in h[0]:
            right.plot(epochs, [100 * row["val_acc"] for row in h], lw=1, ls="--", color=line.get_color())
    left.set(xlabel="epoch", ylabel="training loss", title=f"{title}: training loss")
    right.set(xlabel="epoch", ylabel="clip accuracy % (prob vote)",
              title="test fold (solid), validation (dashed)")
    right.grid(alpha=0.3)
    left.grid(alpha=0.3)
    if len(results) <= 10:
        right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
