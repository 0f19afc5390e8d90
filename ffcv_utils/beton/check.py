"""Check a ``.beton`` before ffcv opens it: the file is untrusted, and ffcv trusts it completely.

ffcv's Reader and Loader believe every number in the file. An extra field is decoded with its
default decoder, which copies each sample's stored bytes into a buffer sized by the metadata
(heap corruption, exit 134); a data pointer past the end makes the page cache ask for terabytes;
a raw image whose stored size disagrees with its metadata, or a pointer into another sample's page,
reads outside the buffers ffcv allocated. ``check(path)`` therefore holds the file to exactly what
this toolkit writes, before any loader is built, and refuses anything else in one line
(``BetonError``):

- the fields are ``image`` (``RGBImageField``) and ``label`` (``IntField``), nothing else;
- header, metadata and allocation table lie inside the file, in that order, with ffcv's page size;
- the allocation table lists each sample exactly once, at the sample's own data pointer, and every
  allocation lies inside the data region and inside one page, without overlapping another (all
  arithmetic on Python ints or as ``size <= end - ptr`` after ``ptr <= end``: never a uint64 sum
  that wraps);
- each image's mode is JPEG or raw, its height and width within 1..the sidecar's
  ``max_resolution`` (at most ``MAX_SIDE``), and a raw image holds exactly height x width x 3 bytes;
- labels are within 0..the sidecar's class count; the sidecar (itself untrusted,
  ``dataset_info.read_info``) agrees with the file.

What it cannot see without reading every image is whether a JPEG's own header agrees with the
metadata: both decoders bound that themselves (README, "What the decoder guarantees").
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import sidecar as dataset_info
from ..base.cli import UserError
from ..base.files import NotRegular, open_regular

# The fields this toolkit writes (writer.Settings.fields), as ffcv's type ids (ffcv.types).
SCHEMA = (("image", 2), ("label", 1))
TYPE_NAMES = {0: "FloatField", 1: "IntField", 2: "RGBImageField", 3: "BytesField",
              4: "NDArrayField", 5: "JSONField", 6: "TorchTensorField", 255: "custom field"}
MAX_FIELDS = 256  # for naming what a foreign file holds; ffcv stores the count as u2
# The largest image side any beton may declare: the fast decoder's own frame limit
# (csrc/fastjpeg.c). ffcv's stock decoder allocates a batch of max height x max width x 3 bytes.
MAX_SIDE = 8192
MODES = (0, 1)  # ffcv.fields.rgb_image.IMAGE_MODES: jpg, raw
PAGE_SIZES = (1 << 21, 1 << 32)  # ffcv.writer: MIN_PAGE_SIZE <= page size < MAX_PAGE_SIZE


class BetonError(UserError):
    """The file is not a sound .beton of this toolkit: one line naming it and what is wrong."""


@dataclass(frozen=True)
class Facts:
    """What a sound beton holds: its sample count and its largest label."""

    samples: int
    max_label: int


# Files already found sound, by (path, inode, size, mtime, ctime): the trainer checks its betons
# with their config keys and each loader checks its file again; at ImageNet scale a check reads
# the metadata and allocation table (~60 MB), so an unchanged file is checked once per process.
_sound: dict[tuple, Facts] = {}


def check(path: str | Path, key: str | None = None) -> int:
    """The number of samples in ``path``, or BetonError (prefixed with ``key``, e.g. the
    config key that named the file)."""
    return facts(path, key).samples


def facts(path: str | Path, key: str | None = None) -> Facts:
    """``Facts`` of a sound ``path`` (checked once per unchanged file), or BetonError."""
    try:
        st = Path(path).stat()
        signature = (str(Path(path).resolve()), st.st_ino, st.st_size, st.st_mtime_ns,
                     st.st_ctime_ns)
    except (OSError, ValueError):
        signature = None
    if signature in _sound:
        return _sound[signature]
    found = _check(Path(path), f"{key}: " if key else "")
    if signature is not None:
        _sound[signature] = found
    return found


def check_trainer_betons(p) -> None:
    """The betons a trainer config names (``p.data``), checked before anything opens them; with
    ``--model.num_classes`` every label must also fit the model's output."""
    keys = ["val_dataset"] if p.training.eval_only else ["train_dataset", "val_dataset"]
    for key in keys:
        found = facts(getattr(p.data, key), f"data.{key}")
        n = p.model.num_classes
        if n and found.max_label >= n:
            raise BetonError(f"data.{key}: {getattr(p.data, key)}: holds label "
                             f"{found.max_label}, but model.num_classes is {n}")


