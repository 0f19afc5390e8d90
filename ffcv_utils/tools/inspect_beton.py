"""Look inside ``.beton`` files without decoding an image: sample count, label histogram with the
class names from the sidecar, stored image sizes, JPEG share, file size, and whether the files
agree with their sidecars and with each other, and whether they fit in memory (``memory_check``).

    python -m ffcv_utils.tools.inspect_beton data/train.beton data/val.beton [--all-classes]

Exit status 0 when everything is consistent, 1 when a problem was found (printed as
``problem: ...``), 2 for a missing or unreadable file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from ..beton import check as beton, sidecar as dataset_info
from ..base.cli import ArgParser, UserError, run_main
from ..load.memory_check import check_memory

_MODE_JPG = 0  # ffcv.fields.rgb_image.IMAGE_MODES['jpg']


def inspect_beton(path: str | Path) -> dict:
    """Facts about one beton, read from its header, metadata table and sidecar."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    beton.check(path)  # a truncated, empty or foreign file: one line, exit 2
    try:
        reader = Reader(str(path))
    except Exception as e:
        raise UserError(f"not a readable .beton file: {path} ({type(e).__name__}: {e})") from None
    names = list(reader.field_names)
    handlers = list(reader.handlers.values())

    def find(name, kind):
        if name in names and isinstance(handlers[names.index(name)], kind):
            return names.index(name)
        return next((i for i, h in enumerate(handlers) if isinstance(h, kind)), None)

    meta = reader.metadata
    n = int(reader.num_samples)
    out = {"path": str(path), "bytes": path.stat().st_size, "samples": n,
           "fields": {k: type(h).__name__ for k, h in zip(names, handlers)},
           "problems": []}
    img_i, lab_i = find("image", RGBImageField), find("label", IntField)
    if img_i is not None and n:
        img = meta[f"f{img_i}"]
        out.update(width_min=int(img["width"].min()), width_max=int(img["width"].max()),
                   height_min=int(img["height"].min()), height_max=int(img["height"].max()),
                   jpeg_share=float(np.mean(img["mode"] == _MODE_JPG)))
    labels = meta[f"f{lab_i}"].astype(np.int64) if lab_i is not None else np.zeros(0, np.int64)
    if lab_i is None:
        out["problems"].append(f"{path}: no integer label field")
    elif n and labels.min() < 0:
        out["problems"].append(f"{path}: negative labels")
    info = dataset_info.read_info(path)
    out["sidecar"] = info
    classes = list(info["classes"]) if info and "classes" in info else None
    out["classes"] = classes
    size = max(len(classes) if classes else 0, int(labels.max()) + 1 if labels.size else 0)
    out["label_counts"] = np.bincount(np.clip(labels, 0, None), minlength=size)
    if info is None:
        out["problems"].append(f"{path}: no sidecar {dataset_info.sidecar_path(path).name} "
                               "(no class names; write it with write_ffcv.py)")
    else:
        if info.get("num_samples") not in (None, n):
            out["problems"].append(f"{path}: sidecar says {info['num_samples']} samples, "
                                   f"file has {n}")
        if classes is not None and labels.size and labels.max() >= len(classes):
            out["problems"].append(f"{path}: label {labels.max()} but only {len(classes)} "
                                   "classes in the sidecar")
        counts = info.get("class_counts")
        if classes is not None and isinstance(counts, dict):
            ours = dict(zip(classes, out["label_counts"][:len(classes)].tolist()))
            if {k: int(v) for k, v in counts.items()} != ours:
                out["problems"].append(f"{path}: per-class counts differ from the sidecar's")
    return out


def overview(results: list[dict]):
    import pandas as pd

    rows = []
    for r in results:
        info = r["sidecar"] or {}
        rows.append({
            "file": Path(r["path"]).name,
            "samples": r["samples"],
            "classes": len(r["classes"]) if r["classes"] is not None else "?",
            "MB": round(r["bytes"] / 1e6, 1),
            "KB/img": round(r["bytes"] / 1e3 / max(1, r["samples"]), 1),
            "width": f"{r.get('width_min', '-')}-{r.get('width_max', '-')}",
            "height": f"{r.get('height_min', '-')}-{r.get('height_max', '-')}",
            "jpeg %": round(100 * r.get("jpeg_share", 0.0), 1),
            "skipped": info.get("num_skipped", "?"),
            "split": info.get("split", "?"),
        })
    return pd.DataFrame(rows).set_index("file")


def class_table(results: list[dict]):
    import pandas as pd

    names = next((r["classes"] for r in results if r["classes"] is not None), None)
    size = max(len(r["label_counts"]) for r in results)
    if names is not None:
        size = max(size, len(names))
    table = pd.DataFrame({Path(r["path"]).name: np.pad(r["label_counts"],
                                                       (0, size - len(r["label_counts"])))
                          for r in results})
    table.index.name = "label"
    table.insert(0, "class", [names[i] if names and i < len(names) else "?"
                              for i in range(size)])
    return table


def compare(results: list[dict]) -> list[str]:
    """Class lists of betons that share a sidecar must agree (labels mean the same thing)."""
    problems = []
    with_info = [r for r in results if r["classes"] is not None]
    for other in with_info[1:]:
        msg = dataset_info.class_list_mismatch({"classes": with_info[0]["classes"]},
                                               {"classes": other["classes"]})
        if msg:
            problems.append(f"class lists of {Path(with_info[0]['path']).name} and "
                            f"{Path(other['path']).name} differ: {msg}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = ArgParser(prog="python -m ffcv_utils.tools.inspect_beton",
                       description=__doc__.split("\n\n")[0])
    parser.add_argument("betons", nargs="+", help=".beton files")
    parser.add_argument("--all-classes", action="store_true",
                        help="list every class even when there are many")
    args = parser.parse_args(argv)
    results = [inspect_beton(p) for p in args.betons]
    try:
        return _report(results, args.all_classes)
    except BrokenPipeError:  # `... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _report(results: list[dict], all_classes: bool) -> int:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20,
                           "display.max_rows", 100000):
        print(overview(results).to_string())
        print()
        table = class_table(results)
        if len(table) <= 30 or all_classes:
            print(table.to_string())
        else:
            counts = table.drop(columns="class")
            print(f"{len(table)} classes; images per class (--all-classes lists them all):")
            print(counts.describe().loc[["min", "50%", "max", "mean"]].round(1).to_string())
            smallest = table.iloc[np.argsort(counts.iloc[:, 0].to_numpy(), kind="stable")[:5]]
            print("\nsmallest classes:")
            print(smallest.to_string())
    problems = [p for r in results for p in r["problems"]] + compare(results)
    if len(results) > 1 and not compare(results) and all(r["classes"] for r in results):
        print("\nclass lists agree across files")
    print(f"\nmemory: {check_memory(r['path'] for r in results).describe()}")
    for p in problems:
        print(f"problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    run_main(main, prog="python -m ffcv_utils.tools.inspect_beton")
