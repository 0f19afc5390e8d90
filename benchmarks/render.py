"""Render benchmarks/results/*.csv into docs/performance.md's block between the perf markers.

Loader CSVs (a ``loader`` column) become one table per run, with every loader's ratio to the
torchvision row of that same run; model-side CSVs (an ``arch`` column) become a resolution x
variant table plus an end-to-end table; writer CSVs (``write_throughput.py``) a table per run.
Every table is headed by the machine and date its absolute numbers were measured on, and
anchored by its CSV's name (``#loader_cpu`` for ``loader_cpu.csv``) so other pages can link it.

    python benchmarks/render.py [--results benchmarks/results] [--doc docs/performance.md]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import markdown_table  # noqa: E402

START, END = "<!-- perf:start -->", "<!-- perf:end -->"
REPO = Path(__file__).resolve().parents[1]


def _first(df, col, default="?"):
    if col in df.columns and len(df) and df[col].notna().any():
        return df[col].dropna().iloc[0]
    return default


def num(v, fmt: str = "{:.2f}") -> str:
    """``v`` formatted, or blank for NaN (a row that has no such figure)."""
    return fmt.format(v) if v == v else ""


def times(v) -> str:
    """A ratio as "1.23×", blank for NaN."""
    return num(v, "{:.2f}×")


def machine_line(df) -> str:
    gpu = _first(df, "gpu", "none")
    gpu_part = f", GPU: {gpu}" if gpu != "none" else ", no GPU"
    dates = sorted(str(d) for d in df["date"].dropna().unique()) if "date" in df else ["?"]
    date = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    load = _first(df, "load_avg_1m_at_start", None)
    load_part = f", load avg at start {float(load):.2f}" if load is not None else ""
    return (f"{_first(df, 'cpu_model')} ({_first(df, 'cpu_cores')} cores){gpu_part}; "
            f"{date}; torch {_first(df, 'torch')}, ffcv {_first(df, 'ffcv')}, "
            f"Python {_first(df, 'python')}{load_part}")


def render_loader(name: str, df) -> str:
    tv = df[(df.loader == "torchvision") & df.img_per_s.notna()]
    base = float(tv.img_per_s.iloc[0]) if len(tv) else None
    base_first = float(tv.first_epoch_img_per_s.iloc[0]) if len(tv) else None
    rows = []
    for r in df.itertuples(index=False):
        ok = r.img_per_s == r.img_per_s  # not NaN
        stock_ratio = getattr(r, "ratio_vs_ffcv_stock", float("nan"))
        rows.append({
            "loader": r.loader,
            "decoder": getattr(r, "decoder", "") if isinstance(getattr(r, "decoder", ""), str)
            else "",
            "beton": r.beton_mode,
            "res": int(r.res) if r.res == r.res else "",
            "img/s (steady)": r.img_per_s if ok else float("nan"),
            "× stock ffcv": f"{stock_ratio:.2f}×" if stock_ratio == stock_ratio else "",
            "CPU ms/img": getattr(r, "cpu_ms_per_img", float("nan")),
            "× stock, CPU": (f"{r.cpu_ratio_vs_ffcv_stock:.2f}×"
                             if getattr(r, "cpu_ratio_vs_ffcv_stock", float("nan")) ==
                             getattr(r, "cpu_ratio_vs_ffcv_stock", float("nan")) else ""),
            "× torchvision": (f"{r.img_per_s / base:.2f}×" if ok and base else ""),
            "img/s (1st epoch)": r.first_epoch_img_per_s if ok else float("nan"),
            "1st epoch × tv": (f"{r.first_epoch_img_per_s / base_first:.2f}×"
                               if ok and base_first else ""),
            "data MiB": r.dataset_bytes / 2**20 if r.dataset_bytes == r.dataset_bytes else "",
            "peak RSS MiB": r.peak_rss_mb,
            "every round img/s": (str(getattr(r, "rounds_img_per_s", "")).replace(";", ", ")
                                  if isinstance(getattr(r, "rounds_img_per_s", None), str)
                                  else ""),
            "note": r.note if isinstance(r.note, str) else "",
        })
    import pandas as pd

    table = markdown_table(pd.DataFrame(rows))
    head = (f"**Data loading, CPU only** (`{name}`): {int(_first(df, 'images', 0)):,} "
            f"ImageNet-like JPEGs, RandomResizedCrop {int(_first(df, 'res', 0))}px + flip, uint8 "
            f"out, {int(_first(df, 'workers', 0))} workers, batch {int(_first(df, 'batch_size', 0))}"
            f", {int(_first(df, 'epochs', 0))} epochs (first reported apart). "
            f"Measured on {machine_line(df)}.")
    loads = [c for c in ("load_1m_before", "load_1m_after") if c in df.columns]
    if loads and df[loads].notna().any().any():
        vals = df[loads].to_numpy().ravel()
        vals = vals[vals == vals]
        cores = _first(df, "cpu_cores", None)
        # the loaders' own workers (plus the timing process) account for about the core count
        busy = (cores is not None and vals.max() > float(cores) + 0.5)
        note = (f"{cores} cores shared with other work" if busy
                else f"within the loaders' own use of the {cores} cores")
        head += (f" 1-minute load average around the loaders: {vals.min():.1f}-{vals.max():.1f} "
                 f"({note}; each loader's best round is shown).")
    return head + "\n\n" + table


def render_train(name: str, df) -> str:
    import pandas as pd

    parts = [f"**Model side** (`{name}`), batch {int(_first(df, 'batch_size', 0))}, synthetic "
             f"tensors on the device, img/s. Measured on {machine_line(df)}."]
    model = df[df["mode"].isin(["train", "val"]) & df.img_per_s.notna()].copy()
    if len(model):
        model["col"] = model["mode"] + " " + model["res"].astype(int).astype(str)
        wide = model.pivot_table(index=["arch", "variant"], columns="col", values="img_per_s",
                                 sort=False).reset_index()
        order = ["arch", "variant"] + [c for c in model["col"].drop_duplicates()]
        parts.append(markdown_table(wide[order]))
    skipped = df[df.img_per_s.isna() & df.note.notna()]
    for r in skipped.itertuples(index=False):
        parts.append(f"- {r.arch} {r.variant}: {r.note}")
    e2e = df[df["mode"] == "e2e"]
    if len(e2e):
        t = pd.DataFrame({
            "arch": e2e.arch, "variant": e2e.variant, "res": e2e.res.astype(int),
            "end-to-end img/s": e2e.img_per_s, "model-only img/s": e2e.model_only_img_per_s,
            "loader-only img/s": e2e.loader_img_per_s, "e2e / model": e2e.e2e_vs_model,
            "loader bound": e2e.loader_bound,
            "loader workers": e2e.workers.astype("Int64").astype(str),
        })
        note = _first(e2e, "note", "")
        parts.append(f"End to end (the toolkit's `train_loader` feeding the same step; "
                     f"loader bound = end-to-end below 90% of model-only): {note}.")
        parts.append(markdown_table(t))
    return "\n\n".join(parts)


def render_profile(name: str, df) -> str:
    crop = ("the validation centre crop (224/256, no flip)" if _first(df, "crop", "") == "center"
            else "the random crop")
    kind = ("all-JPEG" if _first(df, "jpg_images", 0) == _first(df, "images", -1)
            else "proportion")
    head = (f"**Where the loader's time goes** (`{name}`, `benchmarks/profile_loader.py`): one "
            f"core, per image, {int(_first(df, 'images', 0))} images of the {kind} beton "
            f"({int(_first(df, 'jpg_images', 0))} stored as JPEG, mean "
            f"{_first(df, 'mean_kpixel')} kpixel), {crop} resized to "
            f"{int(_first(df, 'res', 0))}px, minimum of repeated runs. "
            f"Measured on {machine_line(df)}.")
    cols = [c for c in ("path", "step", "ms_per_image", "share_of") if c in df.columns]
    return head + "\n\n" + markdown_table(df[cols])


def render_startup(name: str, df) -> str:
    """benchmarks/startup.py: time to the first batch, and after a resolution change."""
    cols = ["decoder", "build_s", "first_batch_s", "epoch1_s", "first_batch_res2_s", "epoch2_s"]
    head = (f"**Start-up** (`{name}`, `benchmarks/startup.py`): a fresh process per decoder, "
            f"`train_loader` at {int(_first(df, 'res', 0))} px, {int(_first(df, 'workers', 0))} "
            f"workers, batch {int(_first(df, 'batch_size', 0))}, on `{_first(df, 'beton')}`; "
            f"seconds to build the Loader, to its first batch (numba compiles the pipeline "
            f"then), for the rest of the epoch, and the same after `set_resolution("
            f"{int(_first(df, 'res2', 0))})`. Measured on {machine_line(df)}.")
    return head + "\n\n" + markdown_table(df[[c for c in cols if c in df.columns]])


def accuracy_summary(df, by: str):
    """Final top-1 and train loss of the runs in ``df``, a row for each value of ``by``."""
    return df.groupby(by, sort=False).agg(
        runs=("top_1", "size"), seeds=("seed", lambda s: ", ".join(str(int(v)) for v in s)),
        top_1_mean=("top_1", "mean"), top_1_min=("top_1", "min"), top_1_max=("top_1", "max"),
        train_loss_mean=("train_loss", "mean")).reset_index()


def render_accuracy(name: str, df) -> str:
    """benchmarks/decoder_accuracy.py: the digits demo trained with each decoder."""
    summary = accuracy_summary(df, "decoder")
    summary["wall_s_mean"] = df.groupby("decoder", sort=False)["wall_s"].mean().values
    head = (f"**Same accuracy with the fast decoder** (`{name}`, "
            f"`benchmarks/decoder_accuracy.py`): the digits demo recipe "
            f"(`rn18_configs/rn18_demo.yaml`, 5 epochs) through the trainer with "
            f"`--data.decoder fast` and `ffcv`, same seeds, interleaved; final top-1 on the 363 val "
            f"images. Augmentation randomness is not seeded (ffcv's numba generators), so runs "
            f"with one seed differ by themselves. Measured on {machine_line(df)}.")
    return head + "\n\n" + markdown_table(summary)


def render_order_accuracy(name: str, df) -> str:
    """benchmarks/order_accuracy.py: the page-aware order against the random order."""
    head = (f"**The page-aware order learns like the random order** (`{name}`, "
            f"`benchmarks/order_accuracy.py`): the digits at 128 px stored raw on 2 MiB pages, "
            f"{int(_first(df, 'epochs', 0))} epochs at lr {_first(df, 'lr')}, a window of "
            f"{int(_first(df, 'window_pages', 0))} pages, the same seeds for both orders, "
            f"interleaved; final top-1 on the 363 val images. Measured on {machine_line(df)}.")
    return head + "\n\n" + markdown_table(accuracy_summary(df, "order"))


def render_checkouts(name: str, df) -> str:
    """benchmarks/compare_checkouts.py: one benchmark on two commits, interleaved."""
    import pandas as pd

    keys = [c for c in ("loader", "writer", "mode", "variant", "res") if c in df.columns
            and (c == "loader" or df[c].nunique() > 1)]
    rates = df.groupby(keys + ["checkout"])["img_per_s"]
    table = rates.median().unstack("checkout")
    spread = rates.agg(lambda v: f"{v.min():,.0f}-{v.max():,.0f}").unstack("checkout")
    out = pd.DataFrame({"old (median)": table["old"], "old (range)": spread["old"],
                        "new (median)": table["new"], "new (range)": spread["new"],
                        "new / old": table["new"] / table["old"]}).reset_index()
    commits = dict(zip(df.checkout, df.commit))
    head = (f"**Before and after a change** (`{name}`, `benchmarks/compare_checkouts.py`): "
            f"the same benchmark on commit {commits.get('old')} (old) and {commits.get('new')} "
            f"(new), {df['round'].nunique()} interleaved rounds, img/s. Measured on "
            f"{machine_line(df)}.")
    return head + "\n\n" + markdown_table(out)


def _marginal_columns(df) -> dict:
    """The per-photo rate beyond a small write (absent from CSVs measured before it existed)."""
    if "marginal_img_per_s" not in df.columns or df.marginal_img_per_s.isna().all():
        return {}
    return {"img/s beyond the small write": df.marginal_img_per_s,
            "× re-encode, beyond": df.marginal_ratio_vs_reencode.map(times),
            "× ffcv-imagenet, beyond": df.marginal_ratio_vs_ffcv_imagenet.map(times),
            "CPU ms/img beyond": df.marginal_cpu_ms_per_img}


def _small_line(df) -> str:
    if not _marginal_columns(df):
        return ""
    return (f"; each round also writes {int(_first(df, 'small_images', 0)):,} of the photos, and "
            f"`beyond` is the rate and CPU of the photos the full write has beyond that one "
            f"(median over rounds): what carries over to a data set of any size")


def render_write(name: str, df) -> str:
    """benchmarks/write_throughput.py: the toolkit's writer, with and without JPEG passthrough,
    and ffcv's DatasetWriter called as ffcv-imagenet calls it."""
    import pandas as pd

    table = pd.DataFrame({
        "writer": df.writer, "mode": df.write_mode, "passthrough": df.passthrough,
        "img/s (whole write)": df.img_per_s, "× re-encode": df.ratio_vs_reencode.map(times),
        "× ffcv-imagenet": df.ratio_vs_ffcv_imagenet.map(times),
        "start-up s": df.startup_s, "img/s (after start-up)": df.data_img_per_s,
        "× re-encode, after start-up": df.data_ratio_vs_reencode.map(times),
        "× ffcv-imagenet, after start-up": df.data_ratio_vs_ffcv_imagenet.map(times),
        "CPU ms/img": df.cpu_ms_per_img, "CPU ms/img after start-up": df.data_cpu_ms_per_img,
        **_marginal_columns(df),
        "KB/img stored": df.data_bytes_per_img / 1e3,
        "stored as source": df.stored_as_source_share.map(lambda v: f"{v:.0%}"),
        "bytes check": df.as_source_check,
        "every round img/s": df.rounds_img_per_s.astype(str).str.replace(";", ", "),
    })
    loads = df[["load_1m_before", "load_1m_after"]].to_numpy().ravel()
    head = (f"**Writing a beton** (`{name}`, `benchmarks/write_throughput.py`): "
            f"{int(_first(df, 'images', 0)):,} ImageNet-like JPEGs "
            f"({float(_first(df, 'no_resize_share', 0)):.0%} need no resize at "
            f"{int(_first(df, 'max_resolution', 0))} px; "
            f"{float(_first(df, 'source_bytes_per_img', 0)) / 1e3:.1f} KB each), "
            f"{int(_first(df, 'workers', 0))} writer processes, jpeg_quality "
            f"{int(_first(df, 'jpeg_quality', 0))}, compress_probability "
            f"{float(_first(df, 'compress_probability', 0))}; each write a fresh process timed "
            f"whole (imports included), {int(_first(df, 'rounds', 0))} interleaved rounds, "
            f"best shown{_small_line(df)}. `stored as source`: samples whose stored bytes "
            f"equal their file's, "
            f"checked against what the writer claims. Measured on {machine_line(df)}; "
            f"1-minute load average around the writes {loads.min():.1f}-{loads.max():.1f}.")
    return head + "\n\n" + markdown_table(table)


