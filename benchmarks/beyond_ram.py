"""Betons bigger than memory, ImageNet's sample count, and what each write mode costs (issue 17).

Three modes, each writing one CSV in ``benchmarks/results/``:

* ``stream`` (``beyond_ram.csv``): a proportion beton of ImageNet-like photos whose labels are
  the sample indices, several times larger than the page cache a memory cap leaves, read for one
  epoch inside a memory-capped cgroup (v1 ``memory`` or v2 ``memory.max``; page cache counts
  against the cap) by 1 and 2 processes (torchrun, gloo), the beton evicted from the page cache
  (``posix_fadvise`` DONTNEED) before the epoch. Loaders:

  - ``mmap``: the toolkit's ``train_loader(in_memory=True)``, random order over a memory map;
  - ``old``: what ``data.in_memory 0`` did before the page-aware order: ffcv's own Loader with
    ``os_cache=False``, ``QUASI_RANDOM`` in one process, ``RANDOM`` + ``distributed=True`` under
    torchrun (the toolkit's decoder ops, so only the order differs);
  - ``page``: the toolkit's ``train_loader(in_memory=False)``, the page-aware order;
  - ``fits``: ``train_loader(in_memory=True)`` with no cap and the beton in the page cache;
  - ``page_warm``: the page-aware loader with no cap and the beton in the page cache (what the
    page-aware path costs without a memory limit; since its pages are read with O_DIRECT, it
    still reads them from disk).

  Per row: img/s, bytes read from disk during the epoch over the beton's bytes (``read_bytes``
  of ``/proc/self/io`` of every loader process, summed), peak RSS per process (``VmHWM``), the
  RSS before the epoch and the page-aware order's stated bound (``order.peak_bytes``), the share
  of samples seen exactly once (labels are sample indices), and the outcome (``ok``, ``killed by
  OOM``, ``timeout``). The disk's sequential read bandwidth is measured once on the evicted beton
  and gives ``disk_img_per_s``, what the disk allows at this beton's bytes per image.

* ``scale`` (``beyond_ram_scale.csv``): betons of 1/8 .. 1 x 1,281,167 tiny raw samples in 1,000
  classes (and a 50,000-sample val): seconds to open and check them (``ffcv_utils.beton.check``), to
  build an epoch's order (random and page-aware, 1 and 8 simulated ranks; the page-aware order
  on an ImageNet-like page layout of 32 samples per 8 MiB page, as a 340 GB beton has), the
  bytes the order's arrays take, and a fresh process's ``train_loader`` to its first batch.
  ``x_per_doubling`` columns divide each figure by the previous (half as large) row's.

* ``sizes`` (``write_sizes.csv``): bytes per image of each write mode at max_resolution 500 and
  400 on ImageNet-like photos (the toolkit's writer, jpeg_quality 90, compress_probability 0.5),
  and what that makes for ImageNet's 1,281,167 train images against 64/128/256 GB of RAM.

    python benchmarks/beyond_ram.py stream --images 9000 --cap-mb 1152
    python benchmarks/beyond_ram.py scale
    python benchmarks/beyond_ram.py sizes --images 300
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import (REPO, PeakRSS, finish_table, machine_info,  # noqa: E402
                               markdown_table, now)

IMAGENET_TRAIN, IMAGENET_VAL, IMAGENET_CLASSES = 1_281_167, 50_000, 1_000
RAM_SIZES_GB = (64, 128, 256)
DATA_DIR = REPO / "bench_data" / "beyond_ram"
RESULTS = REPO / "benchmarks" / "results"
PROG = "beyond_ram.py"


def fail(mode: str, why: str, code: int = 2):
    """The benchmark's refusals: one line on stderr, a non-zero exit."""
    print(f"{PROG} {mode}: error: {why}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def load_1m() -> float:
    return round(os.getloadavg()[0], 2)


# =========================================================================== data

class _Photos:
    """ImageNet-like photos made on the fly, sample i from (seed, i) alone; label = i."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._src = n, seed, None

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import numpy as np

        from ffcv_utils.tools.sample_data import _source_photos, imagenet_like_jpeg

        if self._src is None:
            self._src = _source_photos()
        img = imagenet_like_jpeg(np.random.default_rng([self.seed, int(i)]), self._src)
        return np.asarray(img.convert("RGB")), int(i)


def photo_beton(data_dir: Path, images: int, workers: int = 2, seed: int = 0) -> Path:
    """A proportion beton (max_resolution 500, jpeg_quality 90, compress_probability 0.5, ffcv's
    8 MiB pages) of ``images`` ImageNet-like photos whose label is the sample index; cached."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from ffcv_utils.base.atomic import atomic_path

    path = Path(data_dir) / f"photos-{images}-seed{seed}-proportion.beton"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {"image": RGBImageField(write_mode="proportion", max_resolution=500,
                                     jpeg_quality=90, compress_probability=0.5),
              "label": IntField()}
    with atomic_path(path) as tmp:
        DatasetWriter(str(tmp), fields, num_workers=workers).from_indexed_dataset(
            _Photos(images, seed), chunksize=50)
    return path


def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (clean pages: DONTNEED frees them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sequential_read(path: Path, chunk: int = 8 << 20, passes: int = 3) -> dict:
    """The disk's sequential read bandwidth: the evicted file read front to back, best of
    ``passes`` (the disk is shared: the best pass is what it allows)."""
    rates = []
    for _ in range(passes):
        evict(path)
        size, t0 = 0, now()
        with open(path, "rb", buffering=0) as f:
            buf = bytearray(chunk)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                size += n
        rates.append(size / (now() - t0) / 1e6)
    evict(path)
    return {"disk_mb_per_s": max(rates), "disk_passes_mb_per_s": ";".join(f"{r:.0f}"
                                                                          for r in rates)}


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass


def warmup_beton(data_dir: Path) -> Path:
    """A small beton of the same kind: each loader process runs one epoch of it first, so the
    measured epoch does not pay (or count in its memory) numba's compilation."""
    return photo_beton(data_dir, 96, seed=1)


# =========================================================================== stream: child

def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` figure in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _read_bytes(pid: int | str = "self") -> int:
    """Bytes this process (all its threads) made the block layer fetch."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


_PAGE_SLOTS: list[int] = []


def _record_page_slots() -> None:
    """ffcv's process cache sizes its page memory per epoch (``schedule.num_slots`` pages):
    record it, to set beside the order's stated bound."""
    from ffcv.memory_managers.process_cache.context import ProcessCacheContext

    from ffcv_utils.load.direct_pages import DirectContext

    for cls in (ProcessCacheContext, DirectContext):  # ffcv's own, and the O_DIRECT one
        enter = cls.__dict__["__enter__"]
        if getattr(enter, "_recorded", False):
            continue

        def recording(self, enter=enter):
            out = enter(self)
            _PAGE_SLOTS.append(int(self.schedule.num_slots))
            return out

        recording._recorded = True
        cls.__enter__ = recording


def make_loader(variant: str, path: Path, args, world: int):
    """(loader, TrainData or None) for one variant; see the module docstring."""
    from ffcv_utils.load.loaders import train_loader

    common = dict(batch_size=args.batch_size, num_workers=args.workers, res=args.res,
                  distributed=world > 1, seed=0)
    if variant in ("mmap", "fits"):
        data = train_loader(str(path), in_memory=True, **common)
        return data.loader, data
    if variant in ("page", "page_warm"):
        data = train_loader(str(path), in_memory=False, window_pages=args.window_pages, **common)
        return data.loader, data
    if variant == "old":  # ffcv's own order, as data.py chose it before the page-aware order
        from ffcv.loader import Loader, OrderOption

        from ffcv_utils.load.loaders import _image_tail, _label_pipeline, _train_image_ops
        from ffcv_utils.load.draws import SampleRandom

        import torch

        cpu = torch.device("cpu")
        _, ops = _train_image_ops(args.res, "fast", SampleRandom(0))
        order = OrderOption.RANDOM if world > 1 else OrderOption.QUASI_RANDOM
        loader = Loader(str(path), batch_size=args.batch_size, num_workers=args.workers,
                        order=order, os_cache=False, distributed=world > 1, drop_last=True,
                        seed=0, pipelines={"image": [*ops, *_image_tail(cpu)],
                                           "label": _label_pipeline(cpu)})
        return loader, None
    raise ValueError(variant)


def child_main(args) -> None:
    """One process of a stream run: warm-up epoch on a small beton, then one measured epoch of
    the big one, evicted first; writes its figures and the labels it saw to --out-dir."""
    import numpy as np
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    _record_page_slots()
    out = Path(args.out_dir)
    if args.warmup_beton:
        loader, _ = make_loader(args.child, Path(args.warmup_beton), args, world)
        for _ in loader:
            pass
        del loader
    beton = Path(args.beton)
    loader, data = make_loader(args.child, beton, args, world)
    if args.child not in WARM:
        evict(beton)  # every rank, then all wait: no rank reads before the last evicted
    if world > 1:
        dist.barrier()
    slots_before = len(_PAGE_SLOTS)
    base_rss, io0, t0 = _proc_status("VmRSS"), _read_bytes(), now()
    labels = []
    for _, y in loader:
        labels.append(y.numpy().copy())
    seconds = now() - t0
    result = {"rank": rank, "world": world, "seconds": seconds,
              "images": int(sum(len(y) for y in labels)),
              "read_bytes": _read_bytes() - io0, "base_rss": base_rss,
              "peak_rss": _proc_status("VmHWM"),
              "page_slots": _PAGE_SLOTS[-1] if len(_PAGE_SLOTS) > slots_before else 0}
    if data is not None and data.order is not None and data.order.layout is not None:
        from ffcv_utils.load import order as orders

        layout = data.order.layout
        result["bound_bytes"] = orders.peak_bytes(
            layout.page_size, args.window_pages, args.batch_size,
            layout.min_window_samples(args.window_pages),
            args.batch_size * (3 * args.res * args.res + 8))
        result["bound_pages"] = orders.peak_pages(
            args.window_pages, args.batch_size, layout.min_window_samples(args.window_pages))
    np.save(out / f"labels-{rank}.npy", np.concatenate(labels) if labels else np.zeros(0, int))
    (out / f"result-{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


# =========================================================================== stream: parent

class MemoryCap:
    """A memory-capped cgroup (v1 ``memory`` controller, else v2 ``memory.max``) that a child
    process joins before it execs; page cache the group's processes fill counts against it."""

    def __init__(self, cap_bytes: int, name: str | None = None):
        self.cap = int(cap_bytes)
        self.name = name or f"beyond_ram_{os.getpid()}_{int(time.time() * 1000) % 10**6}"
        v1, v2root = Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")
        controllers = v2root / "cgroup.controllers"
        if (v1 / "memory.limit_in_bytes").exists():
            self.v2, self.path = False, v1 / self.name
        elif controllers.exists() and "memory" in controllers.read_text().split():
            self.v2, self.path = True, v2root / self.name
        else:
            raise OSError("no cgroup memory controller is mounted (neither v1 "
                          "/sys/fs/cgroup/memory nor v2 with memory in cgroup.controllers)")
        try:
            self.path.mkdir()
            self._write("memory.max" if self.v2 else "memory.limit_in_bytes", self.cap)
            if not self.v2:
                (self.path / "memory.swappiness").write_text("0")
        except OSError as e:
            self.remove()
            raise OSError(f"cannot create the memory cgroup {self.path} ({e.strerror or e}); "
                          "run as root where a memory controller is available") from None

    def _write(self, name: str, value) -> None:
        (self.path / name).write_text(str(value))

    def _read(self, name: str) -> str:
        try:
            return (self.path / name).read_text()
        except OSError:
            return ""

    def join(self) -> None:
        """Called in the child between fork and exec: it and all it starts are capped."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self) -> dict:
        if self.v2:
            peak = self._read("memory.peak").strip()
            events = dict(line.split() for line in self._read("memory.events").splitlines())
            return {"cgroup_peak_bytes": int(peak) if peak else float("nan"),
                    "oom_kills": int(events.get("oom_kill", 0))}
        ctl = dict(line.split() for line in self._read("memory.oom_control").splitlines())
        return {"cgroup_peak_bytes": int(self._read("memory.max_usage_in_bytes") or 0),
                "oom_kills": int(ctl.get("oom_kill", 0))}

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


class TreeSampler(PeakRSS):
    """Samples a process tree: summed RSS (``peak_bytes``) and each process's read_bytes (last
    seen), so a run killed before reporting still has figures."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(pid, interval)
        self.read = {}

    def visit(self, process) -> None:
        self.read[process.pid] = _read_bytes(process.pid)


def run_stream_config(variant: str, procs: int, beton: Path, args) -> dict:
    """One loader variant on ``procs`` processes; the row's raw figures."""
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix=f"beyond_ram_{variant}_{procs}_"))
    child = [str(Path(__file__).resolve()), "stream", "--child", variant, "--beton", str(beton),
             "--out-dir", str(work), "--batch-size", str(args.batch_size), "--res", str(args.res),
             "--workers", str(args.workers or max(1, (os.cpu_count() or 1) // procs)),
             "--window-pages", str(args.window_pages)]
    if args.warmup_beton:
        child += ["--warmup-beton", str(args.warmup_beton)]
    if procs == 1:
        argv = [sys.executable, *child]
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(procs), *child]
    capped = variant not in WARM
    cap_mb = args.cap_mb * procs
    cap = MemoryCap(cap_mb << 20) if capped else None
    if capped:
        evict(beton)
    else:
        warm(beton)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    row = {"loader": variant, "procs": procs, "capped": capped,
           "cap_mb": cap_mb if capped else float("nan"), "load_1m_before": load_1m()}
    t0 = now()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=cap.join if cap else None)
    tail: list[str] = []
    with TreeSampler(proc.pid) as sampler:
        timer = threading.Timer(args.timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line])[-30:]
        proc.wait()
        timed_out = not timer.is_alive() and proc.returncode != 0
        timer.cancel()
    row.update(wall_s=now() - t0, load_1m_after=load_1m(), rc=proc.returncode,
               tree_peak_rss_mb=sampler.peak_bytes / 2**20,
               tree_read_gb=sum(sampler.read.values()) / 1e9)
    if cap is not None:
        st = cap.stats()
        row.update(cgroup_peak_mb=st["cgroup_peak_bytes"] / 2**20, oom_kills=st["oom_kills"])
        try:  # anything left in the group (a timeout) goes before the group does
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        cap.remove()
    results = [json.loads(p.read_text()) for p in sorted(work.glob("result-*.json"))]
    if len(results) == procs and proc.returncode == 0:
        row["outcome"] = "ok"
    elif row.get("oom_kills", 0) > 0:
        row["outcome"] = "killed by OOM"
    elif timed_out:
        row["outcome"] = f"timeout after {args.timeout:.0f} s"
    else:
        row["outcome"] = f"failed (rc {proc.returncode})"
        sys.stdout.write("".join(tail))
    if row["outcome"] == "ok":
        n = beton_samples(beton)
        labels = np.concatenate([np.load(p) for p in sorted(work.glob("labels-*.npy"))])
        counts = np.bincount(labels.astype(np.int64), minlength=n)
        slowest = max(r["seconds"] for r in results)
        row.update(
            images=int(len(labels)), epoch_s=slowest, img_per_s=len(labels) / slowest,
            read_gb=sum(r["read_bytes"] for r in results) / 1e9,
            peak_rss_mb=";".join(f"{r['peak_rss'] / 2**20:.0f}" for r in results),
            max_peak_rss_mb=max(r["peak_rss"] for r in results) / 2**20,
            cache_left_mb=(cap_mb - sum(r["peak_rss"] for r in results) / 2**20) if capped
            else float("nan"),
            base_rss_mb=max(r["base_rss"] for r in results) / 2**20,
            loader_mem_mb=max(r["peak_rss"] - r["base_rss"] for r in results) / 2**20,
            page_slots=max(r["page_slots"] for r in results),
            seen_once_share=float((counts == 1).mean()), repeats=int((counts > 1).sum()),
            missed=int((counts == 0).sum()))
        if "bound_bytes" in results[0]:
            row.update(bound_mb=results[0]["bound_bytes"] / 2**20,
                       bound_pages=results[0]["bound_pages"])
    else:
        row["read_gb"] = row["tree_read_gb"]
    shutil.rmtree(work, ignore_errors=True)
    return row


def beton_samples(path: Path) -> int:
    from ffcv_utils.beton.check import check

    return check(path)


STREAM_COLUMNS = [
    "procs", "loader", "order", "capped", "cap_mb", "outcome", "images", "epoch_s", "img_per_s",
    "fits_img_per_s", "disk_img_per_s", "target_img_per_s", "x_target", "read_gb", "beton_gb",
    "read_x_beton", "max_peak_rss_mb", "peak_rss_mb", "base_rss_mb", "loader_mem_mb", "bound_mb",
    "within_bound", "cache_left_mb", "beton_x_cache_left", "page_slots", "bound_pages",
    "seen_once_share", "repeats", "missed",
    "cgroup_peak_mb", "oom_kills", "tree_peak_rss_mb", "tree_read_gb", "beton_images",
    "bytes_per_img", "page_mb", "disk_mb_per_s", "disk_passes_mb_per_s", "batch_size", "res",
    "workers", "window_pages",
    "wall_s", "rc", "load_1m_before", "load_1m_after", "rounds", "rounds_img_per_s"]
ORDERS = {"fits": "random (toolkit), beton in page cache, no cap",
          "mmap": "random (toolkit), in_memory 1: memory map",
          "old": "ffcv's own, os_cache=False: QUASI_RANDOM (1 proc) / RANDOM distributed",
          "page": "page-aware (toolkit), in_memory 0",
          "page_warm": "page-aware (toolkit), in_memory 0, no cap (its O_DIRECT reads skip the cache)"}
WARM = ("fits", "page_warm")  # no cap, the beton read into the page cache first


def stream_main(args) -> None:
    import pandas as pd
    from ffcv.reader import Reader

    try:  # refuse before anything is written or measured
        MemoryCap(args.cap_mb << 20).remove()
    except OSError as e:
        fail("stream", str(e))
    data_dir = Path(args.data_dir)
    beton = photo_beton(data_dir, args.images)
    args.warmup_beton = warmup_beton(data_dir) if args.warmup else None
    info = machine_info()
    reader = Reader(str(beton))
    size, n = beton.stat().st_size, reader.num_samples
    disk = sequential_read(beton)
    print(f"beton {beton.name}: {n:,} samples, {size / 1e9:.2f} GB, "
          f"{reader.page_size >> 20} MiB pages; sequential read {disk['disk_mb_per_s']:.0f} MB/s;"
          f" cap {args.cap_mb} MiB per process; load {load_1m()}", flush=True)
    rows = []
    for rnd in range(args.rounds):  # interleaved: A B C D, A B C D, ...
        for procs in args.procs:
            for variant in args.variants:
                if rnd and variant in ("old", "mmap"):
                    continue  # minutes each (thrashing, or the OOM killer): measured once
                row = run_stream_config(variant, procs, beton, args)
                row["round"] = rnd
                print(f"  round {rnd} {procs} proc {variant}: {row['outcome']}, "
                      f"{row.get('img_per_s', float('nan')):.0f} img/s, read "
                      f"{row['read_gb'] / (size / 1e9):.2f}x the beton, peak RSS "
                      f"{row.get('peak_rss_mb', '?')} MiB, load {row['load_1m_after']}",
                      flush=True)
                rows.append(row)
    every = pd.DataFrame(rows)
    if "img_per_s" not in every.columns:
        every["img_per_s"] = float("nan")
    best = []  # each config's fastest round, with every round's rate beside it
    for _, group in every.groupby(["procs", "loader"], sort=False):
        pick = group.loc[group.img_per_s.idxmax()] if group.img_per_s.notna().any() \
            else group.iloc[0]
        pick = pick.copy()
        pick["rounds_img_per_s"] = ";".join(f"{v:.0f}" for v in group.img_per_s)
        pick["rounds"] = len(group)
        best.append(pick)
    df = pd.DataFrame(best).reset_index(drop=True)
    df["order"] = df.loader.map(ORDERS)
    df["beton_gb"], df["beton_images"] = size / 1e9, n
    df["bytes_per_img"] = size / n
    df["page_mb"] = reader.page_size / 2**20
    df["disk_mb_per_s"] = disk["disk_mb_per_s"]
    df["disk_passes_mb_per_s"] = disk["disk_passes_mb_per_s"]
    df["disk_img_per_s"] = disk["disk_mb_per_s"] * 1e6 / (size / n)
    df["read_x_beton"] = df.read_gb / df.beton_gb
    if "cache_left_mb" not in df.columns:
        df["cache_left_mb"] = float("nan")
    df["beton_x_cache_left"] = size / 2**20 / df.cache_left_mb
    for col in ("img_per_s", "bound_mb", "loader_mem_mb", "seen_once_share", "repeats",
                "missed", "max_peak_rss_mb", "base_rss_mb"):
        if col not in df.columns:
            df[col] = float("nan")
    fits = df[df.loader == "fits"].set_index("procs").img_per_s
    df["fits_img_per_s"] = df.procs.map(fits)
    df["target_img_per_s"] = df[["fits_img_per_s", "disk_img_per_s"]].min(axis=1)
    df["x_target"] = df.img_per_s / df.target_img_per_s
    df["within_bound"] = [("yes" if m <= b else "no") if b == b and m == m else ""
                          for m, b in zip(df.loader_mem_mb, df.bound_mb)]
    df["batch_size"], df["res"], df["window_pages"] = args.batch_size, args.res, args.window_pages
    df["workers"] = [args.workers or max(1, (os.cpu_count() or 1) // p) for p in df.procs]
    df = finish_table(df, STREAM_COLUMNS, info)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(markdown_table(df[["procs", "loader", "outcome", "img_per_s", "x_target", "read_x_beton",
                             "max_peak_rss_mb", "loader_mem_mb", "bound_mb", "seen_once_share"]]))
    print(f"wrote {out}")


# =========================================================================== scale

class _Tiny:
    """Tiny raw samples (8x8 RGB, label = index mod classes): ImageNet's count, not its bytes."""

    def __init__(self, n: int, classes: int):
        import numpy as np

        self.n, self.classes = n, classes
        self.pixels = [np.full((8, 8, 3), v, np.uint8) for v in range(256)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.pixels[i % 256], i % self.classes


def tiny_beton(data_dir: Path, n: int, classes: int, workers: int = 2) -> Path:
    """A cached beton of ``n`` tiny samples, fields named as the toolkit's (image, label)."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from ffcv_utils.base.atomic import atomic_path

    path = Path(data_dir) / f"tiny-{n}-{classes}c.beton"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {"image": RGBImageField(write_mode="raw", max_resolution=8), "label": IntField()}
    with atomic_path(path) as tmp:
        DatasetWriter(str(tmp), fields, num_workers=workers).from_indexed_dataset(
            _Tiny(n, classes), chunksize=20_000)
    return path


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = now()
        out = fn()
        best = min(best, now() - t0)
    return best, out


def _peak_alloc_mb(fn) -> float:
    """Peak bytes numpy/Python allocated while ``fn`` ran (tracemalloc counts numpy's arrays)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def open_and_check(path: Path, repeat: int) -> dict:
    """Seconds of the toolkit's check (its per-process memo cleared) and of ffcv's Reader."""
    from ffcv.reader import Reader

    from ffcv_utils.beton import check as beton

    def checked():
        beton._sound.clear()
        return beton.check(path)

    check_s, _ = _best(checked, repeat)
    open_s, reader = _best(lambda: Reader(str(path)), repeat)
    return {"check_s": check_s, "open_s": open_s, "reader": reader}


def order_figures(n: int, ranks: list[int], batch_size: int, repeat: int) -> dict:
    """Seconds to build rank 0's order of one epoch, and the bytes its arrays take: random,
    and page-aware on an ImageNet-like layout (32 samples per 8 MiB page)."""
    import numpy as np

    from ffcv_utils.load import order as orders

    layout = orders.PageLayout(np.arange(n, dtype=np.int64) // 32, 8 << 20)
    out = {"pages": int(layout.sample_page.max()) + 1}
    for w in ranks:
        for name, lay in (("random", None), ("page", layout)):
            def build(epoch=[0]):
                epoch[0] += 1  # a new epoch each time: EpochOrder caches the current one
                o = orders.EpochOrder(n, seed=0, batch_size=batch_size, world_size=w, rank=0,
                                      layout=lay)
                return o.indices(epoch[0])

            seconds, idx = _best(build, repeat)
            out[f"order_{name}_w{w}_s"] = seconds
            out[f"order_{name}_w{w}_mb"] = (idx.nbytes + (0 if lay is None
                                                          else lay.sample_page.nbytes)) / 2**20
            out[f"order_{name}_w{w}_build_peak_mb"] = _peak_alloc_mb(build)
    return out


def first_batch_main(args) -> None:
    """A fresh process: imports, then ``train_loader`` (check included) and its first batch."""
    t0 = now()
    from ffcv_utils.load.loaders import train_loader

    imported = now()
    data = train_loader(args.first_batch, batch_size=args.batch_size, num_workers=2, res=32,
                        in_memory=bool(args.in_memory), seed=0)
    built = now()
    next(iter(data.loader))
    done = now()
    print(json.dumps({"import_s": imported - t0, "build_s": built - imported,
                      "first_batch_s": done - built, "startup_s": done - imported}), flush=True)
    os._exit(0)  # the loader's threads hold nothing worth a clean exit here


def first_batch(path: Path, in_memory: bool, batch_size: int) -> dict:
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "scale", "--first-batch",
                        str(path), "--in-memory", str(int(in_memory)), "--batch-size",
                        str(batch_size)], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"first-batch process failed: {r.stderr[-2000:]}")
    return json.loads(lines[-1])


SCALE_METRICS = ["check_s", "open_s", "layout_s", "order_random_w1_s", "order_page_w1_s",
                 "order_random_w8_s", "order_page_w8_s", "order_random_w1_mb", "order_page_w1_mb",
                 "order_page_w8_mb", "startup_random_s", "startup_page_s"]


def scale_main(args) -> None:
    import pandas as pd

    from ffcv_utils.load import order as orders

    info = machine_info()
    data_dir = Path(args.data_dir)
    rows = []
    sets = [("train", max(1, int(round(args.samples * f)))) for f in args.fractions]
    sets.append(("val", args.val_samples))
    for split, n in sets:
        t0 = now()
        path = tiny_beton(data_dir, n, args.classes)
        row = {"split": split, "samples": n, "write_s_or_cached": now() - t0,
               "beton_mb": path.stat().st_size / 2**20, "load_1m_before": load_1m()}
        opened = open_and_check(path, args.repeat)
        reader = opened.pop("reader")
        row.update(opened)
        row["layout_s"], layout = _best(lambda: orders.PageLayout.from_reader(reader),
                                        args.repeat)
        row["beton_pages"] = int(layout.sample_page.max()) + 1
        if split == "train":
            row.update(order_figures(n, args.ranks, args.batch_size, args.repeat))
            if args.startup:
                for name, in_memory in (("random", True), ("page", False)):
                    fb = first_batch(path, in_memory, args.batch_size)
                    row[f"startup_{name}_s"] = fb["startup_s"]
                    row[f"first_batch_{name}_s"] = fb["first_batch_s"]
                    row[f"import_{name}_s"] = fb["import_s"]
        row["load_1m_after"] = load_1m()
        rows.append(row)
        print(f"  {split} {n:,}: check {row['check_s']:.3f} s, open {row['open_s']:.3f} s, "
              f"page-aware order (8 ranks) {row.get('order_page_w8_s', float('nan')):.3f} s, "
              f"start-up {row.get('startup_page_s', float('nan')):.2f} s, load "
              f"{row['load_1m_after']}", flush=True)
    df = pd.DataFrame(rows)
    train = df.split == "train"
    for col in SCALE_METRICS:
        if col not in df.columns:
            df[col] = float("nan")
        ratio = df.loc[train, col] / df.loc[train, col].shift(1)
        df.loc[train, f"{col}_x_per_doubling"] = ratio
    df["samples_x"] = df.samples / df.samples.shift(1)
    df["batch_size"], df["ranks"] = args.batch_size, ";".join(map(str, args.ranks))
    df["repeat"] = args.repeat
    for k, v in info.items():
        df[k] = v
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(markdown_table(df[["split", "samples", "check_s", "open_s", "order_random_w1_s",
                             "order_page_w8_s", "order_page_w1_mb", "startup_page_s"]]))
    print(f"wrote {out}")


# =========================================================================== sizes

def sizes_main(args) -> None:
    """Each write mode at each max_resolution on one set of ImageNet-like photos."""
    import numpy as np
    import pandas as pd
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.reader import Reader
    from PIL import Image

    from ffcv_utils.load.memory_check import FIT_FRACTION
    from ffcv_utils.tools.sample_data import make_photo_folder
    from ffcv_utils.write.writer import PUBLISHED, write_split

    info = machine_info()
    photos = make_photo_folder(Path(args.data_dir) / f"photos-{args.images}", images=args.images,
                               classes=10)
    files = sorted((photos / "train").rglob("*.JPEG"))
    sides = [max(Image.open(f).size) for f in files]
    source_bytes = float(np.mean([f.stat().st_size for f in files]))
    rows = []
    with tempfile.TemporaryDirectory(prefix="beyond_ram_sizes_") as tmp:
        for res in args.resolutions:
            for mode in args.modes:
                target = Path(tmp) / f"{mode}-{res}.beton"
                t0, load0 = now(), load_1m()
                write_split(photos, "train", target, write_mode=mode, max_resolution=res,
                            compress_probability=PUBLISHED["compress_probability"],
                            jpeg_quality=PUBLISHED["jpeg_quality"], num_workers=args.workers,
                            progress=False)
                seconds = now() - t0
                r = Reader(str(target))
                n = r.num_samples
                data = float(r.alloc_table["size"].sum())
                jpg = int((r.metadata["f0"]["mode"] == IMAGE_MODES["jpg"]).sum())
                per_img = data / n
                row = {"write_mode": mode, "max_resolution": res, "images": n,
                       "data_bytes_per_img": per_img,
                       "file_bytes_per_img": target.stat().st_size / n,
                       "stored_jpeg_share": jpg / n,
                       "resized_share": float(np.mean([m > res for m in sides])),
                       "source_bytes_per_img": source_bytes,
                       "imagenet_gb": per_img * IMAGENET_TRAIN / 1e9,
                       "write_s": seconds, "load_1m_before": load0, "load_1m_after": load_1m()}
                for ram in RAM_SIZES_GB:
                    row[f"fits_{ram}gb"] = ("yes" if row["imagenet_gb"] <= FIT_FRACTION * ram
                                            else "no")
                rows.append(row)
                target.unlink()
                print(f"  {mode} @ {res}: {per_img / 1e3:.1f} KB/img -> ImageNet "
                      f"{row['imagenet_gb']:.0f} GB", flush=True)
    df = pd.DataFrame(rows)
    df["fit_fraction"] = FIT_FRACTION
    df["imagenet_images"] = IMAGENET_TRAIN
    df["jpeg_quality"] = PUBLISHED["jpeg_quality"]
    df["compress_probability"] = PUBLISHED["compress_probability"]
    for k, v in info.items():
        df[k] = v
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(markdown_table(df[["write_mode", "max_resolution", "data_bytes_per_img",
                             "stored_jpeg_share", "imagenet_gb", "fits_64gb", "fits_128gb",
                             "fits_256gb"]]))
    print(f"wrote {out}")


# =========================================================================== driver

def parse(argv):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("stream", help="a beton bigger than a memory cap, streamed")
    s.add_argument("--images", type=int, default=9000)
    s.add_argument("--cap-mb", type=int, default=1152,
                   help="memory cap per process (MiB): the cgroup gets this x processes")
    s.add_argument("--procs", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2])
    s.add_argument("--variants", type=lambda v: v.split(","),
                   default=["fits", "page_warm", "page", "mmap", "old"])
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--res", type=int, default=160)
    s.add_argument("--workers", type=int, default=0, help="per process; 0: cores / processes")
    s.add_argument("--window-pages", type=int, default=8)
    s.add_argument("--timeout", type=float, default=300)
    s.add_argument("--rounds", type=int, default=1,
                   help="rounds of the fast rows (fits, page); each keeps its best")
    s.add_argument("--warmup", type=int, default=1, help="0: no warm-up epoch (tests)")
    s.add_argument("--data-dir", default=str(DATA_DIR))
    s.add_argument("--out", default=str(RESULTS / "beyond_ram.csv"))
    s.add_argument("--child", choices=sorted(ORDERS), help=argparse.SUPPRESS)
    s.add_argument("--beton", help=argparse.SUPPRESS)
    s.add_argument("--out-dir", help=argparse.SUPPRESS)
    s.add_argument("--warmup-beton", help=argparse.SUPPRESS)
    c = sub.add_parser("scale", help="ImageNet's sample count, simulated with tiny samples")
    c.add_argument("--samples", type=int, default=IMAGENET_TRAIN)
    c.add_argument("--fractions", type=lambda v: [float(x) for x in v.split(",")],
                   default=[0.125, 0.25, 0.5, 1.0])
    c.add_argument("--val-samples", type=int, default=IMAGENET_VAL)
    c.add_argument("--classes", type=int, default=IMAGENET_CLASSES)
    c.add_argument("--ranks", type=lambda v: [int(x) for x in v.split(",")], default=[1, 8])
    c.add_argument("--batch-size", type=int, default=256)
    c.add_argument("--repeat", type=int, default=3, help="timings keep the best of this many")
    c.add_argument("--startup", type=int, default=1, help="0: skip the first-batch processes")
    c.add_argument("--data-dir", default=str(DATA_DIR))
    c.add_argument("--out", default=str(RESULTS / "beyond_ram_scale.csv"))
    c.add_argument("--first-batch", help=argparse.SUPPRESS)
    c.add_argument("--in-memory", type=int, default=1, help=argparse.SUPPRESS)
    z = sub.add_parser("sizes", help="bytes per image of each write mode")
    z.add_argument("--images", type=int, default=300)
    z.add_argument("--modes", type=lambda v: v.split(","), default=["jpg", "proportion",
                                                                    "smart", "raw"])
    z.add_argument("--resolutions", type=lambda v: [int(x) for x in v.split(",")],
                   default=[500, 400])
    z.add_argument("--workers", type=int, default=2)
    z.add_argument("--data-dir", default=str(DATA_DIR))
    z.add_argument("--out", default=str(RESULTS / "write_sizes.csv"))
    return parser.parse_args(argv)


def run(argv=None):
    args = parse(argv)
    if args.mode == "stream":
        return child_main(args) if args.child else stream_main(args)
    if args.mode == "scale":
        return first_batch_main(args) if args.first_batch else scale_main(args)
    return sizes_main(args)


if __name__ == "__main__":
    run()
