"""The trainer's configuration: fastargs Sections (the one place every key is declared) plus the
strict checking that fastargs leaves out.

fastargs silently ignores unknown keys in config files, exits with status 0 on invalid values and
also reads environment variables. Here config files and ``--section.key value`` arguments are
parsed by us, every key is checked against the declared Sections (misspellings are refused with a
suggestion), values are type-checked through fastargs (``validate(mode='errordict')``) and then
checked for sense. Any problem is one ``UserError`` line naming the key, before any work starts.
Environment variables are deliberately not read: a config should be reproducible from its files
and command line alone.

Every key of the public ffcv-imagenet configs is accepted unchanged.
"""
from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from fastargs import Config, Param, Section
from fastargs.validation import Checker, OneOf

from ..base.cli import UserError
from .schedules import SCHEDULES
from .shrink import fit_to_epochs, warning as shrink_warning

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
OPTIMIZERS = ("sgd", "adamw", "lamb")
LOSSES = ("ce", "bce")
MIX_MODES = ("batch", "pair", "elem")
ERASE_MODES = ("const", "rand", "pixel")
# Image decoders: "fast" (ffcv_utils.load.decode: crop-first, DCT-scaled) or ffcv's stock ones.
DECODERS = ("fast", "ffcv")


class StrictInt(Checker):
    """An int; integral floats and numeric strings pass, 1.5 or 'abc' do not (fastargs truncates)."""

    def check(self, value):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise TypeError(value)

    def help(self):
        return "an integer"


class StrictFloat(Checker):
    def check(self, value):
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)

    def help(self):
        return "a number"


class Flag(Checker):
    """0/1, also true/false (the public configs write ``lr_tta: true``)."""

    TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}

    def check(self, value):
        if isinstance(value, bool) or value in (0, 1):
            return int(value)
        if isinstance(value, str) and value.strip().lower() in self.TRUE | self.FALSE:
            return int(value.strip().lower() in self.TRUE)
        raise ValueError(value)

    def help(self):
        return "0 or 1"


class FlagOrAuto(Flag):
    """0/1, or ``auto``: the run decides (data.in_memory: from the betons' size and memory)."""

    def check(self, value):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return super().check(value)

    def help(self):
        return "0, 1 or auto"


class Text(Checker):
    """A string; YAML numbers (``port: 12355``) are accepted as their text."""

    def check(self, value):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(value)

    def help(self):
        return "a string"


INT, FLOAT, FLAG, TEXT = StrictInt(), StrictFloat(), Flag(), Text()


