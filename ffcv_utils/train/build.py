"""The one builder of a training set-up, used by the trainer and the LR finder so the two cannot
drift: the model (with BlurPool, starting weights, SyncBN, channels-last), the recipe (optimizer,
scaler, loss, batch augmentation, EMA, clipping), the DDP/compile wrapping, and the loaders with
every ``data.*`` key."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import checkpoint as ckpt
from ..base import distributed as du
from ..base.cli import UserError
from ..load.loaders import train_loader, val_loader
from .models import apply_sync_bn, blurpool_layers, create_model
from .ema import build_ema
from .loss import build_criterion
from .mixup import build_batch_augment
from .optim import Recipe, build_optimizer
from .plan import batch_for, resolution_for, resolutions
from .steps import amp_dtype


@dataclass
class Setup:
    """What the loop needs. ``model`` is what the steps call (DDP/compiled once ``wrap`` ran);
    ``recipe.model`` is the plain module that evaluation and checkpoints use."""

    model: torch.nn.Module
    recipe: Recipe
    dtype: torch.dtype | None
    channels_last: bool
    notes: list[str]  # for the log: BlurPool layers, weights loaded, SyncBN
    weights: str = ""  # which starting weights model.weights gave, in words

    @property
    def raw_model(self) -> torch.nn.Module:
        return self.recipe.model


def build_model(p, num_classes: int, device: torch.device, distributed: bool):
    """``(model on device, notes for the log, which weights)``: architecture, BlurPool,
    model.weights, SyncBN, channels-last."""
    model = create_model(p.model.arch, num_classes, pretrained=bool(p.model.pretrained),
                         use_blurpool=bool(p.training.use_blurpool), resolutions=resolutions(p))
    notes, which = [], ""
    if p.training.use_blurpool:
        layers = blurpool_layers(model)
        notes.append(f"BlurPool on {len(layers)} strided conv(s)"
                     + (f": {', '.join(layers)}" if layers else " (the model has none)"))
    if p.model.weights:
        _, which = ckpt.load_weights(model, p.model.weights, "model.weights",
                                     ema=bool(p.model.weights_ema))
        notes.append(f"weights from {p.model.weights}: {which}")
    model, note = apply_sync_bn(model.to(device), bool(p.training.sync_bn), distributed, device)
    if note:
        notes.append(note)
    if p.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, notes, which


def build_setup(p, env: du.DistEnv, num_classes: int, lr: float, *, ema: bool = True) -> Setup:
    """Model and recipe as the config asks (``ema``: build the weight EMA when ema.decay > 0)."""
    dtype = amp_dtype(p.training.precision, env.device)
    model, notes, which = build_model(p, num_classes, env.device, env.distributed)
    scaler = torch.amp.GradScaler(env.device.type, enabled=dtype == torch.float16)
    recipe = Recipe(model, build_optimizer(p, model, lr), scaler, build_criterion(p),
                    augment=build_batch_augment(p, num_classes, env.device, rank=env.rank),
                    ema=build_ema(p, model) if ema else None, clip_grad=p.training.clip_grad,
                    ema_every=p.ema.every)
    return Setup(model, recipe, dtype, bool(p.training.channels_last), notes, which)


def wrap(setup: Setup, env: du.DistEnv, compile: bool) -> None:
    """DistributedDataParallel under torchrun, then torch.compile when asked."""
    model = setup.raw_model
    if env.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    setup.model = torch.compile(model) if compile else model


def settle_in_memory(p, env: du.DistEnv) -> str | None:
    """Resolve ``data.in_memory auto`` from the betons' size and this node's free memory (rank
    0 decides, every rank follows); the warning when the betons will not fit the page cache."""
    from ..load.memory_check import check_memory, resolve_in_memory

    betons = [p.data.val_dataset] + ([] if p.training.eval_only else [p.data.train_dataset])
    verdict = check_memory(betons)
    decided = du.broadcast_object(resolve_in_memory(p.data.in_memory, betons), env)
    p.data.in_memory = int(decided)
    return verdict.warning() if decided else None


def make_train_data(p, env: du.DistEnv, num_workers: int, epoch: int, seed: int | None = None):
    """The training loader for ``epoch``'s stage (its batch size and resolution)."""
    batch = batch_for(p, epoch)
    train = train_loader(p.data.train_dataset, batch_size=batch, num_workers=num_workers,
                         res=resolution_for(p, epoch), device=env.device,
                         distributed=env.distributed, in_memory=bool(p.data.in_memory),
                         seed=p.data.seed if seed is None else seed, decoder=p.data.decoder,
                         window_pages=p.data.window_pages)
    if len(train.loader) == 0:
        raise UserError(f"training.batch_size {batch} x {env.world_size} "
                        "processes is larger than the training set")
    return train


def make_val_data(p, env: du.DistEnv, num_workers: int):
    return val_loader(p.data.val_dataset, batch_size=p.validation.batch_size,
                      num_workers=num_workers, res=p.validation.resolution, device=env.device,
                      rank=env.rank, world_size=env.world_size,
                      in_memory=bool(p.data.in_memory), decoder=p.data.decoder)