def _check(path: Path, prefix: str) -> Facts:
    def bad(why: str) -> BetonError:
        return BetonError(f"{prefix}{path}: {why}")

    try:
        info = dataset_info.read_info(path)
    except dataset_info.SidecarError as e:
        raise BetonError(f"{prefix}{e}") from None
    try:
        f = open_regular(path)  # a FIFO must not block the check
    except FileNotFoundError:
        raise bad("file not found") from None
    except NotRegular as e:
        raise bad(str(e)) from None
    except OSError as e:
        raise bad(f"cannot be opened ({e.strerror})") from None
    except ValueError:  # a NUL in the name
        raise bad("not a usable file name") from None
    with f:
        head = _header(f, os.fstat(f.fileno()).st_size, bad)
        image, labels = _metadata(f, head, bad)
        alloc = _alloc_table(f, head, bad)
    classes = len(info["classes"]) if info else None
    settings = info.get("settings") if info else None
    max_side = min(MAX_SIDE, (settings or {}).get("max_resolution") or MAX_SIDE)
    _images(image, alloc, head, max_side, bad)
    max_label = _labels(labels, classes, bad)
    expected = info.get("num_samples") if info else None
    if expected is not None and expected != head.samples:
        raise bad(f"holds {head.samples:,} samples but its class list "
                  f"{dataset_info.sidecar_path(path).name} says {expected:,}: "
                  "the beton or the sidecar was replaced or cut")
    return Facts(head.samples, max_label)


@dataclass(frozen=True)
class _Head:
    """The header's numbers, checked against the file's size (all Python ints)."""

    size: int
    samples: int
    page: int
    meta_start: int
    meta_end: int
    data_start: int  # the first page boundary after the metadata, where ffcv's writer starts
    table: int


