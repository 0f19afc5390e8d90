"""Data loading alone, on the CPU: images per second from the same JPEGs, by loader.

Rows (same images, same crop resolution, same worker count, RandomResizedCrop + horizontal
flip, uint8 output, no model):

* ``toolkit`` (``ffcv_utils.load.loaders.train_loader`` with its default, the fast decoder of
  ``ffcv_utils/load/decode.py``) on a ``proportion`` beton (max_resolution 500,
  compress_probability 0.5, jpeg_quality 90: the settings of the published ffcv ImageNet runs)
  and on an all-JPEG beton;
* ``ffcv-stock``: an ffcv ``Loader`` built directly with ffcv's own decoder and transforms,
  exactly as ffcv-imagenet's ``train_imagenet.py`` builds it (less the normalisation, since
  every row yields uint8), on the same proportion beton; ``ffcv-stock-jpg`` on the all-JPEG one;
* ``val-fast`` / ``val-ffcv``: validation decoding (centre crop 224/256, file order) at
  ``--val-res`` on the all-JPEG beton through ``ffcv_utils.load.loaders.val_loader`` with the fast and
  the stock decoder;
* ``torchvision``: ``ImageFolder`` + ``DataLoader`` (PIL decode, ``RandomResizedCrop``,
  ``RandomHorizontalFlip``, ``PILToTensor``), the baseline every ratio is taken against;
* ``dali-cpu``: NVIDIA DALI's CPU pipeline, when ``nvidia.dali`` imports (``--dali-path`` may
  name a folder it was ``pip install --target``-ed into).

Each loader runs in its own subprocess, so ``peak_rss_mb`` (resident memory of that process and
its children, sampled every 0.1 s) is its own. The first epoch (numba compilation, worker start,
page cache) is reported apart from the steady state over the remaining epochs.

    python benchmarks/loader_throughput.py --data-dir bench_data/photos --res 160 --workers 2 \\
        --batch-size 128 --out benchmarks/results/loader_cpu.csv

The betons are written once, beside the output (``<out dir>/betons/``), and reused.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine_info, now, print_summary, run_child  # noqa: E402

ALL_LOADERS = ["toolkit-proportion", "toolkit-jpg", "ffcv-stock", "ffcv-stock-jpg", "val-fast",
               "val-ffcv", "torchvision", "dali-cpu"]
# the stock-ffcv row each fast row is compared with (same beton, same work)
STOCK_OF = {"toolkit-proportion": "ffcv-stock", "toolkit-jpg": "ffcv-stock-jpg",
            "val-fast": "val-ffcv"}
# Published ffcv ImageNet beton settings.
PUBLISHED = dict(max_resolution=500, compress_probability=0.5, jpeg_quality=90)
COLUMNS = ["loader", "decoder", "beton_mode", "res", "workers", "batch_size", "img_per_s",
           "first_epoch_img_per_s", "dataset_bytes", "peak_rss_mb", "epochs", "images_per_epoch",
           "setup_s", "ratio_vs_torchvision", "first_epoch_ratio_vs_torchvision",
           "ratio_vs_ffcv_stock", "cpu_ms_per_img", "cpu_ratio_vs_ffcv_stock", "writer",
           "load_1m_before", "load_1m_after", "rounds_img_per_s", "note"]


# --------------------------------------------------------------------------- betons

def image_files(train_dir: Path) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    return sorted(p for p in train_dir.rglob("*") if p.suffix.lower() in exts)


def folder_fingerprint(files: list[Path]) -> tuple[int, str]:
    """(total bytes, short hash of names+sizes): a cached beton is reused only for the same files."""
    h = hashlib.sha1()
    total = 0
    for p in files:
        size = p.stat().st_size
        total += size
        h.update(f"{p.parent.name}/{p.name}:{size};".encode())
    return total, h.hexdigest()[:10]


def write_beton(data_dir: Path, path: Path, mode: str, workers: int) -> str:
    """Write ``data_dir/train`` to ``path``; returns which writer did it."""
    try:
        from ffcv_utils.write.writer import write_split
    except ImportError:
        write_split = None
    if write_split is not None:  # it writes to a temporary file and renames it itself
        write_split(data_dir, "train", path, write_mode=mode, num_workers=max(1, workers),
                    progress=False, **PUBLISHED)
        return "ffcv_utils.write.writer.write_split"
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    from ffcv_utils.base.atomic import atomic_path

    dataset = ImageFolder(str(data_dir / "train"))
    fields = {"image": RGBImageField(write_mode=mode, **PUBLISHED), "label": IntField()}
    with atomic_path(path) as tmp:
        DatasetWriter(str(tmp), fields, num_workers=max(1, workers)).from_indexed_dataset(dataset)
    return "ffcv.writer.DatasetWriter"


def _complete(path: Path) -> bool:
    """A cached beton cut short (a killed earlier run) is written again, not timed."""
    from ffcv_utils.beton.check import BetonError, check

    try:
        check(path)
        return True
    except BetonError as e:
        print(f"rewriting {e}", flush=True)
        return False


def ensure_betons(data_dir: Path, cache: Path, modes: list[str], workers: int,
                  fingerprint: str) -> dict[str, tuple[Path, str]]:
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for mode in modes:
        p = PUBLISHED
        name = (f"{data_dir.name}-{fingerprint}-{mode}-r{p['max_resolution']}"
                f"-q{p['jpeg_quality']}-p{p['compress_probability']}.beton")
        path = cache / name
        if path.exists() and _complete(path):
            out[mode] = (path, "cached")
            print(f"reusing {path}", flush=True)
        else:
            t0 = now()
            writer = write_beton(data_dir, path, mode, workers)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) with {writer} "
                  f"in {now() - t0:.1f} s", flush=True)
            out[mode] = (path, writer)
    return out


# --------------------------------------------------------------------------- children

def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its live children (DataLoader workers):
    unlike wall time, barely moved by other processes competing for the cores."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def _time_epochs(make_iter, epochs: int) -> dict:
    """Iterate ``epochs`` epochs; first epoch apart from the rest."""
    times, counts, cpu = [], [], []
    for _ in range(epochs):
        n = 0
        t0, c0 = now(), _cpu_seconds()
        for images, _labels in make_iter():
            n += images.shape[0]
        times.append(now() - t0)
        cpu.append(_cpu_seconds() - c0)
        counts.append(n)
    steady_t = sum(times[1:])
    steady_n = sum(counts[1:])
    return {
        "cpu_ms_per_img": sum(cpu[1:]) / steady_n * 1e3 if steady_n else float("nan"),
        "first_epoch_img_per_s": counts[0] / times[0],
        "img_per_s": steady_n / steady_t if steady_t > 0 else float("nan"),
        "images_per_epoch": counts[0],
        "epoch_seconds": [round(t, 3) for t in times],
    }


def _check_batch(images) -> None:
    import torch

    assert images.dtype == torch.uint8, images.dtype
    assert images.ndim == 4 and images.shape[1] == 3, images.shape


def _time_loader(loader, epochs: int, setup_s: float) -> dict:
    """Time ``epochs`` passes over a loader, checking the first batch's format."""
    checked = []

    def make_iter():
        for images, labels in loader:
            if not checked:
                _check_batch(images)
                checked.append(True)
            yield images, labels

    result = _time_epochs(make_iter, epochs)
    result["setup_s"] = setup_s
    return result


