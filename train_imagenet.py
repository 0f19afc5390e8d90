"""Train (or evaluate) an ImageNet classifier on FFCV .beton files, ffcv-imagenet style.

    python train_imagenet.py --config-file rn18_configs/rn18_16_epochs.yaml \
        --data.train_dataset train.beton --data.val_dataset val.beton
    torchrun --nproc_per_node=8 train_imagenet.py --config-file rn50_configs/rn50_88_epochs.yaml ...

The trainer lives in ffcv_utils/train/ (run.py reads top to bottom: set up, restore, train
epochs, finish); the keys in ffcv_utils/config.py (``--help`` lists them).
"""
from ffcv_utils.base.cli import run_main
from ffcv_utils.train.run import main

if __name__ == "__main__":
    run_main(main, prog="train_imagenet.py")
