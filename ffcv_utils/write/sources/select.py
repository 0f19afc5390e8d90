"""Which source the writer's options ask for: one function from the ``--cfg`` values to a
``Source``, or None for a plain ImageFolder tree (the writer's own scanning).

    --cfg.hf_dataset NAME_OR_PATH         Hugging Face dataset (hf.py)
    --cfg.wds_shards FOLDER_OR_PATTERN    webdataset shards (wds.py)
    --cfg.data_dir X --cfg.val_labels F   flat folder/tar labelled by a CSV (labels.py)
    --cfg.data_dir X --cfg.devkit D       flat folder/tar labelled by the ILSVRC2012 devkit
    --cfg.data_dir ILSVRC2012_img_train.tar   tar of per-class tars (archives.py)
    --cfg.data_dir DOWNLOADS              a folder holding ImageNet's ILSVRC2012_img_*.tar
                                          (+ the devkit, which labels val)
    --cfg.data_dir KAGGLE_ROOT            Kaggle's unpacked ``imagenet-object-localization-
                                          challenge`` (or its ILSVRC/Data/CLS-LOC): val labelled
                                          by its LOC_val_solution.csv; train is an ImageFolder
                                          tree at data_root(KAGGLE_ROOT)
"""
from __future__ import annotations

import tarfile
from pathlib import Path

from ...base.cli import UserError
from .base import Source

KAGGLE_DATA = Path("ILSVRC/Data/CLS-LOC")
KAGGLE_LABELS = "LOC_val_solution.csv"
DEVKITS = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_devkit_t12")


def data_root(data_dir: str | Path) -> Path:
    """The folder holding the splits: ``ILSVRC/Data/CLS-LOC`` inside Kaggle's unpacked root,
    else ``data_dir`` itself (what the ImageFolder scan should be given)."""
    root = Path(data_dir).expanduser()
    return root / KAGGLE_DATA if (root / KAGGLE_DATA).is_dir() else root


def kaggle_labels(data_dir: str | Path) -> Path | None:
    """Kaggle's ``LOC_val_solution.csv`` when ``data_dir`` is the unpacked root or lies in its
    ``ILSVRC/Data/CLS-LOC`` (so val needs no labels option), else None."""
    path = Path(data_dir).expanduser().absolute()
    for root in (path, *list(path.parents)[:4]):
        data = root / KAGGLE_DATA
        if data.is_dir() and (root == path or path.is_relative_to(data)):
            return root / KAGGLE_LABELS if (root / KAGGLE_LABELS).is_file() else None
    return None


def official_archives(folder: Path, split: str) -> tuple[Path | None, Path | None]:
    """``(ILSVRC2012_img_<split>.tar, devkit)`` in a folder of ImageNet's downloads (one that
    has no ``<split>/`` folder), else ``(None, None)``; a devkit (for val) where one lies there."""
    archive = folder / f"ILSVRC2012_img_{split}.tar"
    if not folder.is_dir() or (folder / split).is_dir() or not archive.is_file():
        return None, None
    devkits = [folder / d for d in DEVKITS if (folder / d).exists()] if split == "val" else []
    return archive, (devkits or [None])[0]


def _class_list(class_list) -> tuple[list[str] | None, str | None]:
    if class_list is None:
        return None, None
    if isinstance(class_list, (list, tuple)):
        return [str(c) for c in class_list], "the class list given"
    from ..writer import read_class_list

    return read_class_list(class_list), str(class_list)


def _split_images(root: Path, split: str) -> Path:
    """A flat image folder: ``root/split`` when it exists, else ``root`` (or a tar)."""
    return root / split if (root / split).is_dir() else root


def _first_member(path: Path) -> tarfile.TarInfo | None:
    from .archives import open_tar

    with open_tar(path) as tar:
        return next((m for m in tar if m.isfile()), None)


def _check_options(split, data_dir, val_labels, devkit, hf_dataset, hf_options, wds_shards):
    if split not in ("train", "val"):
        raise UserError(f"split must be train or val, not {split!r}")
    chosen = [name for name, v in (("--cfg.hf_dataset", hf_dataset),
                                   ("--cfg.wds_shards", wds_shards),
                                   ("--cfg.val_labels", val_labels),
                                   ("--cfg.devkit", devkit)) if v]
    if len(chosen) > 1:
        raise UserError(f"{chosen[0]} and {chosen[1]} name two sources; choose one")
    if any(hf_options) and not hf_dataset:
        raise UserError("--cfg.hf_split and --cfg.hf_*_column need --cfg.hf_dataset")
    if (val_labels or devkit) and not data_dir:
        raise UserError(f"{chosen[0]} labels the images of --cfg.data_dir; give it")


def open_source(split: str, *, data_dir: str | Path | None = None,
                val_labels: str | Path | None = None, devkit: str | Path | None = None,
                hf_dataset: str | None = None, hf_split: str | None = None,
                hf_image_column: str | None = None, hf_label_column: str | None = None,
                wds_shards: str | None = None,
                class_list: str | Path | list[str] | None = None) -> Source | None:
    """The source the options name, scanned (count, classes, labels checked), or None when
    ``data_dir`` is an ImageFolder tree. ``class_list`` (the train classes: a list, a beton,
    its sidecar or a text file) sets the label order; give it for val so labels agree."""
    _check_options(split, data_dir, val_labels, devkit, hf_dataset,
                   (hf_split, hf_image_column, hf_label_column), wds_shards)
    classes, class_source = _class_list(class_list)
    if hf_dataset:
        from .hf import SPLIT_NAMES, HFSource

        return HFSource(hf_dataset, hf_split or SPLIT_NAMES[split], image_column=hf_image_column,
                        label_column=hf_label_column, classes=classes, class_source=class_source)
    if wds_shards:
        from .wds import WdsSource

        return WdsSource(wds_shards, classes, class_source, split)
    if not data_dir:
        return None
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise UserError(f"data {'file' if root.suffix else 'folder'} not found: {root}")
    archive, found_devkit = official_archives(root, split)
    if archive is not None:
        root, devkit = archive, devkit or (None if val_labels else found_devkit)
    if split == "val" and not (val_labels or devkit):
        val_labels = kaggle_labels(root)
    if val_labels or devkit:
        from .labels import LabelledSource, read_devkit, read_labels_csv

        labels = read_labels_csv(val_labels) if val_labels else read_devkit(devkit)
        return LabelledSource(_split_images(data_root(root), split), labels, classes,
                              class_source)
    if root.is_file():
        return _archive_source(root, classes, class_source)
    return None


def _archive_source(path: Path, classes, class_source) -> Source:
    from .archives import TarClassesSource

    first = _first_member(path)
    if first is None:
        raise UserError(f"no files in archive {path}")
    if not first.name.endswith(".tar"):
        raise UserError(f"{path} holds images, not per-class tars ({first.name}): label them "
                        "with --cfg.val_labels FILE or --cfg.devkit DEVKIT")
    return TarClassesSource(path, classes, class_source)
