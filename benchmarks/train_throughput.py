"""Model side: training and validation images per second, model alone and end to end.

* ``train``: forward + backward + SGD step on synthetic tensors already on the device, at each
  training resolution of the progressive-resizing schedule (160, 176, 192 by default);
* ``val``: forward only (inference mode) at the validation resolutions (224, 256);
* ``e2e``: the same training step fed by the toolkit's real loader
  (``ffcv_utils.load.loaders.train_loader`` on a beton, then ``normalize``), next to ``loader-only``
  (the loader iterated with no model). ``loader_bound`` is ``yes`` when the end-to-end rate is
  below 90% of the model-only rate at the same resolution and variant.

Variants are ``-``-joined tokens: a precision (``fp32``, ``bf16``, ``fp16``: autocast, with a
GradScaler for fp16), ``cl`` (channels-last model and input), ``compile`` (``torch.compile``).
Architectures are torchvision names; ``+blurpool`` applies ``ffcv_utils.train.models``' BlurPool when
that module offers it (otherwise the row says it was skipped).

    python benchmarks/train_throughput.py --arch resnet50 --batch-size 256 \\
        --variants fp32,fp32-cl,bf16-cl,fp16-cl --out benchmarks/results/train_h100.csv
    python benchmarks/train_throughput.py --arch resnet18 --device cpu --batch-size 8 \\
        --train-res 64 --val-res 64 --steps 2 --warmup 1 --variants fp32 --out /tmp/t.csv

CUDA timing: warm-up steps, ``torch.cuda.synchronize()``, the timed loop, synchronize again.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import finish_table, machine_info, markdown_table, now  # noqa: E402

COLUMNS = ["arch", "mode", "variant", "res", "batch_size", "steps", "img_per_s",
           "model_only_img_per_s", "loader_img_per_s", "e2e_vs_model", "loader_bound",
           "workers", "peak_gpu_mem_gb", "note"]
PRECISIONS = {"fp32", "bf16", "fp16"}


def parse_variant(spec: str) -> dict:
    tokens = spec.split("-")
    prec = [t for t in tokens if t in PRECISIONS]
    unknown = [t for t in tokens if t not in PRECISIONS | {"cl", "compile"}]
    if len(prec) != 1 or unknown:
        raise ValueError(f"bad variant {spec!r}: one of {sorted(PRECISIONS)} plus optional "
                         "'cl' and 'compile', joined by '-'")
    return {"name": spec, "precision": prec[0], "channels_last": "cl" in tokens,
            "compile": "compile" in tokens}


def build_model(arch: str, num_classes: int = 1000):
    """(model, note): torchvision ``arch``; ``+blurpool`` through ``ffcv_utils.train.models``."""
    import torchvision

    base, _, extra = arch.partition("+")
    if extra and extra != "blurpool":
        raise ValueError(f"unknown architecture suffix +{extra}")
    if not extra:
        return torchvision.models.get_model(base, weights=None, num_classes=num_classes), ""
    try:
        from ffcv_utils.train import models as tk_models
    except ImportError:
        return None, "skipped: ffcv_utils.train.models does not exist yet"
    if hasattr(tk_models, "create_model"):
        return tk_models.create_model(base, num_classes, use_blurpool=True), "toolkit BlurPool"
    if hasattr(tk_models, "apply_blurpool"):
        model = torchvision.models.get_model(base, weights=None, num_classes=num_classes)
        tk_models.apply_blurpool(model)  # in place
        return model, "toolkit BlurPool"
    return None, "skipped: ffcv_utils.train.models has no BlurPool helper"


class Bench:
    """One model in one variant, with its optimizer, ready to time steps."""

    def __init__(self, arch, variant, device, num_classes=1000):
        import torch

        self.torch = torch
        self.device = device
        self.variant = variant
        model, note = build_model(arch, num_classes)
        self.note = note
        if model is None:
            self.model = None
            return
        self.memory_format = (torch.channels_last if variant["channels_last"]
                              else torch.contiguous_format)
        model = model.to(device).to(memory_format=self.memory_format)
        self.model = model
        self.fwd = torch.compile(model) if variant["compile"] else model
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16,
                      "fp16": torch.float16}[variant["precision"]]
        self.autocast = variant["precision"] != "fp32"
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
        self.scaler = torch.amp.GradScaler(device.type,
                                           enabled=variant["precision"] == "fp16")
        self.num_classes = num_classes

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def train_step(self, x, y):
        torch = self.torch
        x = x.contiguous(memory_format=self.memory_format)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast):
            loss = torch.nn.functional.cross_entropy(self.fwd(x), y, label_smoothing=0.1)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def val_step(self, x):
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype,
                                                    enabled=self.autocast):
            self.fwd(x.contiguous(memory_format=self.memory_format))

    def synthetic(self, batch_size, res):
        torch = self.torch
        x = torch.randn(batch_size, 3, res, res, device=self.device)
        x = x.contiguous(memory_format=self.memory_format)
        y = torch.randint(0, self.num_classes, (batch_size,), device=self.device)
        return x, y

    def time_model(self, mode, batch_size, res, warmup, steps) -> float:
        x, y = self.synthetic(batch_size, res)
        if mode == "train":
            self.model.train()
            step = lambda: self.train_step(x, y)  # noqa: E731
        else:
            self.model.eval()
            step = lambda: self.val_step(x)  # noqa: E731
        for _ in range(warmup):
            step()
        self.sync()
        t0 = now()
        for _ in range(steps):
            step()
        self.sync()
        return batch_size * steps / (now() - t0)


def endless(loader):
    while True:
        yield from loader


def open_e2e(bench, beton, batch_size, res, workers, decoder="fast"):
    """The toolkit's training loader on ``beton``, and an endless iterator over it."""
    from ffcv_utils.load.loaders import train_loader

    td = train_loader(str(beton), batch_size=batch_size, num_workers=workers, res=res,
                      device=bench.device, in_memory=True, seed=0, decoder=decoder)
    return td, endless(td.loader)


