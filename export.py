"""Export a trained run's model for an app, and check it against PyTorch on real images:

    python export.py --weights RUN_DIR/final_weights.pt --format onnx|torchscript \
        [--check-images IMAGE_OR_FOLDER ...] [--out FILE]

The check runs on the given images, or by default on the first images of the run's validation beton.

Writes FILE (default RUN_DIR/model.onnx or model.torchscript.pt) and FILE.json (classes, preprocessing)."""
from __future__ import annotations

from pathlib import Path

from ffcv_utils.cli import ArgParser, run_main
from ffcv_utils.export import FORMATS, SUFFIX, export
from ffcv_utils.predict import load_run_model


def main(argv=None) -> int:
    ap = ArgParser(prog="export.py", description=__doc__.split("\n")[0])
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


if __name__ == "__main__":
    run_main(main, prog="export.py")
