"""The evaluation sets as they ship, read for the writer: class folders in a folder or in a
``.tar``/``.tar.gz`` (ImageNetV2, ImageNet-R, -A and -Sketch), each folder mapped to one of
the run's labels, and ImageNet-ReaL's ``real.json`` matched to the val beton's samples.

Folder names become labels by the suite's rule: ImageNetV2's ``0`` ... ``999`` are class
indices in ImageNet's sorted-wnid order (the run's class list must be sorted); the others are
wnids of the run's classes. Every mismatch is one ``UserError`` naming the first offender.
Archives go through the writer's untrusted tar reader (``write.sources.untrusted``: bounded
header parsing, never ``tarfile``): an uncompressed tar is scanned, then read in place by seeks;
a compressed one (gzip, bzip2, xz), which cannot be seeked in, is streamed once to list and once
to read, and may expand to at most ``EXPAND_RATIO`` times its size.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np

from ..base.cli import UserError
from ..write.sources.archives import Member, read_members, scan_tar
from ..write.sources.base import Sample
from ..write.sources.untrusted import (EXPAND_CAP, is_compressed, regular_members,
                                       stream_tar, walk_files)
from ..write.sources.scanned import ScannedSource

MAX_MEMBER = 64 << 20  # an archive member larger than this is no image of these sets: skipped
MAX_REAL_JSON = 256 << 20  # ImageNet's real.json is ~1 MB
# A tar of JPEGs barely compresses (ImageNetV2's .tar.gz expands by ~1.05); a bomb expands by
# hundreds: a compressed set may expand to this many times its size (at least EXPAND_CAP).
EXPAND_RATIO = 16
VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d+)")


# --------------------------------------------------------------------------------------------
# Listing: (class folder, name, where the bytes are) for every file of a set


def _visible(parts) -> bool:
    return parts and not any(p.startswith(".") or p in ("", "..") for p in parts)


def _unwrap(paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Drop wrapping folders (``imagenet-r/<wnid>/x.jpg`` -> ``<wnid>/x.jpg``): while every
    path shares its first folder and lies at least two folders deep."""
    while paths and len({p[0] for p in paths}) == 1 and all(len(p) >= 3 for p in paths):
        paths = [p[1:] for p in paths]
    return paths


def _class_root(folder: Path) -> Path:
    """The folder holding the class folders: ``folder``, or below its single wrapping folder."""
    while True:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            return folder
        inner = [e for e in os.scandir(entries[0].path) if not e.name.startswith(".")]
        if not inner or not all(e.is_dir() for e in inner):
            return folder
        folder = Path(entries[0].path)


def list_folder(folder: Path) -> tuple[list[tuple[str, str, object]], list[tuple[str, str]]]:
    """``([(class folder, sample name, file path)], skipped)`` of a folder of class folders."""
    try:
        root = _class_root(folder)
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir()
                         and not e.name.startswith("."))
        loose = sorted(e.name for e in os.scandir(root) if e.is_file()
                       and not e.name.startswith("."))
        rows, skipped = [], [(str(root / f), "not in a class folder") for f in loose]
        for c in classes:  # walked as the writer walks (regular files, links kept inside)
            files, bad = walk_files(root / c, root)
            rows += [(c, os.path.relpath(f, root), f) for f in files]
            skipped += bad
    except OSError as e:
        raise UserError(f"cannot read {folder}: {e.strerror}") from None
    return rows, skipped


def _stream(path: Path, wanted=lambda m: False):
    """``stream_tar`` over a compressed set, its expansion bounded by its size."""
    cap = max(EXPAND_CAP, EXPAND_RATIO * path.stat().st_size)
    return stream_tar(path, wanted, cap=MAX_MEMBER, expand_cap=cap)


def _scan_compressed(path: Path) -> tuple[list[Member], list[tuple[str, str]]]:
    """``scan_tar`` for a compressed tar: one streamed pass, nothing read but headers."""
    return regular_members(path, (m for m, _ in _stream(path)))