def child_ffcv(args, stock: bool) -> dict:
    """The first epoch includes numba compilation of the pipeline (ffcv compiles on first iteration)."""
    import torch

    t0 = now()
    if stock:
        from ffcv.fields.basics import IntDecoder
        from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        device = torch.device("cpu")
        image_pipeline = [RandomResizedCropRGBImageDecoder((args.res, args.res)),
                          RandomHorizontalFlip(), ToTensor(), ToDevice(device, non_blocking=True),
                          ToTorchImage()]
        label_pipeline = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device, non_blocking=True)]
        loader = Loader(args.beton, batch_size=args.batch_size, num_workers=args.workers,
                        order=OrderOption.RANDOM, os_cache=True, drop_last=True,
                        pipelines={"image": image_pipeline, "label": label_pipeline},
                        distributed=False)
    elif args.child in ("val-fast", "val-ffcv"):
        from ffcv_utils.load.loaders import val_loader

        loader = val_loader(args.beton, batch_size=args.batch_size, num_workers=args.workers,
                            res=args.val_res, device="cpu", in_memory=True,
                            decoder=args.child.split("-")[1])
    else:
        from ffcv_utils.load.loaders import train_loader

        loader = train_loader(args.beton, batch_size=args.batch_size, num_workers=args.workers,
                              res=args.res, device="cpu", in_memory=True, seed=0).loader
    return _time_loader(loader, args.epochs, setup_s=now() - t0)


