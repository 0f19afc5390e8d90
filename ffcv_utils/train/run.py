"""Train (or evaluate) a classifier on FFCV .beton files: ``main`` checks the config and the
processes, then ``run`` goes through its phases, each a function below:

    set_up -> restore -> open_outputs -> (evaluate_only | train_epochs) -> finish

``train_epochs`` runs ``train_one_epoch`` (train, validate) and ``end_epoch`` (log, checkpoint).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from ..base import distributed as du
from ..base import peers
from ..load import watchdog
from ..beton.check import check_trainer_betons
from ..base.cli import UserError
from .config import as_flat_dict, load_config
from ..load.loaders import take_decode_failures
from ..base.atomic import atomic_write_text
from .runlog import JsonlLogger
from .metrics_plot import plot_run
from .schedules import stage_epoch_lrs
from .tracking import Trackers
from .build import Setup, build_setup, make_train_data, make_val_data, settle_in_memory, wrap
from .plan import (batch_for, check_class_lists, effective_lr, num_workers_for, resolution_for,
                   schedule_kwargs)
from .signals import Pauses, Stop, StopSignals
from .steps import evaluate, train_epoch


def say(env: du.DistEnv, *msg) -> None:
    if env.is_main:
        print("=>", *msg, file=sys.stderr, flush=True)


@dataclass
class Run:
    """One run's fixed parts: its config, processes, folder, set-up and data."""

    p: object
    env: du.DistEnv
    run_id: str
    run_dir: Path
    setup: Setup
    lr: float
    num_classes: int
    num_workers: int
    resume_from: Path | None = None
    which: str = ""  # which weights were loaded, in words
    train_data: object = None
    val: object = None
    logger: JsonlLogger | None = None
    trackers: Trackers | None = None
    first_epoch: int = 0
    start_time: float = 0.0

    def evaluate(self, model) -> dict:
        p = self.p
        return evaluate(model, self.val, self.env, self.setup.dtype, self.num_classes,
                        channels_last=bool(p.training.channels_last),
                        flip_tta=bool(p.validation.lr_tta))


# ---------------------------------------------------------------------------------------------
# main: the config, the processes, and how a run ends
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
            say(env, f"stopped by {signal.Signals(s.signum).name}; the checkpoint of {s.saved} "
                     "is intact. Continue with: --training.resume auto "
                     f"--logging.run_id {p.logging.run_id}")
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
    r = set_up(p, meta, env, num_classes)
    progress = restore(r)
    wrap(r.setup, env, bool(p.training.compile))
    open_outputs(r, classes, meta, argv, progress.epoch)
    if p.training.eval_only:
        return evaluate_only(r)
    top1 = train_epochs(r, progress, stop)
    return finish(r, progress, top1)


# ---------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------

def set_up(p, meta, env, num_classes) -> Run:
    """Seed, run folder (a fresh id shared by all ranks), LR rule, model and recipe."""
    torch.manual_seed(p.data.seed)
    if p.training.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it
        torch.use_deterministic_algorithms(True)
    elif env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    memory_warning = settle_in_memory(p, env)
    if memory_warning:
        say(env, f"warning: {memory_warning}")
    run_id = p.logging.run_id or du.broadcast_object(
        time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8], env)
    p.logging.run_id = run_id
    run_dir = Path(p.logging.folder) / run_id
    resume_from = (ckpt.find_last(run_dir) if p.training.resume == "auto"
                   else Path(p.training.resume) if p.training.resume else None)
    if (run_dir / ckpt.LAST).exists() and not resume_from and not p.training.eval_only:
        raise UserError(f"{run_dir} already holds a run; continue it with "
                        "--training.resume auto or choose another --logging.run_id")
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    say(env, f"run folder {run_dir} | {env.world_size} process(es) on {env.device.type} "
             f"({env.backend if env.distributed else 'single process'})")
    lr, lr_note = effective_lr(p, meta, env.world_size)
    say(env, lr_note)
    setup = build_setup(p, env, num_classes, lr, ema=not p.training.eval_only)
    for note in setup.notes:
        say(env, note)
    return Run(p, env, run_id, run_dir, setup, lr, num_classes,
               num_workers_for(p, env.local_world_size), resume_from)


def restore(r: Run) -> ckpt.Progress:
    """The resumed checkpoint's weights (EMA ones for eval-only when asked) and, when training,
    its optimizer, scaler, EMA, step count and progress."""
    p, env = r.p, r.env
    if not r.resume_from:
        if p.training.resume == "auto":
            say(env, f"no checkpoint in {r.run_dir}: starting from scratch")
        r.which = r.setup.weights
        return ckpt.Progress()
    use_ema = bool(p.training.eval_only and p.model.weights_ema)
    checkpoint, r.which = ckpt.load_weights(r.setup.raw_model, r.resume_from, "training.resume",
                                            ema=use_ema)
    progress = ckpt.Progress()
    if checkpoint and not p.training.eval_only:
        progress, warnings = ckpt.restore_training(checkpoint, r.setup.recipe)
        changed = ckpt.changed_settings(checkpoint, as_flat_dict(p))
        if changed:
            warnings.append(f"resumed with different settings: {', '.join(changed)}")
        for w in warnings:
            say(env, f"warning: {w}")
    where = (f"in epoch {progress.epoch} at global step {progress.step['step']}"
             if progress.step else f"after epoch {progress.epoch}")
    say(env, f"resuming from {r.resume_from} {where}: {r.which}")
    return progress


