"""Find a learning rate before a long run (LR range test on the real recipe):

    python find_lr.py --config-file CONFIG [--section.key VALUE ...] [--runs 3] [--steps 100]
        [--start-lr 1e-5] [--end-lr 10] [--out lr_finder.png]

Works on CPU and under torchrun (each rank steps, losses averaged, rank 0 prints). Each LR is one
optimizer step as the trainer takes it (``training.accum_steps`` micro-batches). Prints the
suggested LR as the value for ``lr.lr`` at the config's batch, plus a plot."""
from __future__ import annotations

import itertools
import os
import statistics
import sys

import torch

import ffcv_utils.distributed as du
from ffcv_utils import lr_finder
from ffcv_utils.cli import ArgParser, UserError, run_main
from ffcv_utils.config import load_config
from ffcv_utils.data import train_loader
from ffcv_utils.models import create_model
from ffcv_utils.recipe import Recipe, build_batch_augment, build_criterion, build_optimizer
from train_imagenet import (amp_dtype, check_class_lists, lr_batches, resolution_for,
                            train_step)


def finder_args(argv):
    ap = ArgParser(prog="find_lr.py", add_help=True,
                                 description=__doc__.split("\n")[0])
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


def build_recipe(p, num_classes, env, scaler) -> Recipe:
    """Model, optimizer, criterion, batch augmentation and clipping as the trainer builds them
    (no EMA: it does not change the loss the sweep reads)."""
    model = create_model(p.model.arch, num_classes, pretrained=bool(p.model.pretrained),
                         use_blurpool=bool(p.training.use_blurpool)).to(env.device)
    if p.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Recipe(model, build_optimizer(p, model, p.lr.lr), scaler, build_criterion(p),
                  augment=build_batch_augment(p, num_classes, env.device, rank=env.rank),
                  clip_grad=p.training.clip_grad)


def one_sweep(p, env, num_classes, lrs, seed, num_workers):
    torch.manual_seed(seed)
    dtype = amp_dtype(p, env.device)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    recipe = build_recipe(p, num_classes, env, scaler)
    model = recipe.model
    if env.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    model.train()
    data = train_loader(p.data.train_dataset, batch_size=p.training.batch_size,
                        num_workers=num_workers, res=resolution_for(p, 0), device=env.device,
                        distributed=env.distributed, in_memory=bool(p.data.in_memory), seed=seed)

    accum = p.training.accum_steps

    def batches():
        """The micro-batches of each optimizer step (training.accum_steps of them)."""
        group = []
        for epoch in itertools.count():
            data.set_epoch(epoch)
            for item in data.loader:
                group.append(item)
                if len(group) == accum:
                    yield group
                    group = []

    def step(group, lr):
        """One optimizer step through the trainer's own train_step over the micro-batches (no
        DDP all-reduce before the last); their mean loss."""
        for g in recipe.optimizer.param_groups:
            g["lr"] = lr
        total = 0.0
        for k, (images, labels) in enumerate(group):
            step.n += 1  # the augmentation draws follow (seed, micro-batch) as (epoch, step)
            loss = train_step(model, images, labels, recipe, p, env, dtype, seed, step.n,
                              len(group), k == len(group) - 1)
            total = total + loss.detach() / len(group)
        return total

    step.n = 0

    stream = batches()
    try:
        return lr_finder.sweep(step, stream, lrs, env)
    finally:
        stream.close()  # stops the loader's threads mid-epoch


def main(argv=None) -> dict:
    a, rest = finder_args(sys.argv[1:] if argv is None else argv)
    p, meta = load_config(rest)
    num_classes, _ = check_class_lists(p)
    env = du.init(single_gpu_index=p.data.gpu)
    try:
        num_workers = p.data.num_workers or max(1, (os.cpu_count() or 1) // env.local_world_size)
        lrs = lr_finder.sweep_lrs(a.start_lr, a.end_lr, a.steps)
        curves, found = [], []
        for run in range(a.runs):
            used, losses = one_sweep(p, env, num_classes, lrs, p.data.seed + run, num_workers)
            try:
                found.append(lr_finder.suggest(used, losses))
            except ValueError as e:
                raise UserError(f"--start-lr: {e}; start lower") from None
            curves.append((used, losses))
        actual, reference = lr_batches(p, meta, env)
        per_config = reference / actual if p.lr.scale_lr else 1.0
        result = {"suggestions": found, "mean": statistics.mean(found),
                  "median": statistics.median(found), "global_batch": actual,
                  "lr_lr": statistics.median(found) * per_config}
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


if __name__ == "__main__":
    run_main(lambda argv=None: (main(argv), 0)[1], prog="find_lr.py")