def time_e2e(bench, td, batches, res, warmup, steps) -> tuple[float, float]:
    """(end-to-end img/s, loader-only img/s) with the toolkit's loader at ``res``.

    The resolution changes at the next epoch (as in training), so batches still at the old
    resolution are consumed untimed first.
    """
    from ffcv_utils.load.loaders import normalize

    in_dtype = bench.torch.float32 if not bench.autocast else bench.dtype
    td.set_resolution(res)
    bench.model.train()
    done = 0
    while done < max(3, warmup):  # numba compilation, the epoch start, cudnn autotuning
        images, labels = next(batches)
        if images.shape[-1] != res:
            continue
        bench.train_step(normalize(images, in_dtype), labels)
        done += 1
    bench.sync()
    t0 = now()
    n = 0
    for _ in range(steps):
        images, labels = next(batches)
        bench.train_step(normalize(images, in_dtype), labels)
        n += images.shape[0]
    bench.sync()
    e2e = n / (now() - t0)
    for _ in range(4):  # drain what the loader prefetched (batches_ahead=3) while the model ran
        next(batches)
    t0 = now()
    n = 0
    for _ in range(steps):
        images, _labels = next(batches)
        n += images.shape[0]
    bench.sync()
    loader_only = n / (now() - t0)
    return e2e, loader_only


