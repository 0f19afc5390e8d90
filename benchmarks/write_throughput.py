"""Writer throughput on ImageNet-like photos: images per second from one JPEG folder, by writer.

Rows (same photos, same worker count, ffcv-imagenet's published settings: max_resolution 500,
jpeg_quality 90, compress_probability 0.5):

* ``toolkit-jpg`` / ``toolkit-proportion``: ``ffcv_utils.write.writer.write_split`` as
  ``write_ffcv.py`` calls it, with JPEG passthrough (a source JPEG that needs no resize and that
  the mode stores as JPEG keeps its own bytes);
* ``toolkit-jpg-reencode`` / ``toolkit-proportion-reencode``: the same with ``reencode=True``
  (every image decoded and encoded again);
* ``ffcv-imagenet-jpg`` / ``ffcv-imagenet-proportion``: ffcv's ``DatasetWriter`` called the way
  ffcv-imagenet's ``write_imagenet.py`` calls it (torchvision ``ImageFolder``, an
  ``RGBImageField`` and an ``IntField``, ``from_indexed_dataset(chunksize=100)``).

Each write runs in its own process and is timed from the parent, so ``img_per_s`` is the whole
write as a user sees it: interpreter, imports (ffcv compiles numba kernels), the toolkit's decode
check, packing, exit. ``startup_s`` (process start to imports done) is reported apart, and
``data_img_per_s`` leaves it out: the rate that carries over to ImageNet's 1.28M images.
``cpu_ms_per_img`` is the CPU time of the write's whole process tree (``getrusage`` of the
waited-for children), ``data_cpu_ms_per_img`` the same without the start-up (measured inside
the write's process); for the toolkit, ``check_s`` and ``pack_s`` split its data stage into the
decode check and the packing. ``beton_bytes_per_img`` is the file's size (whole pages: with few
images mostly the padding of each writer process's last page), ``data_bytes_per_img`` what the
samples take (ffcv's allocation table). Every beton is read back: ``stored_as_source_share``
is the share of samples whose stored bytes equal their source file's bytes, and
``as_source_check`` says whether that matches what the writer claims (its ``jpeg_as_is`` count;
in ``jpg`` mode, every photo that needs no resize). Rounds interleave the writers (A B C ...
A B C ...) after one untimed warm-up (the photos and the libraries in the page cache); each
writer keeps its best round, and the CSV lists every round. With a few thousand photos the
start-up (ffcv's import alone takes seconds) weighs on the whole-write rate; on ImageNet it does
not, so both rates are reported. The data stage too has fixed costs (forking the check and
writer processes, the beton's header and tables), which 1.28M images make nothing of: each
round therefore also writes a quarter of the photos (``--small``, hard links in the work
folder), and ``marginal_img_per_s`` / ``marginal_cpu_ms_per_img`` are the rate and CPU of the
photos the big write has beyond the small one (the median over rounds of the differences).

    python -m ffcv_utils.tools.sample_data photos bench_data/photos4000 --images 4000 --classes 10
    python benchmarks/write_throughput.py --data-dir bench_data/photos4000 --workers 2 --rounds 3 \\
        --out benchmarks/results/write_cpu_marginal.csv
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine_info, now, print_summary, run_child  # noqa: E402

# writer -> (program, write_mode, passthrough)
WRITERS = {
    "toolkit-jpg": ("toolkit", "jpg", True),
    "toolkit-jpg-reencode": ("toolkit", "jpg", False),
    "toolkit-proportion": ("toolkit", "proportion", True),
    "toolkit-proportion-reencode": ("toolkit", "proportion", False),
    "ffcv-imagenet-jpg": ("ffcv-imagenet", "jpg", False),
    "ffcv-imagenet-proportion": ("ffcv-imagenet", "proportion", False),
}
PUBLISHED = dict(max_resolution=500, compress_probability=0.5, jpeg_quality=90)
COLUMNS = ["writer", "program", "write_mode", "passthrough", "workers", "images", "img_per_s",
           "data_img_per_s", "median_img_per_s", "startup_s", "check_s", "pack_s",
           "cpu_ms_per_img", "data_cpu_ms_per_img",
           "beton_bytes_per_img", "data_bytes_per_img", "source_bytes_per_img", "stored_jpeg_share",
           "stored_as_source_share", "claimed_as_is", "as_source_check", "ratio_vs_reencode",
           "data_ratio_vs_reencode", "ratio_vs_ffcv_imagenet", "data_ratio_vs_ffcv_imagenet",
           "small_images", "marginal_img_per_s", "marginal_cpu_ms_per_img",
           "marginal_ratio_vs_reencode", "marginal_ratio_vs_ffcv_imagenet",
           "peak_rss_mb", "load_1m_before", "load_1m_after", "rounds", "rounds_img_per_s",
           "no_resize_share", "max_resolution", "jpeg_quality", "compress_probability", "note"]


# --------------------------------------------------------------------------- child

def write_like_ffcv_imagenet(split_dir: Path, beton: Path, mode: str, workers: int) -> None:
    """What ffcv-imagenet's write_imagenet.py does with its options (its subset option unused)."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(root=str(split_dir))
    image = RGBImageField(write_mode=mode, max_resolution=PUBLISHED["max_resolution"],
                          compress_probability=PUBLISHED["compress_probability"],
                          jpeg_quality=PUBLISHED["jpeg_quality"])
    writer = DatasetWriter(str(beton), {"image": image, "label": IntField()},
                           num_workers=workers)
    writer.from_indexed_dataset(dataset, chunksize=100)


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def child_main(args) -> None:
    """One timed write; prints its start-up and data-stage seconds as a JSON line."""
    program, mode, passthrough = WRITERS[args.child]
    import ffcv.fields  # noqa: F401 - start-up: what both writers import before any work
    import ffcv.writer  # noqa: F401

    if program == "toolkit":
        from ffcv_utils.write.writer import write_split
    else:
        import torchvision.datasets  # noqa: F401
    started, cpu0 = time.time(), _cpu_seconds()
    result = {"startup_s": started - args.t0}
    data_dir, beton = Path(args.data_dir), Path(args.beton)
    if program == "toolkit":
        summary = write_split(data_dir, "train", beton, write_mode=mode,
                              num_workers=args.workers, progress=False,
                              reencode=not passthrough, **PUBLISHED)
        result.update(check_s=summary["scan_seconds"], pack_s=summary["write_seconds"],
                      claimed_as_is=summary["jpeg_as_is"])
    else:
        write_like_ffcv_imagenet(data_dir / "train", beton, mode, args.workers)
        result["claimed_as_is"] = 0
    for p in multiprocessing.active_children():  # ffcv leaves its writer processes to exit
        p.join()                                   # by themselves: wait, to count their CPU
    result.update(data_s=time.time() - started, data_cpu_s=_cpu_seconds() - cpu0)
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- the photos

