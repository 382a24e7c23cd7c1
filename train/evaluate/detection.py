"""Sound event detection measured as the field measures it, and decoding tuned for it.

* :func:`tag_scenes` runs recordings through :class:`streamtag.engine.Engine`,
  the very path ``streamtag tag`` takes, keeping each file's events, the
  moment each event opened (the end of the window that opened it: when a live
  listener would have been told) and the smoothed window scores.
* :func:`score` computes the DCASE metrics with the field's own tools:
  ``sed_eval``'s segment-based F1 and error rate on 1-s segments and its
  event-based F1 and error rate (onsets within 200 ms, offsets within 200 ms
  or 20 % of the event's length), micro-averaged and per class, and the same
  event F1 judged on onsets alone and on offsets alone (which edge costs the
  matches); and, from
  scores rather than decisions, ``sed_scores_eval``'s PSDS (the DCASE 2021-2023
  first scenario: intersection criteria 0.7, no cross-trigger cost, variance
  weight 1, up to 100 false positives an hour).
* :func:`delays`: how long after a reference onset the live event opened.
* :func:`tune_decoding` picks, on validation scenes, the smoothing filter, the
  per-class thresholds (from ``sed_scores_eval``'s best segment F1 and error
  rate), the gap an event bridges and the per-class minimum durations (best
  event F1, with ``sed_eval``) that a model file then carries
  (:class:`streamtag.events.Decoding`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Iterable, Sequence

import numpy as np

from streamtag.events import Decoding, Event, Smoother
from train.data.scenes import Annotation

SEGMENT = 1.0  # seconds: the segment-based metrics' resolution
COLLAR = 0.2  # seconds: the event-based metrics' onset and offset collar
OFFSET_SHARE = 0.2  # ... or this share of the event's length for its offset
FILTERS = (("mean", 0.3), ("median", 0.6), ("median", 1.0))  # tried by tune_decoding
MIN_DURATIONS = (0.0, 0.1, 0.25, 0.5, 1.0)  # seconds, tried per class by tune_decoding
MAX_GAPS = (0.0, 0.5)  # seconds, tried by tune_decoding


@dataclasses.dataclass
class Tagged:
    """One recording through the engine: its events, when each opened (input seconds), and
    the smoothed scores ``(n, C)`` of its windows with the ``n + 1`` boundaries of the spans
    they describe (the moment each window's score describes +- half a hop), then the values the
    smoothing filter owed the last windows' moments, the last of them to the file's end, as the
    engine places events."""

    name: str
    duration: float
    events: list[Event]
    opened: list[tuple[Event, float]]
    scores: np.ndarray
    boundaries: np.ndarray


def tag_scenes(model, scenes: Iterable[tuple[str, np.ndarray, int]], thresholds=None,
               decoding: Decoding | None = None) -> list[Tagged]:
    """Tag each ``(name, audio, rate)`` with ``model`` (a loaded model file) as ``streamtag tag``
    does, with its thresholds and decoding unless others are given."""
    from streamtag.engine import Engine
    from streamtag.sources import ArraySource

    d = decoding or model.decoding or Decoding()
    engine = Engine(model, thresholds=thresholds, smooth=d.smooth, hysteresis=d.hysteresis,
                    min_duration=d.min_duration, filter=d.filter)
    out = []
    for name, audio, rate in scenes:
        events, opened, raws, centres, last_end = [], [], [], [], [0.0]

        def on_window(w):
            raws.append(w.scores)
            centres.append(w.at)
            last_end[0] = w.end

        def on_event(kind, event):
            if kind == "open":
                opened.append((event, last_end[0]))
            else:
                events.append(event)

        engine.run(ArraySource(audio, rate, name=name), on_window, on_event)
        out.append(_with_spans(name, len(audio) / rate, events, opened, raws, centres, engine))
    return out


def _with_spans(name: str, duration: float, events, opened, raws, centres, engine) -> Tagged:
    """The smoothed scores and the spans they describe, as the engine places them: each centred on the
    mean centre of the windows it covers (what ``Smoother.push`` gives), then the values the filter
    still owed the last windows' moments (``Smoother.flush``), the last of them to the file's end."""
    n_classes, half = len(engine.classes), engine.hop_seconds / 2
    if not len(raws):
        return Tagged(name, duration, events, opened, np.zeros((0, n_classes)), np.zeros(1))
    smoother = Smoother(n_classes, engine.smooth_windows, engine.decoding.filter)
    rows, times = smoother.push(np.asarray(raws), np.asarray(centres))
    bounds = np.concatenate([times - half, times[-1:] + half])
    if duration > bounds[-1]:
        owed, edges = smoother.flush_spans(bounds[-1], duration, rows[-1])
        rows, bounds = np.concatenate([rows, owed]), np.concatenate([bounds[:-1], edges])
    return Tagged(name, duration, events, opened, rows.astype(np.float64), bounds)


def _event_list(name: str, events: Iterable) -> list[dict]:
    return [{"filename": name, "event_label": e.label, "onset": float(e.onset), "offset": float(e.offset)}
            for e in events]


def score(reference: dict[str, list[Annotation]], estimated: dict[str, list], classes: Sequence[str],
          durations: dict[str, float] | None = None, scores: dict | None = None) -> dict:
    """DCASE metrics of ``estimated`` events against ``reference`` annotations, both
    ``{filename: [events with onset, offset, label]}``. Every reference file counts (one
    with no estimate has no detections); estimates for files not in the reference are
    ignored. ``scores`` (``{filename: (scores (n, C), boundaries (n + 1,))}``, with
    ``durations``) adds PSDS. Returns micro-averaged figures and a per-class table."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dcase_util's pkg_resources notice
        import dcase_util
        import sed_eval

    scored = list(classes)  # the columns of ``scores``
    seen = {a.label for v in reference.values() for a in v} | {e.label for v in estimated.values() for e in v}
    classes = scored + sorted(seen - set(scored))  # labels the model lacks count too (as misses)
    segment = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=classes, time_resolution=SEGMENT)
    event, onsets, offsets = (sed_eval.sound_event.EventBasedMetrics(
        event_label_list=classes, t_collar=COLLAR, percentage_of_length=OFFSET_SHARE, evaluate_onset=onset,
        evaluate_offset=offset) for onset, offset in ((True, True), (True, False), (False, True)))
    for name, ref in reference.items():
        ref_list = dcase_util.containers.MetaDataContainer(_event_list(name, ref))
        est_list = dcase_util.containers.MetaDataContainer(_event_list(name, estimated.get(name, [])))
        for metrics in (segment, event, onsets, offsets):
            metrics.evaluate(reference_event_list=ref_list, estimated_event_list=est_list)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sed_eval's class-wise means over classes with no event
        seg, ev, on, off = segment.results(), event.results(), onsets.results(), offsets.results()
    out = {"files": len(reference), "reference_events": sum(len(v) for v in reference.values()),
           "estimated_events": sum(len(estimated.get(n, [])) for n in reference),
           "segment_f1": seg["overall"]["f_measure"]["f_measure"],
           "segment_precision": seg["overall"]["f_measure"]["precision"],
           "segment_recall": seg["overall"]["f_measure"]["recall"],
           "segment_er": seg["overall"]["error_rate"]["error_rate"],
           "event_f1": ev["overall"]["f_measure"]["f_measure"],
           "event_er": ev["overall"]["error_rate"]["error_rate"],
           "onset_f1": on["overall"]["f_measure"]["f_measure"],
           "offset_f1": off["overall"]["f_measure"]["f_measure"],
           "classes": {c: {"segment_f1": seg["class_wise"][c]["f_measure"]["f_measure"],
                           "segment_er": seg["class_wise"][c]["error_rate"]["error_rate"],
                           "event_f1": ev["class_wise"][c]["f_measure"]["f_measure"],
                           "event_er": ev["class_wise"][c]["error_rate"]["error_rate"],
                           "reference_events": sum(a.label == c for v in reference.values() for a in v)}
                       for c in classes}}
    if scores is not None:
        out["psds"] = psds(reference, scores, scored, durations)
    return {k: _plain(v) for k, v in out.items()}