def list_tar(path: Path) -> tuple[list[tuple[str, str, object]], list[tuple[str, str]]]:
    """``([(class folder, sample name, Member)], skipped)`` of a tar of class folders."""
    members, skipped = _scan_compressed(path) if is_compressed(path) else scan_tar(path)
    kept = []
    for m in members:
        parts = tuple(m.name.removeprefix("./").split("/"))
        if not _visible(parts):
            continue
        if m.size > MAX_MEMBER:
            skipped.append((f"{path}:{m.name}", f"larger than {MAX_MEMBER >> 20} MiB"))
        else:
            kept.append((parts, m))
    paths = _unwrap([p for p, _ in kept])
    rows = []
    for short, (_, m) in zip(paths, kept):
        if len(short) < 2:
            skipped.append((f"{path}:{m.name}", "not in a class folder"))
        else:
            rows.append((short[0], f"{path}:{m.name}", m))
    return rows, skipped


def list_set(path: Path, option: str) -> tuple[list, list]:
    """The files of a set given as a folder or a tar(.gz); one line when it is neither."""
    if path.is_dir():
        return list_folder(path)
    if path.is_file():
        return list_tar(path)
    raise UserError(f"{option}: no such folder or archive: {path}")


def _read_compressed(path: Path, wanted: list[Member]) -> Iterator[bytes]:
    """The bytes of the members ``wanted`` (listed by ``_scan_compressed``, in archive order),
    one streamed pass."""
    offsets = {m.offset for m in wanted}
    found = (data for m, data in _stream(path, lambda m: m.offset in offsets) if data is not None)
    count = 0
    for data in found:
        count += 1
        yield data
    if count < len(wanted):
        raise UserError(f"{path}: archive ends early (did it change?)")


# --------------------------------------------------------------------------------------------
# The source the writer packs


class SetSource(ScannedSource):
    """A set's files labelled by ``labels`` (class folder -> the run's label), under the run's
    ``classes``; samples in folder order (class by class) or archive order."""

    def __init__(self, path: Path, rows: list, skipped: list, labels: dict[str, int],
                 classes: list[str]):
        self.path, self.classes, self.skipped = path, list(classes), list(skipped)
        self._items = [(labels[folder], name, where) for folder, name, where in rows]
        self._named = set(labels.values())
        if not self._items:
            raise UserError(f"no images in {path}")

    def __iter__(self) -> Iterator[Sample]:
        if self.path.is_dir():
            for label, name, file in self._items:
                yield Sample(name, label, path=str(file))
            return
        if is_compressed(self.path):
            datas = _read_compressed(self.path, [m for _, _, m in self._items])
        else:
            datas = read_members((self.path, m) for _, _, m in self._items)
        for (label, name, _), data in zip(self._items, datas):
            yield Sample(name, label, data=data)

    def describe(self) -> str:
        return str(self.path)

    def where(self, label: int) -> str | None:
        """Only a class the set names can be missing images (R and A name 200 of 1,000)."""
        return f"class {self.classes[label]!r} of {self.path}" if label in self._named else None


# --------------------------------------------------------------------------------------------
# Class folders -> the run's labels, per suite


def first_unsorted(classes: list[str]) -> int | None:
    """The first label whose class sorts before the one above it, or None when sorted."""
    return next((i for i in range(1, len(classes)) if classes[i] < classes[i - 1]), None)


def require_sorted(classes: list[str], what: str) -> None:
    i = first_unsorted(classes)
    if i is not None:
        raise UserError(f"{what} numbers classes in ImageNet's sorted-wnid order, but the run's "
                        f"class list is not sorted (label {i} {classes[i]!r} comes after "
                        f"{classes[i - 1]!r})")