def source_files(data_dir: Path) -> list[Path]:
    """The photos, as torchvision's ``ImageFolder`` lists them."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    split = data_dir / "train"
    classes = sorted(e.name for e in os.scandir(split) if e.is_dir())
    samples = make_dataset(str(split), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS)
    return [Path(p) for p, _ in samples]


def describe_sources(files: list[Path], max_resolution: int) -> dict:
    """Hashes of the files (to recognise them in a beton), their mean size, and the share that
    needs no resize (longest side at most ``max_resolution``)."""
    from PIL import Image

    hashes, total, fit = [], 0, 0
    for f in files:
        data = f.read_bytes()  # also puts the photos in the page cache before any timed write
        hashes.append(hashlib.sha1(data).digest())
        total += len(data)
        with Image.open(f) as im:
            fit += max(im.size) <= max_resolution
    return {"hashes": hashes, "source_bytes_per_img": total / len(files),
            "no_resize": fit, "no_resize_share": fit / len(files)}


def read_back(beton: Path, hashes: list[bytes]) -> dict:
    """Samples stored, how many as JPEG, and how many hold exactly the bytes of a source file
    (matched by hash: the toolkit stores train samples in a seeded shuffled order)."""
    import numpy as np
    from ffcv.fields.rgb_image import IMAGE_MODES
    from ffcv.reader import Reader

    r = Reader(str(beton))
    sizes = dict(zip(r.alloc_table["ptr"].tolist(), r.alloc_table["size"].tolist()))
    data = np.memmap(beton, dtype=np.uint8, mode="r")
    images = r.metadata["f0"]
    known, same = set(hashes), 0
    for ptr in images["data_ptr"].tolist():
        same += hashlib.sha1(data[ptr:ptr + sizes[ptr]].tobytes()).digest() in known
    return {"stored": len(images), "stored_jpeg": int((images["mode"] == IMAGE_MODES["jpg"]).sum()),
            "stored_as_source": same, "beton_bytes": beton.stat().st_size,
            "data_bytes": int(r.alloc_table["size"].sum())}


def as_source_check(name: str, back: dict, claimed: int, no_resize: int, n: int) -> str:
    """'ok' when the stored-as-source count is what the writer claims (and, for jpg mode with
    passthrough, every photo that needs no resize); else what differs."""
    _, mode, passthrough = WRITERS[name]
    want = claimed if passthrough else 0
    problems = []
    if back["stored"] != n:
        problems.append(f"{back['stored']} samples stored, {n} photos")
    if back["stored_as_source"] != want:
        problems.append(f"{back['stored_as_source']} samples hold their source bytes, "
                        f"{want} expected")
    if passthrough and mode == "jpg" and claimed != no_resize:
        problems.append(f"{claimed} passed through, {no_resize} photos need no resize")
    return "ok" if not problems else "MISMATCH: " + "; ".join(problems)


# --------------------------------------------------------------------------- driver

def small_folder(files: list[Path], data_dir: Path, work: Path, k: int) -> Path:
    """An ImageFolder of ``k`` of the photos, spread evenly over the list (so over the classes
    and the sizes), as hard links (copies across file systems) under ``work``."""
    import shutil

    root = work / "small"
    shutil.rmtree(root, ignore_errors=True)
    step = len(files) / k
    for f in (files[int(i * step)] for i in range(k)):
        target = root / f.relative_to(data_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)
    return root


def timed_write(name: str, args, data_dir: Path, beton: Path, env: dict) -> dict | None:
    """Run one write in a fresh process; wall time, CPU of its process tree, peak memory."""
    beton.unlink(missing_ok=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--data-dir",
            str(data_dir), "--workers", str(args.workers), "--beton", str(beton),
            "--out", str(args.out)]
    load_before = round(os.getloadavg()[0], 2)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the write's process tree, once waited
    t0, wall0 = time.time(), now()
    result, peak_mb, rc = run_child(argv + ["--t0", repr(t0)], env=env)
    wall = now() - wall0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0 or result is None:
        print(f"{name}: failed (exit {rc})", flush=True)
        return None
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return dict(result, wall_s=wall, cpu_s=cpu, peak_rss_mb=round(peak_mb, 1),
                load_1m_before=load_before, load_1m_after=round(os.getloadavg()[0], 2))


def warm_up(env: dict) -> None:
    """Untimed: load the libraries every writer imports, so the first timed one pays no cold
    disk reads the others do not."""
    import subprocess

    subprocess.run([sys.executable, "-c",
                    "import ffcv.writer, ffcv.fields, torchvision.datasets, ffcv_utils.write.writer"],
                   env=env, check=True)


def run_rounds(writers: list[str], args, data_dir: Path, work: Path, src: dict,
               small: Path | None) -> dict:
    """Every writer once per round, interleaved; each round's result with its read-back (and
    under "small" its write of the ``small`` folder)."""
    env = dict(os.environ, TQDM_DISABLE="1")  # ffcv's progress bar would flood the log
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + \
        env.get("PYTHONPATH", "")
    if args.warmup:
        warm_up(env)
    n = len(src["hashes"])
    runs: dict[str, list] = {w: [] for w in writers}
    for rnd in range(args.rounds):
        for name in writers:
            print(f"--- {name} (round {rnd + 1}/{args.rounds})", flush=True)
            beton = work / f"write-{name}.beton"
            r = timed_write(name, args, data_dir, beton, env)
            if r is None:
                runs[name].append(None)
                continue
            back = read_back(beton, src["hashes"])
            r.update(back, check=as_source_check(name, back, r["claimed_as_is"],
                                                 src["no_resize"], n))
            for p in (beton, Path(f"{beton}.json")):
                p.unlink(missing_ok=True)
            print(f"{name}: {n / r['wall_s']:.0f} img/s whole write ({r['wall_s']:.1f} s, "
                  f"start-up {r['startup_s']:.1f} s), {r['cpu_s'] / n * 1e3:.1f} CPU ms/img, "
                  f"{back['stored_as_source']} of {n} stored as their source bytes "
                  f"({r['check']})", flush=True)
            if small is not None:
                r["small"] = timed_write(name, args, small, beton, env)
                for p in (beton, Path(f"{beton}.json")):
                    p.unlink(missing_ok=True)
            runs[name].append(r)
    return runs


def marginal(rounds: list, n: int, k: int) -> dict:
    """Rate and CPU per photo of the ``n - k`` photos a full write has beyond the small one:
    the median over rounds of (full - small) data-stage seconds and CPU seconds."""
    pairs = [(r, r["small"]) for r in rounds if r.get("small")]  # the rounds that wrote both
    if not pairs or n <= k:
        return {}
    med = statistics.median
    seconds = med([r["data_s"] - s["data_s"] for r, s in pairs])
    cpu = med([r["data_cpu_s"] - s["data_cpu_s"] for r, s in pairs])
    return {"small_images": k,
            "marginal_img_per_s": (n - k) / seconds if seconds > 0 else float("nan"),
            "marginal_cpu_ms_per_img": cpu / (n - k) * 1e3}


def summarise(name: str, rounds: list, n: int, k: int = 0) -> dict:
    """One CSV row: the best round's rates, the medians of the other timings."""
    program, mode, passthrough = WRITERS[name]
    row = {"writer": name, "program": program, "write_mode": mode,
           "passthrough": "yes" if passthrough else "no", "images": n, "rounds": len(rounds),
           "rounds_img_per_s": ";".join("failed" if r is None else f"{n / r['wall_s']:.0f}"
                                        for r in rounds)}
    ok = [r for r in rounds if r is not None]
    if not ok:
        return dict(row, note="failed")
    best = min(ok, key=lambda r: r["wall_s"])
    med = statistics.median
    checks = sorted({r["check"] for r in ok})
    return dict(row, img_per_s=n / best["wall_s"],
                data_img_per_s=n / min(r["data_s"] for r in ok),
                median_img_per_s=n / med([r["wall_s"] for r in ok]),
                startup_s=med([r["startup_s"] for r in ok]),
                check_s=med([r["check_s"] for r in ok]) if "check_s" in best else float("nan"),
                pack_s=med([r["pack_s"] for r in ok]) if "pack_s" in best else float("nan"),
                cpu_ms_per_img=med([r["cpu_s"] for r in ok]) / n * 1e3,
                data_cpu_ms_per_img=med([r["data_cpu_s"] for r in ok]) / n * 1e3,
                beton_bytes_per_img=best["beton_bytes"] / n,
                data_bytes_per_img=best["data_bytes"] / n,
                stored_jpeg_share=best["stored_jpeg"] / n,
                stored_as_source_share=best["stored_as_source"] / n,
                claimed_as_is=best["claimed_as_is"], as_source_check=" / ".join(checks),
                peak_rss_mb=max(r["peak_rss_mb"] for r in ok),
                load_1m_before=best["load_1m_before"], load_1m_after=best["load_1m_after"],
                note="" if len(ok) == len(rounds) else f"{len(rounds) - len(ok)} rounds failed",
                **marginal(ok, n, k))


