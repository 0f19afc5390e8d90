"""The trainer's semantic checks: every value that type-checks but makes no sense is refused with
one ``UserError`` line naming the key, before any data or model is touched. The keys themselves
are declared in ``config``; the LR schedule keys' checks come from ``schedules.LR_KEYS``."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from ..base.cli import UserError
from .schedules import LR_KEYS, SCHEDULES, parse_stages


def _need(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise UserError(f"{key}: {why}")


def check_values(p: SimpleNamespace) -> None:
    """Refuse nonsense values, naming the key, in the order the keys are checked."""
    check_sizes(p.training, p.resolution, p.validation)
    check_lr(p.lr, p.training.epochs)
    check_training(p.training)
    check_recipe(p)
    check_runtime(p)
    check_model(p.model)
    check_files(p)


def check_sizes(t, r, v) -> None:
    """Epochs, batch sizes and resolutions."""
    _need(t.epochs >= 1, "training.epochs", f"must be at least 1, got {t.epochs}")
    _need(t.batch_size >= 1, "training.batch_size", f"must be at least 1, got {t.batch_size}")
    _need(v.batch_size >= 1, "validation.batch_size", f"must be at least 1, got {v.batch_size}")
    for key in ("min_res", "max_res"):
        value = getattr(r, key)
        _need(value >= 8, f"resolution.{key}", f"must be at least 8 pixels, got {value}")
    _need(v.resolution >= 8, "validation.resolution",
          f"must be at least 8 pixels, got {v.resolution}")
    _need(r.min_res <= r.max_res, "resolution.min_res",
          f"{r.min_res} is larger than resolution.max_res {r.max_res}")
    _need(r.start_ramp >= 0, "resolution.start_ramp", f"must be >= 0, got {r.start_ramp}")
    _need(r.start_ramp <= r.end_ramp, "resolution.start_ramp",
          f"{r.start_ramp} is after resolution.end_ramp {r.end_ramp}")


def check_lr(lr, epochs: int) -> None:
    """lr.lr, then the schedule's own check and each schedule key's (``schedules``)."""
    _need(lr.lr > 0, "lr.lr", f"must be positive, got {lr.lr}")
    schedule = SCHEDULES[lr.lr_schedule_type]
    if schedule.check is not None and (wrong := schedule.check(lr, epochs)) is not None:
        raise UserError(f"{wrong[0]}: {wrong[1]}")
    for key, k in LR_KEYS.items():
        why = k.check(getattr(lr, key), epochs) if k.check else None
        _need(why is None, f"lr.{key}", why)
    _need(lr.batch_size_for_lr >= 0, "lr.batch_size_for_lr",
          f"must be >= 0, got {lr.batch_size_for_lr}")


def check_training(t) -> None:
    """The SGD and regularisation keys."""
    _need(0 <= t.momentum < 1, "training.momentum", f"must be in [0, 1), got {t.momentum}")
    _need(t.weight_decay >= 0, "training.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _need(0 <= t.label_smoothing < 1, "training.label_smoothing",
          f"must be in [0, 1), got {t.label_smoothing}")


def check_runtime(p: SimpleNamespace) -> None:
    """Processes, loaders, the decoder and the logging keys."""
    _need(p.dist.world_size >= 1, "dist.world_size", f"must be at least 1, got {p.dist.world_size}")
    _need(p.data.num_workers >= 0, "data.num_workers", f"must be >= 0, got {p.data.num_workers}")
    _need(p.dist.timeout >= 30, "dist.timeout",
          f"must be at least 30 seconds, got {p.dist.timeout}")
    _need(p.data.loader_timeout >= 0, "data.loader_timeout",
          f"must be >= 0 seconds, got {p.data.loader_timeout}")
    _need(p.data.gpu >= 0, "data.gpu", f"must be >= 0, got {p.data.gpu}")
    _need(p.data.window_pages >= 1, "data.window_pages",
          f"must be at least 1, got {p.data.window_pages}")
    _need(p.training.checkpoint_minutes >= 0, "training.checkpoint_minutes",
          f"must be >= 0, got {p.training.checkpoint_minutes}")
    if p.data.decoder == "fast":
        from ffcv_utils.load import decode as fast_decode

        _need(fast_decode.available(), "data.decoder",
              "the fast decoder's C extension is not built: run `make install`, "
              "or use --data.decoder ffcv")
    _need(p.model.num_classes >= 0, "model.num_classes",
          f"must be >= 0, got {p.model.num_classes}")
    _need(p.logging.log_level in (0, 1, 2), "logging.log_level",
          f"must be 0, 1 or 2, got {p.logging.log_level}")
    _need(p.logging.tensorboard in (0, 1), "logging.tensorboard",
          f"must be 0 or 1, got {p.logging.tensorboard}")
    _need(p.logging.plot in (0, 1), "logging.plot", f"must be 0 or 1, got {p.logging.plot}")
    _need(p.logging.step_interval >= 1, "logging.step_interval",
          f"must be at least 1, got {p.logging.step_interval}")
    _need(p.logging.wandb_mode in ("online", "offline", "disabled"), "logging.wandb_mode",
          f"must be online, offline or disabled, got {p.logging.wandb_mode!r}")
    run_id = p.logging.run_id
    _need(run_id == "" or (os.sep not in run_id and run_id not in (".", "..")),
          "logging.run_id", f"must be a plain folder name, got {run_id!r}")


def check_model(m) -> None:
    """The architecture and where its weights come from."""
    from .models import TIMM_PREFIX, check_arch

    check_arch(m.arch)
    if m.pretrained and not m.arch.startswith(TIMM_PREFIX) and m.num_classes not in (0, 1000):
        raise UserError("model.pretrained: torchvision's weights have 1000 classes, "
                        f"model.num_classes is {m.num_classes}")
    if m.weights:
        _need(Path(m.weights).is_file(), "model.weights", f"file not found: {m.weights}")


def check_files(p: SimpleNamespace) -> None:
    """The files a run reads: the checkpoint to resume and the betons."""
    t = p.training
    if t.resume and t.resume != "auto":
        _need(Path(t.resume).is_file(), "training.resume", f"file not found: {t.resume}")
    if t.eval_only:
        _need(bool(p.model.weights or p.model.pretrained or t.resume), "training.eval_only",
              "needs --model.weights PATH (or --training.resume, or --model.pretrained 1)")
    datasets = ["val_dataset"] if t.eval_only else ["train_dataset", "val_dataset"]
    for key in datasets:
        path = getattr(p.data, key)
        if not path:
            raise UserError(f"data.{key} is required (give --data.{key} PATH)")
        _need(Path(path).is_file(), f"data.{key}", f"file not found: {path}")


def check_recipe(p: SimpleNamespace) -> None:
    """The optimizer, loss, clipping, accumulation, augmentation and EMA keys."""
    t, a = p.training, p.augment
    _need(0 <= t.beta1 < 1, "training.beta1", f"must be in [0, 1), got {t.beta1}")
    _need(0 <= t.beta2 < 1, "training.beta2", f"must be in [0, 1), got {t.beta2}")
    _need(t.eps > 0, "training.eps", f"must be positive, got {t.eps}")
    _need(0 <= t.bce_target_thresh < 1, "training.bce_target_thresh",
          f"must be in [0, 1), got {t.bce_target_thresh}")
    _need(t.nesterov in (0, 1) and (not t.nesterov or t.optimizer == "sgd"), "training.nesterov",
          f"is for --training.optimizer sgd (got optimizer {t.optimizer})")
    _need(not t.nesterov or t.momentum > 0, "training.nesterov", "needs training.momentum > 0")
    _need(t.clip_grad >= 0, "training.clip_grad", f"must be >= 0, got {t.clip_grad}")
    if p.resolution.schedule:
        try:
            stages = parse_stages(p.resolution.schedule, t.batch_size)
        except ValueError as e:
            raise UserError(f"resolution.schedule: {e}") from None
        _need(stages[-1][0] < t.epochs, "resolution.schedule",
              f"stage at epoch {stages[-1][0]} starts after the last epoch ({t.epochs - 1})")
        if a.mixup_alpha > 0 or a.cutmix_alpha > 0:
            _need(all(b % 2 == 0 for _, _, b in stages), "resolution.schedule",
                  "mixup/cutmix need an even batch in every stage")
    _need(t.checkpoint_every >= 0, "training.checkpoint_every",
          f"must be >= 0, got {t.checkpoint_every}")
    _need(t.accum_steps >= 1, "training.accum_steps", f"must be at least 1, got {t.accum_steps}")
    for key in ("mixup_alpha", "cutmix_alpha", "randaug_mstd"):
        _need(getattr(a, key) >= 0, f"augment.{key}", f"must be >= 0, got {getattr(a, key)}")
    for key in ("mix_prob", "switch_prob", "erase_prob"):
        value = getattr(a, key)
        _need(0 <= value <= 1, f"augment.{key}", f"must be in [0, 1], got {value}")
    if a.mixup_alpha > 0 or a.cutmix_alpha > 0:
        _need(t.batch_size % 2 == 0, "training.batch_size",
              f"mixup/cutmix pair each image with another: needs an even batch, got {t.batch_size}")
    _need(0 <= a.randaug_ops <= 10, "augment.randaug_ops",
          f"must be in [0, 10], got {a.randaug_ops}")
    _need(0 <= a.randaug_magnitude <= 10, "augment.randaug_magnitude",
          f"must be in [0, 10] (timm's scale), got {a.randaug_magnitude}")
    _need(0 <= p.ema.decay < 1, "ema.decay", f"must be in [0, 1), got {p.ema.decay}")
    _need(p.ema.every >= 1, "ema.every", f"must be at least 1, got {p.ema.every}")
