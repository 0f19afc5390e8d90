"""Writing one split to a ``.beton``: the coordinator of the data stage.

``write_split(data_dir, split, write_path)`` writes an ImageFolder split; ``write_source(source,
write_path, split=...)`` writes any ``ffcv_utils.write.sources.base.Source``. Both store the fields
ffcv-imagenet uses, ``image`` (``RGBImageField``) and ``label`` (``IntField``), and write the
class list, per-class counts, settings and skipped files to ``<beton>.json`` (for ``val`` also
each sample's source file name, ``files``: ImageNet-ReaL's labels follow the val file numbers).

The steps, each in its own module: the source lists the classes and yields the samples
(``sources/``); every candidate is decoded in parallel and only good ones go on (``check``,
``images``); the writer processes pack them into a hidden temporary file (``pack``) that is
renamed into place with its sidecar only when complete (``atomic``). Labels: for ``val`` the
class list comes from the train split's sidecar (or ``class_list``), so the labels of the two
splits cannot drift apart; a class without readable images keeps its label, with a warning.
SIGINT and SIGTERM stop every helper process and remove the temporary file.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..beton import sidecar as dataset_info
from ..base.atomic import claim_temporary, publish
from .source_check import Checked, check_source
from ..base.processes import Terminated, default_num_workers, signals_blocked, sigterm_raises
from fastargs.validation import And, InRange, OneOf

from ..base.cli import FLAG, FLOAT, INT, UserError
from .image_field import SMART_THRESHOLD, ImageJob, image_field, stores_jpeg
from .classes import read_class_list, reference_classes
from .images import resized
from .pack import WriteError, page_size_for, write_beton
from .sources.base import Source
from .sources.imagefolder import SPLITS, ImageFolder

__all__ = ["write_split", "write_source", "format_summary", "read_class_list",
           "WriteError", "Terminated", "Settings"]

WRITE_MODES = ("raw", "smart", "jpg", "proportion")
# ffcv-imagenet's published settings (rn50/rn18 configs): 500 px, half the images JPEG at q90.
PUBLISHED = dict(max_resolution=500, write_mode="proportion", compress_probability=0.5,
                 jpeg_quality=90)
DEFAULT_WRITE_PATH = "./data/{split}.beton"
DEFAULT_DATA_DIR = "./imagenet"


def _setting(default, checker, help: str, cast=None):
    """A ``Settings`` field: its default, its checker and help (the command line's
    ``--cfg.<name>``) and the type ``checked`` casts to."""
    return field(default=default, metadata={"checker": checker, "help": help, "cast": cast})


POS_INT = And(INT, InRange(min=1))


@dataclass(frozen=True)
class Settings:
    """How images are stored; recorded in the sidecar. The one place the settings are spelled:
    the command line's options and ``checked`` come from these fields."""

    max_resolution: int = _setting(PUBLISHED["max_resolution"], POS_INT,
                                   "longest side of stored images (larger ones are shrunk)", int)
    write_mode: str = _setting(PUBLISHED["write_mode"], OneOf(list(WRITE_MODES)),
                               "raw, smart, jpg or proportion", str)
    compress_probability: float = _setting(PUBLISHED["compress_probability"],
                                           And(FLOAT, InRange(0, 1)),
                                           "share of images stored as JPEG in proportion mode",
                                           float)
    jpeg_quality: int = _setting(PUBLISHED["jpeg_quality"], And(FLOAT, InRange(1, 100)),
                                 "JPEG quality of compressed images", int)
    chunk_size: int = _setting(100, POS_INT, "images per work item", int)
    subset: int = _setting(-1, INT, "write only this many images, spread over the classes "
                                    "(-1: all)", lambda v: int(v or -1))
    # True: never store a source JPEG's own bytes (image_field)
    reencode: bool = _setting(0, FLAG, "1: re-encode source JPEGs; 0: store those needing no "
                                       "resize as they are", bool)
    # train from an ImageFolder tree: samples in a seeded shuffled order, so every page mixes the
    # classes (the page-aware order, data.in_memory 0, shuffles within a few pages only)
    shuffle: bool = _setting(1, FLAG, "train: write the images in a seeded shuffled order, so "
                                      "each page mixes the classes (for the trainer's page-aware "
                                      "order); 0: folder order", bool)

    @classmethod
    def checked(cls, **kw) -> "Settings":
        """Settings from keyword arguments, each refused with one line when out of range."""
        unknown = set(kw) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        values = {}
        for f in fields(cls):
            value, checker = kw.get(f.name, f.default), f.metadata["checker"]
            if f.name == "subset" and value is None:
                value = -1
            try:
                values[f.name] = f.metadata["cast"](checker.check(value))
            except (TypeError, ValueError):
                raise UserError(f"{f.name}: expected {checker.help()}, got {value!r}") from None
        return cls(**values)

    @classmethod
    def options(cls) -> dict:
        """``{name: (checker, help, default)}`` for the command line."""
        return {f.name: (f.metadata["checker"], f.metadata["help"], f.default)
                for f in fields(cls)}

    def fields(self) -> dict:
        from ffcv.fields import IntField

        return {"image": image_field(self.write_mode, self.max_resolution, self.jpeg_quality,
                                     self.compress_probability),
                "label": IntField()}

    def as_is_count(self, checked: Checked) -> int:
        """How many images are stored as the source's own JPEG bytes (as ImageJob decides)."""
        if self.reencode:
            return 0
        return sum(stores_jpeg(self.write_mode, self.compress_probability, i, w, h)
                   for i, (ok, (w, h)) in enumerate(zip(checked.as_is, checked.sizes)) if ok)


