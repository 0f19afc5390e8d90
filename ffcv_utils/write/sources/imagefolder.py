"""The ImageFolder layout: ``<data_dir>/<split>/<class>/<image>``, or ``<data_dir>/<class>/<image>``
when ``data_dir`` is the split folder itself.

Classes are the sorted sub-folder names (torchvision order), or a given list (val takes train's,
so the labels of the two splits cannot drift apart): a folder outside that list is refused, a
class without a folder keeps its label with 0 images. Every visible regular file is a
candidate, in torchvision ``ImageFolder`` order (walked by ``untrusted.walk_files``, which
reports what it skips); whether it is an image is decided later by decoding it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from ...base.cli import UserError
from .base import Sample, Source
from .untrusted import visible, walk_files

SPLITS = ("train", "val")


def resolve_split_dir(data_dir: str | Path, split: str) -> Path:
    """``data_dir/split`` when that folder exists, else ``data_dir`` itself (the split folder)."""
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise UserError(f"data folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"data folder is not a folder: {root}")
    if (root / split).is_dir():
        return root / split
    other = [s for s in SPLITS if s != split and (root / s).is_dir()]
    if other:
        raise UserError(f"no {split}/ folder in {root} (found {other[0]}/)")
    return root


def list_classes(split_dir: Path) -> list[str]:
    try:
        entries = [e for e in os.scandir(split_dir) if visible(e.name)]
        names = [e.name for e in entries if e.is_dir()]
    except OSError as e:
        raise UserError(f"cannot read {split_dir}: {e.strerror}") from None
    if not names:
        files = len(entries)
        hint = (f"; it holds {files} files directly: sort them into class folders first "
                "(ImageNet's val/ ships flat, see valprep.sh)") if files else ""
        raise UserError(f"no class folders in {split_dir} "
                        f"(expected {split_dir}/<class name>/<image files>){hint}")
    return sorted(names)


class ImageFolder(Source):
    """One split of an ImageFolder tree. ``classes``: the label order to adopt (``class_source``
    names where it came from, for messages); None: the sorted folder names. ``shuffle_seed``:
    yield the samples in that seed's permutation instead of class by class, so every page of
    the beton mixes the classes (the page-aware order shuffles within a few pages only)."""

    def __init__(self, data_dir: str | Path, split: str, classes: list[str] | None = None,
                 class_source: str | None = None, shuffle_seed: int | None = None):
        self.shuffle_seed = shuffle_seed
        self.root = resolve_split_dir(data_dir, split)
        folders = list_classes(self.root)
        self.skipped, self.warnings = [], []
        self.classes = folders if classes is None else list(classes)
        if classes is not None:
            self._check_folders(folders, class_source)
        self._folders = set(folders)
        self._files = []
        for c in self.classes:
            files, skipped = (walk_files(self.root / c, self.root) if c in self._folders
                              else ([], []))
            self._files.append(files)
            self.skipped += [(os.path.relpath(f, self.root), why) for f, why in skipped]

    def _check_folders(self, folders: list[str], class_source: str | None) -> None:
        known = set(self.classes)
        unknown = [f for f in folders if f not in known]
        if unknown:
            raise UserError(f"class folder {self.root / unknown[0]} is not in the class list "
                            f"from {class_source} ({len(unknown)} such folders)")
        missing = [c for c in self.classes if c not in set(folders)]
        if missing:
            self.warnings.append(
                f"{len(missing)} classes of {class_source} have no folder in {self.root} "
                f"(e.g. {missing[0]!r}); they keep their labels with 0 images")

    def __iter__(self) -> Iterator[Sample]:
        pairs = [(label, f) for label, files in enumerate(self._files) for f in files]
        if self.shuffle_seed is not None:
            order = np.random.default_rng(self.shuffle_seed).permutation(len(pairs))
            pairs = [pairs[i] for i in order]
        for label, f in pairs:
            yield Sample(os.path.relpath(f, self.root), label, path=f)

    def __len__(self) -> int:
        return sum(map(len, self._files))

    def describe(self) -> str:
        return str(self.root)

    def where(self, label: int) -> str | None:
        c = self.classes[label]
        return f"class folder {self.root / c}" if c in self._folders else None
