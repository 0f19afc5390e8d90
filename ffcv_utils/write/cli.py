"""``write_ffcv.py``'s command line: ``--split`` and ffcv-imagenet's ``--cfg.*`` keys, also
settable in JSON/YAML config files under ``cfg:``; parsed and checked by ``ffcv_utils.config``,
the trainer's parser, so misspelt keys get the same suggestions and one-line errors."""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from fastargs import Config, Param, Section
from fastargs.validation import And, InRange, OneOf

from ..base.cli import UserError
from ..train.config import FLAG, FLOAT, INT, TEXT, check_types, collect
from .writer import (DEFAULT_DATA_DIR, DEFAULT_WRITE_PATH, PUBLISHED, SPLITS, WRITE_MODES,
                     Terminated, WriteError, format_summary, write_split)

PROG = "write_ffcv.py"
POS_INT = And(INT, InRange(min=1))
PARAMS = {  # name: (checker, description, default)
    "dataset": (OneOf(["imagenet", "imagefolder"]),
                "kept for ffcv-imagenet configs: imagenet (any ImageFolder tree)", "imagenet"),
    "split": (OneOf(list(SPLITS)), "train or val (same as --split)", None),
    "data_dir": (TEXT, "folder holding <split>/<class>/<images>, or the split folder itself",
                 DEFAULT_DATA_DIR),
    "write_path": (TEXT, "output .beton ({split} is replaced by the split)", DEFAULT_WRITE_PATH),
    "max_resolution": (POS_INT, "longest side of stored images (larger ones are shrunk)",
                       PUBLISHED["max_resolution"]),
    "write_mode": (OneOf(list(WRITE_MODES)), "raw, smart, jpg or proportion",
                   PUBLISHED["write_mode"]),
    "compress_probability": (And(FLOAT, InRange(0, 1)),
                             "share of images stored as JPEG in proportion mode",
                             PUBLISHED["compress_probability"]),
    "jpeg_quality": (And(FLOAT, InRange(1, 100)), "JPEG quality of compressed images",
                     PUBLISHED["jpeg_quality"]),
    "reencode": (FLAG, "1: re-encode source JPEGs; 0: store those needing no resize as they are",
                 0),
    "shuffle": (FLAG, "train: write the images in a seeded shuffled order, so each page mixes "
                      "the classes (for the trainer's page-aware order); 0: folder order", 1),
    "num_workers": (INT, "writer processes (default: all CPUs)", None),
    "chunk_size": (POS_INT, "images per work item", 100),
    "subset": (INT, "write only this many images, spread over the classes (-1: all)", -1),
    "class_list": (TEXT, "class order for val: a train beton, its .json, or a list", None),
    "val_labels": (TEXT, "labels of a flat folder or tar: Kaggle's LOC_val_solution.csv or a "
                         "CSV file,class", None),
    "devkit": (TEXT, "ILSVRC2012 devkit (folder or .tar.gz) labelling the flat val images",
               None),
    "hf_dataset": (TEXT, "Hugging Face dataset: a Hub name in the local cache or a folder of "
                         "parquet shards (pip install -e '.[hf]')", None),
    "hf_split": (TEXT, "its split (default: train, or validation for --split val)", None),
    "hf_image_column": (TEXT, "its image column (default: the first Image feature)", None),
    "hf_label_column": (TEXT, "its label column (default: the first ClassLabel)", None),
    "wds_shards": (TEXT, "webdataset .tar shards: a folder or a brace pattern", None),
}
SOURCE_KEYS = ("val_labels", "devkit", "hf_dataset", "hf_split", "hf_image_column",
               "hf_label_column", "wds_shards")


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
    return dict(data_dir=values["data_dir"], split=split, write_path=str(write_path),
                max_resolution=values["max_resolution"], write_mode=values["write_mode"],
                compress_probability=values["compress_probability"],
                jpeg_quality=int(values["jpeg_quality"]), num_workers=values["num_workers"],
                chunk_size=values["chunk_size"], subset=values["subset"],
                reencode=bool(values["reencode"]), shuffle=bool(values["shuffle"]),
                class_list=values["class_list"],
                source_options={k: values[k] for k in SOURCE_KEYS if values[k]})


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
