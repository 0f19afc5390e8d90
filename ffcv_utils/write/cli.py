"""``write_ffcv.py``'s command line: ``--split`` and ffcv-imagenet's ``--cfg.*`` keys, also
settable in JSON/YAML config files under ``cfg:``; parsed and checked by ``ffcv_utils.base.cli``,
the trainer's parser, so misspelt keys get the same suggestions and one-line errors."""
from __future__ import annotations

import signal
import sys
from dataclasses import asdict
from pathlib import Path

from fastargs import Config, Param, Section
from fastargs.validation import OneOf

from ..base.cli import INT, TEXT, UserError, check_types, collect
from .sources.registry import source_options
from .sources.scanned import MAX_CLASSES
from .writer import (DEFAULT_DATA_DIR, DEFAULT_WRITE_PATH, POS_INT, SPLITS, Settings,
                     Terminated, WriteError, format_summary, write_split)

PROG = "write_ffcv.py"
PARAMS = {  # name: (checker, description, default)
    "dataset": (OneOf(["imagenet", "imagefolder"]),
                "kept for ffcv-imagenet configs: imagenet (any ImageFolder tree)", "imagenet"),
    "split": (OneOf(list(SPLITS)), "train or val (same as --split)", None),
    "data_dir": (TEXT, "folder holding <split>/<class>/<images>, or the split folder itself",
                 DEFAULT_DATA_DIR),
    "write_path": (TEXT, "output .beton ({split} is replaced by the split)", DEFAULT_WRITE_PATH),
    **Settings.options(),
    "num_workers": (INT, "writer processes (default: all CPUs)", None),
    "class_list": (TEXT, "class order for val: a train beton, its .json, or a list", None),
    **{k: (TEXT, help, None) for k, help in source_options().items()},
    "max_classes": (POS_INT, "refuse a source with more classes than this (a damaged label "
                             "file or .cls)", MAX_CLASSES),
}


def help_text() -> str:
    return "\n".join([
        f"usage: {PROG} [--split {{train,val}}] [--config-file FILE ...] [--cfg.key VALUE ...]",
        "", "Write a split (train or val) to an ffcv .beton file and its class list to "
        "<file>.json, from an ImageFolder tree, Kaggle's or ImageNet's archives, a flat folder "
        "+ labels, a Hugging Face dataset or webdataset shards.", "",
        "  --split {train,val}          which split to write",
        "  --config-file, -C FILE       JSON or YAML config file (repeatable)", "",
        "options (also settable in a JSON/YAML config file under 'cfg:'):",
        *(f"  --cfg.{k:<22} {d}" + (f" [default: {v}]" if v is not None else "")
          for k, (_, d, v) in PARAMS.items())])


def parse_args(argv: list[str] | None = None) -> dict:
    """Command line (+ config files) -> keyword arguments for ``write_split``, validated."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        raise SystemExit(0)
    config = Config()
    Section("cfg", "ImageFolder -> .beton writer", config_descriptor=config).params(
        **{k: Param(checker, desc, default=default)
           for k, (checker, desc, default) in PARAMS.items()})
    keys = [f"cfg.{k}" for k in PARAMS]
    _, _, cli = collect(config, argv, keys, cli_only=("split",))
    check_types(config)
    values = {k: config[("cfg", k)] for k in PARAMS}
    split = cli.get("split")
    if split is not None and split not in SPLITS:
        raise UserError(f"--split: expected train or val, got {split!r}")
    if split and values["split"] and split != values["split"]:
        raise UserError(f"--split {split} and --cfg.split {values['split']} disagree")
    split = split or values["split"]
    if not split:
        raise UserError("choose a split: --split train or --split val")
    write_path = Path(values["write_path"].format(split=split))
    if write_path.is_dir():
        write_path = write_path / f"{split}.beton"
    settings = Settings.checked(**{k: values[k] for k in Settings.options()})
    return dict(data_dir=values["data_dir"], split=split, write_path=str(write_path),
                **asdict(settings), num_workers=values["num_workers"],
                class_list=values["class_list"],
                source_options={**{k: values[k] for k in source_options() if values[k]},
                                "max_classes": int(values["max_classes"])})


def main(argv: list[str] | None = None) -> int:
    kwargs = parse_args(argv)
    options = kwargs["source_options"]
    where = options.get("hf_dataset") or options.get("wds_shards") or kwargs["data_dir"]
    print(f"writing {kwargs['split']} from {where} to {kwargs['write_path']} "
          f"(max_resolution={kwargs['max_resolution']}, write_mode={kwargs['write_mode']}, "
          f"compress_probability={kwargs['compress_probability']}, "
          f"jpeg_quality={kwargs['jpeg_quality']})", flush=True)
    try:
        summary = write_split(**kwargs, progress=True)
    except Terminated:
        print(f"{PROG}: terminated; no partial file left", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; no partial file left", file=sys.stderr)
        return 128 + signal.SIGINT
    except WriteError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary), flush=True)
    return 0
