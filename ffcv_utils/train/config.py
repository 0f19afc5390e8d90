"""The trainer's configuration schema: fastargs Sections, the one place every key is declared
(with its type, help and default), and ``load_config``, which parses the command line and config
files with ``base.cli``'s strict parser, fits a shortened recipe (``shrink``) and checks the values
for sense (``checks``). Environment variables are deliberately not read: a config should be
reproducible from its files and command line alone.

Every key of the public ffcv-imagenet configs is accepted unchanged.
"""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

from fastargs import Config, Param, Section
from fastargs.validation import OneOf

from ..base.cli import (FLAG, FLOAT, INT, TEXT, FlagOrAuto, check_types, choices_text, collect,
                        help_text, known_keys)
from ..load.loaders import DECODERS
from .optim import OPTIMIZERS
from .schedules import LR_KEYS, SCHEDULES, key_users
from .checks import check_values
from .shrink import fit_to_epochs, warning as shrink_warning

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
LOSSES = ("ce", "bce")
MIX_MODES = ("batch", "pair", "elem")
ERASE_MODES = ("const", "rand", "pixel")


def _data_keys() -> dict:
    return dict(
        train_dataset=Param(TEXT, ".beton file for training (not needed with eval_only)",
                            default=""),
        val_dataset=Param(TEXT, ".beton file for validation", required=True),
        num_workers=Param(INT, "loader threads per process (0: CPU cores / local processes)",
                          default=0),
        in_memory=Param(FlagOrAuto(), "1: random order over a memory-mapped beton (it fits in "
                        "the page cache); 0: the page-aware order, for betons bigger than "
                        "memory; auto: picked from the betons' size and free memory", default=1),
        window_pages=Param(INT, "in_memory 0: pages whose samples are shuffled together "
                                "(memory per process ~ 3 x this x the page size)", default=32),
        gpu=Param(INT, "CUDA device index for a single-process run (torchrun uses LOCAL_RANK)",
                  default=0),
        seed=Param(INT, "seed for data order, augmentation and model init", default=0),
        loader_timeout=Param(FLOAT, "seconds a loader may produce no batch before the run is "
                                    "ended as stuck (0: wait forever)", default=600),
        decoder=Param(OneOf(DECODERS), "image decoding: fast (crop first, DCT-scaled; "
                      "ffcv_utils/load/decode.py) or ffcv (the stock decoders)", default="fast"),
    )


def _dist_keys() -> dict:
    return dict(
        world_size=Param(INT, "processes the config was written for", default=1),
        address=Param(TEXT, "rendezvous address (use torchrun --master_addr/--rdzv_endpoint)",
                      default="localhost"),
        port=Param(TEXT, "rendezvous port (use torchrun --master_port)", default="12355"),
        timeout=Param(FLOAT, "seconds a collective waits for the other processes before the "
                             "run ends (a dead or hung rank); above the longest checkpoint "
                             "write or first-batch compile", default=900),
    )


def _logging_keys() -> dict:
    return dict(
        folder=Param(TEXT, "runs are written to FOLDER/RUN_ID/", default="logs"),
        log_level=Param(INT, "0: validate only after the last epoch; 1: every epoch; "
                             "2: also per-iteration loss in the progress bar", default=1),
        run_id=Param(TEXT, "name of the run folder (default: a fresh unique id)", default=""),
        tensorboard=Param(INT, "1: TensorBoard event files in RUN_DIR/tensorboard", default=0),
        step_interval=Param(INT, "trackers get loss and LR every N steps", default=50),
        wandb_project=Param(TEXT, "Weights & Biases project (empty: W&B off)", default=""),
        wandb_name=Param(TEXT, "Weights & Biases run name (default: W&B's own)", default=""),
        wandb_mode=Param(TEXT, "Weights & Biases mode: online, offline or disabled",
                         default="online"),
        plot=Param(INT, "1: write RUN_DIR/metrics.png at the end of the run", default=1),
    )


def _lr_keys() -> dict:
    """lr.lr, the schedule and its keys (from ``schedules.SCHEDULES``/``LR_KEYS``), scaling."""
    keys = dict(
        lr=Param(FLOAT, "peak LR for the global batch lr.batch_size_for_lr", default=0.5),
        lr_schedule_type=Param(OneOf(list(SCHEDULES)), choices_text(SCHEDULES),
                               default="cyclic"),
    )
    for key, k in LR_KEYS.items():
        keys[key] = Param(INT if k.kind is int else FLOAT,
                          f"{', '.join(key_users(key))}: {k.help}", default=k.default)
    return dict(
        **keys,
        scale_lr=Param(FLAG, "scale lr.lr linearly to the actual global batch (1/0)", default=1),
        batch_size_for_lr=Param(INT, "global batch lr.lr is meant for (0: training.batch_size x "
                                     "dist.world_size as set by the config files)", default=0),
    )


