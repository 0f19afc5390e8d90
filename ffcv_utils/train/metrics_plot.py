"""The picture of how runs went (metrics.png): loss, accuracy, LR, images/s and resolution
against epochs, read from each run's log.jsonl; several runs are overlaid. The trainer draws
it at the end of a run; ``python -m ffcv_utils.tools.plot`` draws it on demand."""
from __future__ import annotations

from pathlib import Path

from ..base.atomic import save_figure
from ..base.cli import UserError
from .runlog import read_jsonl

# (panel title, [(log.jsonl key, line label)])
PANELS = [
    ("loss", [("train_loss", "train"), ("val_loss", "val")]),
    ("accuracy", [("top_1", "top-1"), ("top_5", "top-5"), ("ema_top_1", "EMA top-1")]),
    ("learning rate", [("lr", "epoch start"), ("lr_end", "epoch end")]),
    ("images/s (train)", [("train_images_per_s", "")]),
    ("resolution", [("train_res", "train")]),
    ("data wait (fraction of epoch)", [("data_wait_fraction", "")]),
]


def load_runs(run_dirs) -> list[tuple[str, list[dict]]]:
    runs = []
    for d in map(Path, run_dirs):
        log = d / "log.jsonl"
        if not log.is_file():
            raise UserError(f"{d}: no log.jsonl (not a run folder?)")
        rows = [r for r in read_jsonl(log) if not r.get("eval_only") and "epoch" in r]
        if not rows:
            raise UserError(f"{log}: no epoch records yet")
        runs.append((d.name, sorted(rows, key=lambda r: r["epoch"])))
    return runs


def make_figure(runs):
    """One panel per PANELS entry, one line per run and series present in the logs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True)
    for ax, (title, series) in zip(axes.flat, PANELS):
        for name, rows in runs:
            for key, label in series:
                pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
                if not pts:
                    continue
                x, y = zip(*pts)
                text = " ".join(t for t in ((name if len(runs) > 1 else ""), label) if t)
                ax.plot(x, y, marker="o", markersize=3, label=text or None)
        ax.set_title(title)
        if title == "loss":  # the first epochs' val loss can be orders of magnitude higher
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(", ".join(name for name, _ in runs))
    return fig


def write_plot(run_dirs, out: str | Path | None = None) -> Path:
    """Plot the runs' metrics into ``out`` (default: the first run's metrics.png)."""
    fig = make_figure(load_runs(run_dirs))
    return save_figure(fig, Path(out) if out else Path(run_dirs[0]) / "metrics.png")


def plot_run(run_dir) -> str:
    """For the trainer's last line: the plot's path, or why there is none (training is done
    either way, so a plotting problem must not turn a finished run into a failure)."""
    try:
        return str(write_plot([run_dir]))
    except Exception as e:  # matplotlib missing, disk full, ...
        return f"not written ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
