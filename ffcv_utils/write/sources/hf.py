"""Hugging Face datasets (``ILSVRC/imagenet-1k`` and kin): anything ``datasets.load_dataset``
accepts, a Hub name already in the local cache or a local folder of parquet shards.

The image column is the first ``Image`` feature and the label the first ``ClassLabel`` unless
named; class names are the ClassLabel's (``"tench, Tinca tinca"``). Images are read as the
stored bytes (the column cast with ``decode=False``), never decoded here. A row without bytes
is skipped and reported: its ``path`` is read only under ``path_root`` (``--cfg.hf_path_root``),
the folder the user says such paths are relative to, and never outside it. Unlabelled rows
(label -1, as in ImageNet's test split) are refused before anything is written. ``datasets`` is
an optional extra: ``pip install -e '.[hf]'``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ...base.cli import UserError
from .base import Sample
from .scanned import ScannedSource

SPLIT_NAMES = {"train": "train", "val": "validation"}
BATCH = 256


def _datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("reading a Hugging Face dataset needs the 'datasets' package: "
                        "pip install -e '.[hf]'") from None
    return datasets


def _column(features, kind, given: str | None, option: str, what: str) -> str:
    """``given`` if it names a column of type ``kind``, else the first such column."""
    if given is not None:
        if given not in features:
            raise UserError(f"{option} {given!r} is not a column (columns: "
                            f"{', '.join(features)})")
        if not isinstance(features[given], kind):
            raise UserError(f"{option} {given!r} is a {type(features[given]).__name__}, "
                            f"not {what}")
        return given
    for name, feature in features.items():
        if isinstance(feature, kind):
            return name
    raise UserError(f"no {what} column (columns: {', '.join(features)}); name one with {option}")


def _load(dataset: str, split: str, cache_dir: str | None):
    datasets = _datasets()
    try:
        return datasets.load_dataset(dataset, split=split, cache_dir=cache_dir)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot load Hugging Face dataset {dataset} (split {split}): "
                        f"{first}") from None


def _stored(column) -> Iterator[tuple[bool, str | None]]:
    """``(has bytes, path)`` of each row of an Image column's arrow storage (a struct of
    ``bytes`` and ``path``), without reading the images' bytes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for chunk in column.chunks:
        if not pa.types.is_struct(chunk.type):
            yield from ((True, None) for _ in range(len(chunk)))
            continue
        data = pc.is_valid(chunk.field("bytes")).to_pylist()
        names = (chunk.field("path").to_pylist() if chunk.type.get_field_index("path") >= 0
                 else [None] * len(chunk))
        yield from zip(data, names)


def _local_file(path: str | None, root: Path | None) -> tuple[str | None, str | None]:
    """``(why the row is skipped, None)`` or ``(None, the file to read)`` for a row that
    stores no image bytes: its ``path`` is read only inside ``root``."""
    if not path:
        return "no image bytes and no path", None
    if root is None:
        return ("no image bytes; its path is not read unless --cfg.hf_path_root names the "
                "folder paths are relative to"), None
    try:
        file = (root / path).resolve()
    except (OSError, ValueError) as e:  # a NUL in the path, a link loop
        return f"no image bytes; its path cannot be resolved ({e})", None
    if not file.is_relative_to(root):
        return f"no image bytes; its path is outside --cfg.hf_path_root {root}", None
    return None, str(file)


class HFSource(ScannedSource):
    """One split of a Hugging Face dataset, in row order. ``classes`` (the train class list,
    named in messages as ``class_source``) sets the label order by the ClassLabel's names."""

    def __init__(self, dataset: str, split: str, *, image_column: str | None = None,
                 label_column: str | None = None, classes: list[str] | None = None,
                 class_source: str | None = None, cache_dir: str | None = None,
                 path_root: str | Path | None = None):
        datasets = _datasets()
        self.dataset, self.split = str(dataset), split
        ds = _load(self.dataset, split, cache_dir)
        self.image_column = _column(ds.features, datasets.Image, image_column,
                                    "--cfg.hf_image_column", "Image")
        self.label_column = _column(ds.features, datasets.ClassLabel, label_column,
                                    "--cfg.hf_label_column", "ClassLabel")
        names = list(ds.features[self.label_column].names)
        labels = ds.data.column(self.label_column).to_numpy().astype(np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(names)))
        if bad.size:
            row = int(bad[0])
            what = ("unlabelled; the test split of ImageNet has no labels" if labels[row] < 0
                    else f"not one of the {len(names)} classes")
            raise UserError(f"{self.where(row)}: label {labels[row]} ({what}; "
                            f"{bad.size} such rows)")
        self.classes = names if classes is None else list(classes)
        if classes is not None:
            index = {c: i for i, c in enumerate(self.classes)}
            used = np.unique(labels)
            unknown = [names[i] for i in used if names[i] not in index]
            if unknown:
                raise UserError(f"class {unknown[0]!r} of {self.dataset} is not in the class "
                                f"list from {class_source} ({len(unknown)} such classes)")
            labels = np.array([index.get(n, -1) for n in names], dtype=np.int64)[labels]
        self._items, self.skipped = [], []
        root = None if path_root is None else Path(path_root).expanduser().resolve()
        for row, (data, path) in enumerate(_stored(ds.data.column(self.image_column))):
            why, file = (None, None) if data else _local_file(path, root)
            if why:
                self.skipped.append((self.where(row) + (f" ({path})" if path else ""), why))
            else:
                self._items.append((int(labels[row]), row, file))
        self._ds = ds.select_columns([self.image_column]).cast_column(
            self.image_column, datasets.Image(decode=False))

    def where(self, row: int) -> str:
        return f"{self.dataset} split {self.split} row {row}"

    def __iter__(self) -> Iterator[Sample]:
        rows = [row for _, row, _ in self._items]
        ds = self._ds if rows == list(range(len(self._ds))) else self._ds.select(rows)
        images = (image for batch in ds.iter(batch_size=BATCH)
                  for image in batch[self.image_column])
        for (label, row, file), image in zip(self._items, images):
            path = image.get("path")
            name = self.where(row) + (f" ({path})" if path else "")
            if file is not None:
                yield Sample(name, label, path=file)
            else:
                yield Sample(name, label, data=image.get("bytes") or b"")

    def describe(self) -> str:
        return f"Hugging Face dataset {self.dataset} (split {self.split})"