def _model_keys() -> dict:
    return dict(
        arch=Param(TEXT, "any torchvision classification model, or timm:NAME for any timm "
                             "model (e.g. timm:convnext_tiny)", default="resnet18"),
        pretrained=Param(FLAG, "start from torchvision's (or timm's) pretrained weights (1/0)",
                          default=0),
        weights=Param(TEXT, "weights or checkpoint file (.pt, or .safetensors from export.py) to "
                      "start from / evaluate", default=""),
        num_classes=Param(INT, "0: from the class list beside the training beton", default=0),
        weights_ema=Param(FLAG, "model.weights / eval-only: use a checkpoint's EMA weights when "
                                "it carries them (1/0)", default=1),
    )


def _resolution_keys() -> dict:
    return dict(
        min_res=Param(INT, "training resolution up to start_ramp", default=160),
        max_res=Param(INT, "training resolution from end_ramp", default=160),
        start_ramp=Param(INT, "epoch at which the ramp starts", default=0),
        end_ramp=Param(INT, "epoch at which the ramp ends", default=0),
        schedule=Param(TEXT, "stages 'epoch,size,batch;...' (seed 000's form; batch optional) "
                             "instead of the min/max ramp: the loader is rebuilt when the batch "
                             "changes and the LR scales with it (empty: off)", default=""),
    )


def _training_keys() -> dict:
    return dict(
        eval_only=Param(FLAG, "only evaluate model.weights / the resumed checkpoint", default=0),
        batch_size=Param(INT, "batch size per process", default=512),
        optimizer=Param(OneOf(list(OPTIMIZERS)), choices_text(OPTIMIZERS), default="sgd"),
        momentum=Param(FLOAT, "SGD momentum", default=0.9),
        nesterov=Param(FLAG, "SGD: Nesterov momentum (1/0)", default=0),
        beta1=Param(FLOAT, "adamw, lamb: first moment decay", default=0.9),
        beta2=Param(FLOAT, "adamw, lamb: second moment decay", default=0.999),
        eps=Param(FLOAT, "adamw, lamb: denominator epsilon", default=1e-6),
        loss=Param(OneOf(LOSSES), "ce (cross-entropy) or bce (binary, as ResNet Strikes Back)",
                   default="ce"),
        bce_target_thresh=Param(FLOAT, "bce: soft targets above this become 1, else 0 "
                                       "(0: keep soft targets)", default=0.0),
        clip_grad=Param(FLOAT, "clip the gradient norm to this (0: off)", default=0.0),
        sync_bn=Param(FLAG, "SyncBatchNorm across processes under torchrun, GPUs only (1/0)",
                      default=0),
        checkpoint_every=Param(INT, "also keep checkpoint_epoch_N.pt every N epochs (0: off)",
                               default=0),
        accum_steps=Param(INT, "micro-batches per optimizer step (the LR scaling rule counts "
                               "batch_size x processes x accum_steps)", default=1),
        weight_decay=Param(FLOAT, "weight decay", default=4e-5),
        bn_wd=Param(FLAG, "also decay normalisation-layer parameters (1/0)", default=0),
        bias_wd=Param(FLAG, "also decay biases (1/0)", default=1),
        epochs=Param(INT, "number of epochs", default=30),
        label_smoothing=Param(FLOAT, "label smoothing", default=0.1),
        use_blurpool=Param(FLAG, "BlurPool before strided convs (1/0)", default=0),
        distributed=Param(FLAG, "the config is meant for torchrun with dist.world_size "
                                "processes (1/0)", default=0),
        precision=Param(OneOf(PRECISIONS), "auto (fp16 on CUDA, fp32 on CPU), fp16, bf16, fp32",
                        default="auto"),
        channels_last=Param(FLAG, "channels-last memory format (1/0)", default=1),
        compile=Param(FLAG, "torch.compile the model (1/0)", default=0),
        resume=Param(TEXT, "checkpoint to resume from, or 'auto': logging.folder/run_id's last",
                     default=""),
        checkpoint_minutes=Param(FLOAT, "also save a step checkpoint every M minutes during an "
                                        "epoch, for a mid-epoch resume (0: off; SIGTERM/SIGINT "
                                        "always save one)", default=0.0),
        deterministic=Param(FLAG, "deterministic torch algorithms (1/0): with data.seed, two "
                                  "runs log the same losses", default=0),
    )


