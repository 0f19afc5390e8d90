"""Flat images labelled by a file: ImageNet's val as Kaggle ships it (``LOC_val_solution.csv``),
as the devkit labels it (``ILSVRC2012_validation_ground_truth.txt`` + ``meta.mat``), or any set
listed in a CSV of ``file,class``. The images are a folder (walked recursively) or an
uncompressed tar such as ``ILSVRC2012_img_val.tar``.

Labels follow a class list: the train split's when given (so val agrees with train), else the
full list the labels file implies (Kaggle's ``LOC_synset_mapping.txt``, the devkit's 1,000 leaf
synsets), else the sorted classes the labels file names. Every image needs a label, and every
label a known class; each complaint is one line naming the file and line.
"""
from __future__ import annotations

import csv
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ...base.cli import UserError
from .archives import Member, read_members, scan_tar
from .base import Sample
from .scanned import ScannedSource
from .untrusted import find_in_tar, read_regular, walk_files

KAGGLE_HEADER = ("ImageId", "PredictionString")
KAGGLE_SYNSETS = "LOC_synset_mapping.txt"
DEVKIT_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "data/meta.mat"
TEXT_CAP = 64 << 20  # bytes of a labels file or a devkit file (Kaggle's CSV is 3 MB)


@dataclass
class Labels:
    """Image key -> (class name, where it was said: ``file line N``); ``classes`` is the full
    class list the labels come with, read from ``classes_from`` (None: the classes named)."""

    rows: dict[str, tuple[str, str]]
    source: str
    classes: list[str] | None = None
    classes_from: str | None = None

    def lookup(self, relname: str) -> tuple[str, str] | None:
        """The label of an image by its path under the images' root or its file name, each
        also without the extension (Kaggle's ImageId, the devkit's numbering)."""
        base = relname.rsplit("/", 1)[-1]
        for key in (relname, os.path.splitext(relname)[0], base, os.path.splitext(base)[0]):
            if key in self.rows:
                return self.rows[key]
        return None


def class_index(classes: list[str]) -> dict[str, int]:
    return {c: i for i, c in enumerate(classes)}


def _read_text(path: Path, what: str) -> str:
    """A labels file as text: a regular file of at most ``TEXT_CAP`` bytes, in UTF-8."""
    try:
        return read_regular(path, TEXT_CAP).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or e
        raise UserError(f"cannot read {what} {path}: {why}") from None


def read_synset_mapping(path: Path) -> list[str]:
    """Kaggle's ``LOC_synset_mapping.txt`` (``<wnid> <words>`` a line) -> sorted wnids."""
    text = _read_text(path, "synset mapping")
    return sorted(line.split()[0] for line in text.splitlines() if line.strip())


def _csv_rows(path: Path, text: str):
    """``(line number, fields)`` of a CSV; a malformed line is refused naming it."""
    reader = csv.reader(io.StringIO(text))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise UserError(f"{path} line {reader.line_num}: not a CSV line ({e})") from None
        yield reader.line_num, row


def read_labels_csv(path: str | Path) -> Labels:
    """Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``, the wnid first in each
    prediction) or a CSV of ``file,class`` (an optional ``file,class`` header)."""
    path = Path(path).expanduser()
    rows, kaggle = {}, False
    for n, row in _csv_rows(path, _read_text(path, "labels file")):
        if not row or not "".join(row).strip():
            continue
        if n == 1 and tuple(c.strip() for c in row) == KAGGLE_HEADER:
            kaggle = True
            continue
        if n == 1 and [c.strip().lower() for c in row] == ["file", "class"]:
            continue
        where = f"{path} line {n}"
        fields = [c.strip() for c in row]
        words = fields[1].split() if kaggle and len(fields) == 2 else fields[1:]
        if len(fields) != 2 or not fields[0] or not words:
            expected = "ImageId,PredictionString" if kaggle else "file,class"
            raise UserError(f"{where}: expected '{expected}', got {','.join(row)!r}")
        if fields[0] in rows:
            raise UserError(f"{where}: {fields[0]!r} is labelled twice (first at "
                            f"{rows[fields[0]][1]})")
        rows[fields[0]] = (words[0], where)
    if not rows:
        raise UserError(f"no labels in {path} (expected rows of 'file,class')")
    mapping = path.with_name(KAGGLE_SYNSETS)
    if kaggle and mapping.is_file():
        return Labels(rows, str(path), read_synset_mapping(mapping), str(mapping))
    return Labels(rows, str(path))


def _devkit_file(devkit: Path, rel: str) -> bytes:
    """One file of the devkit, a folder (``data/`` in it or one level down) or its tar.gz
    (read as a stream with bounded decompression: ``untrusted.find_in_tar``)."""
    if devkit.is_dir():
        for base in [devkit, *sorted(p for p in devkit.iterdir() if p.is_dir())]:
            if (base / rel).is_file():
                try:
                    return read_regular(base / rel, TEXT_CAP)
                except OSError as e:
                    raise UserError(f"cannot read devkit file {base / rel}: "
                                    f"{e.strerror or e}") from None
    elif devkit.is_file():
        data = find_in_tar(devkit, lambda n: n == rel or n.endswith("/" + rel), TEXT_CAP)
        if data is not None:
            return data
    else:
        raise UserError(f"devkit not found: {devkit}")
    raise UserError(f"devkit {devkit} has no {rel}")