# --------------------------------------------------------------------------------------------
# The data stage


def _target(write_path: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    return Path(str(write_path).format(split=split)).expanduser()


def write_split(data_dir: str | Path | None, split: str, write_path: str | Path, *,
                class_list: str | Path | list[str] | None = None,
                num_workers: int | None = None, progress: bool = True,
                source_options: dict | None = None, **settings) -> dict:
    """Write one split to ``write_path`` and its sidecar; return a summary.

    ``data_dir`` is an ImageFolder tree (the folder holding ``<split>/`` or the split folder
    itself) or any layout ``sources.select.open_source`` recognises (Kaggle's root, ImageNet's
    archives); ``source_options`` are that function's other options (val_labels, devkit,
    hf_dataset, wds_shards, ...). ``settings`` are ``Settings``' fields. ``progress`` shows
    progress bars and prints warnings on stderr. Raises ``UserError`` for bad input (one
    sentence, naming the path) and ``WriteError`` if a writer process fails.
    """
    from .sources.select import data_root, open_source

    t0 = time.time()
    target = _target(write_path, split)
    s = Settings.checked(**settings)
    classes, class_from = reference_classes(split, target, class_list)
    source = open_source(split, data_dir=data_dir, class_list=classes, **(source_options or {}))
    if source is None:
        source = ImageFolder(data_root(data_dir), split, classes, class_from,
                             shuffle_seed=0 if split == "train" and s.shuffle else None)
    return _write(source, target, split, s, class_from, num_workers, progress, t0)


def write_source(source: Source, write_path: str | Path, *, split: str,
                 class_list: str | Path | list[str] | None = None,
                 num_workers: int | None = None, progress: bool = True, **settings) -> dict:
    """``write_split`` for any data source. The source's classes must equal the reference list
    (``class_list``, or for ``val`` the train sidecar beside ``write_path``) when there is one."""
    t0 = time.time()
    target = _target(write_path, split)
    s = Settings.checked(**settings)
    classes, class_from = reference_classes(split, target, class_list)
    if classes is not None:
        why = dataset_info.class_list_mismatch({"classes": classes},
                                               {"classes": source.classes})
        if why:
            raise UserError(f"the classes of {source.describe()} differ from the class list "
                            f"from {class_from}: {why}")
    return _write(source, target, split, s, class_from, num_workers, progress, t0)


def _report(checked: Checked, source: Source, target: Path, warn) -> None:
    """Warn about skipped files and classes without readable images; refuse an empty result."""
    skipped = checked.skipped
    if skipped:
        warn(f"skipping {len(skipped)} unreadable files (e.g. {skipped[0]['file']}: "
             f"{skipped[0]['reason']}); all are listed in {dataset_info.sidecar_path(target)}")
    empty = [(label, where) for label, n in enumerate(checked.counts)
             if n == 0 and (where := source.where(label)) is not None]
    for label, where in empty[:5]:
        warn(f"{where} has no readable images; "
             f"class {source.classes[label]!r} keeps label {label}")
    if len(empty) > 5:
        warn(f"... {len(empty) - 5} more empty classes")
    if not checked.positions:
        raise UserError(f"no readable images in {source.describe()} "
                        f"({len(skipped)} files skipped)")


def _checked_samples(source: Source, checked: Checked, reencode: bool):
    """``(sample, size if its own bytes may be stored, else None)`` for the samples that passed
    the check, read again from the source, which must not have changed in between."""
    wanted = iter(zip(checked.positions, checked.names, checked.as_is, checked.sizes))
    pos, name, as_is, size = next(wanted)
    for i, s in enumerate(source):
        if i == pos:
            if s.name != name:
                raise WriteError(f"{source.describe()} changed during the write: sample {i} "
                                 f"was {name}, is now {s.name}")
            yield s, (size if as_is and not reencode else None)
            nxt = next(wanted, None)
            if nxt is None:
                return
            pos, name, as_is, size = nxt


def _write(source: Source, target: Path, split: str, s: Settings, class_from: str | None,
           num_workers: int | None, progress: bool, t0: float) -> dict:
    num_workers = default_num_workers() if not num_workers or num_workers < 1 else num_workers
    messages: list[str] = []

    def warn(msg: str) -> None:
        messages.append(msg)
        if progress:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    for msg in source.warnings:
        warn(msg)
    with sigterm_raises():
        tmp = claim_temporary(target)  # fail on an unwritable output before the long passes
        try:
            t = time.time()
            checked = check_source(source, max_resolution=s.max_resolution,
                                   num_workers=num_workers, subset=s.subset, progress=progress)
            scan_seconds = time.time() - t
            _report(checked, source, target, warn)
            n = len(checked.positions)
            page_size = page_size_for([3 * w * h for w, h in (
                resized(w, h, s.max_resolution) for w, h in checked.sizes)])
            t = time.time()
            write_beton(tmp, s.fields(), _checked_samples(source, checked, s.reencode), n,
                        ImageJob(s.write_mode, s.compress_probability),
                        num_workers=min(num_workers, n), chunk_size=s.chunk_size,
                        page_size=page_size, progress=progress)
            write_seconds = time.time() - t
            settings = {**asdict(s), "smart_threshold": SMART_THRESHOLD, "page_size": page_size}
            info = _info(source, split, checked, settings, class_from, messages,
                         tmp.stat().st_size)
            info["jpeg_as_is"] = s.as_is_count(checked)
            with signals_blocked():
                dataset_info.sidecar_path(target).unlink(missing_ok=True)
                publish(tmp, target)
                sidecar = dataset_info.write_info(target, info)
        finally:
            tmp.unlink(missing_ok=True)
    return _summary(info, target, sidecar, time.time() - t0, scan_seconds, write_seconds)


def _info(source: Source, split: str, checked: Checked, settings: dict, class_from, messages,
          nbytes: int) -> dict:
    classes = list(source.classes)
    return {
        "split": split,
        "source": source.describe(),
        "fields": {"image": "RGBImageField", "label": "IntField"},
        "classes": classes,
        "num_classes": len(classes),
        "num_samples": len(checked.positions),
        "class_counts": dict(zip(classes, checked.counts)),
        "empty_classes": [c for c, n in zip(classes, checked.counts) if n == 0],
        "class_list_from": class_from,
        "num_skipped": len(checked.skipped),
        "skipped": checked.skipped,
        "settings": settings,
        "warnings": messages,
        "bytes": nbytes,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # sample i's source file, for labels keyed by file name (ImageNet-ReaL); val only, as
        # train's 1.28M names would make its sidecar tens of MB
        **({"files": list(checked.names)} if split == "val" else {}),
    }


def _summary(info: dict, target: Path, sidecar: Path, seconds: float, scan_seconds: float,
             write_seconds: float) -> dict:
    return {
        "path": str(target), "sidecar": str(sidecar), "split": info["split"],
        "source": info["source"], "images": info["num_samples"], "skipped": info["num_skipped"],
        "skipped_files": info["skipped"], "num_classes": info["num_classes"],
        "classes": info["classes"], "class_counts": info["class_counts"],
        "empty_classes": info["empty_classes"], "class_list_from": info["class_list_from"],
        "bytes": info["bytes"], "jpeg_as_is": info["jpeg_as_is"], "seconds": seconds,
        "scan_seconds": scan_seconds, "write_seconds": write_seconds,
        "startup_seconds": seconds - scan_seconds - write_seconds,
        # throughput of the data stage itself: checking + writing, without the fixed start-up
        # (importing ffcv compiles its numba kernels, ~8 s)
        "images_per_s": info["num_samples"] / max(1e-9, scan_seconds + write_seconds),
        "settings": info["settings"], "warnings": info["warnings"],
    }


def format_summary(s: dict, max_listed: int = 10) -> str:
    mb = s["bytes"] / 1e6
    lines = [f"wrote {s['path']}: {s['images']:,} images, {s['num_classes']} classes, "
             f"{mb:,.1f} MB in {s['seconds']:.1f} s (start-up {s['startup_seconds']:.1f} s, "
             f"check {s['scan_seconds']:.1f} s, write {s['write_seconds']:.1f} s: "
             f"{s['images_per_s']:,.0f} images/s)"]
    if s["jpeg_as_is"]:
        lines.append(f"{s['jpeg_as_is']:,} source JPEGs stored as they are, not re-encoded "
                     "(--cfg.reencode 1 re-encodes them)")
    if s["class_list_from"]:
        lines.append(f"class order from {s['class_list_from']}")
    if s["skipped"]:
        lines.append(f"skipped {s['skipped']} files (all listed in {s['sidecar']}):")
        for item in s["skipped_files"][:max_listed]:
            lines.append(f"  {item['file']}: {item['reason']}")
        if s["skipped"] > max_listed:
            lines.append(f"  ... and {s['skipped'] - max_listed} more")
    else:
        lines.append("skipped 0 files")
    lines.append(f"class list and counts: {s['sidecar']}")
    return "\n".join(lines)
