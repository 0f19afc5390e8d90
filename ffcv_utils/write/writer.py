"""Writing one split to a ``.beton``: the coordinator of the data stage.

``write_split(data_dir, split, write_path)`` writes an ImageFolder split; ``write_source(source,
write_path, split=...)`` writes any ``ffcv_utils.sources.base.Source``. Both store the fields
ffcv-imagenet uses, ``image`` (``RGBImageField``) and ``label`` (``IntField``), and write the
class list, per-class counts, settings and skipped files to ``<beton>.json``.

The steps, each in its own module: the source lists the classes and yields the samples
(``sources/``); every candidate is decoded in parallel and only good ones go on (``check``,
``images``); the writer processes pack them into a hidden temporary file (``pack``) that is
renamed into place with its sidecar only when complete (``atomic``). Labels: for ``val`` the
class list comes from the train split's sidecar (or ``class_list``), so the labels of the two
splits cannot drift apart; a class without readable images keeps its label, with a warning.
SIGINT and SIGTERM stop every helper process and remove the temporary file.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..beton import sidecar as dataset_info
from ..base.atomic import publish
from .source_check import Checked, check_source
from ..base.processes import Terminated, default_num_workers, signals_blocked, sigterm_raises
from ..base.cli import UserError
from .image_field import SMART_THRESHOLD, ImageJob, image_field, stores_jpeg
from .images import resized
from .pack import WriteError, claim_temporary, page_size_for, write_beton
from .sources.base import Sample, Source
from .sources.imagefolder import SPLITS, ImageFolder

__all__ = ["write_split", "write_source", "format_summary", "read_class_list",
           "WriteError", "Terminated", "Settings"]

WRITE_MODES = ("raw", "smart", "jpg", "proportion")
# ffcv-imagenet's published settings (rn50/rn18 configs): 500 px, half the images JPEG at q90.
PUBLISHED = dict(max_resolution=500, write_mode="proportion", compress_probability=0.5,
                 jpeg_quality=90)
DEFAULT_WRITE_PATH = "./data/{split}.beton"
DEFAULT_DATA_DIR = "./imagenet"


@dataclass(frozen=True)
class Settings:
    """How images are stored; recorded in the sidecar."""

    max_resolution: int = PUBLISHED["max_resolution"]
    write_mode: str = PUBLISHED["write_mode"]
    compress_probability: float = PUBLISHED["compress_probability"]
    jpeg_quality: int = PUBLISHED["jpeg_quality"]
    chunk_size: int = 100
    subset: int = -1
    reencode: bool = False  # True: never store a source JPEG's own bytes (image_field)
    # train from an ImageFolder tree: samples in a seeded shuffled order, so every page mixes the
    # classes (the page-aware order, data.in_memory 0, shuffles within a few pages only)
    shuffle: bool = True

    @classmethod
    def checked(cls, **kw) -> "Settings":
        """Settings from keyword arguments, each refused with one line when out of range."""
        s = cls(**kw)
        if s.write_mode not in WRITE_MODES:
            raise UserError(f"write_mode must be one of {', '.join(WRITE_MODES)}, "
                            f"not {s.write_mode!r}")
        if int(s.max_resolution) < 1:
            raise UserError(f"max_resolution must be at least 1, not {s.max_resolution}")
        if not 0.0 <= float(s.compress_probability) <= 1.0:
            raise UserError(f"compress_probability must be in [0, 1], "
                            f"not {s.compress_probability}")
        if not 1 <= int(s.jpeg_quality) <= 100:
            raise UserError(f"jpeg_quality must be in [1, 100], not {s.jpeg_quality}")
        if int(s.chunk_size) < 1:
            raise UserError(f"chunk_size must be at least 1, not {s.chunk_size}")
        return cls(int(s.max_resolution), s.write_mode, float(s.compress_probability),
                   int(s.jpeg_quality), int(s.chunk_size), int(s.subset or -1),
                   bool(s.reencode), bool(s.shuffle))

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
# Class lists


def read_class_list(path: str | Path) -> list[str]:
    """Class names from a beton (its sidecar), a sidecar/JSON file, or a text file (one a line)."""
    p = Path(path).expanduser()
    if p.suffix != ".json" and dataset_info.sidecar_path(p).exists():
        p = dataset_info.sidecar_path(p)
    if not p.is_file():
        raise UserError(f"class list not found: {path}")
    text = p.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        if p.suffix == ".json":
            raise UserError(f"class list is not valid JSON: {p}") from None
        data = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data.get("classes")
    if (not isinstance(data, list) or not data
            or not all(isinstance(c, str) and c for c in data)):
        raise UserError(f"no class list in {p} (expected a list of names or a 'classes' key)")
    if len(set(data)) != len(data):
        raise UserError(f"class list in {p} names a class twice")
    return data


def train_sidecar_for(target: Path) -> Path | None:
    """The train beton whose sidecar sits beside a val ``target``: ``val`` -> ``train`` in the
    file name (``demo_val.beton`` -> ``demo_train.beton``), else ``train.beton``."""
    candidates = []
    name = target.name
    i = name.rfind("val")
    if i >= 0:
        candidates.append(target.with_name(name[:i] + "train" + name[i + 3:]))
    candidates.append(target.with_name("train.beton"))
    for c in candidates:
        if c != target and dataset_info.sidecar_path(c).is_file():
            return c
    return None


def reference_classes(split: str, target: Path,
                      class_list: str | Path | list[str] | None) -> tuple[list | None, str | None]:
    """``(classes, where from)`` the split must use: ``class_list`` (a list, a beton, its JSON
    sidecar or a text file), else for ``val`` the train sidecar beside ``target``, else
    ``(None, None)``: the source's own order."""
    if class_list is not None:
        if isinstance(class_list, (list, tuple)):
            return [str(c) for c in class_list], "argument"
        return read_class_list(class_list), str(class_list)
    if split == "val" and (train := train_sidecar_for(target)) is not None:
        return read_class_list(train), str(dataset_info.sidecar_path(train))
    return None, None


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
