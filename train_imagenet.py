"""Train (or evaluate) an ImageNet classifier on FFCV .beton files, ffcv-imagenet style.

    python train_imagenet.py --config-file rn18_configs/rn18_16_epochs.yaml \
        --data.train_dataset train.beton --data.val_dataset val.beton
    torchrun --nproc_per_node=8 train_imagenet.py --config-file rn50_configs/rn50_88_epochs.yaml ...

Reads top to bottom: configuration -> processes and device -> data -> model and optimizer ->
(resume) -> epochs of train + validate + checkpoint -> final weights. The keys live in
ffcv_utils/config.py (``--help`` lists them); the reusable parts in ffcv_utils/.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F

from ffcv_utils import checkpoint as ckpt
from ffcv_utils import distributed as du
from ffcv_utils.cli import UserError, run_main
from ffcv_utils.config import as_flat_dict, load_config
from ffcv_utils.data import normalize, take_decode_failures, train_loader, val_loader
from ffcv_utils.dataset_info import (atomic_write_text, class_list_mismatch, read_info,
                                     sidecar_path)
from ffcv_utils.plot import plot_run
from ffcv_utils.logging import JsonlLogger, SumMeter
from ffcv_utils import telemetry
from ffcv_utils import peers, watchdog
from ffcv_utils.beton import check_trainer_betons
from ffcv_utils.tracking import Trackers
from ffcv_utils.models import create_model
from ffcv_utils.recipe import (Recipe, accumulation_groups, apply_sync_bn, build_batch_augment,
                               build_criterion, build_ema, build_optimizer,
                               periodic_checkpoint_name)
from ffcv_utils.schedules import (parse_stages, resolution_at, scaled_lr, stage_at,
                                  stage_epoch_lrs)

# How often (in iterations) distributed ranks agree on whether a stop signal arrived: each check
# is one tiny all_reduce plus a host sync.
STOP_CHECK_EVERY = 10


class Stop(Exception):
    """Raised inside the loop once every rank has seen SIGTERM/SIGINT."""

    def __init__(self, signum: int):
        self.signum = signum


class StopSignals:
    """SIGTERM/SIGINT only set a flag; the loop stops at a safe point (never mid-checkpoint).
    A second SIGINT interrupts at once."""

    def __init__(self):
        self.signum = 0
        self.previous = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def check(self, env: du.DistEnv, collective: bool = True) -> None:
        """Raise Stop when a signal arrived on any rank (``collective``: all ranks call this)."""
        stop = du.any_rank(bool(self.signum), env) if collective else bool(self.signum)
        if stop:
            raise Stop(self.signum or signal.SIGTERM)


def say(env: du.DistEnv, *msg) -> None:
    if env.is_main:
        print("=>", *msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Data: class lists, loaders
# ---------------------------------------------------------------------------------------------

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


def make_train_data(p, env: du.DistEnv, num_workers: int, epoch: int):
    """The training loader for ``epoch``'s stage (its batch size and resolution)."""
    train = train_loader(p.data.train_dataset, batch_size=batch_for(p, epoch),
                         num_workers=num_workers, res=resolution_for(p, epoch),
                         device=env.device, distributed=env.distributed,
                         in_memory=bool(p.data.in_memory), seed=p.data.seed,
                         decoder=p.data.decoder)
    if len(train.loader) == 0:
        raise UserError(f"training.batch_size {batch_for(p, epoch)} x {env.world_size} "
                        "processes is larger than the training set")
    return train


def make_loaders(p, env: du.DistEnv, num_workers: int, epoch: int = 0):
    train = None if p.training.eval_only else make_train_data(p, env, num_workers, epoch)
    val = val_loader(p.data.val_dataset, batch_size=p.validation.batch_size,
                     num_workers=num_workers, res=p.validation.resolution, device=env.device,
                     rank=env.rank, world_size=env.world_size, in_memory=bool(p.data.in_memory),
                     decoder=p.data.decoder)
    return train, val


def warn_decode_failures(env: du.DistEnv, when: str, train_data, val) -> int:
    """One line per epoch (or evaluation) when damaged JPEGs were met (decoded as far as possible,
    rest grey). Each rank decodes its own share: the count is summed over ranks, so every rank
    must call this at the same point."""
    mine = (train_data.take_failures() if train_data else 0) + take_decode_failures(val)
    failed = int(du.all_reduce_sum(torch.tensor([float(mine)], device=env.device), env).item())
    if failed and env.is_main:
        print(f"=> warning: {when}: {failed} image(s) failed to decode (damaged JPEG in the "
              "beton: decoded as far as possible, the rest grey)", file=sys.stderr, flush=True)
    return failed


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


