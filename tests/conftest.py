"""Shared fixtures: small real image folders and the betons written from them (session-scoped,
so the suite pays for each only once)."""
from __future__ import annotations

import pytest
import timm  # noqa: F401  (see below)

from ffcv_utils.sample_data import make_digits_folder, make_photo_folder

# timm imports wandb, whose pydantic models parse source with ``ast`` on first import. CPython
# 3.11's AST constructor keeps its recursion count in shared state (python/cpython#106905), and a
# first import inside a test, while ffcv loader threads of earlier in-process tests run, once
# failed with "SystemError: AST constructor recursion depth mismatch" and left a half-imported
# wandb behind for every later test. Importing it here, before any loader thread, avoids that.


def pytest_sessionfinish(session, exitstatus):
    """No child a test started may outlive the suite: multiprocessing joins its children at exit,
    so one stuck child would keep pytest (and CI) waiting forever after the summary."""
    import multiprocessing

    for child in multiprocessing.active_children():
        print(f"\nkilling leftover child process {child.pid} ({child.name})")
        child.kill()
        child.join(timeout=10)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn digits as ImageFolder: train/ (~1,440 images) and val/ (~360), 10 classes."""
    return make_digits_folder(tmp_path_factory.mktemp("digits") / "digits", size=32)


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory):
    """ImageNet-like JPEGs cut from real photos: 60 train / 30 val images in 3 classes."""
    return make_photo_folder(tmp_path_factory.mktemp("photos") / "photos", images=60,
                             classes=3, val_images=30)


@pytest.fixture(scope="session")
def digits_betons(tmp_path_factory, digits_dir):
    """(train.beton, val.beton) written from ``digits_dir`` by the toolkit's writer."""
    from ffcv_utils.writer import write_split

    out = tmp_path_factory.mktemp("digits_betons")
    train = out / "train.beton"
    val = out / "val.beton"
    write_split(digits_dir, "train", train, max_resolution=32, num_workers=2)
    write_split(digits_dir, "val", val, max_resolution=32, num_workers=2)
    return train, val


@pytest.fixture(scope="session")
def small_digits_betons(tmp_path_factory, digits_dir):
    """(train.beton, val.beton) of 320 / 100 digits (all classes): runs whose subject is not
    learning take seconds an epoch (5 training batches of 64)."""
    from ffcv_utils.writer import write_split

    out = tmp_path_factory.mktemp("small_digits_betons")
    train = out / "train.beton"
    val = out / "val.beton"
    write_split(digits_dir, "train", train, max_resolution=32, num_workers=2, subset=320,
                progress=False)
    write_split(digits_dir, "val", val, max_resolution=32, num_workers=2, subset=100,
                progress=False)
    return train, val


@pytest.fixture(scope="session")
def damaged_train_beton(digits_betons, tmp_path_factory):
    """The digits train beton with its first JPEG's header zeroed (decodes grey, counted)."""
    from helpers import damaged_copy

    return damaged_copy(digits_betons[0], tmp_path_factory.mktemp("damaged") / "train.beton")


@pytest.fixture(scope="session")
def digits_run(digits_betons, damaged_train_beton, tmp_path_factory):
    """One finished 3-epoch trainer run (a real process) that many tests read: its log,
    checkpoints, weights, plot, TensorBoard and offline W&B folders; eval-only, predict, export
    and resume start from it. It trains on ``damaged_train_beton``: one damaged JPEG must not stop
    a run. Returns ``(betons, folder, run_dir, result)``."""
    import os

    from helpers import args_for, run

    betons = (damaged_train_beton, digits_betons[1])
    folder = tmp_path_factory.mktemp("runs")
    env = dict(os.environ, WANDB_DIR=str(folder / "wandb_dir"), WANDB_SILENT="true",
               WANDB_MODE="offline", WANDB_DISABLE_GIT="true")
    result = run(*args_for(betons, folder, "--logging.run_id", "full",
                           "--logging.tensorboard", "1", "--logging.step_interval", "5",
                           "--logging.wandb_project", "ffcv-test", "--logging.wandb_mode",
                           "offline"), env=env, timeout=500)
    assert result.returncode == 0, result.stderr[-3000:]
    return betons, folder, folder / "full", result
