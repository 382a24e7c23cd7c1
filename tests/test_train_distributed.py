"""torchrun: ``python -m train`` on two ranks trains what one process trains.

The same tiny command (seconds) runs in one process and under
``torchrun --nproc_per_node 2`` (gloo, CPU); the saved networks, the losses and
accuracies reported, and what each rank wrote are compared. Run as a script under
torchrun, this file also checks one step's gradient against one process's.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from test_train_data import make_esc50

REPO = Path(__file__).resolve().parents[1]

# SGD, whose steps follow the gradient's size (Adam's would hide a wrongly scaled loss), at a small learning
# rate, so the float differences (sums taken in another order) are not amplified into different runs. Dropout
# (0.5, cv's default), batch norm, SpecAugment and a batch of 7 split 4 + 3 all take part.
COMMAND = ["--dataset", "esc10", "--folds", "1", "--epochs", "2", "--batch-size", "7", "--dense", "16",
           "--optimizer", "sgd", "--lr", "0.0003", "--augment", "specaugment", "--threads", "1", "--quiet",
           "--export", "fold"]
# Measured on a 2-core x86 machine: parameters at most 1.2e-7 apart, buffers (running statistics) at most
# 4.5e-6 of their tensor's largest value (or of 1). A wrong dropout mask or per-rank batch-norm statistics
# give 9e-3 (the same command, checked by breaking either), so these tolerances, about 80x and 10x the
# measured, leave room for other CPUs' rounding and still catch those by far.
PARAMETER_TOLERANCE = 1e-5
BUFFER_TOLERANCE = 5e-5

# Installed as sitecustomize in the runs below: every file a process opens for writing, renames into
# place or creates as a folder, listed at exit in $WRITES.<rank>.
AUDIT = '''\
import atexit, os, sys

written = set()


def hook(event, args):
    if event == "open" and isinstance(args[1], str) and set(args[1]) & set("wax+"):
        written.add(os.fsdecode(args[0]))
    elif event in ("os.rename", "os.mkdir"):
        written.add(os.fsdecode(args[1] if event == "os.rename" else args[0]))


def dump():
    lines = sorted(written)
    with open(os.environ["WRITES"] + "." + os.environ.get("RANK", "none"), "w") as f:
        f.write("".join(line + "\\n" for line in lines))


sys.addaudithook(hook)
atexit.register(dump)
'''


def _run(args: list[str], tmp: Path, name: str) -> tuple[subprocess.CompletedProcess, Path]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp / "audit"), str(REPO)]),
           "WRITES": str(tmp / f"{name}-writes")}
    p = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p, tmp / name


def _writes(tmp: Path, name: str, rank: str) -> set[str]:
    """What the run's process of ``rank`` wrote under ``tmp``, relative to it."""
    lines = (tmp / f"{name}-writes.{rank}").read_text().splitlines()
    return {os.path.relpath(line, tmp) for line in lines if line.startswith(str(tmp) + os.sep)}


def _epochs(stderr: str) -> list[tuple[float, str]]:
    return [(float(m[1]), m[2]) for m in re.finditer(r"epoch \d+ loss ([\d.]+) (test [\d.]+%)", stderr)]


