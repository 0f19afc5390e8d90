"""What the writer packs: a data source lists a split's classes and yields its samples; the
packing side never knows whether they came from class folders, an archive, parquet shards or
webdataset tars. A new layout implements ``Source`` and nothing else."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Iterator

from .untrusted import read_regular


@dataclass(frozen=True)
class Sample:
    """One image of a split. Exactly one of ``data`` (the encoded file as the source stores it:
    JPEG, PNG, ...) and ``path`` (a file on disk) is set; ``name`` is how messages and the
    skipped list call it (a path, or ``archive.tar:member``)."""

    name: str
    label: int
    data: bytes | None = None
    path: str | None = None

    def read(self) -> bytes:
        """The encoded image; a path that is no longer a regular file of sane size (a FIFO,
        a device, swapped in since the scan) raises OSError, which the check reports."""
        if self.data is not None:
            return self.data
        return read_regular(self.path)


class Source(abc.ABC):
    """One split of a data set in some layout.

    ``classes[label]`` is the class name (the wnid where the layout has one); ``skipped`` lists
    ``(name, why)`` for entries dropped while scanning (not images, unlabelled). Iteration yields
    every sample once, in a fixed order (labels in ``range(len(classes))``), and ``len`` is their
    count, known before iterating so the beton can be laid out."""

    classes: list[str]
    skipped: list[tuple[str, str]]
    warnings: list[str] = []  # said while scanning, for the summary (never mutated here)

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Sample]: ...

    @abc.abstractmethod
    def __len__(self) -> int: ...

    def labels(self) -> list[int]:
        """Each sample's label in iteration order; layouts that know them from their scan
        (``ScannedSource``) answer without reading any sample."""
        return [s.label for s in self]

    def describe(self) -> str:
        """Words for the summary: which layout was read from where."""
        return type(self).__name__

    def where(self, label: int) -> str | None:
        """Where class ``label``'s samples live, for the warning when none of them is readable
        (None: the source has no place for that class and said so in ``warnings``)."""
        return f"class {self.classes[label]!r} of {self.describe()}"