def _plain(v):
    """NaN (a class with no events) as None, so reports are plain JSON."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return float(v) if isinstance(v, (np.floating, float)) else v


def _sed_scores_eval():
    """sed_scores_eval, imported without the deprecation notice its dcase_util prints (pkg_resources)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        import sed_scores_eval
        import sed_scores_eval.intersection_based
        import sed_scores_eval.segment_based
        import sed_scores_eval.base_modules.scores
    return sed_scores_eval


def _score_frames(classes, scores: dict, keep=None):
    """sed_scores_eval's score tables; ``keep``: only these classes (it refuses a class with no
    reference event)."""
    create_score_dataframe = _sed_scores_eval().base_modules.scores.create_score_dataframe
    keep = list(classes) if keep is None else list(keep)
    columns = [list(classes).index(c) for c in keep]
    return {name: create_score_dataframe(np.asarray(s, dtype=np.float64)[:, columns], np.asarray(b, dtype=np.float64),
                                         keep) for name, (s, b) in scores.items()}


def _with_events(classes, truth: dict) -> list[str]:
    """The classes that have at least one reference event in ``truth``."""
    present = {label for events in truth.values() for *_, label in events}
    return [c for c in classes if c in present]


def _ground_truth(reference: dict[str, list[Annotation]]) -> dict:
    """sed_scores_eval's ground truth: events of one class that overlap or touch merged
    into one (it refuses them otherwise; a scene may hold two dog barks at once)."""
    out = {}
    for name, events in reference.items():
        merged: list[list] = []
        for a in sorted(events, key=lambda a: (a.label, a.onset)):
            if merged and merged[-1][2] == a.label and a.onset <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], a.offset)
            else:
                merged.append([a.onset, a.offset, a.label])
        out[name] = [tuple(e) for e in merged]
    return out