def test_two_ranks_train_what_one_process_trains(tmp_path):
    from streamtag.modelfile import load_network

    data = make_esc50(tmp_path / "esc")
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "sitecustomize.py").write_text(AUDIT)
    args = ["cv", str(data), *COMMAND]
    one, one_out = _run(["-m", "train", *args, "--cache", str(tmp_path / "cache-one"),
                         "--out", str(tmp_path / "one")], tmp_path, "one")
    two, two_out = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train", *args,
                         "--cache", str(tmp_path / "cache-two"), "--out", str(tmp_path / "two")], tmp_path, "two")

    a, b = load_network(one_out / "model.pt").state_dict(), load_network(two_out / "model.pt").state_dict()
    assert a.keys() == b.keys()  # the network saved is the plain one: no cross-rank layers left in it
    parameters = {name for name, _ in load_network(one_out / "model.pt").named_parameters()}
    for name in a:
        if not a[name].is_floating_point():
            assert torch.equal(a[name], b[name]), name  # batches counted by batch norm
        elif name in parameters:
            assert (a[name] - b[name]).abs().max() <= PARAMETER_TOLERANCE, name
        else:
            assert (a[name] - b[name]).abs().max() <= BUFFER_TOLERANCE * a[name].abs().max().clamp(min=1), name

    # one line per epoch, printed by rank 0 only; losses to the 3 decimals printed
    epochs_one, epochs_two = _epochs(one.stderr), _epochs(two.stderr)
    assert len(epochs_one) == len(epochs_two) == 2
    for (loss_one, test_one), (loss_two, test_two) in zip(epochs_one, epochs_two):
        assert abs(loss_one - loss_two) <= 0.0011 and test_one == test_two
    assert two.stderr.count("model -> ") == 1
    summary_one, summary_two = (json.loads((out / "summary.json").read_text()) for out in (one_out, two_out))
    for metric in ("segment", "prob", "majority"):
        assert summary_one[metric] == summary_two[metric]

    # rank 0 wrote what one process writes, the cache included (rank 1 waited for it); rank 1 nothing
    assert _writes(tmp_path, "two", "1") == set()
    reports = {os.path.relpath(p, "one") for p in _writes(tmp_path, "one", "none") if p.startswith("one" + os.sep)}
    assert {"model.pt", "summary.json", "results.md", "folds.csv", "curves.png"} <= reports
    written = _writes(tmp_path, "two", "0")
    assert {os.path.relpath(p, "two") for p in written if p.startswith("two" + os.sep)} == reports
    assert any(p.endswith("index.json") for p in written if p.startswith("cache-two"))


def one_step(batches=(2, 7)) -> dict:
    """Under torchrun: for each batch size, the largest difference between one step's gradient on
    the ranks (averaged by DistributedDataParallel) and one process's on the whole batch, relative to
    the largest gradient (some, as batch norm biases before another batch norm, are zero but for
    rounding), with dropout and batch norm; and whether the generator ends where one process's does."""
    from streamtag.model import PiczakCNN
    from train.fit import ranks
    from train.fit.loop import loss_fn

    torch.set_num_threads(1)
    criterion = loss_fn("single")
    report = {}
    for n in batches:
        torch.manual_seed(n)
        net = PiczakCNN(3, dense=16, dropout=0.5, head="single")
        x, y = torch.randn(n, 2, 60, 41) * 10, torch.eye(3)[torch.randint(3, (n,))]
        alone = copy.deepcopy(net)
        state = torch.get_rng_state()
        criterion(alone(x), y).backward()
        after_alone = torch.get_rng_state()
        torch.set_rng_state(state)
        with ranks.replicas(net) as (model, shard):
            rows = shard.rows(n)
            logits = model(x[rows])
            loss = criterion(logits, y[rows]) if len(logits) else logits.sum()
            (loss * shard.weight(len(logits))).backward()
        pairs = list(zip(net.parameters(), alone.parameters()))
        largest = max(q.grad.abs().max().item() for _, q in pairs)
        report[n] = {"gradient": max((p.grad - q.grad).abs().max().item() for p, q in pairs) / largest,
                     "generator": torch.equal(torch.get_rng_state(), after_alone)}
    return report


def test_one_step_gradient_is_the_whole_batch_gradient(tmp_path):
    """Three ranks: a batch of 7 splits 3 + 2 + 2, a batch of 2 leaves the third rank no rows."""
    out = tmp_path / "step.json"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3",
                        __file__, str(out)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    # measured 9.6e-5 for the batch of 2 (batch norm over two rows passes on almost no gradient, so what reaches
    # the convolutions is mostly rounding) and 1e-6 for the batch of 7; a wrong weighting of the shards gives 0.1-1
    for n, tolerance in (("2", 1e-3), ("7", 1e-5)):
        assert report[n]["generator"], n  # dropout drew the whole batch's masks, as one process does
        assert report[n]["gradient"] < tolerance, (n, report[n])


if __name__ == "__main__":  # under torchrun, from the test above
    from train.fit import ranks

    ranks.start()
    report = one_step()
    if ranks.is_main():
        Path(sys.argv[1]).write_text(json.dumps(report))
    ranks.stop()
