"""Top-5 predictions of a trained run on your own images:

    python predict.py --weights RUN_DIR/final_weights.pt IMAGE_OR_FOLDER [...]

An ImageFolder-shaped folder (one subfolder per class) also gets top-1/top-5 accuracy."""
from __future__ import annotations

import sys

import torch

from ffcv_utils.cli import ArgParser, UserError, run_main
from ffcv_utils.predict import accuracy, collect, load_run_model, predict


def main(argv=None) -> int:
    ap = ArgParser(prog="predict.py", description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    run_main(main, prog="predict.py")