def open_outputs(r: Run, classes, meta, argv, start_epoch: int) -> None:
    """Loaders, the JSON-lines log, params.json and classes.json, the trackers."""
    p, env = r.p, r.env
    if not p.training.eval_only:
        r.train_data = make_train_data(p, env, r.num_workers, start_epoch)
    r.val = make_val_data(p, env, r.num_workers)
    r.logger = JsonlLogger(r.run_dir / "log.jsonl", enabled=env.is_main)
    resolved = {}
    if env.is_main:
        dtype = r.setup.dtype
        resolved = dict(as_flat_dict(p), **{
            "derived.effective_lr": r.lr, "derived.world_size": env.world_size,
            "derived.global_batch_size": p.training.batch_size * env.world_size,
            "derived.num_classes": r.num_classes, "derived.device": str(env.device),
            "derived.precision": str(dtype).replace("torch.", "") if dtype else "float32",
            "derived.num_workers": r.num_workers, "derived.config_files": meta["config_files"],
            "derived.argv": argv})
        atomic_write_text(r.run_dir / "params.json", json.dumps(resolved, indent=2) + "\n")
        if classes:  # predict.py / export.py name the outputs from the run folder alone
            atomic_write_text(r.run_dir / "classes.json", json.dumps(classes) + "\n")
    r.trackers = Trackers(p, r.run_dir, resolved,
                          enabled=env.is_main and not p.training.eval_only)


def evaluate_only(r: Run) -> int:
    p, env = r.p, r.env
    stats = r.evaluate(r.setup.raw_model)
    stats["decode_failures"] = warn_decode_failures(env, "evaluation", None, r.val)
    source = str(r.resume_from or p.model.weights or f"pretrained {p.model.arch} weights")
    if r.which:
        source += f" ({r.which})"
    r.logger.log(dict(eval_only=True, weights=source, val_res=p.validation.resolution, **stats))
    say(env, f"eval {source}: top-1 {stats['top_1']:.4f} top-5 {stats['top_5']:.4f} "
             f"loss {stats['val_loss']:.4f} on {stats['val_images']} images")
    return 0


def train_epochs(r: Run, progress: ckpt.Progress, stop) -> float | None:
    """Epochs from ``progress.epoch`` on (the first one from its step checkpoint when it has
    one); the last top-1 (None when never validated)."""
    r.logger.keep_epochs_before(progress.epoch)
    r.first_epoch, r.start_time = progress.epoch, time.perf_counter()
    pauses = Pauses(stop, r.p.training.checkpoint_minutes)
    top1 = None
    for epoch in range(progress.epoch, r.p.training.epochs):
        record = train_one_epoch(r, progress, epoch, pauses)
        if record["top_1"] is not None:
            top1 = record["top_1"]
        end_epoch(r, progress, record)
        stop.check(r.env)
    return top1


def train_one_epoch(r: Run, progress: ckpt.Progress, epoch: int, pauses: Pauses) -> dict:
    """Train ``epoch`` at its stage's batch and resolution, validate, count decode failures."""
    p, env = r.p, r.env
    start = time.perf_counter()
    res, batch = resolution_for(p, epoch), batch_for(p, epoch)
    if batch != r.train_data.loader.batch_size:  # a new stage of resolution.schedule
        say(env, f"epoch {epoch}: batch {batch} per process, LR x {batch}/"
                 f"{p.training.batch_size} (linear scaling)")
        r.train_data = make_train_data(p, env, r.num_workers, epoch)
    r.train_data.set_resolution(res)
    first, carried = resume_point(r, progress, epoch, batch)
    lrs = stage_epoch_lrs(epoch, first + len(r.train_data.loader), batch=batch,
                          base_batch=p.training.batch_size, **schedule_kwargs(p, r.lr))

    def on_pause(kind, steps_done, meter):
        saved = save_step(r, progress, epoch, first, steps_done, meter)
        if kind == "stop":
            raise Stop(pauses.stop.signum or signal.SIGTERM, saved)

    stats = train_epoch(r.setup, r.train_data.loader, lrs, env, epoch,
                        accum_steps=p.training.accum_steps, log_level=p.logging.log_level,
                        first=first, carried=carried, pauses=pauses, on_pause=on_pause,
                        trackers=r.trackers)
    record = {"epoch": epoch, "lr": float(lrs[0]), "lr_end": float(lrs[-1]),
              "train_res": res, "train_batch": batch, "train_iters": len(lrs), **stats,
              "top_1": None, "top_5": None, "val_loss": None, "val_images": None}
    if progress.step is not None:
        record["resumed_from_step"] = first
    if p.logging.log_level >= 1 or epoch == p.training.epochs - 1:
        record.update(r.evaluate(r.setup.raw_model))
        ema = r.setup.recipe.ema
        if ema is not None:
            e = r.evaluate(ema.module)
            record.update(ema_top_1=e["top_1"], ema_top_5=e["top_5"], ema_val_loss=e["val_loss"])
    record["decode_failures"] = warn_decode_failures(env, f"epoch {epoch}", r.train_data, r.val)
    record["epoch_seconds"] = time.perf_counter() - start
    return record


