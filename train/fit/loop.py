"""The training loop: plain PyTorch, plain values.

Two recipes: Piczak's (SGD with Nesterov momentum, L2 weight decay, dropout
0.5) and Adam as in the later study. Targets are a ``(B, C)`` matrix: soft
cross-entropy for the single-label (softmax) head, binary cross-entropy for the
multilabel (sigmoid) head. Training runs for a fixed number of epochs or, with
``patience``, stops early when clip accuracy on validation clips (held out by
clip, never by segment) has not improved for that many epochs, and restores
the best weights.

Under ``torchrun`` the same loop runs on every rank, each on its rows of every
batch, with the gradients averaged (:mod:`train.fit.ranks`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from train.data.augment import spec_augment
from train.evaluate.clips import predict, scores
from train.fit import ranks


@dataclasses.dataclass
class Recipe:
    optimizer: str = "adam"  # "adam" or "sgd" (Nesterov momentum)
    lr: float = 1e-3
    weight_decay: float = 0.0  # L2 penalty
    momentum: float = 0.9  # SGD only
    epochs: int = 30  # the fixed schedule, or the most epochs with early stopping
    batch_size: int = 128
    schedule: str = "constant"  # or "cosine": decay the learning rate to 0 over `epochs`
    patience: int = 0  # > 0: early stopping on validation clip accuracy
    dense: int = 1500
    batch_norm: bool = True
    dropout: float = 0.5
    head: str = "single"  # softmax over classes; "multilabel" trains sigmoids with BCE


def loss_fn(head: str) -> Callable[..., torch.Tensor]:
    """``loss(logits, targets, weights=None)``: binary cross-entropy for a multilabel head
    (``weights`` per target, as a batch may carry them), cross-entropy for one label."""
    if head == "multilabel":
        return lambda logits, target, weight=None: F.binary_cross_entropy_with_logits(logits, target, weight)

    def cross_entropy(logits, target, weight=None):
        if weight is not None:
            raise ValueError("loss weights are for the multilabel head")
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    return cross_entropy


def make_optimizer(net: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"optimizer must be adam or sgd, got {recipe.optimizer!r}")


def train(net, source, recipe: Recipe, rng: np.random.Generator, device: str = "cpu",
          specaugment: bool = False, watch: dict | None = None,
          on_epoch: Callable[[dict], None] | None = None, eval_every: int = 1) -> list[dict]:
    """Train ``net`` on batches from ``source``; return one dict per epoch.

    ``watch`` maps a name to ``(frames, segments, labels)`` evaluated after each
    epoch (clip accuracy by probability voting). The one named ``"val"`` drives
    early stopping and is evaluated every epoch; others (a test fold) are only
    recorded for the curves, every ``eval_every`` epochs and after the last.
    """
    net.to(device).train()
    opt = make_optimizer(net, recipe)
    criterion = loss_fn(recipe.head)
    watch = watch or {}
    best, best_acc, stale = None, -1.0, 0
    history = []
    with ranks.replicas(net) as (model, shard):  # under torchrun: this rank's rows, gradients averaged
        for epoch in range(1, recipe.epochs + 1):
            if recipe.schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = recipe.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / recipe.epochs))
            t0 = time.perf_counter()
            total, count = 0.0, 0
            for x, y, *w in source.epoch(rng):  # w: the batch's loss weights, where a source gives them
                if len(x) < 2:  # batch norm needs two examples
                    continue
                x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
                w = torch.from_numpy(w[0]).to(device) if w else None
                if specaugment:  # on the whole batch: torch's generator moves on as in one process
                    x = spec_augment(x, net.feature_mean)
                if shard is not None:
                    x, y = x[shard.rows(len(x))], y[shard.part]
                    w = w[shard.part] if w is not None else None
                logits = model(x)
                loss = criterion(logits, y, w) if len(x) else logits.sum()  # an empty shard still joins the all-reduces
                opt.zero_grad(set_to_none=True)
                (loss * shard.weight(len(x)) if shard is not None else loss).backward()
                opt.step()
                total += loss.item() * len(x)
                count += len(x)
            if shard is not None:
                total, count = ranks.total(total, count)
            row = {"epoch": epoch, "loss": total / max(count, 1), "seconds": time.perf_counter() - t0}
            for name, (frames, segments, labels) in watch.items():
                if name != "val" and epoch % eval_every and epoch != recipe.epochs:
                    continue
                row[f"{name}_acc"] = scores(predict(net, frames, segments, device), segments.clip, labels)["prob"]
            if shard is not None and "val_acc" in row:
                row["val_acc"] = ranks.from_main(row["val_acc"])
            history.append(row)
            if on_epoch:
                on_epoch(row)
            if recipe.patience and "val" in watch:
                if row["val_acc"] > best_acc:
                    best, best_acc, stale = copy.deepcopy(net.state_dict()), row["val_acc"], 0
                else:
                    stale += 1
                    if stale >= recipe.patience:
                        break
    if best is not None:
        net.load_state_dict(best)
    net.eval()
    return history
