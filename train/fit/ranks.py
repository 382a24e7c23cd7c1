"""Training on several processes or machines: ``torchrun`` and DistributedDataParallel.

``torchrun`` starts the same ``python -m train`` command once per rank and sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. Every rank then seeds the same
network and draws the same batches in the same order; each computes the rows
``rank::world`` of every batch, and DistributedDataParallel averages the
gradients. For that average to be one process's full-batch gradient, what
couples the rows of a batch is made whole-batch again while training:

* the loss: each rank's mean over its rows is scaled by
  ``rows * world / batch``, so uneven shards weigh what they would in one batch;
* batch norm: :class:`CrossRankBatchNorm` takes its statistics over the whole
  batch, summed across ranks (PyTorch's SyncBatchNorm does this on GPUs only);
* dropout: :class:`ShardDropout` draws the whole batch's mask on every rank,
  from the identically seeded generator, and keeps its rows: the masks, and the
  generator's state after them, are one process's exactly (on CPU);
* SpecAugment runs on the whole batch before it is split (:mod:`train.fit.loop`).

So a run on N ranks gives the one-process result up to floating-point
differences (sums taken in another order), which ``tests/test_train_distributed.py``
measures. They grow over the steps as any rounding difference does: after an
epoch of ESC-10 two ranks are as far from one process as one process on two
threads is from one on one thread. Only the network's forward and backward
passes are split: every rank still renders whole batches (audio augmentation,
scenes) and evaluates whole validation and test sets. Rank 0 alone writes reports,
model files and prints; each machine's first rank builds a missing feature
cache while the others wait. Without torchrun (or with one rank) nothing here
is started and training is one process's, bit for bit.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


def start() -> None:
    """Join the other ranks: gloo for CPU tensors, and NCCL on this rank's GPU when there is one."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" is then this rank's own GPU
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")


def stop() -> None:
    if active():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one that writes and prints (also the only process of a plain run)."""
    return rank() == 0


def local_first(make: Callable[[], T]) -> T:
    """``make()`` on each machine's first rank, then on its other ranks: for a cache that the
    first builds and the others then read."""
    if not active():
        return make()
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if not first:
        dist.barrier()
    result = make()
    if first:
        dist.barrier()
    return result


def total(*values: float) -> list[float]:
    """Each value summed over the ranks."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def from_main(value: float) -> float:
    """Rank 0's ``value`` on every rank: what decides early stopping, so that no rank stops while
    another goes on to wait for it in the next step."""
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, 0)
    return t.item()


class Shard:
    """This rank's rows of each batch, ``rank::world``; the layers swapped in read the
    whole batch's size from here."""

    def __init__(self):
        self.world, self.batch = world(), 0
        self.part = slice(rank(), None, self.world)

    def rows(self, batch: int) -> slice:
        self.batch = batch
        return self.part

    def weight(self, rows: int) -> float:
        """What a shard's mean loss is scaled by: DistributedDataParallel's average of the ranks'
        gradients is then the gradient of the whole batch's mean."""
        return rows * self.world / self.batch


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the whole batch, across ranks: mean, then variance around it (two
    passes, as BatchNorm's own kernel), each summed with the differentiable all-reduce so
    gradients flow through the other ranks' rows as they do in one batch. Running statistics
    are updated as BatchNorm updates them (unbiased variance). It holds the original layer's
    parameters and buffers under the same names, so state dicts are unchanged; in eval mode
    it is plain BatchNorm."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, shard: Shard):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.weight, self.bias = bn.weight, bn.bias
        self.running_mean, self.running_var = bn.running_mean, bn.running_var
        self.num_batches_tracked = bn.num_batches_tracked
        self.shard = shard

    def _check_input_dim(self, x: torch.Tensor) -> None:
        pass  # stands in for BatchNorm1d, 2d and 3d alike

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = self.shard.batch * x.shape[2:].numel()
        mean = dist_nn.all_reduce(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = dist_nn.all_reduce(centred.square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(var * (count / (count - 1)), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


class ShardDropout(nn.Module):
    """Dropout of this rank's rows with the masks one process would draw for the whole batch:
    the whole mask is drawn (``torch.native_dropout``'s draw: a bool tensor of the batch's shape,
    ``bernoulli_(1 - p)``) and this rank keeps its rows."""

    def __init__(self, p: float, shard: Shard):
        super().__init__()
        self.p, self.shard = p, shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty((self.shard.batch, *x.shape[1:]), dtype=torch.bool, device=x.device)
        mask.bernoulli_(1 - self.p)
        return x * mask[self.shard.part] * (1.0 / (1 - self.p))


@contextlib.contextmanager
def replicas(net: nn.Module) -> Iterator[tuple[nn.Module, Shard | None]]:
    """``(model, shard)`` to train with. In one process ``(net, None)``: nothing changes.
    Across ranks, ``net``'s batch norms and dropouts swapped for the cross-rank ones above and
    the whole in DistributedDataParallel (whose construction copies rank 0's weights to all);
    on exit the original layers, which share the parameters and buffers, are put back, so the
    network saved is the same module as in one process. Buffers are not broadcast each step:
    the cross-rank batch norm keeps every rank's running statistics the same."""
    if not active():
        yield net, None
        return
    shard = Shard()
    swapped = []
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                swapped.append((parent, name, child))
                setattr(parent, name, CrossRankBatchNorm(child, shard))
            elif isinstance(child, nn.Dropout):
                swapped.append((parent, name, child))
                setattr(parent, name, ShardDropout(child.p, shard))
    try:
        yield DistributedDataParallel(net, broadcast_buffers=False), shard
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
