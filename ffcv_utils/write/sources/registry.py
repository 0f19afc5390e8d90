"""The registry of source forms a writer option names: ``FORMS`` is the one place to add one, with
its option (``--cfg.<option>``, its help and further options) and the function that opens it. The
writer's options (``write/cli.py``), their checks (``check_options``) and the dispatch
(``select.open_source``) all come from it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ...base.cli import UserError
from .base import Source


@dataclass(frozen=True)
class Form:
    """A source form: ``--cfg.<option>`` selects it (``help`` for --help), ``extras`` are its
    further options (name -> help). ``open(split, options, classes, class_source, max_classes)``
    returns the scanned Source (of at most ``max_classes`` classes); with ``labels_data_dir`` it
    labels the images of ``--cfg.data_dir`` and ``open`` returns the labels for them instead."""

    option: str
    help: str
    open: Callable
    extras: dict = field(default_factory=dict)
    labels_data_dir: bool = False


def _open_hf(split, options, classes, class_source, max_classes) -> Source:
    from .hf import SPLIT_NAMES, HFSource

    return HFSource(options["hf_dataset"], options.get("hf_split") or SPLIT_NAMES[split],
                    image_column=options.get("hf_image_column"),
                    label_column=options.get("hf_label_column"),
                    classes=classes, class_source=class_source,
                    path_root=options.get("hf_path_root"))


def _open_wds(split, options, classes, class_source, max_classes) -> Source:
    from .wds import WdsSource

    return WdsSource(options["wds_shards"], classes, class_source, split, max_classes)


def _csv_labels(split, options, classes, class_source, max_classes) -> dict:
    from .labels import read_labels_csv

    return read_labels_csv(options["val_labels"])


def _devkit_labels(split, options, classes, class_source, max_classes) -> dict:
    from .labels import read_devkit

    return read_devkit(options["devkit"])


# name -> Form, in the order the writer's --help lists their options: the one place to add one
FORMS = {
    "val_labels": Form("val_labels", "labels of a flat folder or tar: Kaggle's "
                                     "LOC_val_solution.csv or a CSV file,class", _csv_labels,
                       labels_data_dir=True),
    "devkit": Form("devkit", "ILSVRC2012 devkit (folder or .tar.gz) labelling the flat val images",
                   _devkit_labels, labels_data_dir=True),
    "hf": Form("hf_dataset", "Hugging Face dataset: a Hub name in the local cache or a folder of "
                             "parquet shards (pip install -e '.[hf]')", _open_hf,
               extras={"hf_split": "its split (default: train, or validation for --split val)",
                       "hf_image_column": "its image column (default: the first Image feature)",
                       "hf_label_column": "its label column (default: the first ClassLabel)",
                       "hf_path_root": "folder that the paths of its rows without image bytes "
                                       "are relative to (default: such rows are skipped, never "
                                       "read)"}),
    "wds": Form("wds_shards", "webdataset .tar shards: a folder or a brace pattern", _open_wds),
}


def source_options() -> dict[str, str]:
    """Every form's options, ``{name: help}``, in the order the writer's --help lists them."""
    return {k: v for f in FORMS.values() for k, v in {f.option: f.help, **f.extras}.items()}


def check_options(split, data_dir, options: dict) -> list[Form]:
    """The forms the options select, refused with one line when they contradict each other."""
    if split not in ("train", "val"):
        raise UserError(f"split must be train or val, not {split!r}")
    unknown = set(options) - set(source_options())
    if unknown:
        raise TypeError(f"unknown source options: {', '.join(sorted(unknown))}")
    chosen = [f for f in FORMS.values() if options.get(f.option)]
    if len(chosen) > 1:
        raise UserError(f"--cfg.{chosen[0].option} and --cfg.{chosen[1].option} name two "
                        "sources; choose one")
    for f in FORMS.values():
        given = [f"--cfg.{k}" for k in f.extras if options.get(k)]
        if given and not options.get(f.option):
            raise UserError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} "
                            f"--cfg.{f.option}")
    if chosen and chosen[0].labels_data_dir and not data_dir:
        raise UserError(f"--cfg.{chosen[0].option} labels the images of --cfg.data_dir; give it")
    return chosen