def index_labels(folders: list[str], classes: list[str], option: str) -> dict[str, int]:
    """ImageNetV2: folder ``i`` is the run's class ``i`` (its classes in sorted order)."""
    require_sorted(classes, option)
    out = {}
    for f in sorted(folders, key=lambda f: (len(f), f)):
        if not f.isdigit():
            raise UserError(f"{option}: folder {f!r} is not a class index (0, 1, ...)")
        if int(f) >= len(classes):
            raise UserError(f"{option}: folder {f} is beyond the run's {len(classes)} classes "
                            f"(0 ... {len(classes) - 1})")
        out[f] = int(f)
    return out


def wnid_labels(folders: list[str], classes: list[str], option: str) -> dict[str, int]:
    """ImageNet-R, -A, -Sketch: each folder is a class of the run, by name."""
    if len(folders) > len(classes):
        raise UserError(f"{option}: {len(folders)} class folders, more than the run's "
                        f"{len(classes)} classes")
    index = {c: i for i, c in enumerate(classes)}
    unknown = [f for f in sorted(folders) if f not in index]
    if unknown:
        raise UserError(f"{option}: class folder {unknown[0]!r} is not one of the run's classes "
                        f"({len(unknown)} such folders)")
    return {f: index[f] for f in folders}


def open_set(path: str | Path, option: str, classes: list[str], to_labels) -> SetSource:
    """The set at ``path`` (a folder or a tar(.gz) of class folders) labelled by ``to_labels``."""
    path = Path(path).expanduser()
    rows, skipped = list_set(path, option)
    labels = to_labels(sorted({folder for folder, _, _ in rows}), classes, option)
    return SetSource(path, rows, skipped, labels, classes)


# --------------------------------------------------------------------------------------------
# ImageNet-ReaL


def read_real(path: str | Path, num_classes: int) -> list[list[int]]:
    """``real.json``: per val image (entry i is ``ILSVRC2012_val_<i+1>``) its list of labels."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_REAL_JSON:
            raise UserError(f"--real-labels: {path} is larger than {MAX_REAL_JSON >> 20} MiB")
        data = json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"--real-labels: cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--real-labels: {path} is not valid JSON ({e})") from None
    if not isinstance(data, list) or not data:
        raise UserError(f"--real-labels: {path} must hold a list of label lists")
    for i, entry in enumerate(data):
        if not isinstance(entry, list) or not all(
                type(y) is int and 0 <= y < num_classes for y in entry):
            raise UserError(f"--real-labels: entry {i} of {path} ({str(entry)[:60]}) is not a "
                            f"list of class indices below the run's {num_classes}")
    return data


def real_table(real: list[list[int]], info: dict, beton: Path) -> np.ndarray:
    """``(samples, most labels)`` int array of each val sample's ReaL labels, -1 padded: sample
    i's source file ``ILSVRC2012_val_<n>`` takes entry n-1."""
    files = info.get("files")
    if not isinstance(files, list) or len(files) != info.get("num_samples"):
        raise UserError(f"{beton}: its sidecar lists no source file names (written before "
                        "they were recorded); give --val-dir to write the val split again")
    total = int(info.get("num_samples", 0)) + int(info.get("num_skipped", 0))
    if int(info.get("settings", {}).get("subset", -1)) <= 0 and len(real) != total:
        raise UserError(f"--real-labels has {len(real):,} entries but the val split of {beton} "
                        f"has {total:,} images")
    table = np.full((len(files), max(1, max(map(len, real)))), -1, dtype=np.int64)
    for i, name in enumerate(files):
        found = VAL_NUMBER.search(str(name).replace("\\", "/").rsplit("/", 1)[-1])
        if not found:
            raise UserError(f"{beton}: val image {name} has no ILSVRC2012_val_<number> name "
                            "to match with --real-labels")
        n = int(found.group(1))
        if not 1 <= n <= len(real):
            raise UserError(f"{beton}: val image {name} is number {n}, beyond the "
                            f"{len(real):,} entries of --real-labels")
        table[i, :len(real[n - 1])] = real[n - 1]
    return table
