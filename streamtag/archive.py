"""``streamtag archive``: an archive of recordings tagged by a pool of workers on a Ray cluster.

    streamtag archive /recordings --out tags/                  # a local cluster: a worker per core
    streamtag archive --manifest files.txt --out tags/         # the files a manifest lists
    streamtag archive /nfs/recordings --out /nfs/tags --address auto --gpus-per-worker 1   # a running cluster

A year of one sensor is 8,760 hours: many hours of one machine. Here the driver
lists the files (a folder's audio files, recursively, or a manifest's lines),
leaves out those already done, and hands the rest to Ray Data: a pool of
workers (Ray actors), each holding one :class:`~streamtag.tagger.Tagger`, reads
and tags one file at a time through the same engine as ``streamtag tag``,
writes that file's outputs and tells the driver. The driver follows the
progress and at the end writes one merged table per format.

Why the work is cut this way:

- **Exactly once.** Each output is written to a temporary name and renamed
  into place, with the file's record (``.json``) last: a file is done
  completely or not at all. A worker that dies loses only the files in its
  hands: Ray restarts the actor and runs them again (rewriting any it had
  finished, to the same outputs). A rerun reads the records and skips what is
  done; the merged tables are built from the per-file outputs in listing
  order, so each file's events appear once however often a run was resumed.
- **The workers write** their files' outputs, so writing scales with them:
  rendering and writing a 5-minute file's outputs takes about as long as
  tagging 2 s of it, and the driver alone would have limited a cluster to a
  few hundred workers on such files and a few dozen on 4-s clips
  (``benchmarks/archive.py``). The driver checks that each file's record
  reached the output folder.
- **One set of settings per output folder.** The model (by content hash) and
  the decoding options are kept in ``archive.json``; a rerun with others is
  refused rather than mixing two models' events in one table.
- **The workers read the files themselves** (no audio crosses the network
  through the driver), so on a cluster every node must see the recordings and
  the output folder at the same paths (a shared filesystem).

Output folder: ``files/<path>.<ext>`` per input and format (what ``streamtag
tag -f FORMAT`` writes for it), ``files/<path>.json`` (its record: seconds,
windows, events, clip scores, error), ``events.<ext>`` (the merged table of
each format but audacity), ``files.csv`` (one row per input) and
``archive.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np

from streamtag.errors import StreamtagError
from streamtag.events import Event
from streamtag.sinks import SUFFIXES, file_sink

FORMATS = SUFFIXES  # the file formats ``streamtag tag`` writes, and their files' endings
RECORD = ".json"


def audio_suffixes() -> set[str]:
    """File name endings of the formats libsndfile reads here."""
    import soundfile as sf

    return {"." + name.lower() for name in sf.available_formats()} | {".aif", ".oga", ".opus"}


@dataclasses.dataclass(frozen=True)
class Item:
    """One input: ``path`` as the user's listing names it (written in the outputs, as ``streamtag
    tag PATH`` writes it), ``rel`` its place under the output folder, ``absolute`` what workers open."""

    path: str
    rel: str
    absolute: str


def list_folder(folder: str, exclude: Path | None = None) -> list[Item]:
    """Every audio file under ``folder`` (recursively, hidden ones left out), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise StreamtagError(f"{folder}: not a folder")
    suffixes = audio_suffixes()
    skip = exclude.resolve() if exclude is not None else None
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() != skip)
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                rel = (here / name).relative_to(root).as_posix()
                items.append(Item(os.path.join(folder, rel), rel, str((here / name).resolve())))
    return sorted(items, key=lambda item: item.rel)


def read_manifest(manifest: str) -> list[Item]:
    """The files a manifest lists, one path per line (``#`` starts a comment); a relative
    path is taken from the manifest's folder, so a manifest moves with its recordings."""
    try:
        lines = Path(manifest).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StreamtagError(f"cannot read manifest {manifest}: {getattr(exc, 'strerror', None) or exc}") from None
    base = os.path.dirname(manifest)
    paths = []
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if entry:
            paths.append(entry if os.path.isabs(entry) else os.path.join(base, entry))
    if not paths:
        raise StreamtagError(f"manifest {manifest} lists no files")
    absolute, seen = [os.path.abspath(p) for p in paths], set()
    for a in absolute:
        if a in seen:
            raise StreamtagError(f"manifest {manifest} lists {a} more than once")
        seen.add(a)
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [Item(p, Path(os.path.relpath(a, root)).as_posix(), a) for p, a in zip(paths, absolute)]


