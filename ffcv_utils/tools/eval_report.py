"""What ffcv-eval shows: a table in the terminal (pandas), ``eval.json`` and a bar chart of
top-1 per set, ``eval.png`` (both written atomically)."""
from __future__ import annotations

import json
from pathlib import Path

from ..base.atomic import atomic_write_text

NAMES = {"val": "ImageNet val", "real": "ImageNet-ReaL", "v2": "ImageNetV2",
         "imagenet-r": "ImageNet-R", "imagenet-a": "ImageNet-A", "sketch": "ImageNet-Sketch"}


def table(results: dict[str, dict]):
    """suite, images, top-1 and top-5 (%) and the gap to val top-1 (points; blank without val)."""
    import pandas as pd

    val = results.get("val", {}).get("top1")
    rows = [{"suite": NAMES.get(name, name), "images": r["n"], "top-1": 100 * r["top1"],
             "top-5": 100 * r["top5"],
             "gap to val top-1": None if val is None else 100 * (r["top1"] - val)}
            for name, r in results.items()]
    return pd.DataFrame(rows, columns=["suite", "images", "top-1", "top-5", "gap to val top-1"])


def bar_chart(results: dict[str, dict]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [NAMES.get(n, n) for n in results]
    top1 = [100 * r["top1"] for r in results.values()]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 4), constrained_layout=True)
    bars = ax.bar(names, top1, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 105)
    ax.set_title("top-1 per evaluation set")
    ax.tick_params(axis="x", labelrotation=20)
    return fig


def report(results: dict[str, dict], out: Path) -> tuple[Path, Path]:
    """Print the table; write ``out/eval.json`` ({suite: {top1, top5, n}}) and ``out/eval.png``."""
    from ..base.atomic import save_figure

    out.mkdir(parents=True, exist_ok=True)
    print(table(results).to_string(index=False, float_format=lambda v: f"{v:.2f}",
                                   na_rep="-"), flush=True)
    atomic_write_text(out / "eval.json", json.dumps(results, indent=2) + "\n")
    png = save_figure(bar_chart(results), out / "eval.png")
    print(f"wrote {out / 'eval.json'} and {png}", flush=True)
    return out / "eval.json", png