def child_torchvision(args) -> dict:
    import torch
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    t0 = now()
    tf = transforms.Compose([transforms.RandomResizedCrop(args.res),
                             transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
    dataset = ImageFolder(str(Path(args.data_dir) / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True,
                                         persistent_workers=args.workers > 0)
    return _time_loader(loader, args.epochs, setup_s=now() - t0)


def child_dali(args) -> dict:
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    files = image_files(Path(args.data_dir) / "train")
    classes = sorted({p.parent.name for p in files})
    labels = [classes.index(p.parent.name) for p in files]

    @pipeline_def(batch_size=args.batch_size, num_threads=max(1, args.workers),
                  device_id=None, seed=0)
    def pipe():
        jpegs, label = fn.readers.file(files=[str(p) for p in files], labels=labels,
                                       random_shuffle=True, name="reader")
        images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB)
        images = fn.resize(images, resize_x=args.res, resize_y=args.res)
        images = fn.flip(images, horizontal=fn.random.coin_flip())
        images = fn.transpose(images, perm=[2, 0, 1])
        return images, label

    t0 = now()
    p = pipe()
    p.build()
    setup = now() - t0
    per_epoch = len(files) // args.batch_size

    class _Shape:
        def __init__(self, n):
            self.shape = (n,)

    def make_iter():
        for _ in range(per_epoch):
            images, _ = p.run()
            arr = np.asarray(images.as_tensor())
            yield _Shape(arr.shape[0]), None

    result = _time_epochs(make_iter, args.epochs)
    result["setup_s"] = setup
    return result


def child_main(args) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, args.workers)))
    if args.child in ("toolkit-proportion", "toolkit-jpg", "val-fast", "val-ffcv"):
        result = child_ffcv(args, stock=False)
    elif args.child in ("ffcv-stock", "ffcv-stock-jpg"):
        result = child_ffcv(args, stock=True)
    elif args.child == "torchvision":
        result = child_torchvision(args)
    elif args.child == "dali-cpu":
        result = child_dali(args)
    else:
        raise SystemExit(f"unknown loader {args.child}")
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------- driver

def dali_available(dali_path: str | None) -> tuple[bool, str]:
    import subprocess

    env = dict(os.environ)
    if dali_path:
        env["PYTHONPATH"] = dali_path + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", "import nvidia.dali"], env=env,
                       capture_output=True, text=True)
    if r.returncode == 0:
        return True, ""
    last = (r.stderr.strip().splitlines() or ["import failed"])[-1]
    return False, f"nvidia.dali not importable: {last[:120]}"