# --- the workers' side ---------------------------------------------------------------------------------------------

def tag_file(tagger, item_path: str, absolute: str) -> dict:
    """Tag one file as ``streamtag tag`` does (one engine run over a FileSource): its record,
    with the events at full precision, so that the sinks write from it what ``tag`` writes."""
    from streamtag.sources import FileSource

    events: list[list] = []
    record = {"path": item_path, "seconds": 0.0, "windows": 0, "events": events, "clip_scores": None,
              "error": None, "wall_seconds": 0.0}
    start = time.perf_counter()
    try:
        source = FileSource(absolute)
        source.name = item_path
        summary = tagger.engine().run(source, on_event=lambda kind, e: events.append(
            [e.label, e.index, e.onset, e.offset, e.score]) if kind == "close" else None)
    except StreamtagError as exc:
        record["error"] = str(exc).replace(absolute, item_path)
    else:
        record.update(seconds=summary.seconds, windows=summary.windows,
                      clip_scores=None if summary.clip_scores is None else [float(s) for s in summary.clip_scores],
                      error=None if summary.error is None else str(summary.error).replace(absolute, item_path))
    record["wall_seconds"] = time.perf_counter() - start
    return record


class ArchiveWorker:
    """A Ray Data actor: one Tagger, loaded once, tags each file it is given and writes its
    outputs; what it hands back is a summary a file (path, seconds, events, error)."""

    def __init__(self, model: str | None, device: str, int8: bool, decoding: dict, threads: int, out: str,
                 formats: list[str]):
        import torch

        from streamtag.tagger import Tagger

        torch.set_num_threads(threads)
        self.tagger = Tagger(model, device=device, int8=int8, **decoding)
        self.outputs = Outputs(out, formats)

    def __call__(self, batch: dict) -> dict:
        summaries = []
        for path, absolute, rel in zip(batch["path"], batch["absolute"], batch["rel"]):
            record = tag_file(self.tagger, str(path), str(absolute))
            try:
                self.outputs.write(str(rel), record, self.tagger.classes)
                unwritten = None
            except StreamtagError as exc:  # the driver stops the run with it
                unwritten = str(exc)
            summaries.append(json.dumps({"path": record["path"], "seconds": record["seconds"],
                                         "events": len(record["events"]), "error": record["error"],
                                         "unwritten": unwritten}))
        return {"summary": summaries}


# --- the output folder ---------------------------------------------------------------------------------------------

def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place: a reader
    (or a rerun) sees the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def render(fmt: str, record: dict, classes: list[str]) -> str:
    """What ``streamtag tag -f FMT`` writes for one input, from its record."""
    stream = io.StringIO()
    sink = file_sink(fmt, stream, classes)
    sink.begin(record["path"])
    for label, index, onset, offset, score in record["events"]:
        sink.event("close", Event(label, index, onset, offset, score))
    return stream.getvalue()


class Outputs:
    """Each input's outputs in an output folder: where they go, whether they are whole, writing them."""

    def __init__(self, out: str, formats: list[str]):
        self.out, self.formats = Path(out), formats
        self.files = self.out / "files"

    def output(self, item_rel: str, suffix: str) -> Path:
        return self.files / (item_rel + suffix)

    def done(self, rel: str) -> bool:
        """Whether a complete, error-free result is on disk (a failed input is tried again)."""
        record = self.output(rel, RECORD)
        if not record.is_file() or not all(self.output(rel, FORMATS[f]).is_file() for f in self.formats):
            return False
        try:
            return json.loads(record.read_text(encoding="utf-8"))["error"] is None
        except (OSError, ValueError, KeyError):
            return False

    def write(self, rel: str, record: dict, classes: list[str]) -> None:
        try:
            for fmt in self.formats:
                _write_atomic(self.output(rel, FORMATS[fmt]), render(fmt, record, classes))
            _write_atomic(self.output(rel, RECORD), json.dumps(record) + "\n")  # last: it says the rest is there
        except OSError as exc:
            raise StreamtagError(f"cannot write {self.output(rel, RECORD).parent}: {exc.strerror}") from None


