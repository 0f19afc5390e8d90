"""Check a ``.beton`` before ffcv opens it: a truncated, empty or foreign file is one line.

ffcv's Reader trusts the file: a short file gives ``ValueError: negative dimensions are not
allowed``, another format ``AssertionError: file format mismatch``, and a truncated data region
is only noticed (if at all) by a loader thread reading past the end. ``check(path)`` reads the
header, field descriptors and allocation table with ffcv's own record types and compares every
offset and size against the file's length, and the sample count against the sidecar.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import sidecar as dataset_info
from ..base.cli import UserError

MAX_FIELDS = 256  # ffcv stores the field count as u2; real betons have a handful


class BetonError(UserError):
    """The file is not a complete .beton: one line naming it and what is wrong."""


# Files already found sound, by (path, size, mtime): the trainer checks its betons with their
# config keys and each loader checks its file again; at ImageNet scale a check reads the whole
# allocation table (~0.6 s), so an unchanged file is checked once per process.
_sound: dict[tuple[str, int, int], int] = {}


def all_in(values: np.ndarray, known: np.ndarray) -> bool:
    """Whether every one of ``values`` is in ``known``: one sort and a binary search per value.

    ``np.isin`` took seconds on ImageNet's 1.28M pointers (its table path does not apply to
    uint64 pointers spread over the file); this is O((n + m) log m)."""
    values, known = np.asarray(values), np.sort(np.asarray(known))
    if values.size == 0:
        return True
    if known.size == 0:
        return False
    at = np.searchsorted(known, values)
    at[at == known.size] = known.size - 1  # past the end: compared with the last, never equal
    return bool((known[at] == values).all())


def check(path: str | Path, key: str | None = None) -> int:
    """The number of samples in ``path``, or BetonError (prefixed with ``key``, e.g. the
    config key that named the file)."""
    try:
        st = Path(path).stat()
        signature = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        signature = None
    if signature in _sound:
        return _sound[signature]
    samples = _check(path, key)
    if signature is not None:
        _sound[signature] = samples
    return samples


def _check(path: str | Path, key: str | None) -> int:
    from ffcv.types import (ALLOC_TABLE_TYPE, CURRENT_VERSION, TYPE_ID_HANDLER,
                            FieldDescType, HeaderType, get_handlers, get_metadata_type)

    path = Path(path)
    prefix = f"{key}: " if key else ""

    def bad(why: str) -> BetonError:
        return BetonError(f"{prefix}{path}: {why}")

    if not path.is_file():
        raise bad("file not found")
    size = path.stat().st_size
    if size == 0:
        raise bad("empty file, not a .beton")
    if size < HeaderType.itemsize:
        raise bad(f"only {size} bytes, too short for a .beton header: truncated or not a beton")
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HeaderType.itemsize), dtype=HeaderType)[0]
        version, fields = int(header["version"]), int(header["num_fields"])
        if version != CURRENT_VERSION:
            raise bad(f"not a .beton of ffcv format {CURRENT_VERSION} (header says version "
                      f"{version}): a different file type, or written by another ffcv")
        samples, table = int(header["num_samples"]), int(header["alloc_table_ptr"])
        if not 1 <= fields <= MAX_FIELDS:
            raise bad(f"header declares {fields} fields: corrupt or not a beton")
        descs_end = HeaderType.itemsize + fields * FieldDescType.itemsize
        if descs_end > size:
            raise bad(f"truncated: {size} bytes, the field descriptors alone need {descs_end}")
        descs = np.frombuffer(f.read(fields * FieldDescType.itemsize), dtype=FieldDescType)
        unknown = sorted({int(t) for t in descs["type_id"]} - set(TYPE_ID_HANDLER))
        if unknown:
            raise bad(f"unknown field type id(s) {unknown}: corrupt or not a beton")
        try:
            handlers = [h for h in get_handlers(descs) if h is not None]
            meta_size = get_metadata_type(handlers).itemsize * samples
        except Exception as e:  # field arguments that no ffcv field accepts
            raise bad(f"unreadable field descriptors ({type(e).__name__}): corrupt") from None
        if samples == 0:
            raise bad("holds no samples")
        if descs_end + meta_size > size or table > size:
            raise bad(f"truncated: {size:,} bytes, but the header describes {samples:,} samples "
                      f"whose index ends at byte {max(descs_end + meta_size, table):,}")
        if table < descs_end + meta_size or (size - table) % ALLOC_TABLE_TYPE.itemsize:
            raise bad("allocation table is misplaced or cut: truncated or corrupt")
        meta_type = get_metadata_type(handlers)
        meta = np.frombuffer(f.read(meta_size), dtype=meta_type)
        f.seek(table)
        alloc = np.frombuffer(f.read(), dtype=ALLOC_TABLE_TYPE)
    _check_pointers(meta, alloc, table, samples, bad)
    _check_sidecar(path, samples, bad)
    return samples


def _check_pointers(meta, alloc, table: int, samples: int, bad) -> None:
    """Fields with out-of-line data (images, bytes, arrays) point into the allocation table:
    a table cut at an entry boundary leaves some pointers dangling."""
    for name in meta.dtype.names:
        sub = meta[name]
        if sub.dtype.names and "data_ptr" in sub.dtype.names:
            if not all_in(sub["data_ptr"], alloc["ptr"]):
                raise bad("some samples point at data the allocation table lacks: truncated "
                          "or corrupt")
    if len(alloc) and int((alloc["ptr"] + alloc["size"]).max()) > table:
        raise bad("sample data reach past the end of the data region: corrupt")
    if len(alloc) and int(alloc["sample_id"].max()) >= samples:
        raise bad("allocation table names samples the header does not have: corrupt")


def _check_sidecar(path: Path, samples: int, bad) -> None:
    """The sample count the sidecar recorded, where there is one."""
    info = dataset_info.read_info(path)
    expected = info.get("num_samples") if info else None
    if expected is not None and int(expected) != samples:
        raise bad(f"holds {samples:,} samples but its class list "
                  f"{dataset_info.sidecar_path(path).name} says {int(expected):,}: "
                  "the beton or the sidecar was replaced or cut")


def check_trainer_betons(p) -> None:
    """The betons a trainer config names (``p.data``), checked before anything opens them."""
    keys = ["val_dataset"] if p.training.eval_only else ["train_dataset", "val_dataset"]
    for key in keys:
        check(getattr(p.data, key), f"data.{key}")
