"""Use a trained run's model on ordinary image files: load it from the run folder alone
(weights + params.json + classes.json), preprocess like validation, predict top-5 in batches."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..train import checkpoint as ckpt
from ..base.cli import ArgParser, UserError
from ..load.loaders import DEFAULT_CROP_RATIO, normalize
from ..train.models import create_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class RunModel:
    model: torch.nn.Module
    classes: list[str]
    resolution: int
    crop_ratio: float
    arch: str
    flip_tta: bool = False  # validation.lr_tta: average the logits of the image and its mirror
    val_dataset: str = ""  # the run's validation beton: real images for export checks


def load_run_model(weights: str | Path, device: torch.device | str = "cpu") -> RunModel:
    """The model of ``weights`` with its class list and validation resolution from the run folder."""
    weights = Path(weights)
    if not weights.is_file():
        raise UserError(f"--weights: no such file {weights}")
    run_dir = weights.parent
    for name in ("params.json", "classes.json"):
        if not (run_dir / name).is_file():
            raise UserError(f"--weights: {run_dir} has no {name} (weights must sit in the "
                            "run folder the trainer wrote)")
    params = json.loads((run_dir / "params.json").read_text())
    classes = json.loads((run_dir / "classes.json").read_text())
    num_classes = params.get("derived.num_classes") or len(classes)
    if len(classes) != num_classes:
        raise UserError(f"{run_dir / 'classes.json'}: {len(classes)} class names for a model "
                        f"with {num_classes} outputs")
    model = create_model(params["model.arch"], num_classes, pretrained=False,
                         use_blurpool=bool(params.get("training.use_blurpool", 0)),
                         resolutions={int(params["validation.resolution"])})
    ckpt.load_weights(model, weights, f"--weights ({params['model.arch']})")
    model.eval().to(device)
    return RunModel(model, classes, int(params["validation.resolution"]),
                    DEFAULT_CROP_RATIO,  # the val loader's: no config key changes it
                    params["model.arch"], bool(params.get("validation.lr_tta", 0)),
                    str(params.get("data.val_dataset") or ""))


def preprocess(path: str | Path, res: int, crop_ratio: float = DEFAULT_CROP_RATIO) -> np.ndarray:
    """Validation view as the ffcv val loader makes it: centre square of ``crop_ratio`` of the short
    side, resized to ``res``. Returns uint8 HWC RGB."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        side = max(1, round(min(w, h) * crop_ratio))
        left, top = (w - side) // 2, (h - side) // 2
        crop = np.asarray(im.crop((left, top, left + side, top + side)), dtype=np.uint8)
    import cv2  # the resize ffcv's decoder uses, so predictions match the trainer's validation
    return np.ascontiguousarray(cv2.resize(crop, (res, res), interpolation=cv2.INTER_AREA))


def to_input(batch: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, the model's input (the validation's ``normalize``)."""
    return normalize(torch.from_numpy(batch).permute(0, 3, 1, 2))


def collect(paths) -> tuple[list[Path], list[str] | None]:
    """Image files from files and folders; the label per file when one folder is ImageFolder-shaped."""
    files, labels = [], None
    for p in map(Path, paths):
        if p.is_dir():
            subdirs = sorted(d for d in p.iterdir() if d.is_dir())
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{p}: no images in this folder")
            if subdirs and len(paths) == 1:
                labels = [f.relative_to(p).parts[0] if len(f.relative_to(p).parts) > 1 else None
                          for f in found]
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return files, labels


@torch.no_grad()
def logits(rm: RunModel, x: torch.Tensor) -> torch.Tensor:
    """The model's logits as the trainer's validation computes them (with flip TTA if it used it)."""
    out = rm.model(x).float()
    if rm.flip_tta:
        out = (out + rm.model(torch.flip(x, dims=[3])).float()) / 2
    return out


@torch.no_grad()
def predict(rm: RunModel, files, batch_size: int = 64, device="cpu", k: int = 5):
    """``(results, unreadable)``: results are (path, [(class, prob)...top-k]) in input order."""
    k = min(k, len(rm.classes))
    results, unreadable, batch, names = [], [], [], []

    def flush():
        if not batch:
            return
        probs = logits(rm, to_input(np.stack(batch)).to(device)).softmax(1).cpu()
        p, i = probs.topk(k, dim=1)
        for name, pr, ix in zip(names, p.tolist(), i.tolist()):
            results.append((name, [(rm.classes[j], q) for j, q in zip(ix, pr)]))
        batch.clear()
        names.clear()

    for f in files:
        try:
            batch.append(preprocess(f, rm.resolution, rm.crop_ratio))
            names.append(f)
        except Exception as e:
            unreadable.append((f, str(e).splitlines()[0] if str(e) else type(e).__name__))
        if len(batch) == batch_size:
            flush()
    flush()
    return results, unreadable


def accuracy(results, labels_by_file: dict) -> dict:
    """Top-1/top-5 over the files whose folder names a known class."""
    top1 = top5 = n = 0
    for f, top in results:
        label = labels_by_file.get(f)
        if label is None:
            continue
        names = [c for c, _ in top]
        n += 1
        top1 += names[0] == label
        top5 += label in names
    return {"images": n, "top_1": top1 / n if n else None, "top_5": top5 / n if n else None}


def main(argv=None) -> int:
    ap = ArgParser(prog="predict.py",
                   description="Top-5 predictions of a trained run on your own images.")
    ap.add_argument("--weights", required=True, help="RUN_DIR/final_weights.pt (or a checkpoint)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    a = ap.parse_args(argv)
    if a.batch_size < 1:
        raise UserError(f"--batch-size: must be at least 1, got {a.batch_size}")
    rm = load_run_model(a.weights, a.device)
    files, labels = collect(a.inputs)
    results, unreadable = predict(rm, files, a.batch_size, a.device)
    for f, top in results:
        print(f"{f}: " + ", ".join(f"{c} {p:.3f}" for c, p in top))
    for f, why in unreadable:
        print(f"skipped unreadable {f}: {why}", file=sys.stderr)
    if labels is not None:
        known = set(rm.classes)
        by_file = {f: lab for f, lab in zip(files, labels) if lab in known}
        acc = accuracy(results, by_file)
        if acc["images"]:
            print(f"accuracy on {acc['images']} labelled images: top-1 {acc['top_1']:.4f} "
                  f"top-5 {acc['top_5']:.4f}")
    if not results:
        raise UserError("no readable images among the inputs")
    return 0
