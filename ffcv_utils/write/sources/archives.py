"""ImageNet's official archives read in place: ``ILSVRC2012_img_train.tar`` (one tar per class
inside) and ``ILSVRC2012_img_val.tar`` (flat JPEGs), without extracting ~150 GB.

A header scan (``untrusted``: bounded, never ``tarfile``) records where each image's bytes lie
in the archive file (headers only: the data is seeked past), so the count is known before any
image is read and iterating is one sequential pass of seeks and reads with no temporary files.
Archives must be uncompressed regular files (ImageNet's are); a compressed tar cannot be
seeked in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from ...base.cli import UserError
from .base import Sample
from .scanned import ScannedSource
from .untrusted import Member, open_tar, read_at, scan_tar, skip_reason, tar_members

__all__ = ["Member", "scan_tar", "scan_nested", "read_members", "TarClassesSource"]


def _inner_members(f, outer: Member, where: str, skipped: list) -> list[Member]:
    """The regular files of a class tar lying at ``outer`` in the file ``f``."""
    out = []
    for m in tar_members(f, where, outer.offset, outer.size):
        why = skip_reason(m)
        if why is None:
            out.append(m)
        elif why:
            skipped.append((f"{where}:{m.name}", why))
    return out


def scan_nested(path: str | Path) -> tuple[list[tuple[str, list[Member]]], list[tuple[str, str]]]:
    """``([(inner tar name, its members), ...], skipped)`` for a tar of tars; member offsets
    are from the start of the outer file. Outer members that are not tars are skipped."""
    path = Path(path)
    inner, skipped = [], []
    with open_tar(path) as f:
        for m in tar_members(f, str(path)):
            where = f"{path}:{m.name}"
            if m.kind == "dir":
                continue
            if m.kind != "file" or not m.name.endswith(".tar"):
                skipped.append((where, skip_reason(m) or "not a class archive (.tar)"))
                continue
            inner.append((m.name, _inner_members(f, m, where, skipped)))
    return inner, skipped


def first_member(path: str | Path) -> Member | None:
    """The first regular file of an uncompressed tar (what kind of archive it is)."""
    with open_tar(Path(path)) as f:
        return next((m for m in tar_members(f, str(path)) if m.kind == "file"), None)


def read_members(members: Iterable[tuple[Path, Member]]) -> Iterator[bytes]:
    """The bytes of each (archive, member), reopening only when the archive changes (one
    sequential pass when the members come in archive order)."""
    f, current = None, None
    try:
        for path, m in members:
            if path != current:
                if f is not None:
                    f.close()
                f, current = open_tar(path), path
            yield read_at(f, m, f"{path}:{m.name}")
    finally:
        if f is not None:
            f.close()


def class_of_archive(name: str) -> str:
    """``n01440764.tar`` (or ``train/n01440764.tar``) -> ``n01440764``."""
    return Path(name).name[: -len(".tar")]


class TarClassesSource(ScannedSource):
    """``ILSVRC2012_img_train.tar``: one inner tar per class, named by the class (its wnid).
    Classes are the sorted inner tar names unless ``classes`` (the train class list) is given;
    samples come class by class in label order, each class in its tar's order."""

    def __init__(self, path: str | Path, classes: list[str] | None = None,
                 class_source: str | None = None):
        self.path = Path(path)
        inner, self.skipped = scan_nested(self.path)
        names = [class_of_archive(n) for n, _ in inner]
        self.classes = list(classes) if classes is not None else sorted(set(names))
        index = {c: i for i, c in enumerate(self.classes)}
        self._items: list[tuple[int, Member]] = []
        for (inner_name, members), name in zip(inner, names):
            if name not in index:
                raise UserError(f"{self.path}:{inner_name}: class {name!r} is not in the class "
                                f"list from {class_source}")
            self._items.extend((index[name], Member(f"{inner_name}:{m.name}", m.offset, m.size))
                               for m in members)
        self._items.sort(key=lambda item: item[0])  # stable: archive order within a class
        if not self._items:
            raise UserError(f"no images in {self.path} (expected one .tar per class inside)")

    def __iter__(self) -> Iterator[Sample]:
        datas = read_members((self.path, m) for _, m in self._items)
        for (label, m), data in zip(self._items, datas):
            yield Sample(f"{self.path}:{m.name}", label, data=data)

    def describe(self) -> str:
        return f"per-class tars in {self.path}"
