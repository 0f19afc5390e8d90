"""Use a trained run's model on ordinary image files: load it from the run folder alone
(weights + params.json + classes.json) or from an exported ``.safetensors`` file and its
description, preprocess like validation, predict top-5 in batches."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..train import checkpoint as ckpt
from ..base.cli import ArgParser, UserError
from ..load.loaders import DEFAULT_CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD, normalize
from ..train.models import create_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_JSON_BYTES = 64 << 20  # a description or log.jsonl larger than this is not one
MAX_CLASSES = 1_000_000


@dataclass
class RunModel:
    model: torch.nn.Module
    classes: list[str]
    resolution: int
    crop_ratio: float
    arch: str
    flip_tta: bool = False  # validation.lr_tta: average the logits of the image and its mirror
    val_dataset: str = ""  # the run's validation beton: real images for export checks
    blurpool: bool = False
    weights: str = ""  # which weights were loaded, in words
    # what a page shows about the model: name (the run's), arch, train_resolution (the final
    # training resolution), resolution (validation), val_top1 (None where unknown)
    card: dict = field(default_factory=dict)


def load_run_model(weights: str | Path, device: torch.device | str = "cpu") -> RunModel:
    """The model of ``weights`` with its classes and preprocessing: a checkpoint or state_dict
    in the run folder the trainer wrote (params.json, classes.json beside it), or a
    ``.safetensors`` file with the description export.py writes beside it."""
    weights = Path(weights)
    if not weights.is_file():
        raise UserError(f"--weights: no such file {weights}")
    if weights.suffix == ".safetensors":
        source = description_path(weights)
        info = check_description(read_json(source, "--weights"), source)
    else:
        info = check_description(run_folder_description(weights), weights.parent / "params.json")
    pre, run = info["preprocessing"], info["run"]
    model = _build(info, source=weights)
    checkpoint, which = ckpt.load_weights(model, weights, f"--weights ({info['arch']})")
    model.eval().to(device)
    if weights.suffix != ".safetensors":  # known only once the checkpoint is read
        run.update(val_top1=val_top1(weights, checkpoint), weights=f"{weights.name}: {which}")
    card = {"name": run["name"], "arch": info["arch"], "train_resolution": run["train_resolution"],
            "resolution": pre["resolution"], "val_top1": run["val_top1"]}
    return RunModel(model, info["classes"], pre["resolution"], pre["crop_ratio"], info["arch"],
                    pre["flip_tta"], info.get("val_dataset", ""), info["blurpool"],
                    run.get("weights") or "", card)


def _build(info: dict, source: Path) -> torch.nn.Module:
    try:
        return create_model(info["arch"], info["num_classes"], pretrained=False,
                            use_blurpool=info["blurpool"],
                            resolutions={info["preprocessing"]["resolution"]})
    except UserError:
        raise
    except Exception as e:  # an unknown architecture name
        raise UserError(f"--weights: cannot build {info['arch']!r} for {source}: "
                        f"{ckpt._first_line(e)}") from None


def description_path(weights: Path) -> Path:
    """Where export.py writes the description of an exported model: ``NAME.json`` beside it."""
    return weights.with_name(weights.name + ".json")


def read_json(path: Path, what: str):
    """``path``'s JSON; a missing, huge or malformed file is one UserError."""
    if not path.is_file():
        raise UserError(f"{what}: no {path} (the weights' description, written beside them)")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise UserError(f"{path}: over {MAX_JSON_BYTES >> 20} MiB: not a description")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as e:
        raise UserError(f"{path}: not valid JSON ({ckpt._first_line(e)})") from None


def run_folder_description(weights: Path) -> dict:
    """The description (see :func:`describe`) of weights in a run folder, from its params.json
    and classes.json; val_top1 and which weights are added once the weights are read."""
    run_dir = weights.parent
    for name in ("params.json", "classes.json"):
        if not (run_dir / name).is_file():
            raise UserError(f"--weights: {run_dir} has no {name} (weights must sit in the "
                            "run folder the trainer wrote)")
    params = read_json(run_dir / "params.json", "--weights")
    classes = read_json(run_dir / "classes.json", "--weights")
    if not isinstance(params, dict) or not isinstance(classes, list):
        raise UserError(f"{run_dir}: params.json is not a JSON object or classes.json no list")
    num_classes = params.get("derived.num_classes") or len(classes)
    if len(classes) != num_classes:
        raise UserError(f"{run_dir / 'classes.json'}: not {num_classes} class names for a model "
                        f"with {num_classes} outputs")
    return {"arch": params.get("model.arch"), "num_classes": num_classes, "classes": classes,
            "blurpool": bool(params.get("training.use_blurpool", 0)),
            # the trainer validates with the val loader's default crop (no key sets another)
            "preprocessing": preprocessing(params.get("validation.resolution"),
                                           DEFAULT_CROP_RATIO,
                                           bool(params.get("validation.lr_tta", 0))),
            "run": {"name": run_dir.name, "train_resolution": final_train_resolution(params),
                    "val_top1": None},
            "val_dataset": str(params.get("data.val_dataset") or "")}


def preprocessing(resolution, crop_ratio: float, flip_tta: bool) -> dict:
    return {"resolution": resolution, "crop_ratio": crop_ratio,
            "crop": "centre square of crop_ratio x short side, resized to resolution",
            "mean_0_255": list(IMAGENET_MEAN), "std_0_255": list(IMAGENET_STD),
            "flip_tta": flip_tta}