# ---------------------------------------------------------------------------------------------
# LR: linear scaling to the actual global batch, per-iteration schedule
# ---------------------------------------------------------------------------------------------

def lr_batches(p, meta, env: du.DistEnv) -> tuple[int, int]:
    """(actual global batch of an optimizer step, the global batch lr.lr was written for); both
    count accumulation steps."""
    reference = p.lr.batch_size_for_lr or meta["recipe_batch_size"] * meta["recipe_world_size"]
    reference = reference * (meta.get("recipe_accum_steps", 1) if not p.lr.batch_size_for_lr
                             else 1)
    return p.training.batch_size * env.world_size * p.training.accum_steps, reference


def effective_lr(p, meta, env: du.DistEnv) -> tuple[float, str]:
    """lr.lr scaled from the batch the config was written for to the real global batch."""
    actual, reference = lr_batches(p, meta, env)
    accum = p.training.accum_steps
    if actual == reference:
        return p.lr.lr, f"lr {p.lr.lr:g} for global batch {actual}"
    if not p.lr.scale_lr:
        return p.lr.lr, (f"lr {p.lr.lr:g} kept for global batch {actual} "
                         f"(written for {reference}; lr.scale_lr is 0)")
    lr = scaled_lr(p.lr.lr, actual, reference)
    return lr, (f"lr scaled linearly {p.lr.lr:g} -> {lr:g}: global batch {actual} "
                f"({p.training.batch_size} x {env.world_size} processes x {accum} accumulation "
                f"steps) instead of {reference} "
                "(turn off with --lr.scale_lr 0)")


def schedule_kwargs(p, lr: float) -> dict:
    return dict(schedule=p.lr.lr_schedule_type, lr=lr, epochs=p.training.epochs,
                peak_epoch=p.lr.lr_peak_epoch, step_ratio=p.lr.step_ratio,
                step_length=p.lr.step_length, warmup_epochs=p.lr.warmup_epochs,
                pct_start=p.lr.pct_start)


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------

def amp_dtype(p, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). 'auto' is fp16 on CUDA, as ffcv-imagenet, fp32 on CPU."""
    precision = p.training.precision
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


# ---------------------------------------------------------------------------------------------
# Train and validate one epoch
# ---------------------------------------------------------------------------------------------

def train_step(model, images, labels, recipe, p, env, dtype, epoch, i, group,
               steps_now) -> torch.Tensor:
    """Forward and backward of one micro-batch; the optimizer steps after the last of its
    accumulation group (``group`` micro-batches). DDP skips the all-reduce on the others."""
    prepare = lambda im: inputs(im, dtype, bool(p.training.channels_last))  # noqa: E731
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


def train_epoch(model, loader, recipe, lrs, p, env, dtype, stop, epoch, trackers=None):
    from tqdm import tqdm

    model.train()
    meter = SumMeter(("loss", "images"), env.device)
    iters = len(lrs)
    bar = tqdm(total=iters, desc=f"epoch {epoch}", disable=not env.is_main, leave=False,
               dynamic_ncols=True, file=sys.stderr)
    iterator = iter(loader)
    groups = accumulation_groups(iters, p.training.accum_steps)
    wait = telemetry.DataWait()
    telemetry.start_epoch(env.device)
    start = time.perf_counter()
    try:
        for i, (images, labels) in enumerate(wait.timed(iterator)):
            if env.distributed:
                if i % STOP_CHECK_EVERY == 0:
                    stop.check(env)
            else:
                stop.check(env, collective=False)
            for group in recipe.optimizer.param_groups:
                group["lr"] = lrs[i]
            steps_now = (i + 1) % p.training.accum_steps == 0 or i == iters - 1
            loss = train_step(model, images, labels, recipe, p, env, dtype, epoch, i, groups[i],
                              steps_now)
            meter.add(loss=loss.detach() * labels.shape[0], images=labels.shape[0])
            bar.update(1)
            if trackers is not None:
                trackers.step(epoch * iters + i, loss.detach(), lrs[i])
            every = 1 if p.logging.log_level >= 2 else 10
            if env.is_main and (i % every == 0 or i == iters - 1):
                rate = (i + 1) * labels.shape[0] * env.world_size / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lrs[i]:.4f}",
                                img_s=f"{rate:.0f}")
    finally:
        iterator.close()
        bar.close()
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    seconds = time.perf_counter() - start
    sums = meter.reduce(env)
    images = int(sums["images"])
    return {"train_loss": sums["loss"] / max(images, 1), "train_images": images,
            "train_seconds": seconds, "train_images_per_s": images / seconds,
            **telemetry.epoch_stats(env.device, wait.seconds, seconds)}


@torch.no_grad()
def evaluate(model, loader, p, env, dtype, num_classes) -> dict:
    """Top-1/top-5/loss over this rank's shard, summed over ranks: each image counts once."""
    du.sync_buffers(model, env)  # every shard evaluated by the same model: the checkpointed one
    model.eval()
    meter = SumMeter(("top_1", "top_5", "loss", "images"), env.device)
    k = min(5, num_classes)
    start = time.perf_counter()
    for images, labels in loader:
        x = inputs(images, dtype, bool(p.training.channels_last))
        with autocast(env.device, dtype):
            logits = model(x)
            if p.validation.lr_tta:
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