def run(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="ImageFolder root containing train/")
    parser.add_argument("--res", type=int, default=160)
    parser.add_argument("--val-res", type=int, default=256, help="resolution of the val rows")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4,
                        help="epochs per loader; the first is reported apart")
    parser.add_argument("--out", required=True, help="CSV to write (one row per loader)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every loader this many times, interleaved; keep each one's best")
    parser.add_argument("--loaders", default=",".join(ALL_LOADERS),
                        help=f"comma-separated subset of {ALL_LOADERS}")
    parser.add_argument("--beton-dir", default=None,
                        help="where betons are cached (default: <out dir>/betons)")
    parser.add_argument("--dali-path", default=None,
                        help="folder holding nvidia.dali (pip install --target) if not installed")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--beton", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is reported apart)")
    if args.child:
        return child_main(args)

    import pandas as pd

    data_dir = Path(args.data_dir).resolve()
    files = image_files(data_dir / "train")
    if not files:
        parser.error(f"no images under {data_dir / 'train'}")
    folder_bytes, fingerprint = folder_fingerprint(files)
    loaders = [s.strip() for s in args.loaders.split(",") if s.strip()]
    unknown = set(loaders) - set(ALL_LOADERS)
    if unknown:
        parser.error(f"unknown loaders {sorted(unknown)}; choose from {ALL_LOADERS}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(args.beton_dir) if args.beton_dir else out.parent / "betons"
    modes = []
    if any(l in loaders for l in ("toolkit-proportion", "ffcv-stock")):
        modes.append("proportion")
    if any(l in loaders for l in ("toolkit-jpg", "ffcv-stock-jpg", "val-fast", "val-ffcv")):
        modes.append("jpg")
    betons = ensure_betons(data_dir, cache, modes, args.workers, fingerprint)

    info = machine_info("cpu")
    plans = []  # (row template, child argv, env) per loader, or a finished row when skipped
    for name in loaders:
        row = {"loader": name, "res": args.val_res if name.startswith("val-") else args.res,
               "workers": args.workers, "batch_size": args.batch_size, "epochs": args.epochs,
               "note": "", "decoder": ("ffcv" if name.startswith("ffcv-") or name == "val-ffcv"
                                       else "fast" if name.startswith(("toolkit", "val-"))
                                       else "none")}
        child = [sys.executable, str(Path(__file__).resolve()), "--child", name,
                 "--data-dir", str(data_dir), "--res", str(args.res),
                 "--val-res", str(args.val_res), "--workers",
                 str(args.workers), "--batch-size", str(args.batch_size), "--epochs",
                 str(args.epochs), "--out", str(out)]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + \
            env.get("PYTHONPATH", "")
        if name == "torchvision":
            row.update(beton_mode="none (JPEG files)", dataset_bytes=folder_bytes,
                       writer="", note="PIL decode; ImageFolder + DataLoader")
        elif name == "dali-cpu":
            ok, why = dali_available(args.dali_path)
            row.update(beton_mode="none (JPEG files)", dataset_bytes=folder_bytes, writer="")
            if not ok:
                row["note"] = f"skipped: {why}"
                print(f"{name}: {row['note']}", flush=True)
                plans.append((row, None, None))
                continue
            if args.dali_path:
                env["PYTHONPATH"] = args.dali_path + os.pathsep + env["PYTHONPATH"]
            row["note"] = "fn.decoders.image_random_crop + resize + flip, device_id=None"
        else:
            mode = "proportion" if name in ("toolkit-proportion", "ffcv-stock") else "jpg"
            path, writer = betons[mode]
            child += ["--beton", str(path)]
            row.update(beton_mode=mode, dataset_bytes=path.stat().st_size, writer=writer)
            row["note"] = ("ffcv Loader built as ffcv-imagenet builds it"
                           if name.startswith("ffcv-stock")
                           else "ffcv_utils.load.loaders.val_loader (centre crop 224/256)"
                           if name.startswith("val-") else "ffcv_utils.load.loaders.train_loader")
        plans.append((row, child, env))

    # Rounds interleave the loaders, so a burst of load from elsewhere hits them alike; each
    # loader keeps its best round (the one least disturbed), and the CSV lists every round.
    best: dict[str, dict] = {}
    all_rates: dict[str, list] = {}
    for rnd in range(args.rounds):
        for row, child, env in plans:
            name = row["loader"]
            if child is None:
                best[name] = row
                continue
            print(f"--- {name} (round {rnd + 1}/{args.rounds})", flush=True)
            load_before = round(os.getloadavg()[0], 2)
            result, peak_mb, rc = run_child(child, env=env)
            if rc != 0 or result is None:
                all_rates.setdefault(name, []).append("failed")
                if name not in best:
                    best[name] = dict(row, note=f"failed (exit {rc})")
                continue
            print(f"{name}: {result['img_per_s']:.0f} img/s steady, "
                  f"{result['first_epoch_img_per_s']:.0f} img/s first epoch, epochs "
                  f"{result['epoch_seconds']} s, peak RSS {peak_mb:.0f} MiB", flush=True)
            all_rates.setdefault(name, []).append(f"{result['img_per_s']:.0f}")
            prev = best.get(name)
            if prev is None or prev.get("img_per_s") is None or \
                    result["img_per_s"] > prev["img_per_s"]:
                best[name] = dict(row, load_1m_before=load_before,
                                  load_1m_after=round(os.getloadavg()[0], 2),
                                  peak_rss_mb=round(peak_mb, 1),
                                  **{k: result[k] for k in ("img_per_s", "first_epoch_img_per_s",
                                                            "images_per_epoch", "setup_s",
                                                            "cpu_ms_per_img")})
    rows = []
    for row, _, _ in plans:
        r = best[row["loader"]]
        r["rounds_img_per_s"] = ";".join(all_rates.get(row["loader"], []))
        rows.append(r)

    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = float("nan")
    tv = df[df.loader == "torchvision"]
    if len(tv) and tv.img_per_s.notna().all():
        df["ratio_vs_torchvision"] = df.img_per_s / float(tv.img_per_s.iloc[0])
        df["first_epoch_ratio_vs_torchvision"] = (df.first_epoch_img_per_s /
                                                  float(tv.first_epoch_img_per_s.iloc[0]))
    rate = dict(zip(df.loader, df.img_per_s))
    df["ratio_vs_ffcv_stock"] = [
        rate[l] / rate[STOCK_OF[l]] if STOCK_OF.get(l) in rate and rate[STOCK_OF[l]] else
        float("nan") for l in df.loader]
    cpu = dict(zip(df.loader, df.cpu_ms_per_img))
    df["cpu_ratio_vs_ffcv_stock"] = [  # > 1: the row needs less CPU per image than stock
        cpu[STOCK_OF[l]] / cpu[l] if STOCK_OF.get(l) in cpu and cpu[l] else float("nan")
        for l in df.loader]
    df = df[COLUMNS]
    for k, v in info.items():
        df[k] = v
    df["images"] = len(files)
    df.to_csv(out, index=False)
    show = df[["loader", "decoder", "beton_mode", "res", "img_per_s", "first_epoch_img_per_s",
               "ratio_vs_ffcv_stock", "cpu_ms_per_img", "cpu_ratio_vs_ffcv_stock",
               "ratio_vs_torchvision", "dataset_bytes", "peak_rss_mb",
               "note"]].copy()
    show["dataset_bytes"] = (show.dataset_bytes / 2**20).round(1)
    show = show.rename(columns={"dataset_bytes": "dataset_MiB"})
    print_summary(f"{len(files)} images, res {args.res}, {args.workers} workers, "
                  f"batch {args.batch_size}", info, show, out)
    return df


if __name__ == "__main__":
    run()