def psds(reference: dict[str, list[Annotation]], scores: dict, classes: Sequence[str],
         durations: dict[str, float]) -> float:
    """PSDS (sed_scores_eval), the DCASE first scenario's settings."""
    keep = _with_events(classes, _ground_truth(reference))  # scored classes with a reference event
    if not keep:
        return 0.0
    truth = {n: [e for e in events if e[2] in keep] for n, events in _ground_truth(reference).items()}
    frames = _score_frames(list(classes), {n: scores[n] for n in reference}, keep)
    value, *_ = _sed_scores_eval().intersection_based.psds(
        frames, truth, {n: durations[n] for n in reference}, dtc_threshold=0.7, gtc_threshold=0.7,
        cttc_threshold=None, alpha_ct=0.0, alpha_st=1.0, max_efpr=100.0)
    return float(value)


def delays(reference: dict[str, list[Annotation]], tagged: Sequence[Tagged]) -> dict:
    """Detection delay: for each reference event, the first event of its class that opened
    while it sounded (from its onset to its offset), opened this long after the onset.
    Returns the share of reference events so detected, and the delays' median and 90th
    percentile in seconds."""
    by_name = {t.name: t for t in tagged}
    found = []
    total = 0
    for name, events in reference.items():
        opened = by_name[name].opened if name in by_name else []
        for a in events:
            total += 1
            times = [at for e, at in opened if e.label == a.label and e.onset <= a.offset and a.onset <= at]
            if times:
                found.append(min(times) - a.onset)
    found = np.asarray(found)
    return {"detected": len(found) / total if total else None,
            "median": float(np.median(found)) if len(found) else None,
            "p90": float(np.percentile(found, 90)) if len(found) else None}


def objective(metrics: dict) -> float:
    """What tuning maximises: segment F1 and event F1, less the segment error rate (the
    three figures the default model is held to)."""
    return metrics["segment_f1"] + metrics["event_f1"] - metrics["segment_er"]


