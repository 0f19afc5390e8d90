"""webdataset shards (timm's ``imagenet-1k-wds`` and kin), read with ``untrusted``'s bounded tar
scan: each shard is a tar whose members are grouped into samples by key (the path up to the
first dot of the file name, webdataset's rule): ``<key>.jpg`` (or ``jpeg``/``png``/``webp``),
``<key>.cls`` (the label) and often ``<key>.json``.

One header scan of every shard reads the small ``cls`` and ``json`` members and records where
each image lies, so the count and the classes are known before an image is read. Class names
come from the train class list when given, else from the ``json`` members (a ``class_name``,
``wnid`` or ``synset`` key, or the folder of ``filename``), else they are the label numbers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ...base.cli import UserError
from .archives import Member, read_members
from .base import Sample
from .scanned import MAX_CLASSES, ScannedSource, check_class_count
from .untrusted import open_tar, read_at, skip_reason, tar_members

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
NAME_KEYS = ("class_name", "wnid", "synset")
FEW_CLASSES = 1000  # label numbers beyond this and 10x the samples need a class list
SMALL_CAP = 1 << 20  # bytes of a .cls or .json member (they hold a number, a few names)


def _of_split(paths: list[Path], split: str | None) -> list[Path]:
    """The shards whose names say ``split`` (``val`` also matches ``validation``) when the
    names say splits at all (timm keeps ``*-train-*`` and ``*-validation-*`` side by side)."""
    if split is None or not any("train" in p.name or "val" in p.name for p in paths):
        return paths
    return [p for p in paths if split in p.name]


def shard_paths(spec: str | Path, split: str | None = None) -> list[Path]:
    """A folder of ``.tar`` shards (sorted; those of ``split`` when names say splits) or a
    brace pattern (``train-{0000..1023}.tar``)."""
    from braceexpand import braceexpand

    folder = Path(spec).expanduser()
    if folder.is_dir():
        paths = _of_split(sorted(p for p in folder.iterdir()
                                 if p.suffix == ".tar" and p.is_file()), split)
        if not paths:
            raise UserError(f"no {split + ' ' if split else ''}.tar shards in {folder}")
        return paths
    paths = [Path(p).expanduser() for p in braceexpand(str(spec))]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"shard not found: {missing[0]} ({len(missing)} of {len(paths)} "
                        f"shards of {spec} missing)")
    return paths


def split_key(name: str) -> tuple[str, str]:
    """``a/b.c.jpg`` -> (``a/b``, ``c.jpg``): webdataset's key and field of a member."""
    folder, _, base = name.rpartition("/")
    stem, _, field = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), field.lower()


def _json_class(data: bytes, where: str) -> str | None:
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{where}: not valid JSON") from None
    if not isinstance(meta, dict):
        return None
    for key in NAME_KEYS:
        if isinstance(meta.get(key), str):
            return meta[key]
    folder = str(meta.get("filename", "")).rpartition("/")[0]
    return folder.rpartition("/")[2] or None


def _read_cls(data: bytes, where: str) -> int:
    try:
        return int(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"{where}: a .cls member must hold an integer label, "
                        f"got {data[:40]!r}") from None


def scan_shard(path: Path) -> tuple[list[dict], list[tuple[str, str]]]:
    """The samples of one shard as dicts (key, image Member, label, class name), in shard
    order, and the members skipped (no image, not a regular file, too large)."""
    samples: dict[str, dict] = {}
    bad: list[tuple[str, str]] = []
    with open_tar(path) as f:
        for m in tar_members(f, str(path)):
            where = f"{path}:{m.name}"
            if (why := skip_reason(m)) is not None:
                bad += [(where, why)] if why else []
                continue
            key, field = split_key(m.name)
            s = samples.setdefault(key, {"key": key, "image": None, "label": None,
                                         "name": None})
            if field in IMAGE_KEYS and s["image"] is None:
                s["image"] = m
            elif field == "cls":
                s["label"] = _read_cls(read_at(f, m, where, SMALL_CAP), where)
            elif field == "json":
                s["name"] = _json_class(read_at(f, m, where, SMALL_CAP), where)
    skipped = [(f"{path}:{k}", f"no image ({'/'.join(IMAGE_KEYS)})")
               for k, s in samples.items() if s["image"] is None]
    kept = [s for s in samples.values() if s["image"] is not None]
    skipped += bad
    for s in kept:
        if s["label"] is None:
            raise UserError(f"{path}:{s['key']}: no .cls label for image {s['image'].name}")
    return kept, skipped


