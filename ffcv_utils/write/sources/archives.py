"""ImageNet's official archives read in place: ``ILSVRC2012_img_train.tar`` (one tar per class
inside) and ``ILSVRC2012_img_val.tar`` (flat JPEGs), without extracting ~150 GB.

A header scan records where each image's bytes lie in the archive file (headers only: the data
is seeked past), so the count is known before any image is read and iterating is one sequential
pass of seeks and reads with no temporary files. Archives must be uncompressed regular files
(ImageNet's are); a compressed tar cannot be seeked in.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from ...base.cli import UserError
from .base import Sample
from .scanned import ScannedSource


@dataclass(frozen=True, slots=True)
class Member:
    """A regular file inside an archive: its name and where its bytes lie in the archive."""

    name: str
    offset: int
    size: int


def _members(tar: tarfile.TarFile, base: int = 0, prefix: str = "") -> list[Member]:
    out = []
    for info in tar:  # TarFile iteration reads a header, then seeks past the data
        if info.isfile():
            name = info.name[2:] if info.name.startswith("./") else info.name
            out.append(Member(prefix + name, base + info.offset_data, info.size))
    return out


def open_tar(path: Path, fileobj=None) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:", fileobj=fileobj)
    except (tarfile.TarError, OSError) as e:
        why = getattr(e, "strerror", None) or "not an uncompressed tar archive"
        raise UserError(f"cannot read {path} as a tar archive: {why}") from None


def scan_tar(path: str | Path) -> list[Member]:
    """The regular files of an uncompressed tar, in archive order."""
    path = Path(path)
    with open_tar(path) as tar:
        try:
            return _members(tar)
        except tarfile.TarError as e:
            raise UserError(f"{path}: damaged tar archive ({e})") from None


def scan_nested(path: str | Path) -> tuple[list[tuple[str, list[Member]]], list[tuple[str, str]]]:
    """``([(inner tar name, its members), ...], skipped)`` for a tar of tars; member offsets
    are from the start of the outer file. Outer members that are not tars are skipped."""
    path = Path(path)
    inner, skipped = [], []
    with open_tar(path) as outer:
        for info in outer:
            where = f"{path}:{info.name}"
            if not info.isfile():
                continue
            if not info.name.endswith(".tar"):
                skipped.append((where, "not a class archive (.tar)"))
                continue
            with open_tar(Path(where), fileobj=outer.extractfile(info)) as tar:
                try:
                    members = _members(tar, base=info.offset_data)
                except tarfile.TarError as e:
                    raise UserError(f"{where}: damaged tar archive ({e})") from None
            inner.append((info.name, members))
    return inner, skipped


def read_members(members: Iterable[tuple[Path, Member]]) -> Iterator[bytes]:
    """The bytes of each (archive, member), reopening only when the archive changes (one
    sequential pass when the members come in archive order)."""
    f, current = None, None
    try:
        for path, m in members:
            if path != current:
                if f is not None:
                    f.close()
                f, current = open(path, "rb"), path
            f.seek(m.offset)
            data = f.read(m.size)
            if len(data) != m.size:
                raise UserError(f"{path}:{m.name}: archive ends early (did it change?)")
            yield data
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