def add_ratios(df):
    """Each row's rates over the re-encoding toolkit row and the ffcv-imagenet row of its mode."""
    nan = float("nan")
    for col, prefix in (("img_per_s", ""), ("data_img_per_s", "data_"),
                        ("marginal_img_per_s", "marginal_")):
        rate = dict(zip(df.writer, df[col]))

        def over(reference: str, r: float) -> float:
            base = rate.get(reference, nan)
            return r / base if base == base and base else nan

        rows = list(zip(df[col], df.write_mode, df.program))
        df[f"{prefix}ratio_vs_reencode"] = [
            over(f"toolkit-{m}-reencode", r) if p == "toolkit" else nan for r, m, p in rows]
        df[f"{prefix}ratio_vs_ffcv_imagenet"] = [over(f"ffcv-imagenet-{m}", r)
                                                 for r, m, _ in rows]
    return df


def run(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="ImageFolder root containing train/")
    parser.add_argument("--workers", type=int, default=2, help="writer processes, every row")
    parser.add_argument("--rounds", type=int, default=3,
                        help="run every writer this many times, interleaved; keep each one's best")
    parser.add_argument("--writers", default=",".join(WRITERS),
                        help=f"comma-separated subset of {list(WRITERS)}")
    parser.add_argument("--out", required=True, help="CSV to write (one row per writer)")
    parser.add_argument("--work-dir", default=None,
                        help="where the betons are written (default: <out dir>/betons)")
    parser.add_argument("--small", type=int, default=-1,
                        help="photos in the small write of each round (default: a quarter; "
                             "0: none, no marginal rates)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the untimed import before the first round")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--beton", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)
    writers = [w.strip() for w in args.writers.split(",") if w.strip()]
    unknown = set(writers) - set(WRITERS)
    if unknown:
        parser.error(f"unknown writers {sorted(unknown)}; choose from {list(WRITERS)}")
    if args.rounds < 1 or args.workers < 1:
        parser.error("--rounds and --workers must be at least 1")
    data_dir = Path(args.data_dir).resolve()
    if not (data_dir / "train").is_dir():
        parser.error(f"no train/ folder in {data_dir}")
    files = source_files(data_dir)
    if not files:
        parser.error(f"no images under {data_dir / 'train'}")
    out = Path(args.out)
    work = Path(args.work_dir) if args.work_dir else out.parent / "betons"
    work.mkdir(parents=True, exist_ok=True)
    return finish(writers, args, data_dir, files, work, out)


