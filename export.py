"""Export a trained run's model for an app, and check it against PyTorch on real images:

    python export.py --weights RUN_DIR/final_weights.pt --format onnx|torchscript|safetensors \
        [--check-images IMAGE_OR_FOLDER ...] [--out FILE]

The check runs on the given images, or by default on the first images of the run's validation beton.

Writes FILE (default RUN_DIR/model.onnx, model.torchscript.pt or model.safetensors) and FILE.json
(classes, preprocessing, the run's card).
The work is done by ffcv_utils.tools.export."""
from ffcv_utils.base.cli import run_main
from ffcv_utils.tools.export import main

if __name__ == "__main__":
    run_main(main, prog="export.py")
