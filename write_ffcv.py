#!/usr/bin/env python
"""Write an ImageFolder split to an ffcv .beton (and its class list to <beton>.json).

    python write_ffcv.py --split train --cfg.data_dir ./imagenet --cfg.write_path ./data/train.beton
    python write_ffcv.py --split val   --cfg.data_dir ./imagenet --cfg.write_path ./data/val.beton

The work is done by ffcv_utils.write.writer (see its docstring); the command line is
ffcv_utils.write.cli; --help lists every option.
"""
from ffcv_utils.base.cli import run_main
from ffcv_utils.write.cli import main

if __name__ == "__main__":
    run_main(main, prog="write_ffcv.py")