def finish(writers, args, data_dir: Path, files: list[Path], work: Path, out: Path):
    """Measure, summarise, write the CSV and print the table."""
    import pandas as pd

    src = describe_sources(files, PUBLISHED["max_resolution"])
    info = machine_info("cpu")
    k = len(files) // 4 if args.small < 0 else min(args.small, len(files) - 1)
    small = small_folder(files, data_dir, work, k) if k > 0 else None
    runs = run_rounds(writers, args, data_dir, work, src, small)
    df = pd.DataFrame([summarise(w, runs[w], len(files), k) for w in writers])
    df["workers"] = args.workers
    df["source_bytes_per_img"] = src["source_bytes_per_img"]
    df["no_resize_share"] = src["no_resize_share"]
    for k, v in PUBLISHED.items():
        df[k] = v
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = float("nan")
    df = add_ratios(df)[COLUMNS]
    for k, v in info.items():
        df[k] = v
    df.to_csv(out, index=False)
    show = df[["writer", "img_per_s", "data_img_per_s", "ratio_vs_reencode",
               "ratio_vs_ffcv_imagenet", "marginal_img_per_s", "marginal_ratio_vs_reencode",
               "marginal_cpu_ms_per_img", "startup_s", "cpu_ms_per_img", "data_cpu_ms_per_img",
               "data_bytes_per_img",
               "stored_as_source_share", "as_source_check", "rounds_img_per_s"]]
    print_summary(f"{len(files)} photos ({src['no_resize_share']:.0%} need no resize), "
                  f"{args.workers} workers, {args.rounds} rounds", info, show, out)
    return df


if __name__ == "__main__":
    run()
