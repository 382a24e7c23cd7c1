"""A learning curve: detection metrics against the clips a model learnt from, a line fitted on
a log scale, and what it gives at more data.

Why: with two and a bit folds of UrbanSound8K, whether more recordings would meet a target is
the question that decides what to do next. ``python -m train strong --train-share`` trains on a
share of the folds' recordings, ``python -m train detect`` scores each model on held-out scenes
(and records the clips it learnt from), and this fits ``metric = a + b log2(clips)`` to the
points: each doubling of the data adds ``b``. It says what the line gives at the clip counts
asked, with a 90 % prediction interval from the points' own scatter (seeds included), and
where it would cross each target. A value beyond the measured points is a projection.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

# (key in train detect's rows, label, the target the default model was built for, whether higher is better)
METRICS = (("segment_f1", "segment F1", 0.60, True), ("segment_er", "segment ER", 0.55, False),
           ("event_f1", "event F1", 0.30, True))


@dataclasses.dataclass(frozen=True)
class Fit:
    """Least squares of a metric on log2(clips)."""

    intercept: float
    slope: float  # change per doubling of the clips
    residual_sd: float
    n: int
    mean_x: float
    sxx: float

    def at(self, clips: float, level: float = 0.90) -> tuple[float, float, float]:
        """The line's value at ``clips``, and the prediction interval of one more model there."""
        from scipy import stats

        x = np.log2(clips)
        value = self.intercept + self.slope * x
        half = (stats.t.ppf(0.5 + level / 2, self.n - 2) * self.residual_sd
                * np.sqrt(1 + 1 / self.n + (x - self.mean_x) ** 2 / self.sxx))
        return float(value), float(value - half), float(value + half)

    def reaches(self, target: float, higher_is_better: bool) -> float | None:
        """The clips from which the line meets ``target``; None if more data takes it away."""
        if self.slope == 0 or (self.slope > 0) != higher_is_better:
            return None
        return float(2 ** min((target - self.intercept) / self.slope, 1000.0))


def fit(clips: Sequence[float], values: Sequence[float]) -> Fit:
    """``values`` against ``log2(clips)``; needs points at two amounts of data at least."""
    x, y = np.log2(np.asarray(clips, float)), np.asarray(values, float)
    if len(x) < 3 or np.ptp(x) == 0:
        raise ValueError("a learning curve needs three models or more, trained on two amounts of data or more")
    mean_x = x.mean()
    sxx = float(((x - mean_x) ** 2).sum())
    slope = float(((x - mean_x) * (y - y.mean())).sum() / sxx)
    intercept = float(y.mean() - slope * mean_x)
    residuals = y - (intercept + slope * x)
    return Fit(intercept, slope, float(np.sqrt((residuals ** 2).sum() / (len(x) - 2))), len(x), float(mean_x), sxx)


def read_rows(paths: Sequence[Path]) -> dict[str, dict]:
    """The rows of ``train detect`` JSON files that record the clips their model learnt from."""
    rows = {}
    for path in paths:
        report = json.loads(Path(path).read_text())
        if not isinstance(report, dict) or not all(isinstance(m, dict) for m in report.values()):
            raise ValueError("not a report of `python -m train detect`")
        for name, m in report.items():
            if m.get("training_clips"):
                missing = [key for key, *_ in METRICS if not isinstance(m.get(key), (int, float))]
                if missing:
                    raise ValueError(f"{name!r} lacks {', '.join(missing)}")
                rows[name] = m
    return rows


def fits(rows: dict[str, dict]) -> dict[str, Fit]:
    clips = [m["training_clips"] for m in rows.values()]
    return {key: fit(clips, [m[key] for m in rows.values()]) for key, *_ in METRICS}


def markdown(rows: dict[str, dict], fitted: dict[str, Fit], at: Sequence[int], title: str, note: str = "") -> str:
    lines = [f"# {title}", ""] + ([note, ""] if note else [])
    lines += ["| model | clips learnt from | " + " | ".join(label for _, label, *_ in METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    for name, m in sorted(rows.items(), key=lambda r: r[1]["training_clips"]):
        lines.append(f"| {name} | {m['training_clips']} | " + " | ".join(f"{m[k]:.3f}" for k, *_ in METRICS) + " |")
    lines += ["", "| fit on log2(clips) | per doubling | residual sd | target | clips where the line reaches it | "
              + " | ".join(f"at {n} clips (90 % interval)" for n in at) + " |",
              "|---|---|---|---|---|" + "---|" * len(at)]
    for key, label, target, higher_is_better in METRICS:
        f = fitted[key]
        reached = f.reaches(target, higher_is_better)
        where = ("never (more data takes the line away)" if reached is None
                 else f"{reached:,.0f}" if reached < 1e6 else "more than a million")
        cells = ["{:.3f} ({:.3f} to {:.3f})".format(*f.at(n)) for n in at]
        lines.append(f"| {label} | {f.slope:+.3f} | {f.residual_sd:.3f} | {target:.2f} | {where} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"{len(rows)} models. The line is least squares of each metric on log2 of the clips the model learnt "
              "from (its training and validation clips); the interval is where one more model at that amount of data "
              "would fall, from the points' scatter (t distribution). Beyond the largest measured amount it is a "
              "projection, not a measurement: learning curves flatten, so it is an upper estimate of the gain."]
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: dict[str, dict], fitted: dict[str, Fit], at: Sequence[int], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = np.array([m["training_clips"] for m in rows.values()], float)
    span = np.geomspace(clips.min() * 0.8, max([clips.max() * 1.25, *at]), 100)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.8))
    for ax, (key, label, target, _) in zip(axes, METRICS):
        f = fitted[key]
        line = np.array([f.at(n) for n in span])
        measured = span <= clips.max()
        ax.plot(span[measured], line[measured, 0], color="C0", label="fit")
        ax.plot(span[~measured], line[~measured, 0], color="C0", ls="--", label="projection")
        ax.fill_between(span, line[:, 1], line[:, 2], color="C0", alpha=0.15, lw=0, label="90 % interval")
        ax.scatter(clips, [m[key] for m in rows.values()], color="k", s=14, zorder=3, label="models")
        ax.axhline(target, color="C3", ls=":", label=f"target {target:.2f}")
        for n in at:
            ax.axvline(n, color="0.6", lw=0.8)
            ax.annotate(f"{n}", (n, 1), xycoords=("data", "axes fraction"), xytext=(-2, -10),
                        textcoords="offset points", ha="right", fontsize=7, color="0.4")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clips learnt from (log scale)")
        ax.set_title(f"{label}: {f.slope:+.3f} a doubling")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
