"""Shared fixtures: small real image folders, the betons written from them and one trainer run
(session-scoped, and built once for all pytest-xdist workers: the suite pays for each once)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm  # noqa: F401  (see below)
from filelock import FileLock

from ffcv_utils.tools.sample_data import make_digits_folder, make_photo_folder

# timm imports wandb, whose pydantic models parse source with ``ast`` on first import. CPython
# 3.11's AST constructor keeps its recursion count in shared state (python/cpython#106905), and a
# first import inside a test, while ffcv loader threads of earlier in-process tests run, once
# failed with "SystemError: AST constructor recursion depth mismatch" and left a half-imported
# wandb behind for every later test. Importing it here, before any loader thread, avoids that.


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: no error where it is missing
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: a worker per CPU this process may run on, at most 4. pytest-xdist's own rule
    counts psutil's physical cores, which sees the host's cores from a container limited to a
    few and one core where a VM has two hyperthreads."""
    return min(4, len(os.sched_getaffinity(0)))


def pytest_collection_modifyitems(config, items):
    """Files that hold slow tests first, each file's tests in their order: pytest-xdist hands
    out whole files in this order, so the long trainer and torchrun files start at once and
    the short files fill the end, instead of one long file running alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable


def pytest_sessionfinish(session, exitstatus):
    """No child a test started may outlive the suite: multiprocessing joins its children at exit,
    so one stuck child would keep pytest (and CI) waiting forever after the summary."""
    import multiprocessing

    for child in multiprocessing.active_children():
        print(f"\nkilling leftover child process {child.pid} ({child.name})")
        child.kill()
        child.join(timeout=10)


@pytest.fixture
def tool(capsys, monkeypatch):
    """``tool(script, *args)``: a command-line tool (``predict.py``, ``export.py``, ``-m
    module``) run in this process (``helpers.run_script``), its result shaped like
    ``subprocess.run``'s: no interpreter start-up and imports for each call."""
    from helpers import run_script

    def call(script, *args):
        code, out, err = run_script(script, args, capsys, monkeypatch)
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)
    return call


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder ``name`` after ``build(folder)`` has filled it, once per test run. `make test`
    runs the suite in pytest-xdist worker processes, and each asks for the session fixtures it
    needs: the first to ask builds under a lock in the folder the workers share, the others
    wait and reuse the files. A failed build leaves nothing marked built, so the next asker
    tries again and fails with its own message."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # pytest-N/, above each worker's popen-gwK/
    folder = base / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn digits as ImageFolder: train/ (~1,440 images) and val/ (~360), 10 classes."""
    return built_once(tmp_path_factory, "digits",
                      lambda out: make_digits_folder(out / "digits", size=32)) / "digits"


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory):
    """ImageNet-like JPEGs cut from real photos: 60 train / 30 val images in 3 classes."""
    return built_once(tmp_path_factory, "photos", lambda out: make_photo_folder(
        out / "photos", images=60, classes=3, val_images=30)) / "photos"


def _write_digits(tmp_path_factory, name, digits_dir, subsets=(-1, -1)):
    """(train.beton, val.beton) of ``digits_dir``, each of its subset's size (-1: all)."""
    from ffcv_utils.write.writer import write_split

    def build(out):
        for split, subset in zip(("train", "val"), subsets):
            write_split(digits_dir, split, out / f"{split}.beton", max_resolution=32,
                        num_workers=2, progress=False, subset=subset)

    out = built_once(tmp_path_factory, name, build)
    return out / "train.beton", out / "val.beton"


@pytest.fixture(scope="session")
def digits_betons(tmp_path_factory, digits_dir):
    """(train.beton, val.beton) written from ``digits_dir`` by the toolkit's writer."""
    return _write_digits(tmp_path_factory, "digits_betons", digits_dir)


@pytest.fixture(scope="session")
def small_digits_betons(tmp_path_factory, digits_dir):
    """(train.beton, val.beton) of 320 / 100 digits (all classes): runs whose subject is not
    learning take seconds an epoch (5 training batches of 64)."""
    return _write_digits(tmp_path_factory, "small_digits_betons", digits_dir, subsets=(320, 100))


@pytest.fixture(scope="session")
def damaged_train_beton(digits_betons, tmp_path_factory):
    """The digits train beton with its first JPEG's header zeroed (decodes grey, counted)."""
    from helpers import damaged_copy

    out = built_once(tmp_path_factory, "damaged",
                     lambda out: damaged_copy(digits_betons[0], out / "train.beton"))
    return out / "train.beton"


@pytest.fixture(scope="session")
def digits_run(digits_betons, damaged_train_beton, tmp_path_factory):
    """One finished 3-epoch trainer run (a real process) that many tests read: its log,
    checkpoints, weights, plot, TensorBoard and offline W&B folders; eval-only, predict, export
    and resume start from it. It trains on ``damaged_train_beton``: one damaged JPEG must not stop
    a run. Returns ``(betons, folder, run_dir, result)``; other tests add runs to ``folder``
    under run ids of their own."""
    from helpers import args_for, run

    betons = (damaged_train_beton, digits_betons[1])

    def build(folder):
        env = dict(os.environ, WANDB_DIR=str(folder / "wandb_dir"), WANDB_SILENT="true",
                   WANDB_MODE="offline", WANDB_DISABLE_GIT="true")
        result = run(*args_for(betons, folder, "--logging.run_id", "full",
                               "--logging.tensorboard", "1", "--logging.step_interval", "5",
                               "--logging.wandb_project", "ffcv-test", "--logging.wandb_mode",
                               "offline", plot=True), env=env, timeout=500)
        assert result.returncode == 0, result.stderr[-3000:]
        (folder / "full.stdout").write_text(result.stdout)
        (folder / "full.stderr").write_text(result.stderr)

    folder = built_once(tmp_path_factory, "runs", build)
    result = subprocess.CompletedProcess("train_imagenet.py", 0,
                                         (folder / "full.stdout").read_text(),
                                         (folder / "full.stderr").read_text())
    return betons, folder, folder / "full", result


@pytest.fixture(scope="session")
def demo_run(digits_betons, tmp_path_factory):
    """The run ``make demo`` trains (rn18_configs/rn18_demo.yaml: five epochs, about 0.9 val
    top-1) on the digits betons: the browser demo's test shows a model as the demo would.
    Returns its final weights."""
    from helpers import ROOT, run

    def build(folder):
        result = run("--config-file", str(ROOT / "rn18_configs/rn18_demo.yaml"),
                     "--data.train_dataset", str(digits_betons[0]),
                     "--data.val_dataset", str(digits_betons[1]), "--logging.folder",
                     str(folder), "--logging.run_id", "demo", "--logging.plot", "0", timeout=500)
        assert result.returncode == 0, result.stderr[-3000:]

    return built_once(tmp_path_factory, "demo_run", build) / "demo" / "final_weights.pt"


@pytest.fixture(scope="session")
def eval_suites(tmp_path_factory):
    """The digits laid out as ImageNet's val (``ILSVRC2012_val_<n>`` names), ReaL's real.json,
    ImageNetV2, -R, -A and -Sketch ship, folders and archives (``sample_data.make_eval_suites``),
    classes named as ``digits_run``'s, so that run can be evaluated on them (``ffcv-eval``)."""
    from ffcv_utils.tools.sample_data import DIGIT_NAMES, make_eval_suites

    names = [f"{i}_{name}" for i, name in enumerate(DIGIT_NAMES)]
    return built_once(tmp_path_factory, "eval_suites",
                      lambda out: make_eval_suites(out / "suites", names)) / "suites"
