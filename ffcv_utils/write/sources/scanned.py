"""Sources whose scan lists every sample before any image is read (archives, labelled flat
sets, webdataset shards, Hugging Face rows): their labels are known up front, so the writer can
choose a subset (``--cfg.subset``) without reading 150 GB to learn the labels."""
from __future__ import annotations

import copy
from typing import Iterable

from ...base.cli import UserError
from .base import Source

MAX_CLASSES = 100_000  # --cfg.max_classes' default: ImageNet-21k has 21,841


def check_class_count(count: int, max_classes: int, what: str) -> None:
    """Refuse a class count above ``max_classes`` (``what`` says where it came from) before
    a list of that many names is built."""
    if count > max_classes:
        raise UserError(f"{what} makes {count:,} classes, more than --cfg.max_classes "
                        f"{max_classes:,} (raise it if the data set really has that many)")


class ScannedSource(Source):
    """``_items`` holds one tuple per sample in iteration order, its label first; subclasses
    iterate over ``_items`` so a subset is just a shorter list."""

    _items: list[tuple]

    def __len__(self) -> int:
        return len(self._items)

    def labels(self) -> list[int]:
        """Each sample's label in iteration order, without reading any image."""
        return [item[0] for item in self._items]

    def subset(self, positions: Iterable[int]) -> "ScannedSource":
        """A copy that yields only the samples at ``positions`` (in the order given)."""
        out = copy.copy(self)
        out._items = [self._items[i] for i in positions]
        return out