def render_beyond_ram(name: str, df) -> str:
    """benchmarks/beyond_ram.py stream: a beton bigger than a memory cap, read by each order."""
    import pandas as pd

    table = pd.DataFrame({
        "processes": df.procs, "loader": df.loader, "order": df.order,
        "cap MiB": df.cap_mb.map(lambda v: num(v, "{:,.0f}") or "none"),
        "outcome": df.outcome, "img/s": df.img_per_s,
        "× target": df.x_target.map(times),
        "read / beton": df.read_x_beton.map(times),
        "peak RSS MiB per process": [
            str(r).replace(";", ", ") if isinstance(r, str) or r == r
            else (f"(all {t:,.0f}, sampled)" if t == t else "")
            for r, t in zip(df.peak_rss_mb, df.tree_peak_rss_mb)],
        "RSS before epoch MiB": df.base_rss_mb,
        "loader memory MiB (peak − before)": df.loader_mem_mb,
        "stated bound MiB": df.bound_mb, "within bound": df.within_bound.fillna(""),
        # cap minus the processes' peak RSS; shared library pages charged elsewhere can make
        # RSS exceed the cap, then there is no meaningful figure
        "page cache left MiB (≈)": df.cache_left_mb.where(df.cache_left_mb > 0),
        "seen exactly once": df.seen_once_share.map(lambda v: num(v, "{:.1%}")),
        "seen twice+": df.repeats.map(lambda v: num(v, "{:.0f}")),
        "load 1m": [f"{a:.1f}-{b:.1f}" for a, b in zip(df.load_1m_before, df.load_1m_after)],
        "every round img/s": (df.rounds_img_per_s.fillna("").astype(str).str.replace(";", ", ")
                              if "rounds_img_per_s" in df else ""),
    })
    head = (f"**A beton bigger than memory** (`{name}`, `benchmarks/beyond_ram.py stream`): "
            f"{int(_first(df, 'beton_images', 0)):,} ImageNet-like photos in a proportion "
            f"beton of {float(_first(df, 'beton_gb', 0)):.2f} GB "
            f"({float(_first(df, 'bytes_per_img', 0)) / 1e3:.0f} KB/img, "
            f"{float(_first(df, 'page_mb', 0)):.0f} MiB pages), one epoch per row at "
            f"{int(_first(df, 'res', 0))} px, batch {int(_first(df, 'batch_size', 0))} per "
            f"process, the page-aware order's window {int(_first(df, 'window_pages', 0))} pages, "
            f"cores / processes loader threads per process, each config's best of "
            f"{int(_first(df, 'rounds', 1))} interleaved rounds (the slow `mmap` and `old` rows "
            f"run once); each process first runs one epoch "
            f"of a 96-image beton (numba compiles then). Capped rows run in a cgroup memory "
            f"group of the cap (page cache counts against it), the beton evicted "
            f"(`posix_fadvise` DONTNEED) before the epoch. Disk: "
            f"{float(_first(df, 'disk_mb_per_s', 0)):.0f} MB/s sequential (the best of "
            f"reading the evicted beton front to back "
            f"{str(_first(df, 'disk_passes_mb_per_s', '?')).count(';') + 1} times: "
            f"{str(_first(df, 'disk_passes_mb_per_s', '?')).replace(';', ', ')} MB/s; the disk "
            f"is shared), which allows {float(_first(df, 'disk_img_per_s', 0)):,.0f} img/s; "
            f"target = the smaller of that and the same process count's fits-in-memory row. "
            f"`read / beton`: `read_bytes` of `/proc/PID/io` of the loader processes over the "
            f"epoch, summed, over the file's size. Measured on {machine_line(df)}.")
    return head + "\n\n" + markdown_table(table)


