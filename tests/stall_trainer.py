"""The real trainer with a training loader that goes silent, as on a hung network disk:

    python tests/stall_trainer.py AT MARKER TRAINER_ARGS...

An op in the training loader's label pipeline (the first one built) blocks at its AT-th batch,
counted over the run: it creates the file MARKER, then waits until ``MARKER.release`` exists (at
most 120 s). The trainer itself runs unchanged (``train_imagenet.py`` as ``__main__``)."""
import os
import runpy
import sys
import time
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's ffcv_utils, as for ``python train_imagenet.py``

from ffcv.pipeline.operation import Operation  # noqa: E402

import ffcv_utils.data as data  # noqa: E402

stall_at, marker = int(sys.argv[1]), sys.argv[2]


class StallAt(Operation):
    def generate_code(self):
        calls = [0]

        def stall(inp, _dst):
            calls[0] += 1
            if calls[0] == stall_at:
                open(marker, "w").close()
                deadline = time.monotonic() + 120
                while not os.path.exists(marker + ".release") and time.monotonic() < deadline:
                    time.sleep(0.05)
            return inp
        return stall

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=False), None


original, built = data._label_pipeline, []


def label_pipeline(device):
    ops = original(device)
    if not built:
        ops.insert(2, StallAt())  # after ToTensor: non-jitted, as the ops that follow it
    built.append(1)
    return ops


data._label_pipeline = label_pipeline
sys.argv = ["train_imagenet.py", *sys.argv[3:]]
runpy.run_path(os.path.join(ROOT, "train_imagenet.py"), run_name="__main__")