def _note_name(names: dict[int, tuple[str, str]], sample: dict, where: str) -> None:
    """Record the json's class name for the sample's label; a label named two ways is refused."""
    if sample["name"] is None:
        return
    seen = names.setdefault(sample["label"], (sample["name"], where))
    if seen[0] != sample["name"]:
        raise UserError(f"{where}: label {sample['label']} is named {sample['name']!r} here but "
                        f"{seen[0]!r} at {seen[1]}")


def _class_names(classes, class_source, names: dict[int, tuple[str, str]], count: int,
                 spec: str) -> list[str]:
    """The given class list (checked against the json's names), else the json's names (every
    label named), else the label numbers."""
    if classes is not None:
        for label, (name, where) in sorted(names.items()):
            if label < len(classes) and classes[label] != name:
                raise UserError(f"{where}: label {label} is {classes[label]!r} in the class list "
                                f"from {class_source} but the json names {name!r}")
        return list(classes)
    if not names:
        return [str(i) for i in range(count)]
    unnamed = [i for i in range(count) if i not in names]
    if unnamed:
        raise UserError(f"the json of {spec} names {len(names)} of {count} labels (not label "
                        f"{unnamed[0]}); give the class list with --cfg.class_list")
    return [names[i][0] for i in range(count)]


def _check_count(count: int, samples: int, max_classes: int, spec: str) -> None:
    """Label numbers are the only class list here: one far above the samples or above
    ``max_classes`` (a damaged or hostile ``.cls``) is refused, not made into classes."""
    what = f"the largest .cls label of {spec} ({count - 1:,})"
    check_class_count(count, max_classes, what)
    if count > max(FEW_CLASSES, 10 * samples):
        raise UserError(f"{what} makes {count:,} classes for {samples:,} samples; give the "
                        "class list with --cfg.class_list if that is right")


class WdsSource(ScannedSource):
    """webdataset shards in shard order, each shard in its own order; of a folder, the shards
    of ``split`` when their names say splits. ``classes`` (the train class list, named in
    messages as ``class_source``) gives the names; the shards' json must agree with it."""

    def __init__(self, shards: str | Path, classes: list[str] | None = None,
                 class_source: str | None = None, split: str | None = None,
                 max_classes: int = MAX_CLASSES):
        self.spec = str(shards)
        self.skipped: list[tuple[str, str]] = []
        self._items: list[tuple[int, Path, Member]] = []
        names: dict[int, tuple[str, str]] = {}
        for path in shard_paths(shards, split):
            kept, skipped = scan_shard(path)
            self.skipped.extend(skipped)
            for s in kept:
                _note_name(names, s, f"{path}:{s['key']}")
                self._items.append((s["label"], path, s["image"]))
        if not self._items:
            raise UserError(f"no samples with an image in {self.spec}")
        count = max(label for label, _, _ in self._items) + 1
        if classes is None:
            _check_count(count, len(self._items), max_classes, self.spec)
        self.classes = _class_names(classes, class_source, names, count, self.spec)
        for label, path, m in self._items:
            if not 0 <= label < len(self.classes):
                raise UserError(f"{path}:{split_key(m.name)[0]}.cls: label {label} is outside "
                                f"the {len(self.classes)} classes of {class_source or self.spec}")

    def __iter__(self) -> Iterator[Sample]:
        datas = read_members((path, m) for _, path, m in self._items)
        for (label, path, m), data in zip(self._items, datas):
            yield Sample(f"{path}:{m.name}", label, data=data)

    def describe(self) -> str:
        return f"webdataset shards {self.spec}"
