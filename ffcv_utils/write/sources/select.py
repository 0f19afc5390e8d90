"""Which source the writer's options ask for: one function from the ``--cfg`` values to a
``Source``, or None for a plain ImageFolder tree (the writer's own scanning). The forms an option
names (Hugging Face, webdataset, labels for a flat folder) come from ``registry.FORMS``; without
one, ``--cfg.data_dir`` itself says what it is:

    --cfg.data_dir ILSVRC2012_img_train.tar   tar of per-class tars (archives.py)
    --cfg.data_dir DOWNLOADS              a folder holding ImageNet's ILSVRC2012_img_*.tar
                                          (+ the devkit, which labels val)
    --cfg.data_dir KAGGLE_ROOT            Kaggle's unpacked ``imagenet-object-localization-
                                          challenge`` (or its ILSVRC/Data/CLS-LOC): val labelled
                                          by its LOC_val_solution.csv; train is an ImageFolder
                                          tree at data_root(KAGGLE_ROOT)
"""
from __future__ import annotations

from pathlib import Path

from ...base.cli import UserError
from ..classes import given_classes
from .base import Source
from .registry import FORMS, check_options
from .scanned import MAX_CLASSES, check_class_count

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


def _split_images(root: Path, split: str) -> Path:
    """A flat image folder: ``root/split`` when it exists, else ``root`` (or a tar)."""
    return root / split if (root / split).is_dir() else root


def open_source(split: str, *, data_dir: str | Path | None = None,
                class_list: str | Path | list[str] | None = None,
                max_classes: int = MAX_CLASSES, **options) -> Source | None:
    """The source the options (``FORMS``) name, scanned (count, classes, labels checked), or
    None when ``data_dir`` is an ImageFolder tree. ``class_list`` (the train classes: a list, a
    beton, its sidecar or a text file) sets the label order; give it for val so labels agree. A
    source of more than ``max_classes`` classes is refused."""
    chosen = check_options(split, data_dir, options)
    if not isinstance(max_classes, int) or max_classes < 1:
        raise UserError(f"--cfg.max_classes must be a positive number, not {max_classes!r}")
    classes, class_source = given_classes(class_list, "the class list given")
    if classes is not None:
        check_class_count(len(classes), max_classes, f"the class list from {class_source}")
    if chosen and not chosen[0].labels_data_dir:
        source = chosen[0].open(split, options, classes, class_source, max_classes)
    elif data_dir:
        source = _data_dir_source(split, Path(data_dir).expanduser(), options, classes,
                                  class_source, max_classes)
    else:
        return None
    if source is not None:
        check_class_count(len(source.classes), max_classes, source.describe())
    else:
        from .imagefolder import list_classes, resolve_split_dir

        folder = resolve_split_dir(data_root(data_dir), split)
        check_class_count(len(list_classes(folder)), max_classes, f"the class folders of {folder}")
    return source
def _data_dir_source(split, root: Path, options: dict, classes, class_source,
                     max_classes: int) -> Source | None:
    """What ``--cfg.data_dir`` holds, labelled by a ``labels_data_dir`` form when one is given
    (or found: ImageNet's devkit beside its archives, Kaggle's val labels)."""
    if not root.exists():
        raise UserError(f"data {'file' if root.suffix else 'folder'} not found: {root}")
    options = dict(options)
    archive, found_devkit = official_archives(root, split)
    if archive is not None:
        root = archive
        if not options.get("val_labels") and not options.get("devkit") and found_devkit:
            options["devkit"] = found_devkit
    if split == "val" and not (options.get("val_labels") or options.get("devkit")):
        options["val_labels"] = kaggle_labels(root)
    labelling = [f for f in FORMS.values() if f.labels_data_dir and options.get(f.option)]
    if labelling:
        from .labels import LabelledSource

        labels = labelling[0].open(split, options, classes, class_source, max_classes)
        return LabelledSource(_split_images(data_root(root), split), labels, classes,
                              class_source)
    if root.is_file():
        return _archive_source(root, classes, class_source)
    return None


def _archive_source(path: Path, classes, class_source) -> Source:
    from .archives import TarClassesSource, first_member

    first = first_member(path)
    if first is None:
        raise UserError(f"no files in archive {path}")
    if not first.name.endswith(".tar"):
        raise UserError(f"{path} holds images, not per-class tars ({first.name}): label them "
                        "with --cfg.val_labels FILE or --cfg.devkit DEVKIT")
    return TarClassesSource(path, classes, class_source)
