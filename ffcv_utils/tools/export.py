"""Export a run's model to ONNX, TorchScript or safetensors (the weights alone, loaded without
pickle by predict.py, --model.weights and the demo), with its description beside it (classes,
preprocessing, architecture, the run's card), and check the exported model against PyTorch on
real images (same top-1, logits within tolerance).

ONNX goes through ``torch.onnx.export(..., dynamo=True)``: the exporter torch maintains (the older
TorchScript-based one is deprecated); it needs onnxscript. onnxruntime runs the check."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from ..base.atomic import atomic_path, atomic_write_text
from ..base.cli import ArgParser, UserError
from .predict import RunModel, collect, describe, load_run_model, preprocess, to_input

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}


def export(rm: RunModel, fmt: str, out: Path, images=None) -> tuple[Path, dict]:
    """Write the model to ``out`` and its description to ``out``'s sidecar ``.json`` (classes,
    preprocessing, the run's card: see predict.describe) once the exported file agrees with
    PyTorch on real images (``check``); returns ``(sidecar, check's result)``. The model is
    written to a fresh temporary file in ``out``'s folder (never a name an attacker could plant
    a link at) and renamed into place: a model that disagrees leaves no file behind."""
    if fmt not in FORMATS:
        raise UserError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    # the suffix kept: checkpoint.load reads a .safetensors file by its name, never by pickle
    with atomic_path(out, suffix=out.suffix or ".tmp") as tmp:
        _write_model(rm, fmt, tmp)
        result = check(rm, fmt, tmp, images, name=out)
    side = out.with_name(out.name + ".json")
    atomic_write_text(side, json.dumps(describe(rm, fmt), indent=2) + "\n")
    return side, result


def _write_model(rm: RunModel, fmt: str, path: Path) -> None:
    model = rm.model.float().cpu().eval()
    example = torch.zeros(2, 3, rm.resolution, rm.resolution)
    if fmt == "safetensors":  # the weights predict loaded; tied tensors saved as copies
        from safetensors.torch import save
        path.write_bytes(save({k: v.detach().contiguous().clone()
                               for k, v in model.state_dict().items()}))
    elif fmt == "onnx":
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                    output_names=["logits"],
                                    dynamic_shapes={"x": {0: batch}}, verbose=False)
        program.save(str(path))
    else:
        with torch.no_grad():
            with warnings.catch_warnings():  # asked for by name: no deprecation notice each time
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.trace(model, example).save(str(path))


def run_exported(fmt: str, path: Path, x: torch.Tensor,
                 rm: RunModel | None = None) -> np.ndarray:
    """The exported model's logits for ``x`` (a .safetensors file runs in a fresh model built
    as ``rm``'s, loaded without pickle)."""
    if fmt == "safetensors":
        from ..train.checkpoint import load_weights
        from ..train.models import create_model
        model = create_model(rm.arch, len(rm.classes), use_blurpool=rm.blurpool,
                             resolutions={rm.resolution})
        load_weights(model, path, "--format safetensors")
        with torch.no_grad():
            return model.eval()(x).numpy()
    if fmt == "onnx":
        import onnxruntime as ort
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path)).eval()(x).numpy()


def val_beton_batch(rm: RunModel, n: int = 32) -> torch.Tensor:
    """The first ``n`` images of the run's validation beton, through the trainer's own val loader."""
    from ..load.loaders import normalize, val_loader
    if not rm.val_dataset or not Path(rm.val_dataset).is_file():
        raise UserError(f"--check-images: give real images to check with (the run's validation "
                        f"beton {rm.val_dataset or '(none)'} is not there)")
    loader = val_loader(rm.val_dataset, batch_size=n, num_workers=1, res=rm.resolution,
                        crop_ratio=rm.crop_ratio, in_memory=False)
    images, _ = next(iter(loader))
    return normalize(images.cpu())


def check(rm: RunModel, fmt: str, path: Path, images=None, atol: float = 1e-3,
          name: Path | None = None) -> dict:
    """Compare exported vs PyTorch logits on real images (files or folders; by default the run's
    validation beton); raises UserError naming ``name`` (default ``path``) when they disagree."""
    if images is None:
        x = val_beton_batch(rm)
    else:
        files, _ = collect(images)
        arrays = []
        for f in files[:32]:
            try:
                arrays.append(preprocess(f, rm.resolution, rm.crop_ratio))
            except Exception:
                continue
        if not arrays:
            raise UserError("--check-images: no readable images")
        x = to_input(np.stack(arrays))
    with torch.no_grad():
        ref = rm.model.float().cpu()(x).numpy()
    got = run_exported(fmt, path, x, rm)
    diff = float(np.abs(ref - got).max())
    same_top1 = bool((ref.argmax(1) == got.argmax(1)).all())
    if not same_top1 or diff > atol:
        raise UserError(f"{name or path}: exported model disagrees with PyTorch (max |logit diff| "
                        f"{diff:.2e}, same top-1: {same_top1}); nothing written")
    return {"images": len(x), "max_abs_diff": diff, "same_top1": same_top1}


def main(argv=None) -> int:
    ap = ArgParser(prog="export.py", description="Export a trained run's model (ONNX, "
                   "TorchScript or safetensors weights) and check it against PyTorch on real "
                   "images.")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--format", required=True, choices=FORMATS)
    ap.add_argument("--check-images", nargs="+", metavar="IMAGE_OR_FOLDER",
                    help="real images to compare the exported model with PyTorch on "
                         "(default: the run's validation beton)")
    ap.add_argument("--out", help="output file (default: beside the weights)")
    a = ap.parse_args(argv)
    rm = load_run_model(a.weights, "cpu")
    out = Path(a.out) if a.out else Path(a.weights).parent / f"model{SUFFIX[a.format]}"
    side, res = export(rm, a.format, out, a.check_images)
    print(f"wrote {out} and {side}; matches PyTorch on {res['images']} images "
          f"(same top-1, max |logit diff| {res['max_abs_diff']:.1e})")
    return 0
