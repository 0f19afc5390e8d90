"""What each epoch of a run does, as functions of the config: the classes, the batch and
resolution of an epoch (``resolution.schedule`` stages or the min/max ramp), and the LR rule."""
from __future__ import annotations

import os
import sys

from ..base.cli import UserError
from ..beton.sidecar import class_list_mismatch, read_info, sidecar_path
from .schedules import parse_stages, resolution_at, scaled_lr, schedule_keywords, stage_at


def check_class_lists(p) -> tuple[int, list | None]:
    """``(num_classes, classes)``; refuses train/val betons whose class lists differ."""
    val_info = read_info(p.data.val_dataset)
    train_info = None if p.training.eval_only else read_info(p.data.train_dataset)
    infos = {"val": val_info} if p.training.eval_only else {"train": train_info, "val": val_info}
    for split, info in infos.items():
        if info is None:
            beton = getattr(p.data, f"{split}_dataset")
            print(f"warning: no class list beside {beton} ({sidecar_path(beton).name}); "
                  "cannot check that train and val labels agree", file=sys.stderr)
    if train_info and val_info:
        why = class_list_mismatch(train_info, val_info)
        if why:
            raise UserError(f"train and val class lists differ: {why} "
                            f"({p.data.train_dataset} vs {p.data.val_dataset})")
    classes = (train_info or val_info or {}).get("classes")
    num_classes = p.model.num_classes or (len(classes) if classes else 0)
    if not num_classes:
        raise UserError("model.num_classes: no class list beside the betons; "
                        "give --model.num_classes N")
    if classes and num_classes < len(classes):
        raise UserError(f"model.num_classes: {num_classes} is fewer than the "
                        f"{len(classes)} classes in the data")
    return num_classes, classes


def num_workers_for(p, local_world_size: int) -> int:
    """data.num_workers, or this machine's cores shared among its processes."""
    return p.data.num_workers or max(1, (os.cpu_count() or 1) // local_world_size)


def batch_for(p, epoch: int) -> int:
    """Batch per process in ``epoch``: resolution.schedule's stage, else training.batch_size."""
    if p.resolution.schedule:
        return stage_at(parse_stages(p.resolution.schedule, p.training.batch_size), epoch)[2]
    return p.training.batch_size


def resolution_for(p, epoch: int) -> int:
    r = p.resolution
    if r.schedule:
        return stage_at(parse_stages(r.schedule, p.training.batch_size), epoch)[1]
    return resolution_at(epoch, min_res=r.min_res, max_res=r.max_res,
                         start_ramp=r.start_ramp, end_ramp=r.end_ramp)


def resolutions(p) -> set[int]:
    """Every training resolution of the run and the validation one (models of fixed input size
    must accept all of them)."""
    return {resolution_for(p, e) for e in range(p.training.epochs)} | {p.validation.resolution}


def lr_batches(p, meta, world_size: int) -> tuple[int, int]:
    """(actual global batch of an optimizer step, the global batch lr.lr was written for); both
    count accumulation steps."""
    reference = p.lr.batch_size_for_lr or meta["recipe_batch_size"] * meta["recipe_world_size"]
    reference = reference * (meta.get("recipe_accum_steps", 1) if not p.lr.batch_size_for_lr
                             else 1)
    return p.training.batch_size * world_size * p.training.accum_steps, reference


def effective_lr(p, meta, world_size: int) -> tuple[float, str]:
    """lr.lr scaled from the batch the config was written for to the real global batch."""
    actual, reference = lr_batches(p, meta, world_size)
    accum = p.training.accum_steps
    if actual == reference:
        return p.lr.lr, f"lr {p.lr.lr:g} for global batch {actual}"
    if not p.lr.scale_lr:
        return p.lr.lr, (f"lr {p.lr.lr:g} kept for global batch {actual} "
                         f"(written for {reference}; lr.scale_lr is 0)")
    lr = scaled_lr(p.lr.lr, actual, reference)
    return lr, (f"lr scaled linearly {p.lr.lr:g} -> {lr:g}: global batch {actual} "
                f"({p.training.batch_size} x {world_size} processes x {accum} accumulation "
                f"steps) instead of {reference} "
                "(turn off with --lr.scale_lr 0)")


def schedule_kwargs(p, lr: float) -> dict:
    """What ``schedules.lr_at`` needs for this run's LR schedule at peak ``lr``."""
    return dict(schedule=p.lr.lr_schedule_type, lr=lr, epochs=p.training.epochs,
                **schedule_keywords(p.lr))
