"""The real trainer with one extra op in its training loader, for failures a test must provoke:

    python tests/injected_trainer.py stall AT MARKER TRAINER_ARGS...
    python tests/injected_trainer.py fail AT TRAINER_ARGS...

The op sits in the label pipeline of the first training loader built (added through the loader's
public ``TRAIN_LABEL_HOOKS``) and acts at its AT-th batch, counted over the run. ``stall``: create the file MARKER, then wait until
``MARKER.release`` exists (at most 120 s), as a loader on a hung network disk. ``fail``: raise,
as a sample that cannot be decoded. The trainer itself runs unchanged (``train_imagenet.py`` as
``__main__``)."""
import os
import runpy
import sys
import time
from dataclasses import replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's ffcv_utils, as for ``python train_imagenet.py``

from ffcv.pipeline.operation import Operation  # noqa: E402

import ffcv_utils.load.loaders as data  # noqa: E402

mode, at = sys.argv[1], int(sys.argv[2])
marker = sys.argv[3] if mode == "stall" else None
trainer_args = sys.argv[4:] if mode == "stall" else sys.argv[3:]


def act():
    if mode == "fail":
        raise ValueError("injected: sample could not be decoded")
    open(marker, "w").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(marker + ".release") and time.monotonic() < deadline:
        time.sleep(0.05)


class ActAt(Operation):
    def generate_code(self):
        calls = [0]

        def op(inp, _dst):
            calls[0] += 1
            if calls[0] == at:
                act()
            return inp
        return op

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=False), None


built = []


def act_in_first_loader():
    """The op for the first training loader built only."""
    built.append(1)
    return ActAt() if len(built) == 1 else None


data.TRAIN_LABEL_HOOKS.append(act_in_first_loader)
sys.argv = ["train_imagenet.py", *trainer_args]
runpy.run_path(os.path.join(ROOT, "train_imagenet.py"), run_name="__main__")
