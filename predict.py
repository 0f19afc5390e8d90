"""Top-5 predictions of a trained run on your own images:

    python predict.py --weights RUN_DIR/final_weights.pt IMAGE_OR_FOLDER [...]

An ImageFolder-shaped folder (one subfolder per class) also gets top-1/top-5 accuracy. The work is
done by ffcv_utils.tools.predict."""
from ffcv_utils.base.cli import run_main
from ffcv_utils.tools.predict import main

if __name__ == "__main__":
    run_main(main, prog="predict.py")