def _header(f, size: int, bad) -> _Head:
    """Header and field descriptors: ffcv's format, exactly this toolkit's two fields, and a
    layout (descriptors, metadata, data, allocation table) that fits the file."""
    from ffcv.types import ALLOC_TABLE_TYPE, CURRENT_VERSION, FieldDescType, HeaderType

    if size == 0:
        raise bad("empty file, not a .beton")
    if size < HeaderType.itemsize:
        raise bad(f"only {size} bytes, too short for a .beton header: truncated or not a beton")
    header = np.frombuffer(f.read(HeaderType.itemsize), dtype=HeaderType)[0]
    version, fields = int(header["version"]), int(header["num_fields"])
    if version != CURRENT_VERSION:
        raise bad(f"not a .beton of ffcv format {CURRENT_VERSION} (header says version "
                  f"{version}): a different file type, or written by another ffcv")
    if not 1 <= fields <= MAX_FIELDS:
        raise bad(f"header declares {fields} fields: corrupt or not a beton")
    meta_start = HeaderType.itemsize + fields * FieldDescType.itemsize
    if meta_start > size:
        raise bad(f"truncated: {size} bytes, the field descriptors alone need {meta_start}")
    _fields(np.frombuffer(f.read(fields * FieldDescType.itemsize), dtype=FieldDescType), bad)
    page, samples = int(header["page_size"]), int(header["num_samples"])
    table = int(header["alloc_table_ptr"])
    if not (PAGE_SIZES[0] <= page < PAGE_SIZES[1] and page & (page - 1) == 0):
        raise bad(f"page size {page} is not one ffcv writes: corrupt")
    if samples == 0:
        raise bad("holds no samples")
    meta_end = meta_start + samples * _metadata_type().itemsize
    if meta_end > size or table > size:
        raise bad(f"truncated: {size:,} bytes, but the header describes {samples:,} samples "
                  f"whose index ends at byte {max(meta_end, table):,}")
    entry = ALLOC_TABLE_TYPE.itemsize
    if table < meta_end or (size - table) % entry:
        raise bad("allocation table is misplaced or cut: truncated or corrupt")
    if (size - table) // entry < samples:
        raise bad("some samples point at data the allocation table lacks: truncated or corrupt")
    if (size - table) // entry > samples:
        raise bad(f"allocation table lists {(size - table) // entry:,} allocations for "
                  f"{samples:,} samples (one image each): corrupt")
    data_start = -(-meta_end // page) * page
    return _Head(size, samples, page, meta_start, meta_end, min(data_start, table), table)


def _fields(descs: np.ndarray, bad) -> None:
    """Exactly ``SCHEMA``, names byte for byte as ffcv writes them (NUL-padded ASCII)."""
    width = descs.dtype["name"].shape[0]
    want = [(name.encode().ljust(width, b"\0"), type_id) for name, type_id in SCHEMA]
    found = [(bytes(d["name"]), int(d["type_id"])) for d in descs]
    if found == want:
        return

    def describe(name: bytes, type_id: int) -> str:
        shown = repr(name.split(b"\0", 1)[0])[2:-1] or "(unnamed)"  # escaped: one line
        return f"{shown} ({TYPE_NAMES.get(type_id, f'unknown type {type_id}')})"

    raise bad(f"holds the fields {', '.join(describe(*d) for d in found)}; this toolkit's "
              f"betons hold exactly {' and '.join(describe(*d) for d in want)}")


def _metadata_type() -> np.dtype:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.types import get_metadata_type

    return get_metadata_type([RGBImageField(), IntField()])


def _metadata(f, head: _Head, bad):
    """(image metadata, labels) of every sample."""
    f.seek(head.meta_start)
    raw = f.read(head.meta_end - head.meta_start)
    if len(raw) != head.meta_end - head.meta_start:
        raise bad("truncated while being read")
    meta = np.frombuffer(raw, dtype=_metadata_type())
    return meta["f0"], meta["f1"]


def _alloc_table(f, head: _Head, bad) -> tuple[np.ndarray, np.ndarray]:
    """(pointer, size) of each sample's one allocation, in sample order."""
    from ffcv.types import ALLOC_TABLE_TYPE

    f.seek(head.table)
    raw = f.read(head.size - head.table)
    if len(raw) != head.size - head.table:
        raise bad("truncated while being read")
    alloc = np.frombuffer(raw, dtype=ALLOC_TABLE_TYPE)
    sample = alloc["sample_id"]
    # as many entries as samples (the header check): each sample once is a permutation
    if (sample >= np.uint64(head.samples)).any() or (
            np.bincount(sample.astype(np.intp), minlength=head.samples) != 1).any():
        raise bad("allocation table does not list each sample exactly once: corrupt")
    ptr, size = np.empty(head.samples, np.uint64), np.empty(head.samples, np.uint64)
    ptr[sample], size[sample] = alloc["ptr"], alloc["size"]  # O(n), no sort
    return ptr, size


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _images(image: np.ndarray, alloc: tuple, head: _Head, max_side: int, bad) -> None:
    """Each image: a known mode, a size within bounds, and its bytes inside the data region,
    inside one page and nobody else's; raw images exactly height x width x 3 bytes."""
    if (wrong := image["mode"] > max(MODES)).any():
        i = _first(wrong)
        raise bad(f"sample {i} has image mode {int(image['mode'][i])} (0 JPEG, 1 raw): corrupt")
    h, w = image["height"].astype(np.int64), image["width"].astype(np.int64)
    if (wrong := (h < 1) | (w < 1) | (h > max_side) | (w > max_side)).any():
        i = _first(wrong)
        raise bad(f"sample {i} declares a {w[i]}x{h[i]} image; its sides must be within "
                  f"1..{max_side} (max_resolution, at most {MAX_SIDE}): corrupt")
    ptr, size = alloc
    if (wrong := image["data_ptr"] != ptr).any():
        raise bad(f"sample {_first(wrong)} points at data the allocation table lacks: "
                  "truncated or corrupt")
    # ptr <= table first, then size against table - ptr: no sum that could wrap around
    outside = (ptr < np.uint64(head.data_start)) | (ptr > np.uint64(head.table))
    outside |= size > np.uint64(head.table) - np.minimum(ptr, np.uint64(head.table))
    if (wrong := outside | (size == 0)).any():
        i = _first(wrong)
        raise bad(f"sample {i}'s data ({int(size[i]):,} bytes at byte {int(ptr[i]):,}) lie "
                  f"outside the data region ({head.data_start:,}..{head.table:,}): corrupt")
    # sizes are now below the file's size: these sums cannot wrap
    if (wrong := (ptr & np.uint64(head.page - 1)) + size > np.uint64(head.page)).any():
        raise bad(f"sample {_first(wrong)}'s data cross a page boundary: corrupt")
    by_ptr = np.argsort(ptr)
    if (ptr[by_ptr][1:] < ptr[by_ptr][:-1] + size[by_ptr][:-1]).any():
        raise bad("two samples' data overlap: corrupt")
    raw = image["mode"] == 1
    if (wrong := raw & (size.astype(np.int64) != 3 * h * w)).any():
        i = _first(wrong)
        raise bad(f"sample {i} is a raw {w[i]}x{h[i]} image ({3 * h[i] * w[i]:,} bytes) "
                  f"stored in {int(size[i]):,} bytes: corrupt")


def _labels(labels: np.ndarray, classes: int | None, bad) -> int:
    """The largest label, after checking every label against the sidecar's class count."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise bad(f"holds label {low}: labels are 0 or more")
    if classes is not None and high >= classes:
        raise bad(f"holds label {high}, but its class list names {classes} classes")
    return high
