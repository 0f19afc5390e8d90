"""One training step, one epoch, one evaluation: the hot path, with nothing of the run's set-up."""
from __future__ import annotations

import contextlib
import sys
import time

import torch
import torch.nn.functional as F

from ..base import distributed as du
from . import telemetry
from ..load.loaders import normalize
from .runlog import SumMeter
from .optim import accumulation_groups

# How often (in iterations) distributed ranks agree on whether a stop signal arrived: each check
# is one tiny all_reduce plus a host sync.
STOP_CHECK_EVERY = 10


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). 'auto' is fp16 on CUDA, as ffcv-imagenet, fp32 on CPU."""
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32,
                          enabled=dtype is not None)


def inputs(images: torch.Tensor, dtype: torch.dtype | None, channels_last: bool) -> torch.Tensor:
    # On CUDA, normalising straight into the autocast dtype halves the input's memory traffic.
    x = normalize(images, dtype if images.is_cuda and dtype is not None else torch.float32)
    return x if channels_last else x.contiguous()


def train_step(model, images, labels, recipe, env, dtype, channels_last: bool, epoch: int,
               i: int, group: int, steps_now: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch; the optimizer steps after the last of its
    accumulation group (``group`` micro-batches). DDP skips the all-reduce on the others."""
    prepare = lambda im: inputs(im, dtype, channels_last)  # noqa: E731
    if recipe.augment is not None:
        x, targets = recipe.augment(images, labels, prepare, epoch, i)
    else:
        x, targets = prepare(images), labels
    sync = contextlib.nullcontext() if steps_now or not env.distributed else model.no_sync()
    with sync:
        with autocast(env.device, dtype):
            loss = recipe.criterion(model(x), targets)
        recipe.scaler.scale(loss / group).backward()
    if steps_now:
        recipe.optimizer_step()
    return loss


def train_epoch(setup, loader, lrs, env, epoch, *, accum_steps: int, log_level: int,
                first: int = 0, carried=(0.0, 0), pauses=None, on_pause=None,
                trackers=None) -> dict:
    """One pass over ``loader`` with the epoch's per-iteration ``lrs``, from global step
    ``first`` on (a resumed epoch, whose loss and image sums so far are ``carried``). After an
    optimizer step ``pauses.poll`` may ask for a step checkpoint: ``on_pause(kind, steps_done,
    meter)``, which raises ``Stop`` for a stop signal."""
    from tqdm import tqdm

    model, recipe = setup.model, setup.recipe
    model.train()
    meter = SumMeter(("loss", "images"), env.device)
    if env.is_main:  # summed over ranks at the end: the carried sums count once
        meter.add(loss=float(carried[0]), images=int(carried[1]))
    iters = len(lrs)
    bar = tqdm(total=iters, initial=first, desc=f"epoch {epoch}", disable=not env.is_main,
               leave=False, dynamic_ncols=True, file=sys.stderr)
    groups = accumulation_groups(iters, accum_steps)
    iterator, wait = iter(loader), telemetry.DataWait()
    telemetry.start_epoch(env.device)
    start = time.perf_counter()
    try:
        for k, (images, labels) in enumerate(wait.timed(iterator)):
            i = first + k
            for group in recipe.optimizer.param_groups:  # a Python float: checkpoints hold
                group["lr"] = float(lrs[i])             # plain data (see checkpoint.load)
            steps_now = (i + 1) % accum_steps == 0 or i == iters - 1
            loss = train_step(model, images, labels, recipe, env, setup.dtype,
                              setup.channels_last, epoch, i, groups[i], steps_now)
            meter.add(loss=loss.detach() * labels.shape[0], images=labels.shape[0])
            bar.update(1)
            if trackers is not None:
                trackers.step(epoch * iters + i, loss.detach(), lrs[i])
            if env.is_main and (i % (1 if log_level >= 2 else 10) == 0 or i == iters - 1):
                rate = (k + 1) * labels.shape[0] * env.world_size / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lrs[i]:.4f}",
                                img_s=f"{rate:.0f}")
            if pauses is not None and i < iters - 1 and polls_at(i, accum_steps, env):
                kind = pauses.poll(env)
                if kind:
                    on_pause(kind, k + 1, meter)
    finally:  # a second Ctrl-C leaves at once; anything else lets the loader thread finish
        iterator.close(wait=sys.exc_info()[0] is not KeyboardInterrupt)
        bar.close()
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    seconds = time.perf_counter() - start
    sums = meter.reduce(env)
    images = int(sums["images"])
    return {"train_loss": sums["loss"] / max(images, 1), "train_images": images,
            "train_seconds": seconds, "train_images_per_s": (images - int(carried[1])) / seconds,
            **telemetry.epoch_stats(env.device, wait.seconds, seconds)}


def polls_at(i: int, accum_steps: int, env) -> bool:
    """After an optimizer step (never mid-accumulation); under torchrun only every
    STOP_CHECK_EVERY micro-batches, since each poll is a collective and a host sync."""
    if (i + 1) % accum_steps:
        return False
    return not env.distributed or ((i + 1) // accum_steps) % max(
        1, STOP_CHECK_EVERY // accum_steps) == 0


@torch.no_grad()
def evaluate(model, loader, env, dtype, num_classes: int, *, channels_last: bool = True,
             flip_tta: bool = False) -> dict:
    """Top-1/top-5/loss over this rank's shard, summed over ranks: each image counts once."""
    du.sync_buffers(model, env)  # every shard evaluated by the same model: the checkpointed one
    model.eval()
    meter = SumMeter(("top_1", "top_5", "loss", "images"), env.device)
    k = min(5, num_classes)
    start = time.perf_counter()
    for images, labels in loader:
        x = inputs(images, dtype, channels_last)
        with autocast(env.device, dtype):
            logits = model(x)
            if flip_tta:
                logits = (logits + model(torch.flip(x, dims=[3]))) / 2
        logits = logits.float()
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels.view(-1, 1))
        meter.add(top_1=hits[:, 0].sum(), top_5=hits.any(dim=1).sum(),
                  loss=F.cross_entropy(logits, labels, reduction="sum"), images=labels.shape[0])
    sums = meter.reduce(env)
    n = max(sums["images"], 1)
    return {"top_1": sums["top_1"] / n, "top_5": sums["top_5"] / n, "val_loss": sums["loss"] / n,
            "val_images": int(sums["images"]), "val_seconds": time.perf_counter() - start}
