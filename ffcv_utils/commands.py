"""The console scripts pip installs (pyproject's [project.scripts]); each is the same command as
the top-level script of the checkout (``ffcv-train`` is ``train_imagenet.py``, and so on).
``COMMANDS`` is the one table: the program name and the module whose ``main`` it runs, imported
only when the command starts (``ffcv-inspect`` does not pay for torch)."""
from __future__ import annotations

import importlib

from .base.cli import run_main

COMMANDS = {  # function name in [project.scripts]: (program, module of its main)
    "write": ("ffcv-write", ".write.cli"),
    "train": ("ffcv-train", ".train.run"),
    "find_lr": ("ffcv-find-lr", ".train.find_lr"),
    "predict": ("ffcv-predict", ".tools.predict"),
    "export": ("ffcv-export", ".tools.export"),
    "inspect": ("ffcv-inspect", ".tools.inspect_beton"),
    "convert_checkpoint": ("ffcv-convert-checkpoint", ".train.checkpoint"),
    "demo": ("ffcv-demo", ".tools.demo"),
    "evaluate": ("ffcv-eval", ".tools.evaluate"),
}


def _command(prog: str, module: str):
    def command() -> None:
        run_main(importlib.import_module(module, __package__).main, prog=prog)
    command.__name__ = command.__qualname__ = prog
    return command


globals().update({name: _command(*entry) for name, entry in COMMANDS.items()})
