"""The console scripts pip installs (pyproject's [project.scripts]); each is the same command as
the top-level script of the checkout (``ffcv-train`` is ``train_imagenet.py``, and so on)."""
from __future__ import annotations

from .base.cli import run_main


def write() -> None:
    from .write.cli import main
    run_main(main, prog="ffcv-write")


def train() -> None:
    from .train.run import main
    run_main(main, prog="ffcv-train")


def find_lr() -> None:
    from .train.find_lr import main
    run_main(lambda: (main(), 0)[1], prog="ffcv-find-lr")


def predict() -> None:
    from .tools.predict import main
    run_main(main, prog="ffcv-predict")


def export() -> None:
    from .tools.export import main
    run_main(main, prog="ffcv-export")


def inspect() -> None:
    from .tools.inspect_beton import main
    run_main(main, prog="ffcv-inspect")


def convert_checkpoint() -> None:
    from .train.checkpoint import main
    run_main(main, prog="ffcv-convert-checkpoint")


def demo() -> None:
    from .tools.demo import main
    run_main(main, prog="ffcv-demo")


def evaluate() -> None:
    from .tools.evaluate import main
    run_main(main, prog="ffcv-eval")
