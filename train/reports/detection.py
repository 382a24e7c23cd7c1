"""Detection results people look at: a Markdown table, JSON, and a piano roll (PNG).

The table puts each model or recipe beside the others and beside the Scaper
paper's published figures on URBAN-SED (whose CNNs trained on scenes from
folds 1-6, three times our data), micro-averaged, then per class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from train.data.scenes import Annotation

# Salamon et al., "Scaper", WASPAA 2017, URBAN-SED test set: (segment F1, segment ER)
PAPER = {"Scaper paper: CNN": (0.569, 0.577), "Scaper paper: CNN3M": (0.578, 0.560),
         "Scaper paper: CRNN": (0.495, 0.90)}


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def markdown(rows: dict[str, dict], title: str, note: str = "") -> str:
    """``rows``: name -> metrics (:func:`train.detection.score`, with ``delay`` added)."""
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| model / recipe | segment F1 | segment ER | event F1 | event ER | onset F1 | offset F1 | PSDS "
              "| detected | delay median (s) | delay p90 (s) | clip accuracy |", "|---" * 12 + "|"]
    for name, m in rows.items():
        d = m.get("delay") or {}
        lines.append(f"| {name} | {_f(m['segment_f1'])} | {_f(m['segment_er'])} | {_f(m['event_f1'])} | "
                     f"{_f(m['event_er'])} | {_f(m.get('onset_f1'))} | {_f(m.get('offset_f1'))} | "
                     f"{_f(m.get('psds'))} | {_f(d.get('detected'), 2)} | "
                     f"{_f(d.get('median'), 2)} | {_f(d.get('p90'), 2)} | {_f(m.get('clip_accuracy'))} |")
    for name, (f1, er) in PAPER.items():
        lines.append(f"| {name} (URBAN-SED test set, trained on folds 1-6) | {f1:.3f} | {er:.3f} |" + " – |" * 9)
    lines += ["", "Segment metrics on 1-s segments; events with a 200 ms onset collar and offsets within 200 ms or 20 % "
              "of the event's length (sed_eval); *onset F1* and *offset F1*: the same event F1 judged on that edge "
              "alone; PSDS with intersection criteria 0.7, no cross-trigger cost, alpha_st 1, up to 100 false "
              "positives an hour (sed_scores_eval). *Detected*: the share of reference "
              "events while which an event of their class opened; *delay*: from the reference onset to the end of "
              "the window that opened it, when a live listener is told. *Clip accuracy*: the fold's single "
              "UrbanSound8K clips, top class of the mean window scores."]
    classes = list(next(iter(rows.values()))["classes"]) if rows else []
    for metric in ("segment_f1", "event_f1"):
        lines += ["", f"**{metric.replace('_', ' ')} per class**", "",
                  "| class | events | " + " | ".join(rows) + " |", "|---|---|" + "---|" * len(rows)]
        for c in classes:
            n = next(iter(rows.values()))["classes"][c]["reference_events"]
            lines.append(f"| {c} | {n} | " + " | ".join(_f(m["classes"][c][metric]) for m in rows.values()) + " |")
    return "\n".join(lines) + "\n"


def write(prefix: Path, rows: dict[str, dict], title: str, note: str = "") -> None:
    """``PREFIX.md`` and ``PREFIX.json`` (the endings appended, never substituted)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{prefix}.md").write_text(markdown(rows, title, note))
    Path(f"{prefix}.json").write_text(json.dumps(rows, indent=1) + "\n")


def piano_roll(path: Path, scenes: Sequence[str], reference: dict[str, list[Annotation]],
               detected: dict[str, dict[str, list]], classes: Sequence[str], durations: dict[str, float]) -> None:
    """One panel per scene: each class a row, the reference events as grey bars and each
    model's detections as coloured bars beneath them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(detected)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(len(scenes), 1, figsize=(11, 2.6 * len(scenes)), squeeze=False)
    rows = len(models) + 1
    for ax, name in zip(axes[:, 0], scenes):
        for c, label in enumerate(classes):
            y = c * rows
            for a in reference.get(name, []):
                if a.label == label:
                    ax.broken_barh([(a.onset, a.offset - a.onset)], (y, 0.9), color="0.55")
            for m, model in enumerate(models):
                for e in detected[model].get(name, []):
                    if e.label == label:
                        ax.broken_barh([(e.onset, e.offset - e.onset)], (y + m + 1, 0.9), color=colours[m % 10])
        ax.set_yticks(np.arange(len(classes)) * rows + rows / 2, classes, fontsize=7)
        ax.set_ylim(0, len(classes) * rows)
        ax.set_xlim(0, durations.get(name, 10.0))
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("seconds")
    handles = [plt.Rectangle((0, 0), 1, 1, color="0.55")] + [plt.Rectangle((0, 0), 1, 1, color=colours[m % 10])
                                                              for m in range(len(models))]
    fig.legend(handles, ["reference"] + models, loc="upper right", fontsize=8, ncol=len(models) + 1)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