def describe(rm: RunModel, fmt: str) -> dict:
    """The description export.py writes beside an exported model (``load_run_model`` reads it
    back for .safetensors): classes, preprocessing, architecture and the run's card."""
    return {"format": fmt, "arch": rm.arch, "num_classes": len(rm.classes), "classes": rm.classes,
            "blurpool": rm.blurpool, "input": "image, float32 NCHW RGB",
            "preprocessing": preprocessing(rm.resolution, rm.crop_ratio, rm.flip_tta),
            "run": {"name": rm.card.get("name", ""), "weights": rm.weights,
                    "train_resolution": rm.card.get("train_resolution"),
                    "val_top1": rm.card.get("val_top1")}}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_description(d, source: Path) -> dict:
    """``d`` when every field a model is built and fed from has its type, length and range;
    else one UserError naming ``source`` and the field."""
    def need(ok, what):
        if not ok:
            raise UserError(f"{source}: {what}")
    need(isinstance(d, dict), "not a JSON object")
    need(isinstance(d.get("arch"), str) and 0 < len(d["arch"]) <= 200, "arch: not a model name")
    classes, pre, run = d.get("classes"), d.get("preprocessing"), d.get("run")
    need(isinstance(classes, list) and 0 < len(classes) <= MAX_CLASSES and all(
        isinstance(c, str) and len(c) <= 1000 for c in classes), "classes: not a list of names")
    need(d.get("num_classes") == len(classes) and _is_int(d.get("num_classes")),
         f"num_classes: not the number of class names ({len(classes)})")
    need(isinstance(d.get("blurpool"), bool), "blurpool: not true or false")
    need(isinstance(pre, dict), "preprocessing: not a JSON object")
    need(_is_int(pre.get("resolution")) and 8 <= pre["resolution"] <= 4096,
         "preprocessing.resolution: not an integer from 8 to 4096")
    need(_is_number(pre.get("crop_ratio")) and 0 < pre["crop_ratio"] <= 1,
         "preprocessing.crop_ratio: not a number in (0, 1]")
    need(pre.get("mean_0_255") == list(IMAGENET_MEAN) and
         pre.get("std_0_255") == list(IMAGENET_STD),
         "preprocessing: mean_0_255/std_0_255 are not this toolkit's normalisation")
    need(isinstance(pre.get("flip_tta"), bool), "preprocessing.flip_tta: not true or false")
    need(isinstance(run, dict) and isinstance(run.get("name"), str) and len(run["name"]) <= 1000,
         "run.name: not a name")
    need(run.get("train_resolution") is None or _is_int(run["train_resolution"]),
         "run.train_resolution: not an integer or null")
    need(run.get("val_top1") is None or (_is_number(run["val_top1"]) and
                                         0 <= run["val_top1"] <= 1),
         "run.val_top1: not a number in [0, 1] or null")
    need(isinstance(run.get("weights", ""), str), "run.weights: not text")
    return d


def final_train_resolution(params: dict) -> int | None:
    """The resolution of the run's last training epoch (None when params.json cannot say)."""
    from ..train.plan import resolution_for
    tree: dict = {}
    for key, value in params.items():
        section, _, name = key.partition(".")
        tree.setdefault(section, {})[name] = value
    try:
        p = SimpleNamespace(**{k: SimpleNamespace(**v) for k, v in tree.items()})
        return int(resolution_for(p, int(params["training.epochs"]) - 1))
    except (AttributeError, KeyError, TypeError, ValueError, UserError):
        return None


def val_top1(weights: Path, checkpoint: dict) -> float | None:
    """Top-1 of the loaded weights' epoch: the last validated one in the checkpoint's history,
    or, for final weights, in the run's log.jsonl (the EMA's for the final EMA weights)."""
    rows = checkpoint.get("history") if checkpoint else log_rows(weights.parent / "log.jsonl")
    key = "ema_top_1" if weights.name == ckpt.FINAL_EMA and not checkpoint else "top_1"
    for row in reversed(rows if isinstance(rows, list) else []):
        value = row.get(key) if isinstance(row, dict) else None
        if _is_number(value) and 0 <= value <= 1:
            return float(value)
    return None


def log_rows(path: Path) -> list:
    """The epoch records of a run's log.jsonl (none when it is absent, huge or unreadable)."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
    return rows


def preprocess(path: str | Path, res: int, crop_ratio: float = DEFAULT_CROP_RATIO) -> np.ndarray:
    """Validation view as the ffcv val loader makes it: centre square of ``crop_ratio`` of the short
    side, resized to ``res``. Returns uint8 HWC RGB."""
    from PIL import Image

    from ..write.images import open_rgb

    im = Image.fromarray(open_rgb(path))  # untrusted: over the pixel budget -> ImageRefused
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
    """Image files from files and folders; the label per file when one folder is
    ImageFolder-shaped. Folders are walked as the writer walks them (regular files only, links
    kept inside the folder and out of loops, hidden entries pruned); skips are said on stderr."""
    from ..write.sources.untrusted import visible, walk_files

    files, labels = [], None
    for p in map(Path, paths):
        if p.is_dir():
            subdirs = [d for d in p.iterdir() if visible(d.name) and d.is_dir()]
            walked, skipped = walk_files(p)
            for name, why in skipped:
                print(f"skipped {name}: {why}", file=sys.stderr)
            found = sorted(Path(f) for f in walked if Path(f).suffix.lower() in IMAGE_SUFFIXES)
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
    ap.add_argument("--weights", required=True,
                    help="RUN_DIR/final_weights.pt (or a checkpoint), or an exported "
                         "MODEL.safetensors (with its MODEL.safetensors.json)")
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