# Side-by-side runs of beyond_ram.py stream from two checkouts, run alternately: the column that
# names the checkout's version, and what the comparison is about.
COMPARISONS = {
    "window": "**Fixed or sliding page windows**",
    "reads": "**Buffered or O_DIRECT page reads**",
}


def render_comparison(name: str, df, tag: str) -> str:
    """beyond_ram.py stream rows of two checkouts run alternately, tagged with ``tag`` (the
    version) and ``interleaved_run``."""
    import pandas as pd

    table = pd.DataFrame({
        tag: df[tag], "run": df.interleaved_run, "processes": df.procs,
        "loader": df.loader, "img/s": df.img_per_s,
        "× fits-in-memory": df.x_target.map(times),
        "read / beton": df.read_x_beton.map(times),
        "loader memory MiB": df.loader_mem_mb, "stated bound MiB": df.bound_mb,
        "load 1m": df.load_1m_before})
    head = (f"{COMPARISONS[tag]} (`{name}`, `benchmarks/beyond_ram.py stream "
            f"--variants fits,page_warm,page --rounds 2`, the two checkouts run alternately, "
            f"twice): the same beton and cap as above, window "
            f"{int(_first(df, 'window_pages', 0))} pages; each row against the fits-in-memory "
            f"row of its own run. Measured on {machine_line(df)}.")
    return head + "\n\n" + markdown_table(table)


