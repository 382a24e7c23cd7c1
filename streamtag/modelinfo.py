"""What ``streamtag info MODEL`` shows: a model file's metadata as rich tables.

Kept apart from :mod:`streamtag.modelfile` so the model layer knows nothing of
screens; everything shown comes from the loaded :class:`TaggerModel`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Group
from rich.table import Table

from streamtag.model import PiczakCNN
from streamtag.modelfile import TaggerModel


def parameter_count(architecture: dict) -> int:
    """Weights of the float network, counted without allocating it."""
    with torch.device("meta"):
        net = PiczakCNN(**architecture)
    return sum(p.numel() for p in net.parameters())


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", f"{value:.4g}" if isinstance(value, float) else str(value)))
    return rows


def _range(values: np.ndarray, unit: str = "") -> str:
    return f"{values.min():.1f} .. {values.max():.1f}{unit}"


def render_info(model: TaggerModel, path: Path) -> Group:
    meta, spec, arch = model.metadata, model.spec, model.metadata["architecture"]
    table = Table(title=f"streamtag model [bold]{model.name}[/]", show_header=False, title_justify="left")
    table.add_column(style="cyan", no_wrap=True)
    table.add_column()
    table.add_row("file", f"{path}  ({path.stat().st_size / 1e6:.1f} MB)")
    table.add_row("format", f"{meta['format']}, schema {meta['schema']}")
    head = "multilabel (a sigmoid per class)" if model.head == "multilabel" else "single label (softmax)"
    table.add_row("head", f"{head}, {len(model.classes)} classes")
    table.add_row("window", f"{model.window_frames} frames ({spec.seconds(model.window_frames):.2f} s)")
    table.add_row("default hop", f"{model.hop_frames} frames ({spec.seconds(model.hop_frames):.3f} s)")
    ahead = (1 - model.score_at) * ((model.window_frames - 1) * spec.hop_length + spec.n_fft) / spec.sample_rate
    table.add_row("a score describes", ("its window's centre" if model.score_at == 0.5 else
                                        f"the moment {model.score_at:.3f} of the way into its window")
                  + f" (look-ahead {ahead:.3f} s)")
    table.add_row("network", f"Piczak CNN, dense {arch['dense']}, "
                             f"batch norm {'on' if arch['batch_norm'] else 'off'}, dropout {arch['dropout']}, "
                             f"{parameter_count(arch) / 1e6:.2f} M parameters"
                             + (", dense layers int8" if meta["quantized"] else ""))
    table.add_row("features", f"{spec.sample_rate} Hz, n_fft {spec.n_fft}, hop {spec.hop_length}, "
                              f"{spec.n_mels} mel bands {spec.fmin:g}-{spec.fmax_hz:g} Hz ({spec.mel_scale}), "
                              f"delta {spec.delta}, floor {spec.floor_db:g} dB")
    mean, std = model.normalization()
    table.add_row("normalisation", f"log-mel mean {_range(mean[0], ' dB')}, std {_range(std[0], ' dB')}; "
                                   f"delta mean {_range(mean[1])}, std {_range(std[1])}")
    decoding = model.decoding
    table.add_row("decoding", "the engine's defaults (none in the file)" if decoding is None else
                  f"{decoding.filter} filter over {decoding.smooth:g} s, hysteresis {decoding.hysteresis:g}, "
                  "minimum durations per class (tuned on validation scenes)")
    table.add_row("device", model.device)
    for key, value in _flatten(model.provenance):
        table.add_row(key, value)

    classes = Table(title="classes", title_justify="left")
    classes.add_column("#", justify="right", style="dim")
    classes.add_column("class")
    classes.add_column("threshold", justify="right")
    durations = decoding.min_durations(len(model.classes)) if decoding is not None else None
    if durations is not None:
        classes.add_column("min duration", justify="right")
    for i, (name, threshold) in enumerate(zip(model.classes, model.thresholds)):
        classes.add_row(str(i), name, f"{threshold:.3f}", *([f"{durations[i]:g} s"] if durations is not None else []))
    return Group(table, classes)
