"""Readers for the two dataset layouts the benchmarks ship in.

* UrbanSound8K: ``metadata/UrbanSound8K.csv`` and ``audio/fold1/`` .. ``audio/fold10/``.
* ESC-50: ``meta/esc50.csv`` and ``audio/``; ESC-10 is its ``esc10 == True`` subset.

Both readers check the layout and say what is wrong in one line
(:class:`~streamtag.errors.DatasetError`). They tolerate partial copies: clips
listed in the metadata but absent on disk, and whole folds that are absent, are
counted and named in :attr:`Dataset.missing` / :meth:`Dataset.summary`, and the
protocols use the folds that are present. A clip is found by its listed name or,
failing that, by the same stem with another audio extension (a copy converted
from WAV to FLAC without editing the CSV still reads).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from pathlib import Path

import numpy as np

from streamtag.audio import load_audio
from streamtag.errors import DatasetError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")


@dataclasses.dataclass(frozen=True)
class Clip:
    """One labelled recording of a dataset."""

    path: Path
    fold: int
    label: int  # index into Dataset.classes
    group: str  # source recording: clips that share it must stay on one side of any split


@dataclasses.dataclass
class Dataset:
    """The present clips of a dataset, and what its metadata lists but the disk lacks."""

    name: str
    root: Path
    classes: list[str]
    clips: list[Clip]
    official_folds: list[int]
    missing: list[str]  # listed file names not found on disk

    @property
    def folds(self) -> list[int]:
        """Folds with at least one clip present."""
        return sorted({c.fold for c in self.clips})

    @property
    def absent_folds(self) -> list[int]:
        return [f for f in self.official_folds if f not in self.folds]

    @property
    def labels(self) -> np.ndarray:
        return np.array([c.label for c in self.clips], dtype=np.int64)

    def load(self, clip: Clip, sample_rate: int) -> np.ndarray:
        """The clip's audio, mono float32 at ``sample_rate``."""
        return load_audio(clip.path, sample_rate)

    def summary(self) -> str:
        """One paragraph: what is present and what is not."""
        text = (f"{self.name}: {len(self.clips)} clips, {len(self.classes)} classes, "
                f"folds {_ranges(self.folds)} present")
        if self.absent_folds:
            text += f", folds {_ranges(self.absent_folds)} absent"
        if self.missing:
            shown = ", ".join(self.missing[:5]) + (" ..." if len(self.missing) > 5 else "")
            text += f"; {len(self.missing)} listed clips missing ({shown})"
        return text