def render_scale(name: str, df) -> str:
    """benchmarks/beyond_ram.py scale: ImageNet's sample count with tiny samples."""
    import pandas as pd

    table = pd.DataFrame({
        "split": df.split, "samples": df.samples.map(lambda v: f"{int(v):,}"),
        "check s": df.check_s, "ffcv open s": df.open_s, "page layout s": df.layout_s,
        "random order s (1 / 8 ranks)": [f"{a:.3f} / {b:.3f}" if a == a else "" for a, b in
                                         zip(df.order_random_w1_s, df.order_random_w8_s)],
        "page-aware order s (1 / 8 ranks)": [f"{a:.3f} / {b:.3f}" if a == a else "" for a, b in
                                             zip(df.order_page_w1_s, df.order_page_w8_s)],
        "order MiB (random / page-aware, 1 rank)": [
            f"{a:.1f} / {b:.1f}" if a == a else "" for a, b in
            zip(df.order_random_w1_mb, df.order_page_w1_mb)],
        "start-up to 1st batch s (random / page-aware)": [
            f"{a:.2f} / {b:.2f}" if a == a else "" for a, b in
            zip(df.startup_random_s, df.startup_page_s)],
    })
    train = df[df.split == "train"]
    ratios = pd.DataFrame({
        "samples": train.samples.map(lambda v: f"{int(v):,}"),
        "check": train.check_s_x_per_doubling, "ffcv open": train.open_s_x_per_doubling,
        "page layout": train.layout_s_x_per_doubling,
        "random order, 1 rank": train.order_random_w1_s_x_per_doubling,
        "random order, 8 ranks": train.order_random_w8_s_x_per_doubling,
        "page-aware order, 1 rank": train.order_page_w1_s_x_per_doubling,
        "page-aware order, 8 ranks": train.order_page_w8_s_x_per_doubling,
        "order MiB, page-aware": train.order_page_w1_mb_x_per_doubling,
        "start-up, random": train.startup_random_s_x_per_doubling,
        "start-up, page-aware": train.startup_page_s_x_per_doubling,
    }).iloc[1:]
    loads = df[["load_1m_before", "load_1m_after"]].to_numpy().ravel()
    head = (f"**At ImageNet's sample count** (`{name}`, `benchmarks/beyond_ram.py scale`): "
            f"betons of tiny raw samples (8x8 px, 1,000 classes) at fractions of 1,281,167, and "
            f"a 50,000-sample val; best of {int(_first(df, 'repeat', 1))} in one process. The "
            f"orders are rank 0's share of one epoch (batch {int(_first(df, 'batch_size', 0))}); "
            f"the page-aware one on an ImageNet-like layout of 32 samples per 8 MiB page (what a "
            f"340 GB beton has; the tiny betons themselves fill few pages), its MiB counting the "
            f"layout's per-sample page array. Start-up: a fresh process's `train_loader` "
            f"(check, layout, order, ffcv's Loader) to its first batch, imports excluded. "
            f"Measured on {machine_line(df)}; 1-minute load average "
            f"{loads.min():.1f}-{loads.max():.1f}.")
    return (head + "\n\n" + markdown_table(table) + "\n\nEach figure over the one at half the "
            "samples (2.00 is linear):\n\n" + markdown_table(ratios))