# ---------------------------------------------------------------------------------------------
# Run folder, resume
# ---------------------------------------------------------------------------------------------

def run_folder(p, env) -> tuple[str, Path]:
    """``logging.folder/run_id``; a fresh id is drawn on rank 0 and shared with every rank."""
    run_id = p.logging.run_id or du.broadcast_object(
        time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8], env)
    return run_id, Path(p.logging.folder) / run_id


def resume_path(p, run_dir: Path) -> Path | None:
    if p.training.resume == "auto":
        return ckpt.find_last(run_dir)
    return Path(p.training.resume) if p.training.resume else None


def load_weights_into(model, path, what: str, ema: bool = False) -> tuple[dict, str]:
    """``(checkpoint or {}, which weights were loaded in words)``."""
    try:
        state, checkpoint = ckpt.weights_from_file(path, ema=ema)
        model.load_state_dict(state)
    except (RuntimeError, ValueError, OSError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what}: cannot load {path} into this model: {first}") from None
    return checkpoint, ckpt.which_weights(checkpoint, ema)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p, meta = load_config(argv)

    if p.training.distributed and p.dist.world_size > 1 and not du.under_torchrun():
        raise UserError(f"this config is for {p.dist.world_size} processes; launch it with: "
                        f"{du.torchrun_command(p.dist.world_size, argv)}")
    if p.training.resume == "auto" and not p.logging.run_id:
        raise UserError("training.resume auto needs --logging.run_id (the run to continue)")
    num_classes, classes = check_class_lists(p)
    check_trainer_betons(p)
    watchdog.set_stall_timeout(p.data.loader_timeout)

    env = du.init(single_gpu_index=p.data.gpu, timeout_s=p.dist.timeout)
    with StopSignals() as stop:
        try:
            return run(p, meta, env, num_classes, classes, stop, argv)
        except Stop as s:
            name = signal.Signals(s.signum).name
            say(env, f"stopped by {name}; the last completed epoch's checkpoint is intact. "
                     f"Continue with: --training.resume auto --logging.run_id {p.logging.run_id}")
            return 128 + s.signum
        except watchdog.LoaderError as e:
            raise watchdog.LoaderError(
                f"{e}; checkpoints of completed epochs are intact. Continue with: "
                f"--training.resume auto --logging.run_id {p.logging.run_id}") from None
        except RuntimeError as e:  # another rank died or hung: one line per surviving rank
            if not peers.is_peer_failure(e, env):
                raise
            raise UserError(peers.message(e, env, p.logging.run_id)) from None
        except OSError as e:  # a read-only or full run folder: one line, not a traceback
            error = ckpt.write_error(e)
            if error is None:
                raise
            raise error from None
        finally:
            du.teardown()