def declare_sections(cfg: Config) -> Config:
    """Declare every section and key on ``cfg`` (a fresh fastargs Config: no global state)."""
    def section(name, desc):
        return Section(name, desc, config_descriptor=cfg)

    section("data", "data").params(
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
                      "ffcv_utils/fast_decode.py) or ffcv (the stock decoders)", default="fast"),
    )
    section("dist", "distributed training (launch with torchrun)").params(
        world_size=Param(INT, "processes the config was written for", default=1),
        address=Param(TEXT, "rendezvous address (use torchrun --master_addr/--rdzv_endpoint)",
                      default="localhost"),
        port=Param(TEXT, "rendezvous port (use torchrun --master_port)", default="12355"),
        timeout=Param(FLOAT, "seconds a collective waits for the other processes before the "
                             "run ends (a dead or hung rank); above the longest checkpoint "
                             "write or first-batch compile", default=900),
    )
    section("logging", "outputs").params(
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
    section("lr", "learning rate schedule").params(
        lr=Param(FLOAT, "peak LR for the global batch lr.batch_size_for_lr", default=0.5),
        lr_schedule_type=Param(OneOf(SCHEDULES), "cyclic, step, cosine or onecycle",
                               default="cyclic"),
        lr_peak_epoch=Param(FLOAT, "cyclic: epoch at which the LR peaks", default=2),
        step_ratio=Param(FLOAT, "step: LR multiplier at each step", default=0.1),
        step_length=Param(INT, "step: epochs between steps", default=30),
        warmup_epochs=Param(FLOAT, "step, cosine: linear warm-up epochs", default=0),
        pct_start=Param(FLOAT, "onecycle: fraction of training spent warming up", default=0.3),
        scale_lr=Param(FLAG, "scale lr.lr linearly to the actual global batch (1/0)", default=1),
        batch_size_for_lr=Param(INT, "global batch lr.lr is meant for (0: training.batch_size x "
                                     "dist.world_size as set by the config files)", default=0),
    )
    section("model", "model").params(
        arch=Param(TEXT, "any torchvision classification model, or timm:NAME for any timm "
                             "model (e.g. timm:convnext_tiny)", default="resnet18"),
        pretrained=Param(FLAG, "start from torchvision's (or timm's) pretrained weights (1/0)",
                          default=0),
        weights=Param(TEXT, "weights or checkpoint file to start from / evaluate", default=""),
        num_classes=Param(INT, "0: from the class list beside the training beton", default=0),
        weights_ema=Param(FLAG, "model.weights / eval-only: use a checkpoint's EMA weights when "
                                "it carries them (1/0)", default=1),
    )
    section("resolution", "progressive resizing").params(
        min_res=Param(INT, "training resolution up to start_ramp", default=160),
        max_res=Param(INT, "training resolution from end_ramp", default=160),
        start_ramp=Param(INT, "epoch at which the ramp starts", default=0),
        end_ramp=Param(INT, "epoch at which the ramp ends", default=0),
        schedule=Param(TEXT, "stages 'epoch,size,batch;...' (seed 000's form; batch optional) "
                             "instead of the min/max ramp: the loader is rebuilt when the batch "
                             "changes and the LR scales with it (empty: off)", default=""),
    )
    section("training", "training").params(
        eval_only=Param(FLAG, "only evaluate model.weights / the resumed checkpoint", default=0),
        batch_size=Param(INT, "batch size per process", default=512),
        optimizer=Param(OneOf(OPTIMIZERS), "sgd, adamw or lamb", default="sgd"),
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
    section("augment", "batch augmentations on the device, per sample, seeded by data.seed").params(
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
    section("ema", "exponential moving average of the weights").params(
        decay=Param(FLOAT, "EMA decay per update (0: off)", default=0.0),
        every=Param(INT, "update the EMA every N optimizer steps", default=1),
    )
    section("validation", "validation").params(
        batch_size=Param(INT, "batch size per process", default=512),
        resolution=Param(INT, "validation resolution (centre crop 224/256 of the image)",
                         default=256),
        lr_tta=Param(FLAG, "average logits over left-right flips (1/0)", default=1),
    )
    return cfg


def known_keys(cfg: Config) -> list[str]:
    return [".".join(path) for path in cfg.entries]


def _suggest(key: str, keys: list[str]) -> str:
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def read_config_file(path: str, keys: list[str]) -> dict:
    """A YAML/JSON config file as ``{'section.key': value}``; unknown keys are refused."""
    import yaml

    if not Path(path).is_file():
        raise UserError(f"config file not found: {path}")
    try:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping of sections to keys")
    flat = _flatten(tree)
    for key in flat:
        if key not in keys:
            raise UserError(f"{path}: unknown key {key!r}{_suggest(key, keys)}")
    return flat


def parse_argv(argv: list[str], keys: list[str]) -> tuple[list[str], dict]:
    """``(config files, {'section.key': value})`` from ``-C F``/``--config-file F``/``--a.b v``."""
    files, values = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            raise UserError(f"unexpected argument {arg!r} (options look like --section.key VALUE)")
        name, eq, value = arg.partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise UserError(f"{name} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if name in ("-C", "--config-file"):
            files.append(value)
            continue
        key = name.lstrip("-")
        if key not in keys:
            raise UserError(f"unknown option --{key}{_suggest(key, keys)}")
        values[key] = value
    return files, values


def collect(cfg: Config, argv: list[str], keys: list[str],
            cli_only: tuple[str, ...] = ()) -> tuple[list[str], dict, dict]:
    """Config files, then ``--key value`` arguments (which win) into ``cfg``. Returns
    ``(files, {key: value} from the files, {key: value} from the command line)``; ``cli_only``
    names options outside ``cfg`` (the writer's ``--split``), returned with the others."""
    files, cli_values = parse_argv(argv, keys + list(cli_only))
    file_values: dict = {}
    for f in files:
        flat = read_config_file(f, keys)
        file_values.update({k: v for k, v in flat.items() if v is not None})
        cfg.collect(_nest(flat))
    cfg.collect(_nest({k: v for k, v in cli_values.items() if k not in cli_only}))
    return files, file_values, cli_values


def check_types(cfg: Config) -> None:
    """One UserError line for the first key, in declaration order, that is missing or whose
    value fastargs refuses."""
    errors = cfg.validate(mode="errordict")
    for path in cfg.entries:
        if path in errors:
            key = ".".join(path)
            param = cfg.entries[path]
            if param.required and path not in cfg.content:
                raise UserError(f"{key} is required (give --{key} VALUE)")
            raise UserError(f"{key}: expected {param.checker.help()}, got "
                            f"{cfg.content.get(path)!r}")


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def help_text(cfg: Config) -> str:
    lines = ["usage: train_imagenet.py [--config-file FILE ...] [--section.key VALUE ...]", ""]
    for path, param in cfg.entries.items():
        default = "required" if param.required else f"default {param.default!r}"
        lines.append(f"  --{'.'.join(path):28s} {param.desc} ({default})")
    return "\n".join(lines)


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


def _need(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise UserError(f"{key}: {why}")


def check_values(p: SimpleNamespace) -> None:
    """Refuse nonsense values, naming the key. Runs before any data or model is touched."""
    from .models import TIMM_PREFIX, check_arch

    t, r, lr, v = p.training, p.resolution, p.lr, p.validation
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
    _need(lr.lr > 0, "lr.lr", f"must be positive, got {lr.lr}")
    if lr.lr_schedule_type == "cyclic":
        _need(0 <= lr.lr_peak_epoch <= t.epochs, "lr.lr_peak_epoch",
              f"must be between 0 and training.epochs ({t.epochs}), got {lr.lr_peak_epoch}")
    _need(0 < lr.step_ratio <= 1, "lr.step_ratio", f"must be in (0, 1], got {lr.step_ratio}")
    _need(lr.step_length >= 1, "lr.step_length", f"must be at least 1, got {lr.step_length}")
    _need(0 <= lr.warmup_epochs < t.epochs, "lr.warmup_epochs",
          f"must be in [0, training.epochs), got {lr.warmup_epochs}")
    _need(0 < lr.pct_start < 1, "lr.pct_start", f"must be in (0, 1), got {lr.pct_start}")
    _need(lr.batch_size_for_lr >= 0, "lr.batch_size_for_lr",
          f"must be >= 0, got {lr.batch_size_for_lr}")
    _need(0 <= t.momentum < 1, "training.momentum", f"must be in [0, 1), got {t.momentum}")
    _need(t.weight_decay >= 0, "training.weight_decay", f"must be >= 0, got {t.weight_decay}")
    _need(0 <= t.label_smoothing < 1, "training.label_smoothing",
          f"must be in [0, 1), got {t.label_smoothing}")
    check_recipe(p)
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
    check_arch(p.model.arch)
    if (p.model.pretrained and not p.model.arch.startswith(TIMM_PREFIX)
            and p.model.num_classes not in (0, 1000)):
        raise UserError("model.pretrained: torchvision's weights have 1000 classes, "
                        f"model.num_classes is {p.model.num_classes}")
    if p.model.weights:
        _need(Path(p.model.weights).is_file(), "model.weights",
              f"file not found: {p.model.weights}")
    resume = t.resume
    if resume and resume != "auto":
        _need(Path(resume).is_file(), "training.resume", f"file not found: {resume}")
    if t.eval_only:
        _need(bool(p.model.weights or p.model.pretrained or resume), "training.eval_only",
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
        from .schedules import parse_stages

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


def as_flat_dict(p: SimpleNamespace) -> dict:
    """``{'section.key': value}`` for params.json and checkpoints."""
    return {f"{sec}.{k}": v for sec, ns in vars(p).items() for k, v in vars(ns).items()}

