"""Find a learning rate before a long run (LR range test on the real recipe):

    python find_lr.py --config-file CONFIG [--section.key VALUE ...] [--runs 3] [--steps 100]
        [--start-lr 1e-5] [--end-lr 10] [--out lr_finder.png]

The work is done by ffcv_utils.train.find_lr (see its docstring)."""
from ffcv_utils.base.cli import run_main
from ffcv_utils.train.find_lr import main

if __name__ == "__main__":
    run_main(main, prog="find_lr.py")