def output_folds(dataset: Dataset, out: str | os.PathLike, folds=None) -> tuple[Path, list[int]]:
    """For a writer of derived audio (overlays, scenes): the folder ``out``, which must be new or
    empty, and the folds asked for (default: every present fold), each checked present."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: already exists and is not an empty folder; choose a new one")
    folds = sorted(folds or dataset.folds)
    absent = sorted(set(folds) - set(dataset.folds))
    if absent:
        raise DatasetError(f"fold(s) {absent} not present ({dataset.summary()})")
    return out, folds


def share_of_recordings(dataset: Dataset, ids: np.ndarray, share: float, seed: int) -> np.ndarray:
    """The clips among ``ids`` of a ``share`` of their source recordings, drawn from ``seed`` for
    each fold and class (at least one recording each): a smaller training set with the same folds
    and nearly the same class balance, for a learning curve. Whole recordings are kept or left, as
    the slices of one recording are not independent examples."""
    if not 0 < share <= 1:
        raise DatasetError(f"a share of the recordings must be in (0, 1], got {share:g}")
    ids = np.asarray(ids)
    if share == 1:
        return ids
    recording = {i: (dataset.clips[i].fold, dataset.clips[i].label, dataset.clips[i].group) for i in ids}
    strata: dict[tuple[int, int], set[str]] = {}
    for fold, label, group in recording.values():
        strata.setdefault((fold, label), set()).add(group)
    rng = np.random.default_rng(seed)
    kept = set()
    for key in sorted(strata):
        groups = sorted(strata[key])
        n = max(1, round(share * len(groups)))
        kept.update((*key, groups[j]) for j in rng.choice(len(groups), size=n, replace=False))
    return np.array([i for i in ids if recording[i] in kept], dtype=ids.dtype)


def read_dataset(kind: str, root: str | os.PathLike) -> Dataset:
    """``kind`` is one of ``us8k``, ``esc10``, ``esc50``."""
    readers = {"us8k": read_us8k, "esc10": lambda r: read_esc50(r, esc10=True),
               "esc50": lambda r: read_esc50(r, esc10=False)}
    if kind not in readers:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose one of {', '.join(readers)}")
    return readers[kind](root)


def read_us8k(root: str | os.PathLike) -> Dataset:
    """UrbanSound8K: 10 official folds; ``classID`` gives the class index."""
    root = _existing_dir(root, "UrbanSound8K")
    rows = _read_csv(root / "metadata" / "UrbanSound8K.csv", root, "UrbanSound8K",
                     ("slice_file_name", "fsID", "fold", "classID", "class"))
    names: dict[int, str] = {}
    clips, missing = [], []
    dirs: dict[int, dict[str, str]] = {}
    for line, row in rows:
        fold = _int(row["fold"], "fold", line)
        label = _int(row["classID"], "classID", line)
        if names.setdefault(label, row["class"]) != row["class"]:
            raise DatasetError(f"UrbanSound8K.csv line {line}: classID {label} is named both "
                               f"{names[label]!r} and {row['class']!r}")
        if fold not in dirs:
            dirs[fold] = _audio_index(root / "audio" / f"fold{fold}")
        path = _find(root / "audio" / f"fold{fold}", dirs[fold], row["slice_file_name"])
        if path is None:
            missing.append(f"fold{fold}/{row['slice_file_name']}")
        else:
            clips.append(Clip(path, fold, label, row["fsID"]))
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"UrbanSound8K.csv: classIDs must run 0..{len(names) - 1}, got {sorted(names)}")
    return _finish("UrbanSound8K", root, [names[i] for i in range(len(names))], clips,
                   list(range(1, 11)), missing)


def read_esc50(root: str | os.PathLike, esc10: bool = True) -> Dataset:
    """ESC-50 layout; ``esc10`` keeps the ESC-10 subset. Class indices follow the
    ESC-50 ``target`` ids in increasing order (ESC-10's ids are not contiguous)."""
    name = "ESC-10" if esc10 else "ESC-50"
    root = _existing_dir(root, name)
    rows = _read_csv(root / "meta" / "esc50.csv", root, "ESC-50",
                     ("filename", "fold", "target", "category", "src_file") + (("esc10",) if esc10 else ()))
    if esc10:
        rows = [(line, r) for line, r in rows if r["esc10"].strip().lower() == "true"]
        if not rows:
            raise DatasetError(f"{root / 'meta' / 'esc50.csv'}: no row has esc10 == True")
    targets: dict[int, str] = {}
    for line, row in rows:
        target = _int(row["target"], "target", line)
        if targets.setdefault(target, row["category"]) != row["category"]:
            raise DatasetError(f"esc50.csv line {line}: target {target} is named both "
                               f"{targets[target]!r} and {row['category']!r}")
    index = {t: i for i, t in enumerate(sorted(targets))}
    audio = _audio_index(root / "audio")
    clips, missing = [], []
    for line, row in rows:
        path = _find(root / "audio", audio, row["filename"])
        if path is None:
            missing.append(row["filename"])
        else:
            clips.append(Clip(path, _int(row["fold"], "fold", line), index[int(row["target"])], row["src_file"]))
    return _finish(name, root, [targets[t] for t in sorted(targets)], clips, list(range(1, 6)), missing)


def _finish(name, root, classes, clips, official, missing) -> Dataset:
    if not clips:
        raise DatasetError(f"{root}: the {name} metadata lists {len(missing)} clips but none is on disk "
                           f"(first missing: {missing[0] if missing else 'none'})")
    for c in clips:
        if c.fold not in official:
            raise DatasetError(f"{name}: fold {c.fold} of {c.path.name} is not one of the official folds "
                               f"{official[0]}..{official[-1]}")
    return Dataset(name, root, classes, clips, official, missing)


def _existing_dir(root, name) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such directory (expected a {name} folder)")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected a {name} folder)")
    return root


def _read_csv(path: Path, root: Path, name: str, columns: tuple[str, ...]) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise DatasetError(f"{root} is not a {name} folder: {path.relative_to(root)} is missing")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            absent = [c for c in columns if c not in (reader.fieldnames or [])]
            if absent:
                raise DatasetError(f"{path}: missing column(s) {', '.join(absent)}")
            rows = [(i + 2, row) for i, row in enumerate(reader)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: lists no clips")
    for line, row in rows:
        if any(row.get(c) in (None, "") for c in columns):
            raise DatasetError(f"{path} line {line}: empty field in {', '.join(c for c in columns if not row.get(c))}")
    return rows


def _int(text: str, column: str, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetError(f"metadata line {line}: {column} must be an integer, got {text!r}") from None


def _audio_index(folder: Path) -> dict[str, str]:
    """Audio files of a folder by name and by stem (empty if the folder is absent)."""
    if not folder.is_dir():
        return {}
    names = [n for n in sorted(os.listdir(folder)) if os.path.splitext(n)[1].lower() in AUDIO_EXTENSIONS]
    return {**{os.path.splitext(n)[0]: n for n in names}, **{n: n for n in names}}


def _find(folder: Path, index: dict[str, str], listed: str) -> Path | None:
    name = index.get(listed) or index.get(os.path.splitext(listed)[0])
    return folder / name if name else None


def _ranges(folds: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3, 5'."""
    if not folds:
        return "none"
    parts, start = [], folds[0]
    for a, b in zip(folds, folds[1:] + [None]):
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ", ".join(parts)