class Archive(Outputs):
    """The output folder as the driver keeps it: the settings its results were made with, and
    the merged tables."""

    def __init__(self, out: str, formats: list[str], settings: dict):
        super().__init__(out, formats)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StreamtagError(f"cannot create {out}: {exc.strerror}") from None
        kept = self.out / "archive.json"
        if kept.exists():
            try:
                before = json.loads(kept.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise StreamtagError(f"{kept} is damaged; remove it, or use another --out") from None
            if before != settings:
                changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
                raise StreamtagError(f"{out} holds results of other settings ({', '.join(changed)} differ); "
                                     "use another --out, or the same model and options")
        else:
            _write_atomic(kept, json.dumps(settings, indent=2) + "\n")

    def merge(self, items: list[Item], classes: list[str]) -> list[dict]:
        """``events.<ext>`` per format (audacity excepted) and ``files.csv``, from the per-file
        outputs in listing order; the records of the inputs that have one."""
        records = []
        for item in items:
            try:
                records.append((item, json.loads(self.output(item.rel, RECORD).read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                continue
        for fmt in self.formats:
            if fmt == "audacity":  # a label track belongs to one recording
                continue
            header = _header(fmt, classes)
            parts = [self.output(item.rel, FORMATS[fmt]).read_text(encoding="utf-8") for item, _ in records]
            _write_atomic(self.out / ("events" + FORMATS[fmt]),
                          header + "".join(p[len(header):] if header and p.startswith(header) else p for p in parts))
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "seconds", "windows", "events", "top", "error"])
        for item, record in records:
            top = ""
            if record["clip_scores"]:
                order = np.argsort(-np.asarray(record["clip_scores"]), kind="stable")[:3]
                top = " ".join(classes[i] for i in order)
            writer.writerow([record["path"], f"{record['seconds']:.3f}", record["windows"], len(record["events"]),
                             top, record["error"] or ""])
        _write_atomic(self.out / "files.csv", buffer.getvalue())
        return [record for _, record in records]


def _header(fmt: str, classes: list[str]) -> str:
    """The header line a format's output starts with, as its sink writes it ("" for none)."""
    if fmt not in ("csv", "dcase"):
        return ""
    return render(fmt, {"path": "", "events": [[classes[0], 0, 0.0, 0.0, 0.0]]}, classes).split("\n", 1)[0] + "\n"


def model_settings(model: str | None, int8: bool, decoding: dict) -> dict:
    """What shapes the events: the model file's content hash and name, int8, decoding overrides."""
    from streamtag.modelfile import DEFAULT_MODEL

    path = Path(model) if model else DEFAULT_MODEL
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise StreamtagError(f"cannot read model {path}: {exc.strerror}") from None
    return {"model": path.name if model else "default", "sha256": digest, "int8": int8,
            "decoding": {k: v for k, v in sorted(decoding.items())}}


@dataclasses.dataclass
class Progress:
    """Files, hours of audio and the real-time factor of the run so far."""

    total: int
    files: int = 0
    failed: int = 0
    seconds: float = 0.0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def add(self, record: dict) -> None:
        self.files += 1
        self.failed += record["error"] is not None
        self.seconds += record["seconds"]

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.started

    def line(self) -> str:
        rate = self.seconds / self.wall if self.wall > 0 else 0.0
        return (f"{self.files}/{self.total} files, {self.seconds / 3600:.2f} h of audio, {rate:.0f}x real time"
                + (f", {self.failed} failed" if self.failed else ""))


def _start_ray(address: str | None, cpus: int, gpus: int | None):
    try:
        import ray
        import ray.data
    except ImportError:
        raise StreamtagError("streamtag archive needs Ray: pip install 'streamtag[cluster]'") from None
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # not its notes on progress bars and deprecations
    options = dict(include_dashboard=False, logging_level=logging.ERROR, configure_logging=True)
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **options)
        else:  # a local cluster for this run only: the workers' cores, a small object store (records are small)
            ray.init(num_cpus=cpus, num_gpus=gpus, object_store_memory=256 << 20, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"reach the Ray cluster at {address}" if address else "start a local Ray cluster"
        chain, cause = [], exc
        while cause is not None and len(chain) < 10:  # Ray wraps the reason, as text, in a RuntimeError
            chain, cause = chain + [cause], cause.__cause__ or cause.__context__
        if any("AuthenticationError" in str(e) or isinstance(e, ray.exceptions.AuthenticationError) for e in chain):
            raise StreamtagError(f"cannot {where}: it wants its token; set RAY_AUTH_MODE=token, with the head "
                                 "node's ~/.ray/auth_token here or in RAY_AUTH_TOKEN") from None
        raise StreamtagError(f"cannot {where}: {_first_line(exc)}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail at once, in one line, where a HOST:PORT address does not answer (Ray itself
    retries for minutes); ``auto`` finds the local machine's running cluster by itself."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise StreamtagError(f"--address takes auto, HOST:PORT or ray://HOST:PORT; got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise StreamtagError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


@dataclasses.dataclass
class ArchiveRun:
    """What :func:`run_archive` did: the records of every input in the output folder (in listing
    order), how many were done before it started, and the workers it ran (0: none were needed)."""

    records: list[dict]
    done_before: int
    workers: int


def run_archive(items: list[Item], out: str, formats: list[str], *, model: str | None = None, int8: bool = False,
                decoding: dict | None = None, workers: int | None = None, threads: int = 1,
                gpus_per_worker: float = 0.0, address: str | None = None, on_start=None,
                on_record=None) -> ArchiveRun:
    """Tag ``items`` into the output folder ``out`` with ``workers`` Ray workers (default: one per
    core here, or per ``threads`` CPUs, or ``gpus_per_worker`` GPUs, of the cluster at ``address``).
    ``on_start(to_tag, done_before)`` is called once the folder is read, ``on_record(summary)`` as
    each file's outputs are written (its path, seconds, events and error)."""
    from streamtag.tagger import Tagger

    decoding = decoding or {}
    tagger = Tagger(model, device="cpu", int8=int8, **decoding)  # checks model and options here, in one line
    classes = tagger.classes
    archive = Archive(out, formats, model_settings(model, int8, decoding))
    by_path = {item.path: item for item in items}
    todo = [item for item in items if not archive.done(item.rel)]
    if on_start:
        on_start(len(todo), len(items) - len(todo))
    if todo:
        if gpus_per_worker and not address:
            import torch

            if not torch.cuda.is_available():
                raise StreamtagError("--gpus-per-worker needs a GPU, and this machine has none that torch can use")
        if workers is None and not address:
            workers = max(1, (os.cpu_count() or 1) // threads)
        ray = _start_ray(address, (workers or 0) * threads, None if gpus_per_worker else 0)
        try:
            cluster = ray.cluster_resources()
            gpus = cluster.get("GPU", 0)
            if gpus_per_worker > gpus:
                raise StreamtagError(f"--gpus-per-worker {gpus_per_worker:g}, but the cluster has {gpus:g} GPUs")
            if workers is None:  # as many as the cluster has room for
                workers = max(1, int(gpus // gpus_per_worker if gpus_per_worker else cluster.get("CPU", 1) // threads))
            # Blocks (a task each, what a lost worker redoes) of one file where there are few, up to 32 where
            # there are many: a task costs milliseconds, as much as tagging a short clip (benchmarks/archive.py).
            per_block = max(1, min(32, len(todo) // (16 * workers)))
            dataset = ray.data.from_items([{"path": i.path, "absolute": i.absolute, "rel": i.rel} for i in todo],
                                          override_num_blocks=-(-len(todo) // per_block))
            results = dataset.map_batches(
                ArchiveWorker, batch_size=1, num_cpus=threads, num_gpus=gpus_per_worker,
                compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo)), max_tasks_in_flight_per_actor=2),
                fn_constructor_kwargs=dict(model=str(Path(model).resolve()) if model else None,
                                           device="cuda" if gpus_per_worker else "cpu", int8=int8,
                                           decoding=decoding, threads=threads, out=str(archive.out.resolve()),
                                           formats=formats))
            seen = set()
            for row in results.iter_rows():
                summary = json.loads(row["summary"])
                if summary["unwritten"]:
                    raise StreamtagError(f"a worker could not write its outputs: {summary['unwritten']}")
                if not archive.output(by_path[summary["path"]].rel, RECORD).is_file():
                    raise StreamtagError(f"the outputs of {summary['path']} were written where this machine does "
                                         f"not see them: on a cluster, {out} must be a folder every node shares")
                if on_record and summary["path"] not in seen:  # a block run again reports its files again
                    on_record(summary)
                seen.add(summary["path"])
        except ray.exceptions.RayError as exc:
            raise StreamtagError(f"the Ray workers failed: {_first_line(exc)}") from None
        finally:
            ray.shutdown()
    return ArchiveRun(archive.merge(items, classes), len(items) - len(todo), workers if todo else 0)


def main(args, decoding: dict) -> int:
    """The ``archive`` subcommand, with the decoding settings its options give; returns the exit code."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

    if bool(args.folder) == bool(args.manifest):
        raise StreamtagError("give a folder of recordings or --manifest FILE (one of them)")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise StreamtagError(f"--format takes a comma list of {', '.join(FORMATS)}; got {args.format!r}")
    for name, value in (("--workers", args.workers), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise StreamtagError(f"{name} must be at least 1, got {value}")
    if args.gpus_per_worker < 0:
        raise StreamtagError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")
    items = read_manifest(args.manifest) if args.manifest else list_folder(args.folder, exclude=Path(args.out))
    if not items:
        raise StreamtagError(f"{args.folder}: no audio files in it")
    err = Console(stderr=True)
    if "dcase" in formats and len({Path(i.rel).name for i in items}) < len(items):
        err.print("streamtag archive: note: some file names repeat in other folders; events.tsv names files "
                  "without their folders (the DCASE convention), events.csv with", markup=False, highlight=False,
                  soft_wrap=True)
    progress = Progress(len(items))
    bar = Bar(TextColumn("tagging"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[line]}"),
              TimeRemainingColumn(), console=err, transient=True, disable=args.quiet or not err.is_terminal)
    last_line = [time.perf_counter()]

    def on_start(to_tag: int, done_before: int) -> None:
        progress.total = to_tag
        bar.update(task, total=to_tag, line="starting workers" if to_tag else "")

    def on_record(record: dict) -> None:
        progress.add(record)
        bar.update(task, completed=progress.files, line=progress.line())
        if record["error"]:
            err.print(f"streamtag: error: {record['error']}", markup=False, highlight=False, soft_wrap=True)
        if bar.disable and not args.quiet and time.perf_counter() - last_line[0] >= args.report_every:
            last_line[0] = time.perf_counter()  # a log line now and then where there is no terminal
            err.print(f"streamtag archive: {progress.line()}", markup=False, highlight=False, soft_wrap=True)

    try:
        with bar:
            task = bar.add_task("tagging", total=len(items), line="")
            run = run_archive(items, args.out, formats, model=args.model, int8=args.int8, decoding=decoding,
                              workers=args.workers, threads=args.threads, gpus_per_worker=args.gpus_per_worker,
                              address=args.address, on_start=on_start, on_record=on_record)
    except KeyboardInterrupt:
        err.print(f"streamtag archive: interrupted after {progress.line()}; the same command again finishes the "
                  "rest", markup=False, highlight=False, soft_wrap=True)
        return 130
    records = run.records
    if not args.quiet:
        hours = sum(r["seconds"] for r in records) / 3600
        err.print(f"streamtag archive: {progress.line()} on {run.workers} worker{'s' * (run.workers != 1)}; "
                  f"{run.done_before} done before, skipped; {len(records)} files ({hours:.2f} h) and "
                  f"{sum(len(r['events']) for r in records)} events in {args.out}", markup=False,
                  highlight=False, soft_wrap=True)
    return 2 if any(r["error"] is not None for r in records) else 0
