"""Find a learning rate before a long run (LR range test on the real recipe):

    python find_lr.py --config-file CONFIG [--section.key VALUE ...] [--runs 3] [--steps 100]
        [--start-lr 1e-5] [--end-lr 10] [--out lr_finder.png]

Works on CPU and under torchrun (each rank steps, losses averaged, rank 0 prints). The set-up and
loaders come from the trainer's own builder, and each LR is one optimizer step taken by the
trainer's own ``train_step`` (``training.accum_steps`` micro-batches). Prints the suggested LR as
the value for ``lr.lr`` at the config's batch, plus a plot."""
from __future__ import annotations

import itertools
import statistics
import sys

import torch

from ..base import distributed as du
from . import lr_finder
from ..base.cli import ArgParser, UserError
from .config import load_config
from .build import build_setup, make_train_data, settle_in_memory, wrap
from .plan import check_class_lists, lr_batches, num_workers_for
from .steps import train_step


def finder_args(argv):
    ap = ArgParser(prog="find_lr.py", add_help=True, description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="sweeps, each with a different seed")
    ap.add_argument("--steps", type=int, default=100, help="steps per sweep")
    ap.add_argument("--start-lr", type=float, default=1e-5)
    ap.add_argument("--end-lr", type=float, default=10.0)
    ap.add_argument("--out", default="lr_finder.png", help="plot file")
    a, rest = ap.parse_known_args(argv)
    if a.runs < 1:
        raise UserError(f"--runs: must be at least 1, got {a.runs}")
    if a.steps < 5:
        raise UserError(f"--steps: must be at least 5, got {a.steps}")
    if not 0 < a.start_lr < a.end_lr:
        raise UserError(f"--start-lr/--end-lr: need 0 < start < end, got {a.start_lr}, {a.end_lr}")
    return a, rest


def micro_batch_groups(data, accum: int):
    """The micro-batches of each optimizer step (``accum`` of them), epoch after epoch."""
    group = []
    for epoch in itertools.count():
        data.set_epoch(epoch)
        for item in data.loader:
            group.append(item)
            if len(group) == accum:
                yield group
                group = []


def one_sweep(p, env, num_classes, lrs, seed, num_workers):
    """One LR sweep on a fresh set-up (no EMA: it does not change the loss the sweep reads)."""
    torch.manual_seed(seed)
    setup = build_setup(p, env, num_classes, p.lr.lr, ema=False)
    wrap(setup, env, compile=False)
    setup.model.train()
    data = make_train_data(p, env, num_workers, 0, seed=seed)
    n = itertools.count(1)  # the augmentation draws follow (seed, micro-batch) as (epoch, step)

    def step(group, lr):
        """One optimizer step over the micro-batches (no DDP all-reduce before the last);
        their mean loss."""
        for g in setup.recipe.optimizer.param_groups:
            g["lr"] = lr
        total = 0.0
        for k, (images, labels) in enumerate(group):
            loss = train_step(setup.model, images, labels, setup.recipe, env, setup.dtype,
                              setup.channels_last, seed, next(n), len(group),
                              k == len(group) - 1)
            total = total + loss.detach() / len(group)
        return total

    stream = micro_batch_groups(data, p.training.accum_steps)
    try:
        return lr_finder.sweep(step, stream, lrs, env), data
    finally:
        stream.close()  # stops the loader's threads mid-epoch


def main(argv=None) -> dict:
    a, rest = finder_args(sys.argv[1:] if argv is None else argv)
    p, meta = load_config(rest)
    num_classes, _ = check_class_lists(p)
    env = du.init(single_gpu_index=p.data.gpu)
    try:
        settle_in_memory(p, env)
        num_workers = num_workers_for(p, env.local_world_size)
        lrs = lr_finder.sweep_lrs(a.start_lr, a.end_lr, a.steps)
        curves, found = [], []
        for run in range(a.runs):
            (used, losses), data = one_sweep(p, env, num_classes, lrs, p.data.seed + run,
                                             num_workers)
            try:
                found.append(lr_finder.suggest(used, losses))
            except ValueError as e:
                raise UserError(f"--start-lr: {e}; start lower") from None
            curves.append((used, losses))
        actual, reference = lr_batches(p, meta, env.world_size)
        per_config = reference / actual if p.lr.scale_lr else 1.0
        result = {"suggestions": found, "mean": statistics.mean(found),
                  "median": statistics.median(found), "global_batch": actual,
                  "lr_lr": statistics.median(found) * per_config,
                  "decoder": data.decoder}
        if env.is_main:
            out = lr_finder.plot(curves, found, a.out)
            print("suggested LR per run: " + ", ".join(f"{x:.3g}" for x in found))
            print(f"mean {result['mean']:.3g}, median {result['median']:.3g} at global batch "
                  f"{actual}; plot: {out}")
            print(f"put in the config: --lr.lr {result['lr_lr']:.3g} "
                  f"(lr.batch_size_for_lr {reference})")
        return result
    finally:
        du.teardown()