def _augment_keys() -> dict:
    return dict(
        mixup_alpha=Param(FLOAT, "mixup Beta(alpha, alpha) (0: off)", default=0.0),
        cutmix_alpha=Param(FLOAT, "cutmix Beta(alpha, alpha) (0: off)", default=0.0),
        mix_prob=Param(FLOAT, "probability that a sample (or batch) is mixed at all", default=1.0),
        switch_prob=Param(FLOAT, "with both on: probability of cutmix instead of mixup",
                          default=0.5),
        mix_mode=Param(OneOf(MIX_MODES), "draw per batch, per pair or per sample (elem)",
                       default="elem"),
        randaug_ops=Param(INT, "RandAugment ops per image (0: off)", default=0),
        randaug_magnitude=Param(FLOAT, "RandAugment magnitude on timm's 0-10 scale (rand-mM)",
                                default=9.0),
        randaug_mstd=Param(FLOAT, "RandAugment magnitude noise std (timm's mstd)", default=0.5),
        erase_prob=Param(FLOAT, "random erasing probability per image (0: off)", default=0.0),
        erase_mode=Param(OneOf(ERASE_MODES), "random erasing fill: const, rand or pixel",
                         default="pixel"),
    )


def _ema_keys() -> dict:
    return dict(
        decay=Param(FLOAT, "EMA decay per update (0: off)", default=0.0),
        every=Param(INT, "update the EMA every N optimizer steps", default=1),
    )


def _validation_keys() -> dict:
    return dict(
        batch_size=Param(INT, "batch size per process", default=512),
        resolution=Param(INT, "validation resolution (centre crop 224/256 of the image)",
                         default=256),
        lr_tta=Param(FLAG, "average logits over left-right flips (1/0)", default=1),
    )


# (section, description, its keys) in the order --help lists them
SECTIONS = [
    ("data", "data", _data_keys),
    ("dist", "distributed training (launch with torchrun)", _dist_keys),
    ("logging", "outputs", _logging_keys),
    ("lr", "learning rate schedule", _lr_keys),
    ("model", "model", _model_keys),
    ("resolution", "progressive resizing", _resolution_keys),
    ("training", "training", _training_keys),
    ("augment", "batch augmentations on the device, per sample, seeded by data.seed",
     _augment_keys),
    ("ema", "exponential moving average of the weights", _ema_keys),
    ("validation", "validation", _validation_keys),
]


def declare_sections(cfg: Config) -> Config:
    """Declare every section and key on ``cfg`` (a fresh fastargs Config: no global state)."""
    for name, desc, keys in SECTIONS:
        Section(name, desc, config_descriptor=cfg).params(**keys())
    return cfg


def load_config(argv: list[str]) -> tuple[SimpleNamespace, dict]:
    """Parse and check ``argv``; return ``(params, meta)`` or raise UserError.

    ``params.section.key`` holds every resolved value. ``meta['file_values']`` holds what the
    config files (and defaults) alone say, which the LR scaling rule needs.
    """
    cfg = declare_sections(Config())
    keys = known_keys(cfg)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(cfg))
        raise SystemExit(0)
    files, file_values, cli_values = collect(cfg, argv, keys)
    check_types(cfg)

    params = SimpleNamespace()
    for path in cfg.entries:
        sec, name = path[0], ".".join(path[1:])
        if not hasattr(params, sec):
            setattr(params, sec, SimpleNamespace())
        setattr(getattr(params, sec), name, cfg[path])

    # What the config files alone (plus defaults) say the recipe's batch was.
    def from_files(key):
        if key in file_values:
            return cfg.entries[tuple(key.split("."))].checker.check(file_values[key])
        return cfg.entries[tuple(key.split("."))].default

    meta = {"config_files": files, "cli": cli_values,
            "recipe_batch_size": from_files("training.batch_size"),
            "recipe_world_size": from_files("dist.world_size"),
            "recipe_accum_steps": from_files("training.accum_steps")}
    # A recipe shortened on the command line runs: its epoch-based keys are scaled to fit.
    recipe_epochs = from_files("training.epochs")
    meta["shrunk"] = fit_to_epochs(params, recipe_epochs, set(cli_values))
    if meta["shrunk"] and os.environ.get("RANK", "0") == "0":
        print(shrink_warning(meta["shrunk"], params.training.epochs, recipe_epochs),
              file=sys.stderr)
    check_values(params)
    return params, meta


def as_flat_dict(p: SimpleNamespace) -> dict:
    """``{'section.key': value}`` for params.json and checkpoints."""
    return {f"{sec}.{k}": v for sec, ns in vars(p).items() for k, v in vars(ns).items()}