def render_sizes(name: str, df) -> str:
    """benchmarks/beyond_ram.py sizes: bytes per image of each write mode, ImageNet in RAM."""
    import pandas as pd

    table = pd.DataFrame({
        "write mode": df.write_mode, "max resolution": df.max_resolution,
        "KB/img": df.data_bytes_per_img / 1e3,
        "stored as JPEG": df.stored_jpeg_share.map(lambda v: f"{v:.0%}"),
        "resized": df.resized_share.map(lambda v: f"{v:.0%}"),
        "full ImageNet GB": df.imagenet_gb,
        **{f"fits {g} GB RAM": df[f"fits_{g}gb"] for g in (64, 128, 256)},
    })
    head = (f"**Bytes per image by write mode** (`{name}`, `benchmarks/beyond_ram.py sizes`): "
            f"{int(_first(df, 'images', 0))} ImageNet-like photos "
            f"({float(_first(df, 'source_bytes_per_img', 0)) / 1e3:.0f} KB JPEGs of about "
            f"500x375), the toolkit's writer (JPEG passthrough) with jpeg_quality "
            f"{int(_first(df, 'jpeg_quality', 0))} and compress_probability "
            f"{float(_first(df, 'compress_probability', 0))}; KB/img is the data region "
            f"(ffcv's allocation table), `full ImageNet GB` that times 1,281,167, `fits` "
            f"whether that is at most {float(_first(df, 'fit_fraction', 0.8)):.0%} of the RAM "
            f"(the toolkit's memory check). These photos are cut from two smooth sample "
            f"pictures: ImageNet's own train JPEGs average about 110 KB (a 138 GB archive) and "
            f"many exceed 500 px, so the JPEG sizes here are well below ImageNet's (all-JPEG "
            f"at 500 px is of the order of 100 GB there) and raw and proportion are lower "
            f"bounds. Measured on {machine_line(df)}.")
    return head + "\n\n" + markdown_table(table)


