"""Optimizers, one table: a name (``training.optimizer``) -> a builder over the parameter groups.
Adding an optimizer is one builder plus one entry; the config's choices come from the table and an
unknown name is an error, never a fallback. Also the optimizer step (accumulation, clipping under a
GradScaler) and ``Recipe``, what a training step needs besides the model and the batch. LAMB comes
from timm, the library the RSB recipes were written with."""
from __future__ import annotations

import torch
from torch import nn

from ..base.cli import UserError
from .ema import update_ema
from .models import param_groups


def _sgd(groups, lr: float, t):
    return torch.optim.SGD(groups, lr=lr, momentum=t.momentum, nesterov=bool(t.nesterov))


def _adamw(groups, lr: float, t):
    return torch.optim.AdamW(groups, lr=lr, betas=(t.beta1, t.beta2), eps=t.eps)


def _lamb(groups, lr: float, t):
    from timm.optim import Lamb

    return Lamb(groups, lr=lr, betas=(t.beta1, t.beta2), eps=t.eps)


# name -> builder(param groups, lr, the training section): the one place to add an optimizer
OPTIMIZERS = {"sgd": _sgd, "adamw": _adamw, "lamb": _lamb}


def build_optimizer(p, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """``training.optimizer`` from ``OPTIMIZERS`` over the no-weight-decay groups."""
    t = p.training
    builder = OPTIMIZERS.get(t.optimizer)
    if builder is None:
        raise UserError(f"training.optimizer: unknown {t.optimizer!r} "
                        f"(one of {', '.join(OPTIMIZERS)})")
    groups = param_groups(model, t.weight_decay, bn_wd=bool(t.bn_wd), bias_wd=bool(t.bias_wd))
    return builder(groups, lr, t)


def optimizer_step(optimizer, scaler, model: nn.Module, clip_grad: float) -> float | None:
    """Unscale (so the clip threshold is in real gradient units), clip, step, update the scaler.
    Returns the gradient norm before clipping when clipping is on."""
    norm = None
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm


def accumulation_groups(iters: int, accum: int) -> list[int]:
    """Micro-batches in the accumulation group of each iteration (the last group may be short),
    so each micro-batch's loss is divided by its own group's size."""
    sizes = []
    for start in range(0, iters, accum):
        n = min(accum, iters - start)
        sizes += [n] * n
    return sizes


class Recipe:
    """What one training step needs besides the model and the batch: optimizer, scaler, loss,
    batch augmentation, EMA, clipping. ``steps`` counts optimizer steps (EMA every-k)."""

    def __init__(self, model, optimizer, scaler, criterion, augment=None, ema=None,
                 clip_grad: float = 0.0, ema_every: int = 1):
        self.model, self.optimizer, self.scaler, self.criterion = model, optimizer, scaler, criterion
        self.augment, self.ema, self.clip_grad, self.ema_every = augment, ema, clip_grad, ema_every
        self.steps = 0

    def optimizer_step(self):
        optimizer_step(self.optimizer, self.scaler, self.model, self.clip_grad)
        self.steps += 1
        update_ema(self.ema, self.model, self.steps, self.ema_every)