def make_photo_beton(root: Path, images: int, classes: int, procs: int) -> Path:
    """ImageNet-like photos generated in parallel, written to a proportion beton (published
    settings) -- so a GPU machine needs no data carried to it."""
    from concurrent.futures import ProcessPoolExecutor

    from benchmarks.loader_throughput import ensure_betons, folder_fingerprint, image_files
    from ffcv_utils.tools.sample_data import make_photo_folder

    data = root / "photos"
    if not data.exists():
        parts = root / "parts"
        per = -(-images // procs)
        with ProcessPoolExecutor(procs) as ex:
            list(ex.map(make_photo_folder, [parts / f"p{i}" for i in range(procs)],
                        [per] * procs, [classes] * procs, [0] * procs, range(procs)))
        from ffcv_utils.base.atomic import publish, temporary_folder_beside

        tmp = temporary_folder_beside(data)
        for i in range(procs):
            for f in (parts / f"p{i}" / "train").rglob("*.JPEG"):
                dest = tmp / "train" / f.parent.name
                dest.mkdir(parents=True, exist_ok=True)
                f.rename(dest / f"p{i}_{f.name}")
        publish(tmp, data)
    files = image_files(data / "train")
    _, fp = folder_fingerprint(files)
    return ensure_betons(data, root / "betons", ["proportion"], procs, fp)["proportion"][0]


def run(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50",
                        help="comma-separated torchvision names, '+blurpool' suffix allowed")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--val-batch-size", type=int, default=None,
                        help="default: the training batch size")
    parser.add_argument("--train-res", default="160,176,192")
    parser.add_argument("--val-res", default="224,256")
    parser.add_argument("--variants", default=None,
                        help="comma-separated, e.g. fp32,fp32-cl,bf16-cl,fp16-cl,bf16-cl-compile "
                             "(default: those on cuda, fp32,fp32-cl on cpu)")
    parser.add_argument("--modes", default="train,val", help="which of train,val,e2e to run")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--beton", default=None, help="beton for the e2e mode")
    parser.add_argument("--photos", type=int, default=0,
                        help="for e2e without --beton: generate this many ImageNet-like photos "
                             "and write a proportion beton beside --out")
    parser.add_argument("--work-dir", default=None,
                        help="where --photos writes its images and beton (default: beside --out)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: "
                        "all cores)")
    parser.add_argument("--e2e-variant", default=None,
                        help="variant for e2e (default: the last of --variants)")
    parser.add_argument("--decoder", default="fast", choices=["fast", "ffcv"],
                        help="the e2e loader's image decoder (data.decoder)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    variants = args.variants or ("fp32,fp32-cl,bf16-cl,fp16-cl" if device.type == "cuda"
                                 else "fp32,fp32-cl")
    variants = [parse_variant(v) for v in variants.split(",") if v]
    archs = [a for a in args.arch.split(",") if a]
    train_res = [int(r) for r in args.train_res.split(",") if r]
    val_res = [int(r) for r in args.val_res.split(",") if r]
    modes = [m for m in args.modes.split(",") if m]
    workers = args.workers or os.cpu_count()
    val_bs = args.val_batch_size or args.batch_size
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = machine_info(str(device))

    rows = []

    def add(**row):
        rows.append(row)
        rate = row.get("img_per_s")
        shown = f"{rate:,.0f} img/s" if isinstance(rate, float) else row.get("note", "")
        print(f"{row['arch']:>18} {row['mode']:>11} {row['variant']:>16} {row['res']:>4}: "
              f"{shown}", flush=True)

    model_rate = {}
    for arch in archs:
        for v in variants:
            need_train = "train" in modes
            need_val = "val" in modes
            if not (need_train or need_val):
                continue
            bench = Bench(arch, v, device)
            if bench.model is None:
                add(arch=arch, mode="train", variant=v["name"], res="", note=bench.note)
                continue
            for mode, resolutions, bs in (("train", train_res, args.batch_size),
                                          ("val", val_res, val_bs)):
                if mode not in modes:
                    continue
                for res in resolutions:
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    t0 = now()
                    rate = bench.time_model(mode, bs, res, args.warmup, args.steps)
                    mem = (torch.cuda.max_memory_allocated(device) / 2**30
                           if device.type == "cuda" else float("nan"))
                    model_rate[(arch, v["name"], res, mode)] = rate
                    add(arch=arch, mode=mode, variant=v["name"], res=res, batch_size=bs,
                        steps=args.steps, img_per_s=rate, peak_gpu_mem_gb=round(mem, 2),
                        note=f"synthetic input; {now() - t0:.0f} s incl. warm-up"
                        + (f"; {bench.note}" if bench.note else ""))
            del bench
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if "e2e" in modes:
        beton = args.beton
        if beton is None and args.photos:
            work = Path(args.work_dir) if args.work_dir else out.parent / "e2e_data"
            beton = make_photo_beton(work, args.photos, 10, workers)
        if beton is None:
            parser.error("the e2e mode needs --beton or --photos")
        v = parse_variant(args.e2e_variant) if args.e2e_variant else variants[-1]
        from ffcv_utils.beton.check import BetonError, check

        try:
            n_images = check(beton, "--beton")
        except BetonError as e:
            parser.error(str(e))
        for arch in archs:
            bench = Bench(arch, v, device)
            if bench.model is None:
                add(arch=arch, mode="e2e", variant=v["name"], res="", note=bench.note)
                continue
            for res in train_res:
                key = (arch, v["name"], res, "train")
                if key not in model_rate:
                    model_rate[key] = bench.time_model("train", args.batch_size, res,
                                                       args.warmup, args.steps)
            td, batches = open_e2e(bench, beton, args.batch_size, train_res[0], workers,
                                   args.decoder)
            for res in train_res:
                key = (arch, v["name"], res, "train")
                e2e, loader_only = time_e2e(bench, td, batches, res, args.warmup, args.steps)
                ratio = e2e / model_rate[key]
                note = (f"toolkit train_loader ({args.decoder} decoder) on a {n_images}-image "
                        f"proportion beton "
                        f"({Path(beton).stat().st_size / 2**20:.0f} MiB); uint8 -> normalize")
                add(arch=arch, mode="e2e", variant=v["name"], res=res,
                    batch_size=args.batch_size, steps=args.steps, img_per_s=e2e,
                    model_only_img_per_s=model_rate[key], loader_img_per_s=loader_only,
                    e2e_vs_model=ratio, loader_bound="yes" if ratio < 0.9 else "no",
                    workers=workers, note=note)

    df = pd.DataFrame(rows)
    df = finish_table(df, COLUMNS, info)
    df.to_csv(out, index=False)
    print()
    print(f"{info['device']} / {info['gpu']} / {info['cpu_model']} ({info['cpu_cores']} cores), "
          f"torch {info['torch']}, {info['date']}")
    print(markdown_table(df[COLUMNS[:11]]))
    print(f"wrote {out}")
    return df


if __name__ == "__main__":
    run()