def _check_mat(meta: bytes, where: str) -> None:
    """A MAT-file v5's compressed variables must inflate to at most ``TEXT_CAP`` bytes:
    scipy inflates each whole, so a small meta.mat could otherwise expand to gigabytes."""
    order = {b"IM": "<", b"MI": ">"}.get(meta[126:128])
    pos = 128
    while order and pos + 8 <= len(meta):
        kind, size = struct.unpack_from(order + "II", meta, pos)
        if kind == 15:  # miCOMPRESSED
            inflate = zlib.decompressobj()
            try:
                inflate.decompress(meta[pos + 8:pos + 8 + size], TEXT_CAP)
            except zlib.error as e:
                raise UserError(f"{where}: damaged compressed variable ({e})") from None
            if inflate.unconsumed_tail:
                raise UserError(f"{where}: a compressed variable expands to more than "
                                f"{TEXT_CAP >> 20} MiB")
        pos += 8 + (size if kind == 15 else -(-size // 8) * 8)


def _leaf_synsets(meta: bytes, where: str) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1,000 leaf synsets in the devkit's ``meta.mat``."""
    import scipy.io

    _check_mat(meta, where)
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        fields = zip(synsets["ILSVRC2012_ID"], synsets["WNID"], synsets["num_children"])
        return {int(i): str(w) for i, w, kids in fields if int(kids) == 0}
    except Exception as e:  # scipy's reader fails in many ways on a damaged file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{where}: not a readable devkit meta.mat (a 'synsets' struct with "
                        f"ILSVRC2012_ID, WNID, num_children): {type(e).__name__}: "
                        f"{first}") from None


def read_devkit(devkit: str | Path) -> Labels:
    """Val labels from the ILSVRC2012 devkit: line N of the ground truth holds the
    ILSVRC2012_ID of ``ILSVRC2012_val_000000NN.JPEG``; ``meta.mat`` maps IDs to wnids."""
    devkit = Path(devkit).expanduser()
    synsets = _leaf_synsets(_devkit_file(devkit, DEVKIT_META), f"{devkit}: {DEVKIT_META}")
    truth_name = f"{devkit}: {DEVKIT_TRUTH}"
    rows = {}
    lines = _devkit_file(devkit, DEVKIT_TRUTH).decode("ascii", "replace").splitlines()
    for n, line in enumerate(lines, 1):
        where = f"{truth_name} line {n}"
        try:
            wnid = synsets[int(line)]
        except ValueError:
            raise UserError(f"{where}: expected an ILSVRC2012_ID, got {line[:40]!r}") from None
        except KeyError:
            raise UserError(f"{where}: ILSVRC2012_ID {line.strip()} is not one of the leaf "
                            "synsets in meta.mat") from None
        rows[f"ILSVRC2012_val_{n:08d}"] = (wnid, where)
    if not rows:
        raise UserError(f"{truth_name} is empty")
    return Labels(rows, truth_name, sorted(synsets.values()), f"{devkit}: {DEVKIT_META}")


def _looks_like_image(name: str) -> bool:
    from PIL import Image

    return os.path.splitext(name)[1].lower() in Image.registered_extensions()


class LabelledSource(ScannedSource):
    """Images of a folder (walked recursively) or an uncompressed tar, each labelled by
    ``labels``. ``classes`` (the train class list, named in messages as ``class_source``)
    sets the label order; without it the labels' own full list or the sorted classes named.
    Image files without a label are refused; other unlabelled files are skipped."""

    def __init__(self, images: str | Path, labels: Labels, classes: list[str] | None = None,
                 class_source: str | None = None):
        self.images, self.label_file = Path(images).expanduser(), labels
        if classes is None:
            classes = labels.classes or sorted({c for c, _ in labels.rows.values()})
            class_source = labels.classes_from or labels.source
        self.classes = list(classes)
        index = class_index(self.classes)
        for name, where in labels.rows.values():
            if name not in index:
                raise UserError(f"{where}: class {name!r} is not in the class list from "
                                f"{class_source}")
        self.skipped: list[tuple[str, str]] = []
        self._items: list[tuple[int, str, Member | None]] = []
        for rel, member in self._entries():
            hit = labels.lookup(rel)
            if hit is not None:
                self._items.append((index[hit[0]], rel, member))
            elif _looks_like_image(rel):
                raise UserError(f"no label for image {self._where(rel)} in {labels.source}")
            else:
                self.skipped.append((self._where(rel), "no label (and not an image file name)"))
        if not self._items:
            raise UserError(f"no labelled images in {self.images}")

    def _entries(self) -> list[tuple[str, Member | None]]:
        """``(name under the images' root, member or None)`` of every candidate, sorted for
        a folder, in archive order for a tar; what the scan skips goes to ``skipped``."""
        if self.images.is_dir():
            files, skipped = walk_files(self.images)
            self.skipped += skipped
            return sorted((Path(f).relative_to(self.images).as_posix(), None) for f in files)
        if self.images.is_file():
            members, skipped = scan_tar(self.images)
            self.skipped += skipped
            return [(m.name, m) for m in members]
        raise UserError(f"images not found: {self.images}")

    def _where(self, rel: str) -> str:
        return f"{self.images / rel}" if self.images.is_dir() else f"{self.images}:{rel}"

    def __iter__(self) -> Iterator[Sample]:
        if self.images.is_dir():
            for label, rel, _ in self._items:
                yield Sample(self._where(rel), label, path=str(self.images / rel))
            return
        datas = read_members((self.images, m) for _, _, m in self._items)
        for (label, rel, _), data in zip(self._items, datas):
            yield Sample(self._where(rel), label, data=data)

    def describe(self) -> str:
        return f"{self.images} labelled by {self.label_file.source}"
