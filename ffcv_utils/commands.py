"""The console scripts pip installs (pyproject's [project.scripts]); each is the same command as
the top-level script of the checkout (``ffcv-train`` is ``train_imagenet.py``, and so on)."""
from __future__ import annotations

from .cli import run_main


def write() -> None:
    from .write_cli import main
    run_main(main, prog="ffcv-write")


def train() -> None:
    from .train.run import main
    run_main(main, prog="ffcv-train")


def find_lr() -> None:
    from .train.find_lr import main
    run_main(lambda: (main(), 0)[1], prog="ffcv-find-lr")


def predict() -> None:
    from .predict import main
    run_main(main, prog="ffcv-predict")


def export() -> None:
    from .export import main
    run_main(main, prog="ffcv-export")


def inspect() -> None:
    from .inspect import main
    run_main(main, prog="ffcv-inspect")


def convert_checkpoint() -> None:
    from .checkpoint import main
    run_main(main, prog="ffcv-convert-checkpoint")


def demo() -> None:
    from .demo import main
    run_main(main, prog="ffcv-demo")


def evaluate() -> None:
    from .evaluate import main
    run_main(main, prog="ffcv-eval")