def _threshold_sets(classes: list[str], scores: dict, truth: dict, durations: dict) -> dict[str, np.ndarray]:
    """Candidate per-class thresholds from smoothed scores ``{name: (scores, boundaries)}``:
    those of the best segment F1, of the lowest segment error rate (sed_scores_eval, over every
    threshold the scores allow), their midpoint, and 0.5 for every class (and for a class with
    no reference event to tune on)."""
    segment_based = _sed_scores_eval().segment_based
    present = _with_events(classes, truth)
    frames = _score_frames(classes, scores, present)
    by_f1 = segment_based.best_fscore(frames, truth, durations, segment_length=SEGMENT)[3]
    by_er = segment_based.best_error_rate(frames, truth, durations, segment_length=SEGMENT)[3]
    f1 = np.clip([by_f1.get(c, 0.5) for c in classes], 1e-3, 1.0)
    er = np.clip([by_er.get(c, 0.5) for c in classes], 1e-3, 1.0)
    return {"best F1": f1, "least ER": er, "midpoint": (f1 + er) / 2, "0.5": np.full(len(classes), 0.5)}


def tune_decoding(model, scenes: Sequence[tuple[str, np.ndarray, int]], reference: dict[str, list[Annotation]],
                  filters=FILTERS, min_durations=MIN_DURATIONS,
                  max_gaps=MAX_GAPS) -> tuple[np.ndarray, Decoding, dict]:
    """Per-class thresholds and a :class:`Decoding` chosen on validation scenes.

    First the smoothing filter and the kind of thresholds (:func:`_threshold_sets`) are
    chosen by two-fold cross-validation over the scenes: thresholds found on one half are
    scored on the other, and the pair with the best mean :func:`objective` wins. Thresholds
    fitted and scored on the same scenes flatter the per-class best-F1 ones: on the first
    strong model's held-out fold they cost 0.17 in error rate for no gain in F1, against 0.5
    for every class. Then the chosen kind is fitted on all the scenes and, for each gap an
    event may bridge, every class's minimum duration is the one of best event F1 (sed_eval).
    Returns ``(thresholds, decoding, metrics)``, the metrics on all the validation scenes.
    """
    classes = list(model.classes)
    durations = {name: len(audio) / rate for name, audio, rate in scenes}
    truth = _ground_truth(reference)
    halves = [[s for k, s in enumerate(scenes) if k % 2 == h] for h in (0, 1)]
    choice = None
    for kind, seconds in filters:
        base = Decoding(filter=kind, smooth=seconds, hysteresis=0.0, min_duration=0.0)
        tagged = {t.name: t for t in tag_scenes(model, scenes, thresholds=1.0, decoding=base)}  # scores only
        sets = []
        for half in halves:
            names = [s[0] for s in half]
            sets.append(_threshold_sets(classes, {n: (tagged[n].scores, tagged[n].boundaries) for n in names},
                                        {n: truth[n] for n in names}, {n: durations[n] for n in names}))
        for name in sets[0]:
            value = 0.0
            for fitted, other in ((0, 1), (1, 0)):
                held = halves[other]
                events = {t.name: t.events for t in tag_scenes(model, held, thresholds=sets[fitted][name],
                                                               decoding=base)}
                value += objective(score({s[0]: reference[s[0]] for s in held}, events, classes)) / 2
            if choice is None or value > choice[0]:
                choice = (value, base, name)
        if choice[1] is base:
            thresholds = _threshold_sets(classes, {n: (t.scores, t.boundaries) for n, t in tagged.items()}, truth,
                                         durations)[choice[2]]
            choice = (*choice[:3], thresholds)
    _, base, _, thresholds = choice
    best = None
    for gap in max_gaps:
        per_class = {}
        for d in min_durations:
            decoding = dataclasses.replace(base, min_duration=d, max_gap=gap)
            metrics = score(reference, {t.name: t.events for t in tag_scenes(model, scenes, thresholds, decoding)},
                            classes)
            for c in classes:
                f = metrics["classes"][c]["event_f1"] or 0.0
                if c not in per_class or f > per_class[c][1]:
                    per_class[c] = (d, f)
        decoding = dataclasses.replace(base, min_duration=tuple(per_class[c][0] for c in classes), max_gap=gap)
        metrics = score(reference, {t.name: t.events for t in tag_scenes(model, scenes, thresholds, decoding)},
                        classes)
        if best is None or objective(metrics) > best[0]:
            best = (objective(metrics), thresholds, decoding, metrics)
    return best[1], best[2], best[3]
