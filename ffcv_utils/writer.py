"""ImageFolder -> ``.beton``: the data stage (``write_ffcv.py`` is a thin front end to ``main``).

``write_split(data_dir, split, write_path)`` writes ``<data_dir>/<split>/<class>/<image>`` (or
``<data_dir>/<class>/<image>`` when ``data_dir`` is the split folder itself) to one ``.beton``
with the fields ffcv-imagenet uses, ``image`` (``RGBImageField``) and ``label`` (``IntField``),
and writes the class list, per-class counts, settings and skipped files to ``<beton>.json``.

How it stays safe on messy folders and on interruption:

* Every file that is not hidden is a candidate; whether it is an image is decided by decoding it,
  not by its extension. A parallel check pass decodes each candidate (JPEGs at 1/8 scale, which
  still reads every byte of the compressed stream, so truncation is caught) and converts it to
  RGB; only files that pass are handed to ffcv, so a bad file can never crash a writer process.
  Skipped files are counted and listed, with the reason, in the summary and the sidecar.
* Colour handling: grayscale, CMYK, YCbCr, 1-bit and palette images are converted to RGB;
  images with transparency (RGBA, LA, palette + transparency) are composited on white, the
  background most photographs and product shots assume; 16-bit and 32-bit images are scaled down
  to 8 bits. EXIF orientation is not applied, like torchvision's ``ImageFolder``, so the
  pixels match what ffcv-imagenet and published ImageNet numbers were trained on.
* Labels: classes are the sorted sub-folder names (torchvision order). For ``val`` the class list
  comes from the train split's sidecar, so the labels of the two splits cannot drift apart. An
  empty class folder keeps its label (with a warning) for the same reason.
* The beton is written to a hidden temporary file beside the target and renamed into place only
  when complete. SIGINT and SIGTERM stop the writer processes and remove the temporary file;
  the writer processes also ask the kernel to kill them if their parent dies (even by SIGKILL).
"""
from __future__ import annotations

import argparse
import ctypes
import difflib
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import dataset_info
from .cli import UserError

SPLITS = ("train", "val")
WRITE_MODES = ("raw", "smart", "jpg", "proportion")
# ffcv-imagenet's published settings (rn50/rn18 configs): 500 px, half the images JPEG at q90.
PUBLISHED = dict(max_resolution=500, write_mode="proportion", compress_probability=0.5,
                 jpeg_quality=90)
# write_mode='smart': JPEG-compress images whose raw pixels exceed a 256x256 RGB image; keep
# smaller ones raw (ffcv's own default threshold of None would store every image raw).
SMART_THRESHOLD = 256 * 256 * 3
DEFAULT_WRITE_PATH = "./data/{split}.beton"
DEFAULT_DATA_DIR = "./imagenet"
_PAGE_MIN = 1 << 23  # ffcv's default page size (8 MiB)
_PR_SET_PDEATHSIG = 1


class WriteError(RuntimeError):
    """Writing failed after the input was accepted (a writer process died, a file changed)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the same clean-up as for Ctrl-C runs."""


def default_num_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# Finding the files


