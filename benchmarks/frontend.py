"""Frontend cost: streamtag's incremental numba frontend beside recomputing the window.

A live tagger needs the newest window (2 x 60 x F frames) after every hop. The
usual alternative to an incremental frontend is to keep the last
``(F + 8 - 1) * hop + n_fft`` samples and recompute log-mel and delta over all
of them on each update, with torchaudio or librosa. Both baselines compute the
same spec (periodic Hann, Slaney mel, dB, Piczak's causal delta), single
threaded like the frontend, and are timed in the same run.

Run: ``python -m benchmarks.frontend [--quick]``.
"""

from __future__ import annotations

import time

import numpy as np

from streamtag.features import DELTA_TAPS, FeatureSpec
from streamtag.frontend import Frontend
from benchmarks.report import standalone

SPEC = FeatureSpec()


def _interleaved_minimum(jobs: dict, rounds: int) -> dict:
    """Minimum wall time of each job over ``rounds`` rounds that run every job once.

    This machine's speed drifts by half for seconds at a time (a shared virtual
    machine): timing each job in its own burst would hand one a slow phase and
    another a fast one. Taking turns, the minimum catches every job in the same
    quiet moments, so the figures and their ratios are comparable.
    """
    best = {name: float("inf") for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            t = time.perf_counter()
            job()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def _repeat(fn, arg, times: int):
    """A job calling ``fn(arg)`` ``times`` times, dropping each result: keeping them all
    would time the allocator's page faults rather than the work."""
    def job():
        for _ in range(times):
            fn(arg)
    return job


def _streaming(audio: np.ndarray, block: int):
    """A job feeding ``audio`` to a frontend in blocks of ``block`` samples, and the frames that emits."""
    frontend = Frontend(SPEC)
    blocks = [audio[i:i + block] for i in range(0, len(audio) - block + 1, block)]
    frontend.push(blocks[0])  # compile / warm up

    def job():
        frontend.reset()
        for b in blocks:
            frontend.push(b)

    job()
    return job, frontend.frames_emitted


def _torchaudio_recompute(frames: int):
    import torch
    import torchaudio

    torch.set_num_threads(1)
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=SPEC.sample_rate, n_fft=SPEC.n_fft, hop_length=SPEC.hop_length, center=False, power=2.0,
        n_mels=SPEC.n_mels, norm="slaney", mel_scale="slaney", window_fn=torch.hann_window)
    taps = torch.arange(-DELTA_TAPS, DELTA_TAPS + 1, dtype=torch.float32).view(1, 1, -1)  # on frames t-8 .. t
    need = (frames + 2 * DELTA_TAPS - 1) * SPEC.hop_length + SPEC.n_fft

    def update(samples: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logmel = 10.0 * torch.log10(torch.clamp(mel(torch.from_numpy(samples[-need:])), min=SPEC.amin))
            delta = torch.nn.functional.conv1d(logmel.unsqueeze(1), taps).squeeze(1)
            return torch.stack([logmel[:, -frames:], delta[:, -frames:]]).numpy()

    return update


def _librosa_recompute(frames: int):
    import librosa

    need = (frames + 2 * DELTA_TAPS - 1) * SPEC.hop_length + SPEC.n_fft
    weights = np.arange(-DELTA_TAPS, DELTA_TAPS + 1, dtype=np.float32)  # on frames t-8 .. t

    def update(samples: np.ndarray) -> np.ndarray:
        power = librosa.feature.melspectrogram(y=samples[-need:], sr=SPEC.sample_rate, n_fft=SPEC.n_fft,
                                               hop_length=SPEC.hop_length, center=False, n_mels=SPEC.n_mels)
        logmel = librosa.power_to_db(power, amin=SPEC.amin, top_db=None)
        view = np.lib.stride_tricks.sliding_window_view(logmel, 2 * DELTA_TAPS + 1, axis=1)
        delta = view @ weights
        return np.stack([logmel[:, -frames:], delta[:, -frames:]])

    return update


def run(quick: bool = False) -> dict:
    """Measure and return the figures (microseconds) and ratios as a dict."""
    rng = np.random.default_rng(0)
    seconds = 3 if quick else 4
    rounds = 2 if quick else 60
    audio = (rng.standard_normal(seconds * SPEC.sample_rate) * 0.1).astype(np.float32)
    jobs, per_job = {}, {}  # name -> job, and how many updates one run of it makes
    for block in (512, 64):
        jobs[f"hop_us_block{block}"], per_job[f"hop_us_block{block}"] = _streaming(audio, block)
    for frames in (41, 101):
        frontend = Frontend(SPEC)
        frontend.push(audio)
        reads = 200 if quick else 1000
        jobs[f"window_read_us_{frames}"], per_job[f"window_read_us_{frames}"] = _repeat(frontend.window, frames, reads), reads
        history = audio[: (frames + 20) * SPEC.hop_length + SPEC.n_fft]
        calls = 5 if quick else 20
        for name, make in (("torchaudio", _torchaudio_recompute), ("librosa", _librosa_recompute)):
            update = make(frames)
            update(history)
            key = f"{name}_recompute_us_{frames}"
            jobs[key], per_job[key] = _repeat(update, history, calls), calls
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # librosa's matrix products would spin numpy's second BLAS thread
        best = _interleaved_minimum(jobs, rounds)
    result: dict = {"spec": SPEC.to_dict(), "audio_seconds": seconds, "rounds": rounds}
    result.update({key: best[key] / per_job[key] * 1e6 for key in jobs})
    for frames in (41, 101):
        update_us = result["hop_us_block512"] + result[f"window_read_us_{frames}"]
        result[f"update_us_{frames}"] = update_us
        for name in ("torchaudio", "librosa"):
            result[f"{name}_ratio_{frames}"] = result[f"{name}_recompute_us_{frames}"] / update_us
    return result


def table(result: dict):
    from rich.table import Table

    t = Table(title="Frontend: cost per update (newest window after each 512-sample hop)")
    t.add_column("what")
    t.add_column("41 frames", justify="right")
    t.add_column("101 frames", justify="right")
    t.add_row("numba hop, blocks of 512 (us)", *[f"{result['hop_us_block512']:.2f}"] * 2)
    t.add_row("numba hop, blocks of 64 (us)", *[f"{result['hop_us_block64']:.2f}"] * 2)
    t.add_row("numba window read (us)", *(f"{result[f'window_read_us_{f}']:.2f}" for f in (41, 101)))
    t.add_row("numba update = hop + read (us)", *(f"{result[f'update_us_{f}']:.2f}" for f in (41, 101)))
    for name in ("torchaudio", "librosa"):
        t.add_row(f"{name} recompute (us)", *(f"{result[f'{name}_recompute_us_{f}']:.1f}" for f in (41, 101)))
        t.add_row(f"  numba speed-up vs {name}", *(f"{result[f'{name}_ratio_{f}']:.0f}x" for f in (41, 101)))
    return t


def main(argv: list[str] | None = None) -> None:
    standalone(__doc__, run, table, argv)


if __name__ == "__main__":
    main()