def resume_point(r: Run, progress: ckpt.Progress, epoch: int, batch: int):
    """``(first global step, (loss, images) so far)`` of ``epoch``, and its data order set up:
    from the start, or where a step checkpoint left it, dealt to this run's processes."""
    step = progress.step if progress.epoch == epoch else None
    if step is None:
        r.train_data.set_epoch(epoch)
        return 0, (0.0, 0)
    position = tuple(tuple(leg) for leg in step["position"])
    r.train_data.set_epoch(epoch, position)
    consumed = sum(n for _, n in position)
    return consumed // (batch * r.env.world_size), (step["loss"], step["images"])


def save_step(r: Run, progress: ckpt.Progress, epoch: int, first: int, steps_done: int,
              meter) -> str:
    """A step checkpoint (rank 0 writes it; every rank sums the loss): what it holds, in words."""
    sums = meter.reduce(r.env)
    position = r.train_data.position(steps_done)
    step = {"position": [list(leg) for leg in position], "step": first + steps_done,
            "loss": sums["loss"], "images": int(sums["images"])}
    here = ckpt.Progress(epoch, progress.best_top1, list(progress.history), step)
    if r.env.is_main:
        ckpt.atomic_save(ckpt.training_state(r.setup.recipe, here, params=as_flat_dict(r.p),
                                             run_id=r.run_id), r.run_dir / ckpt.LAST)
    return f"global step {first + steps_done} of epoch {epoch}"


def end_epoch(r: Run, progress: ckpt.Progress, record: dict) -> None:
    """Log, then checkpoint (a kill in between makes the resumed run redo, and re-log, the
    epoch, never skip its line)."""
    epoch = record["epoch"]
    is_best = record["top_1"] is not None and record["top_1"] > progress.best_top1
    if is_best:
        progress.best_top1 = record["top_1"]
    progress.epoch, progress.step = epoch + 1, None
    progress.history.append({k: record[k] for k in ("epoch", "top_1", "train_loss")})
    if not r.env.is_main:
        return
    r.logger.log(record)
    r.trackers.epoch(record, (epoch + 1) * record["train_iters"])
    state = ckpt.training_state(r.setup.recipe, progress, params=as_flat_dict(r.p),
                                run_id=r.run_id)
    ckpt.save_epoch(state, r.run_dir, is_best=is_best,
                    backup=ckpt.periodic_checkpoint_name(epoch + 1, r.p.training.checkpoint_every))
    top = "-" if record["top_1"] is None else f"{record['top_1']:.4f}"
    print(f"=> epoch {epoch}: res {record['train_res']} lr {record['lr']:.4f}->"
          f"{record['lr_end']:.4f} train_loss {record['train_loss']:.4f} top-1 {top} "
          f"{record['train_images_per_s']:.0f} img/s {record['epoch_seconds']:.1f} s",
          file=sys.stderr, flush=True)


def finish(r: Run, progress: ckpt.Progress, top1: float | None) -> int:
    """Final weights (and EMA weights), the plot, the summary line."""
    p, env = r.p, r.env
    r.trackers.close()
    if env.is_main:
        ckpt.atomic_save(r.setup.raw_model.state_dict(), r.run_dir / ckpt.FINAL)
        if r.setup.recipe.ema is not None:
            ckpt.atomic_save(r.setup.recipe.ema.module.state_dict(), r.run_dir / ckpt.FINAL_EMA)
        if p.logging.plot:
            say(env, f"plot: {plot_run(r.run_dir)}")
    du.barrier(env)
    minutes = (time.perf_counter() - r.start_time) / 60
    final = f"{top1:.4f}" if top1 is not None else "n/a"
    say(env, f"done: {p.training.epochs - r.first_epoch} epoch(s) in {minutes:.1f} min; final "
             f"top-1 {final}, best top-1 {max(progress.best_top1, 0):.4f}; outputs in {r.run_dir}")
    if env.is_main:
        print(f"final top-1: {final}")
    return 0


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
