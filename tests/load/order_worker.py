"""One rank of tests/test_order.py: walks epoch 1 of ``train_loader`` and saves what it got.

Run as a plain process with RANK/WORLD_SIZE set, or under torchrun (then it joins a gloo
process group first, as the trainer does). For each order (in_memory 1: random, 0: page-aware)
it saves the labels (the sample ids) of the walk from ``start``, the loader's length and, with
``--part K``, the labels of a second walk stopped after K batches and the position there."""
import argparse
import json
import os

import numpy as np


def walk(data, epoch, start, steps=-1):
    data.set_epoch(epoch, start)
    length, labels, batches = len(data.loader), [], iter(data.loader)
    try:
        for k, (_, y) in enumerate(batches):
            if k == steps:
                break
            labels.append(y.numpy().copy())  # ffcv reuses its batch buffers
    finally:
        batches.close()  # a loader thread left running aborts the process at exit
    return np.array(labels).reshape(len(labels), -1), length, data.position(len(labels))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("beton")
    ap.add_argument("out")
    ap.add_argument("--in-memory", default="1", help="comma-separated 1 / 0")
    ap.add_argument("--start", default="{}", help="json {in_memory: int or legs}")
    ap.add_argument("--part", type=int, default=0, help="also walk this many batches")
    a = ap.parse_args()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        import torch.distributed as dist

        dist.init_process_group("gloo")
    from ffcv_utils.load.loaders import train_loader

    starts, saved = json.loads(a.start), {}
    for mode in a.in_memory.split(","):
        data = train_loader(a.beton, batch_size=16, num_workers=1, res=16, distributed=True,
                            in_memory=bool(int(mode)), seed=3, window_pages=2)
        saved[f"labels{mode}"], saved[f"length{mode}"], _ = walk(data, 1, starts.get(mode, 0))
        if a.part:
            saved[f"part{mode}"], _, position = walk(data, 1, 0, a.part)
            saved[f"position{mode}"] = json.dumps(position)
    np.savez(a.out, **saved)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