def run(p, meta, env, num_classes, classes, stop, argv) -> int:
    torch.manual_seed(p.data.seed)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run_id, run_dir = run_folder(p, env)
    p.logging.run_id = run_id
    resume_from = resume_path(p, run_dir)
    if (run_dir / ckpt.LAST).exists() and not resume_from and not p.training.eval_only:
        raise UserError(f"{run_dir} already holds a run; continue it with "
                        "--training.resume auto or choose another --logging.run_id")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    say(env, f"run folder {run_dir} | {env.world_size} process(es) on {env.device.type} "
             f"({env.backend if env.distributed else 'single process'})")

    num_workers = p.data.num_workers or max(1, (os.cpu_count() or 1)
                                            // env.local_world_size)
    lr, lr_note = effective_lr(p, meta, env)
    dtype = amp_dtype(p, env.device)
    say(env, lr_note)

    # Model, optimizer, scaler ------------------------------------------------------------
    model = create_model(p.model.arch, num_classes, pretrained=bool(p.model.pretrained),
                         use_blurpool=bool(p.training.use_blurpool))
    which = ""
    if p.model.weights:
        _, which = load_weights_into(model, p.model.weights, "model.weights",
                                     ema=bool(p.model.weights_ema))
        say(env, f"weights from {p.model.weights}: {which}")
    model, note = apply_sync_bn(model.to(env.device), bool(p.training.sync_bn),
                                env.distributed, env.device)
    if note:
        say(env, note)
    if p.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(p, model, lr)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    ema = None if p.training.eval_only else build_ema(p, model)

    start_epoch, best_top1, history, optimizer_steps = 0, -1.0, [], 0
    if resume_from:
        use_ema = bool(p.training.eval_only and p.model.weights_ema)
        checkpoint, which = load_weights_into(model, resume_from, "training.resume", ema=use_ema)
        if checkpoint and not p.training.eval_only:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scaler.load_state_dict(checkpoint["scaler"])
            if ema is not None and isinstance(checkpoint.get("ema"), dict):
                ema.module.load_state_dict(ckpt.strip_wrappers(checkpoint["ema"]))
            elif ema is not None:
                ema.module.load_state_dict(model.state_dict())
                say(env, "warning: the checkpoint has no EMA weights; the EMA restarts from "
                         "the resumed weights")
            start_epoch, best_top1 = checkpoint["epoch"], checkpoint["best_top1"]
            history = checkpoint.get("history", [])
            optimizer_steps = checkpoint.get("optimizer_steps", 0)
            old = checkpoint.get("params", {})
            changed = [k for k, v in as_flat_dict(p).items()
                       if k.split(".")[0] in ("lr", "training", "resolution")
                       and k not in ("training.resume",) and k in old and old[k] != v]
            if changed:
                say(env, f"warning: resumed with different settings: {', '.join(changed)}")
        say(env, f"resuming from {resume_from} after epoch {start_epoch}: {which}")
    elif p.training.resume == "auto":
        say(env, f"no checkpoint in {run_dir}: starting from scratch")

    raw_model = model  # evaluation and checkpoints use the plain module
    if env.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if p.training.compile:
        model = torch.compile(model)

    train_data, val_loader = make_loaders(p, env, num_workers, start_epoch)
    logger = JsonlLogger(run_dir / "log.jsonl", enabled=env.is_main)
    if env.is_main:
        resolved = dict(as_flat_dict(p), **{
            "derived.effective_lr": lr, "derived.world_size": env.world_size,
            "derived.global_batch_size": p.training.batch_size * env.world_size,
            "derived.num_classes": num_classes, "derived.device": str(env.device),
            "derived.precision": str(dtype).replace("torch.", "") if dtype else "float32",
            "derived.num_workers": num_workers, "derived.config_files": meta["config_files"],
            "derived.argv": argv})
        atomic_write_text(run_dir / "params.json", json.dumps(resolved, indent=2) + "\n")
        if classes:  # predict.py / export.py name the outputs from the run folder alone
            atomic_write_text(run_dir / "classes.json", json.dumps(classes) + "\n")
    trackers = Trackers(p, run_dir, resolved if env.is_main else {},
                        enabled=env.is_main and not p.training.eval_only)

    # Evaluation only ---------------------------------------------------------------------
    if p.training.eval_only:
        stats = evaluate(raw_model, val_loader, p, env, dtype, num_classes)
        stats["decode_failures"] = warn_decode_failures(env, "evaluation", None, val_loader)
        source = str(resume_from or p.model.weights or f"torchvision {p.model.arch} weights")
        if which:
            source += f" ({which})"
        logger.log(dict(eval_only=True, weights=source, val_res=p.validation.resolution,
                        **stats))
        say(env, f"eval {source}: top-1 {stats['top_1']:.4f} top-5 {stats['top_5']:.4f} "
                 f"loss {stats['val_loss']:.4f} on {stats['val_images']} images")
        return 0

    # Training ----------------------------------------------------------------------------
    logger.keep_epochs_before(start_epoch)
    sched = schedule_kwargs(p, lr)
    recipe = Recipe(raw_model, optimizer, scaler, build_criterion(p),
                    augment=build_batch_augment(p, num_classes, env.device, rank=env.rank),
                    ema=ema, clip_grad=p.training.clip_grad, ema_every=p.ema.every)
    recipe.steps = optimizer_steps
    epochs = p.training.epochs
    run_start = time.perf_counter()
    top1 = None
    for epoch in range(start_epoch, epochs):
        epoch_start = time.perf_counter()
        res, batch = resolution_for(p, epoch), batch_for(p, epoch)
        if batch != train_data.loader.batch_size:  # a new stage of resolution.schedule
            say(env, f"epoch {epoch}: batch {batch} per process, LR x {batch}/"
                     f"{p.training.batch_size} (linear scaling)")
            train_data = make_train_data(p, env, num_workers, epoch)
        train_data.set_resolution(res)
        train_data.set_epoch(epoch)
        iters = len(train_data.loader)
        lrs = stage_epoch_lrs(epoch, iters, batch=batch, base_batch=p.training.batch_size,
                              **sched)
        stats = train_epoch(model, train_data.loader, recipe, lrs, p, env, dtype, stop, epoch,
                            trackers)
        record = {"epoch": epoch, "lr": float(lrs[0]), "lr_end": float(lrs[-1]),
                  "train_res": res, "train_batch": batch, **stats}
        if p.logging.log_level >= 1 or epoch == epochs - 1:
            record.update(evaluate(raw_model, val_loader, p, env, dtype, num_classes))
            top1 = record["top_1"]
            if ema is not None:
                ema_stats = evaluate(ema.module, val_loader, p, env, dtype, num_classes)
                record.update(ema_top_1=ema_stats["top_1"], ema_top_5=ema_stats["top_5"],
                              ema_val_loss=ema_stats["val_loss"])
        else:
            record.update(top_1=None, top_5=None, val_loss=None, val_images=None)
        record["decode_failures"] = warn_decode_failures(env, f"epoch {epoch}", train_data,
                                                         val_loader)
        record["epoch_seconds"] = time.perf_counter() - epoch_start
        is_best = top1 is not None and record["top_1"] is not None and top1 > best_top1
        if is_best:
            best_top1 = top1
        history.append({k: record[k] for k in ("epoch", "top_1", "train_loss")})
        if env.is_main:
            # Log first, then checkpoint: a kill in between makes the resumed run redo (and
            # re-log, replacing this line) the epoch, never skip its line.
            logger.log(record)
            trackers.epoch(record, (epoch + 1) * iters)
            state = ckpt.training_state(model=raw_model, optimizer=optimizer, scaler=scaler,
                                        epoch=epoch + 1, best_top1=best_top1,
                                        params=as_flat_dict(p), run_id=run_id, history=history)
            state["optimizer_steps"] = recipe.steps
            if ema is not None:
                state["ema"] = ema.module.state_dict()
            ckpt.atomic_save(state, run_dir / ckpt.LAST)
            if is_best:
                ckpt.atomic_save(state, run_dir / ckpt.BEST)
            backup = periodic_checkpoint_name(epoch + 1, p.training.checkpoint_every)
            if backup:
                ckpt.atomic_save(state, run_dir / backup)
            top = "-" if record["top_1"] is None else f"{record['top_1']:.4f}"
            print(f"=> epoch {epoch}: res {res} lr {lrs[0]:.4f}->{lrs[-1]:.4f} "
                  f"train_loss {stats['train_loss']:.4f} top-1 {top} "
                  f"{stats['train_images_per_s']:.0f} img/s {record['epoch_seconds']:.1f} s",
                  file=sys.stderr, flush=True)
        stop.check(env)

    trackers.close()
    if env.is_main:
        ckpt.atomic_save(raw_model.state_dict(), run_dir / ckpt.FINAL)
        if ema is not None:
            ckpt.atomic_save(ema.module.state_dict(), run_dir / ckpt.FINAL_EMA)
        if p.logging.plot:
            say(env, f"plot: {plot_run(run_dir)}")
    du.barrier(env)
    total = time.perf_counter() - run_start
    final = f"{top1:.4f}" if top1 is not None else "n/a"
    say(env, f"done: {epochs - start_epoch} epoch(s) in {total / 60:.1f} min; final top-1 "
             f"{final}, best top-1 {max(best_top1, 0):.4f}; outputs in {run_dir}")
    if env.is_main:
        print(f"final top-1: {final}")
    return 0


if __name__ == "__main__":
    run_main(main, prog="train_imagenet.py")