def anchored(path: Path, block: str) -> str:
    """``block`` behind an HTML anchor named after its file, the target of links from the docs."""
    return f'<a id="{path.stem.lower()}"></a>\n\n{block}'


def render(results: Path) -> str:
    import pandas as pd

    blocks = ["## Tables", "Generated by `benchmarks/render.py` from "
              "`benchmarks/results/*.csv`; rerun the scripts in `benchmarks/` to refresh. "
              "Ratios compare loaders measured in the same run on the same machine."]
    csvs = sorted(results.glob("*.csv"))
    loader = [p for p in csvs if "loader" in pd.read_csv(p, nrows=0).columns
              and not {"read_x_beton", "checkout"} & set(pd.read_csv(p, nrows=0).columns)]
    train = [p for p in csvs if "arch" in pd.read_csv(p, nrows=0).columns]
    for p in loader:
        blocks.append(anchored(p, render_loader(p.name, pd.read_csv(p))))
    for p in train:
        blocks.append(anchored(p, render_train(p.name, pd.read_csv(p))))
    for p in csvs:
        if "step" in pd.read_csv(p, nrows=0).columns:
            blocks.append(anchored(p, render_profile(p.name, pd.read_csv(p))))
    for p in csvs:
        cols = pd.read_csv(p, nrows=0).columns
        if "first_batch_s" in cols:
            blocks.append(anchored(p, render_startup(p.name, pd.read_csv(p))))
        if "top_1" in cols and "decoder" in cols:
            blocks.append(anchored(p, render_accuracy(p.name, pd.read_csv(p))))
        if "top_1" in cols and "order" in cols:
            blocks.append(anchored(p, render_order_accuracy(p.name, pd.read_csv(p))))
        if "checkout" in cols:
            blocks.append(anchored(p, render_checkouts(p.name, pd.read_csv(p))))
        if "stored_as_source_share" in cols:
            blocks.append(anchored(p, render_write(p.name, pd.read_csv(p))))
        if "read_x_beton" in cols:
            tags = [t for t in COMPARISONS if t in cols]
            blocks.append(anchored(p, render_comparison(p.name, pd.read_csv(p), tags[0]) if tags
                                   else render_beyond_ram(p.name, pd.read_csv(p))))
        if "order_page_w1_s" in cols:
            blocks.append(anchored(p, render_scale(p.name, pd.read_csv(p))))
        if "imagenet_gb" in cols:
            blocks.append(anchored(p, render_sizes(p.name, pd.read_csv(p))))
    notes = results / "NOTES.md"
    if notes.exists():
        blocks.append(anchored(notes, notes.read_text().strip()))
    if len(blocks) == 2:
        blocks.append("_No results yet._")
    return "\n\n".join(blocks)


def replace_block(text: str, body: str) -> str:
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise SystemExit(f"the page lacks the {START} ... {END} markers")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{body}\n{END}{after}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--doc", default=str(REPO / "docs" / "performance.md"),
                        help="the Markdown page whose perf block is replaced")
    parser.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = parser.parse_args(argv)
    body = render(Path(args.results))
    if args.stdout:
        print(body)
        return
    doc = Path(args.doc)
    doc.write_text(replace_block(doc.read_text(), body))
    print(f"rendered {args.results} into {doc}")


if __name__ == "__main__":
    main()