def resolve_split_dir(data_dir: str | Path, split: str) -> Path:
    """``data_dir/split`` when that folder exists, else ``data_dir`` itself (the split folder)."""
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise UserError(f"data folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"data folder is not a folder: {root}")
    if (root / split).is_dir():
        return root / split
    other = [s for s in SPLITS if s != split and (root / s).is_dir()]
    if other:
        raise UserError(f"no {split}/ folder in {root} (found {other[0]}/)")
    return root


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_classes(split_dir: Path) -> list[str]:
    try:
        entries = [e for e in os.scandir(split_dir) if _visible(e.name)]
        names = [e.name for e in entries if e.is_dir()]
    except OSError as e:
        raise UserError(f"cannot read {split_dir}: {e.strerror}") from None
    if not names:
        files = len(entries)
        hint = (f"; it holds {files} files directly: sort them into class folders first "
                "(ImageNet's val/ ships flat, see valprep.sh)") if files else ""
        raise UserError(f"no class folders in {split_dir} "
                        f"(expected {split_dir}/<class name>/<image files>){hint}")
    return sorted(names)


def list_files(class_dir: Path) -> list[str]:
    """Every visible file under ``class_dir`` in torchvision ``ImageFolder`` order."""
    out = []
    for root, dirs, files in sorted(os.walk(class_dir, followlinks=True)):
        dirs[:] = [d for d in dirs if _visible(d)]
        out.extend(os.path.join(root, f) for f in sorted(files) if _visible(f))
    return out


def _subset(per_class: list[list[str]], n: int) -> list[list[str]]:
    """The first ``n`` files taken round-robin over the classes (every class represented)."""
    keep = [0] * len(per_class)
    left = n
    while left > 0:
        progressed = False
        for c, files in enumerate(per_class):
            if left and keep[c] < len(files):
                keep[c] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return [files[:k] for files, k in zip(per_class, keep)]


# --------------------------------------------------------------------------------------------
# Decoding


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB (alpha composited on white, high bit depths scaled down)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        if a.ndim == 3:
            a = a[..., 0]
        a = a.astype(np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        else:  # 'I' (32-bit int, often a 16-bit PNG) or 'F': infer the range from the data
            top = float(a.max()) if a.size else 0.0
            scale = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
            if mode == "F" and 0 < top <= 1.0:
                scale = 1.0
        gray = np.clip(np.rint(a * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(path: str) -> np.ndarray:
    """HxWx3 uint8 array of the image at ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, EXIF warnings
        with Image.open(path) as im:
            return np.asarray(to_rgb(im), dtype=np.uint8)


def _resized(w: int, h: int, max_resolution: int) -> tuple[int, int]:
    """The size ffcv's ``RGBImageField`` stores (its ``resizer``: longest side capped)."""
    ratio = max_resolution / max(w, h)
    if ratio >= 1:
        return w, h
    return int(ratio * w), int(ratio * h)


def probe(path: str, max_resolution: int = 500):
    """``(None, width, height)`` when ``path`` is an image the writer can store, else
    ``(reason, 0, 0)``. Decodes the whole file (JPEGs at 1/8 scale) and converts it to RGB."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)", 0, 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                w, h = im.size
                if im.format in ("JPEG", "MPO"):
                    im.draft(None, (1, 1))  # DCT scaling: every byte is still decoded
                im.load()
                to_rgb(im).getpixel((0, 0))
    except UnidentifiedImageError:
        return "not an image (or an unsupported format)", 0, 0
    except Image.DecompressionBombError as e:
        return f"too many pixels: {e}", 0, 0
    except Exception as e:  # truncated, corrupt, unreadable
        msg = str(e) or type(e).__name__
        return f"unreadable image: {msg[:200]}", 0, 0
    if w < 1 or h < 1 or min(_resized(w, h, max_resolution)) < 1:
        return f"degenerate size {w}x{h}", 0, 0
    return None, w, h


def _probe_task(args):
    return probe(*args)


# --------------------------------------------------------------------------------------------
# Child processes: they die with the parent and leave signals to it


def _child_setup(parent_pid: int) -> None:
    """In a forked helper: ignore Ctrl-C (the parent stops us), default SIGTERM, and ask the
    kernel to SIGKILL us when the parent dies, so no helper outlives the writer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


@contextmanager
def _sigterm_raises():
    """In the main thread, turn SIGTERM into ``Terminated`` (a KeyboardInterrupt) for a while."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_blocked():
    """Hold SIGINT/SIGTERM back while the finished file is moved into place."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _FolderImages:
    """Indexable (image, label) for ffcv's writer processes; reports failures to the parent."""

    def __init__(self, samples: list[tuple[str, int]], errors, seed: int = 0):
        self.samples = samples
        self.errors = errors
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            image = load_rgb(path)
        except Exception as e:
            self.errors.put(f"{path} could not be read although it passed the check "
                            f"(did it change during the write?): {e}")
            raise
        # 'proportion' mode draws np.random in the field's encode: seeding per image makes the
        # JPEG/raw choice of every image reproducible, whatever process writes it.
        np.random.seed((self.seed + i) % (1 << 32))
        return image, label


def _report_encode_errors(field, errors) -> None:
    """Make ``field.encode`` report real failures before ffcv's allocator can block on them."""
    encode = field.encode

    def reporting_encode(destination, value, malloc):
        try:
            return encode(destination, value, malloc)
        except MemoryError:  # ffcv's own signal to retry the sample on a fresh page
            raise
        except Exception as e:
            errors.put(f"{type(field).__name__}.encode failed: {type(e).__name__}: {e}")
            raise

    field.encode = reporting_encode  # instance attribute: type(field) stays the ffcv class


def _writer_process(parent_pid, errors, args):
    _child_setup(parent_pid)
    from ffcv.writer import worker_job_indexed_dataset

    try:
        worker_job_indexed_dataset(*args)
    except BaseException as e:
        errors.put(f"writer process failed: {type(e).__name__}: {e}")
        errors.close()
        errors.join_thread()
        os._exit(1)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _write_beton(path: Path, fields: dict, samples: list[tuple[str, int]], *, num_workers: int,
                 chunk_size: int, page_size: int, progress: bool) -> None:
    """ffcv's ``DatasetWriter.from_indexed_dataset``, driven so that a failed or killed writer
    process stops the write with an error instead of hanging it, and no process outlives it."""
    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter
    from tqdm import tqdm

    ctx = mp.get_context("fork")
    n = len(samples)
    writer = DatasetWriter(str(path), fields, page_size=page_size, num_workers=num_workers)
    writer.num_samples = n
    work, allocations, errors = ctx.Queue(), ctx.Queue(), ctx.Queue()
    procs: list = []
    writer.metadata_sm = None
    try:
        writer.prepare()  # header, field descriptors; metadata in shared memory
        for fields_ in fields.values():
            _report_encode_errors(fields_, errors)
        for start in range(0, n, chunk_size):
            idx = range(start, min(n, start + chunk_size))
            work.put(list(zip(idx, idx)))
        for _ in range(num_workers):
            work.put(None)
        done = ctx.Value(ctypes.c_uint64, 0)
        allocator = MemoryAllocator(str(path), writer.data_region_start, page_size)
        dataset = _FolderImages(samples, errors)
        args = (work, writer.metadata_sm, writer.metadata_type, fields, allocator, done,
                allocations, dataset)
        for _ in range(num_workers):
            p = ctx.Process(target=_writer_process, args=(os.getpid(), errors, args),
                            daemon=True)
            p.start()
            procs.append(p)

        def check():
            try:
                raise WriteError(errors.get_nowait())
            except queue.Empty:
                pass
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                time.sleep(0.2)  # give its message a moment to arrive
                try:
                    msg = errors.get_nowait()
                except queue.Empty:
                    msg = f"a writer process died (exit code {dead[0].exitcode})"
                raise WriteError(msg)

        with tqdm(total=n, desc="writing", unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            seen = 0
            while seen < n:
                check()
                now = int(done.value)
                bar.update(now - seen)
                seen = now
                if seen < n:
                    time.sleep(0.05)
        allocation_list = []
        for _ in procs:
            while True:
                try:
                    allocation_list.extend(allocations.get(timeout=0.2))
                    break
                except queue.Empty:
                    check()
        for p in procs:
            p.join()
        writer.finalize(allocation_list)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
        for q in (work, allocations, errors):
            q.cancel_join_thread()  # never block interpreter exit on undelivered chunks
            q.close()
        if writer.metadata_sm is not None:
            writer.metadata_sm.close()
            writer.metadata_sm.unlink()


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


# --------------------------------------------------------------------------------------------
# Output file


def _prepare_output(target: Path) -> Path:
    """Create the folder, clear stale temporaries of dead writers, and claim a temporary file."""
    if target.is_dir():
        raise UserError(f"output path is a folder: {target}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {target.parent}: "
                        f"{e.strerror or e}") from None
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            pid = int(stale.name[len(target.name) + 2:-4])
            os.kill(pid, 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except (ValueError, OSError):
            pass
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
    except FileExistsError:
        tmp.unlink()
        return _prepare_output(target)
    except OSError as e:
        raise UserError(f"cannot write to {target.parent}: {e.strerror or e}") from None
    return tmp


# --------------------------------------------------------------------------------------------
# The data stage


def write_split(data_dir: str | Path, split: str, write_path: str | Path, *,
                max_resolution: int = 500, write_mode: str = "proportion",
                compress_probability: float = 0.5, jpeg_quality: int = 90,
                num_workers: int | None = None, chunk_size: int = 100, subset: int = -1,
                class_list: str | Path | list[str] | None = None,
                progress: bool = True) -> dict:
    """Write one split of an ImageFolder tree to ``write_path`` and its sidecar; return a summary.

    ``data_dir`` is the folder holding ``<split>/`` or the split folder itself. For ``val`` the
    class order comes from ``class_list`` (a list, a beton, its JSON sidecar or a text file) or
    else from the train sidecar beside ``write_path``; without one, from the sorted folder names.
    ``progress`` shows progress bars and prints warnings on stderr. Raises ``UserError`` for bad
    input (one sentence, naming the path) and ``WriteError`` if a writer process fails.
    """
    from tqdm import tqdm

    t0 = time.time()
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if write_mode not in WRITE_MODES:
        raise UserError(f"write_mode must be one of {', '.join(WRITE_MODES)}, not {write_mode!r}")
    if int(max_resolution) < 1:
        raise UserError(f"max_resolution must be at least 1, not {max_resolution}")
    if not 0.0 <= float(compress_probability) <= 1.0:
        raise UserError(f"compress_probability must be in [0, 1], not {compress_probability}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise UserError(f"jpeg_quality must be in [1, 100], not {jpeg_quality}")
    if int(chunk_size) < 1:
        raise UserError(f"chunk_size must be at least 1, not {chunk_size}")
    max_resolution, jpeg_quality, chunk_size = int(max_resolution), int(jpeg_quality), int(chunk_size)
    num_workers = default_num_workers() if not num_workers or num_workers < 1 else int(num_workers)
    messages: list[str] = []

    def warn(msg: str) -> None:
        messages.append(msg)
        if progress:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    split_dir = resolve_split_dir(data_dir, split)
    folders = list_classes(split_dir)
    target = Path(str(write_path).format(split=split)).expanduser()

    class_source = None
    if class_list is not None:
        if isinstance(class_list, (list, tuple)):
            classes, class_source = [str(c) for c in class_list], "argument"
        else:
            classes, class_source = read_class_list(class_list), str(class_list)
    elif split == "val" and (train := train_sidecar_for(target)) is not None:
        classes = read_class_list(train)
        class_source = str(dataset_info.sidecar_path(train))
    else:
        classes = folders
    if class_source is not None:
        unknown = [f for f in folders if f not in set(classes)]
        if unknown:
            raise UserError(f"class folder {split_dir / unknown[0]} is not in the class list "
                            f"from {class_source} ({len(unknown)} such folders)")
        missing = [c for c in classes if c not in set(folders)]
        if missing:
            warn(f"{len(missing)} classes of {class_source} have no folder in {split_dir} "
                 f"(e.g. {missing[0]!r}); they keep their labels with 0 images")

    per_class = [list_files(split_dir / c) if (split_dir / c).is_dir() else [] for c in classes]
    if subset is not None and int(subset) > 0:
        per_class = _subset(per_class, int(subset))
    candidates = [(f, label) for label, files in enumerate(per_class) for f in files]

    with _sigterm_raises():
        tmp = _prepare_output(target)  # fail on an unwritable output before the long passes
        try:
            # 1. check every candidate in parallel
            t_scan = time.time()
            tasks = [(f, max_resolution) for f, _ in candidates]
            bar = tqdm(total=len(tasks), desc="checking", unit="file", disable=not progress,
                       dynamic_ncols=True)
            with bar:
                if num_workers > 1 and len(tasks) >= 64:
                    ctx = mp.get_context("fork")
                    step = max(1, min(64, len(tasks) // (num_workers * 8)))
                    with ctx.Pool(num_workers, initializer=_child_setup,
                                  initargs=(os.getpid(),)) as pool:
                        results = []
                        for r in pool.imap(_probe_task, tasks, chunksize=step):
                            results.append(r)
                            bar.update(1)
                else:
                    results = []
                    for t in tasks:
                        results.append(probe(*t))
                        bar.update(1)
            scan_seconds = time.time() - t_scan

            samples, skipped, sizes = [], [], []
            counts = [0] * len(classes)
            for (f, label), (reason, w, h) in zip(candidates, results):
                if reason is None:
                    samples.append((f, label))
                    sizes.append((w, h))
                    counts[label] += 1
                else:
                    skipped.append({"file": os.path.relpath(f, split_dir), "reason": reason})
            if skipped:
                warn(f"skipping {len(skipped)} unreadable files (e.g. {skipped[0]['file']}: "
                     f"{skipped[0]['reason']}); all are listed in "
                     f"{dataset_info.sidecar_path(target)}")
            empty = [c for c, n in zip(classes, counts) if n == 0 and c in set(folders)]
            for c in empty[:5]:
                warn(f"class folder {split_dir / c} has no readable images; "
                     f"class {c!r} keeps label {classes.index(c)}")
            if len(empty) > 5:
                warn(f"... {len(empty) - 5} more empty class folders")
            if not samples:
                raise UserError(f"no readable images in {split_dir} "
                                f"({len(skipped)} files skipped)")

            # 2. write them
            from ffcv.fields import IntField, RGBImageField

            raw = [3 * rw * rh for rw, rh in (_resized(w, h, max_resolution) for w, h in sizes)]
            # A page must hold the largest image (JPEG can exceed raw, hence 2x). ffcv's 8 MiB
            # default for real data sets; 2 MiB pages for small ones, whose file would otherwise
            # be mostly the zero padding of each writer process's last page.
            floor = _PAGE_MIN if sum(raw) > 32 * _PAGE_MIN else _PAGE_MIN // 4
            page_size = max(floor, _next_pow2(2 * max(raw)))
            fields = {
                "image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                                       smart_threshold=SMART_THRESHOLD,
                                       jpeg_quality=jpeg_quality,
                                       compress_probability=float(compress_probability)),
                "label": IntField(),
            }
            t_write = time.time()
            _write_beton(tmp, fields, samples, num_workers=min(num_workers, len(samples)),
                         chunk_size=chunk_size, page_size=page_size, progress=progress)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            write_seconds = time.time() - t_write
            seconds = time.time() - t0

            settings = {"max_resolution": max_resolution, "write_mode": write_mode,
                        "compress_probability": float(compress_probability),
                        "jpeg_quality": jpeg_quality, "smart_threshold": SMART_THRESHOLD,
                        "chunk_size": chunk_size, "subset": int(subset or -1),
                        "page_size": page_size}
            nbytes = tmp.stat().st_size
            info = {
                "split": split,
                "source": str(split_dir.resolve()),
                "fields": {"image": "RGBImageField", "label": "IntField"},
                "classes": list(classes),
                "num_classes": len(classes),
                "num_samples": len(samples),
                "class_counts": dict(zip(classes, counts)),
                "empty_classes": [c for c, n in zip(classes, counts) if n == 0],
                "class_list_from": class_source,
                "num_skipped": len(skipped),
                "skipped": skipped,
                "settings": settings,
                "warnings": messages,
                "bytes": nbytes,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            with _signals_blocked():
                dataset_info.sidecar_path(target).unlink(missing_ok=True)
                os.replace(tmp, target)
                sidecar = dataset_info.write_info(target, info)
        finally:
            tmp.unlink(missing_ok=True)

    return {
        "path": str(target), "sidecar": str(sidecar), "split": split,
        "source": str(split_dir), "images": len(samples), "skipped": len(skipped),
        "skipped_files": skipped, "num_classes": len(classes), "classes": list(classes),
        "class_counts": dict(zip(classes, counts)), "empty_classes": info["empty_classes"],
        "class_list_from": class_source, "bytes": nbytes, "seconds": seconds,
        "scan_seconds": scan_seconds, "write_seconds": write_seconds,
        "startup_seconds": seconds - scan_seconds - write_seconds,
        # throughput of the data stage itself: checking + writing, without the fixed start-up
        # (importing ffcv compiles its numba kernels, ~8 s)
        "images_per_s": len(samples) / max(1e-9, scan_seconds + write_seconds),
        "settings": settings, "warnings": messages,
    }


def format_summary(s: dict, max_listed: int = 10) -> str:
    mb = s["bytes"] / 1e6
    lines = [f"wrote {s['path']}: {s['images']:,} images, {s['num_classes']} classes, "
             f"{mb:,.1f} MB in {s['seconds']:.1f} s (start-up {s['startup_seconds']:.1f} s, "
             f"check {s['scan_seconds']:.1f} s, write {s['write_seconds']:.1f} s: "
             f"{s['images_per_s']:,.0f} images/s)"]
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


# --------------------------------------------------------------------------------------------
# Command line (fastargs, with ffcv-imagenet's key names under section ``cfg``)

_PARAMS = {  # name: (checker spec, description, default)
    "dataset": ("dataset", "kept for ffcv-imagenet configs: imagenet (any ImageFolder tree)",
                "imagenet"),
    "split": ("split", "train or val (same as --split)", None),
    "data_dir": (str, "folder holding <split>/<class>/<images>, or the split folder itself",
                 DEFAULT_DATA_DIR),
    "write_path": (str, "output .beton ({split} is replaced by the split)", DEFAULT_WRITE_PATH),
    "max_resolution": ("pos_int", "longest side of stored images (larger ones are shrunk)",
                       PUBLISHED["max_resolution"]),
    "write_mode": ("write_mode", "raw, smart, jpg or proportion", PUBLISHED["write_mode"]),
    "compress_probability": ("prob", "share of images stored as JPEG in proportion mode",
                             PUBLISHED["compress_probability"]),
    "jpeg_quality": ("quality", "JPEG quality of compressed images", PUBLISHED["jpeg_quality"]),
    "num_workers": (int, "writer processes (default: all CPUs)", None),
    "chunk_size": ("pos_int", "images per work item", 100),
    "subset": (int, "write only this many images, spread over the classes (-1: all)", -1),
    "class_list": (str, "class order for val: a train beton, its .json, or a list", None),
}


def _checker(spec):
    from fastargs.validation import And, InRange, OneOf

    return {
        "dataset": OneOf(["imagenet", "imagefolder"]),
        "split": OneOf(list(SPLITS)),
        "pos_int": And(int, InRange(min=1)),
        "write_mode": OneOf(list(WRITE_MODES)),
        "prob": And(float, InRange(0, 1)),
        "quality": And(float, InRange(1, 100)),
    }.get(spec, spec)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(message)


def _config_file_entries(fname: str) -> dict:
    """Flat ``{'cfg.key': value}`` from a JSON or YAML file; unknown keys are refused."""
    try:
        text = Path(fname).read_text()
    except OSError as e:
        raise UserError(f"cannot read config file {fname}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"config file {fname} is neither JSON nor YAML: "
                            f"{str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {fname} must hold a mapping like {{cfg: {{data_dir: ...}}}}")

    flat = {}

    def walk(d, prefix):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                flat[key] = v

    walk(data, "")
    known = [f"cfg.{k}" for k in _PARAMS]
    for key in flat:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown key '{key}' in config file {fname}{hint}")
    return flat


def parse_args(argv: list[str] | None = None) -> dict:
    """Command line (+ config files) -> keyword arguments for ``write_split``, validated."""
    from fastargs import Config, Param, Section
    from fastargs.exceptions import MissingValueError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(
        prog="write_ffcv.py", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write an ImageFolder split (train or val) to an ffcv .beton file and its "
                    "class list to <file>.json.",
        epilog="options (also settable in a JSON/YAML config file under 'cfg:'):\n" + "\n".join(
            f"  --cfg.{k:<22} {d}" + (f" [default: {v}]" if v is not None else "")
            for k, (_, d, v) in _PARAMS.items()))
    parser.add_argument("--split", choices=SPLITS, help="which split to write")
    parser.add_argument("--config-file", "-C", action="append", default=[],
                        help="JSON or YAML config file (repeatable)")
    for k in _PARAMS:
        parser.add_argument(f"--cfg.{k}", dest=f"cfg.{k}", default=None, help=argparse.SUPPRESS)
    args = vars(parser.parse_args(argv))

    config = Config()
    Section("cfg", "ImageFolder -> .beton writer", config_descriptor=config).params(
        **{k: Param(_checker(spec), desc, default=default)
           for k, (spec, desc, default) in _PARAMS.items()})
    for fname in args.pop("config_file"):
        config.collect(_config_file_entries(fname))
    split = args.pop("split")
    config.collect({k: v for k, v in args.items() if v is not None})
    errors = config.validate(mode="errordict")
    if errors:
        parts = []
        for path, err in errors.items():
            key = ".".join(path)
            if isinstance(err, MissingValueError):
                parts.append(f"--{key} is required")
            else:
                parts.append(f"--{key}: expected {config.entries[path].checker.help()}, "
                             f"got {config.content.get(path)!r}")
        raise UserError("; ".join(parts))
    values = {k: config[("cfg", k)] for k in _PARAMS}
    if split and values["split"] and split != values["split"]:
        raise UserError(f"--split {split} and --cfg.split {values['split']} disagree")
    split = split or values["split"]
    if not split:
        raise UserError("choose a split: --split train or --split val")
    write_path = Path(values["write_path"].format(split=split))
    if write_path.is_dir():
        write_path = write_path / f"{split}.beton"
    return dict(data_dir=values["data_dir"], split=split, write_path=str(write_path),
                max_resolution=values["max_resolution"], write_mode=values["write_mode"],
                compress_probability=values["compress_probability"],
                jpeg_quality=int(values["jpeg_quality"]), num_workers=values["num_workers"],
                chunk_size=values["chunk_size"], subset=values["subset"],
                class_list=values["class_list"])


def main(argv: list[str] | None = None) -> int:
    kwargs = parse_args(argv)
    print(f"writing {kwargs['split']} from {kwargs['data_dir']} to {kwargs['write_path']} "
          f"(max_resolution={kwargs['max_resolution']}, write_mode={kwargs['write_mode']}, "
          f"compress_probability={kwargs['compress_probability']}, "
          f"jpeg_quality={kwargs['jpeg_quality']})", flush=True)
    try:
        summary = write_split(**kwargs, progress=True)
    except Terminated:
        print("write_ffcv.py: terminated; no partial file left", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("write_ffcv.py: interrupted; no partial file left", file=sys.stderr)
        return 128 + signal.SIGINT
    except WriteError as e:
        print(f"write_ffcv.py: error: {e}", file=sys.stderr)
        return 1
    print(format_summary(summary), flush=True)
    return 0
