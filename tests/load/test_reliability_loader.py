"""Loaders never hang: batches of one keep 1-D labels, and a loader thread that raises or goes
silent ends iteration with one ``LoaderError`` line naming the file and the batch.

Real betons (the digits fixture), real ffcv Loaders and threads, in process; every test runs
under a pytest timeout so that a regression fails instead of stalling the suite."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
import torch

from ffcv_utils.beton.sidecar import read_info
from ffcv_utils.load.loaders import shard_indices, train_loader, val_loader
from ffcv_utils.load.watchdog import LoaderError, watch
from helpers import ROOT

# Loaders are collected after each test (numba's finalizer noise is filtered in pyproject.toml).
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def collect_loaders():
    yield
    gc.collect()


def _labels_only_loader(path, ops, batch_size=100):
    """The real label pipeline of a beton with extra ops after ToTensor (images skipped: the
    watchdog does not depend on them, and skipping them keeps the test fast)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToTensor

    return Loader(str(path), batch_size=batch_size, num_workers=1,
                  order=OrderOption.SEQUENTIAL, drop_last=False,
                  pipelines={"image": None,
                             "label": [IntDecoder(), ToTensor(), *ops, Squeeze(1)]})


def _op(action):
    """A non-jitted pipeline op that calls ``action(batch_number)`` on every batch."""
    from ffcv.pipeline.operation import Operation

    class Hook(Operation):
        def generate_code(self):
            calls = [0]

            def hook(inp, _dst):
                calls[0] += 1
                action(calls[0])
                return inp
            return hook

        def declare_state_and_memory(self, previous_state):
            return replace(previous_state, jit_mode=False), None

    return Hook()


def test_batches_of_one_keep_1d_labels(digits_betons):
    """Train (drop_last off) and val, 1 and 2 ranks: the last batch holds a single image."""
    train, val = digits_betons
    n_train, n_val = read_info(train)["num_samples"], read_info(val)["num_samples"]
    data = train_loader(str(train), batch_size=n_train - 1, num_workers=2, res=32,
                        drop_last=False)
    shapes = [(tuple(x.shape), tuple(y.shape)) for x, y in data.loader]
    assert shapes[-1] == ((1, 3, 32, 32), (1,)), shapes
    assert sum(s[1][0] for s in shapes) == n_train

    # rank 0 of 2 gets ceil(n/2) images: a batch size of one less leaves it a last batch of 1
    share = len(shard_indices(n_val, 0, 2))
    for rank, world, bs in ((0, 1, n_val - 1), (0, 2, share - 1)):
        got = [y for _, y in val_loader(str(val), batch_size=bs, num_workers=2, res=32,
                                        rank=rank, world_size=world)]
        assert [tuple(y.shape) for y in got][-1] == (1,)
        assert all(y.dim() == 1 for y in got)
        assert sum(len(y) for y in got) == len(shard_indices(n_val, rank, world))


def test_exception_in_loader_thread_ends_iteration_with_one_line(digits_betons):
    _, val = digits_betons

    def fail_at_third(batch):
        if batch == 3:
            raise RuntimeError("injected failure\nsecond line")

    loader = watch(_labels_only_loader(val, [_op(fail_at_third)]))
    seen = 0
    start = time.monotonic()
    with pytest.raises(LoaderError) as err:
        for _ in loader:
            seen += 1
    assert time.monotonic() - start < 60
    assert seen == 2  # the two good batches still arrive, then the failure, not a hang
    message = str(err.value)
    assert message == (f"loader for {val} (epoch 0, batch 2) failed: "
                       "RuntimeError: injected failure")


def test_silent_loader_is_reported_after_the_stall_timeout(digits_betons, monkeypatch):
    from ffcv_utils.load import watchdog

    _, val = digits_betons
    stuck = threading.Event()
    release = threading.Event()

    def maybe_block(batch):
        if stuck.is_set():
            release.wait(30)

    loader = watch(_labels_only_loader(val, [_op(maybe_block)]), "val.beton")
    assert sum(len(y) for (y,) in loader) == read_info(val)["num_samples"]  # compiles, runs
    stuck.set()
    watchdog.set_stall_timeout(1.5)
    try:
        start = time.monotonic()
        with pytest.raises(LoaderError, match=r"^loader for val.beton \(epoch 1, batch 0\) "
                                              r"produced nothing for \d+ s"):
            next(iter(loader))
        assert time.monotonic() - start < 10
    finally:
        release.set()
        watchdog.set_stall_timeout(watchdog.DEFAULT_STALL_SECONDS)


def test_watched_loader_passes_attributes_through(digits_betons):
    _, val = digits_betons
    loader = watch(_labels_only_loader(val, []))
    loader.next_epoch = 4
    assert loader._loader.next_epoch == 4 and len(loader) == len(loader._loader)
    assert isinstance(next(iter(loader))[0], torch.Tensor)


def _close_mid_epoch(loader, take: int, settle: float = 0.0):
    """Take ``take`` batches of an epoch, wait ``settle`` s (the thread runs ahead), close it:
    the loader thread, which ended by then, and the seconds the close took."""
    iterator = iter(loader)
    for _ in range(take):
        next(iterator)
    time.sleep(settle)
    thread, start = iterator.inner, time.monotonic()
    iterator.close()
    return thread, time.monotonic() - start


def test_closing_an_epoch_early_ends_its_thread(small_digits_betons):
    """A loop left early (a stop signal, a partial walk) must not leave ffcv's thread running:
    at exit Python kills it mid-pipeline, which aborts the process (exit -6). Mid-epoch, and
    at its end with the queue full, where ffcv's last ``put`` has no timeout."""
    train, _ = small_digits_betons
    data = train_loader(str(train), batch_size=16, num_workers=1, res=16)
    batches, ahead = len(data.loader), data.loader.batches_ahead
    assert batches > 2 + ahead  # the first close is mid-epoch
    # the second leaves the last ``ahead`` batches in the full queue: the end-of-epoch put waits
    for take, settle in ((2, 0.0), (batches - ahead, 3.0)):
        thread, seconds = _close_mid_epoch(data.loader, take, settle)
        assert not thread.is_alive() and thread.closed
        assert seconds < 30
    whole = iter(data.loader)
    assert sum(1 for _ in whole) == batches  # the next epoch is whole, and closed at its end
    assert whole.inner.closed and not whole.inner.is_alive()


LEAVE_EARLY = """
import sys
from ffcv_utils.load.loaders import train_loader
data = train_loader(sys.argv[1], batch_size=16, num_workers=1, res=64)
for k, _ in enumerate(data.loader):
    if k == 1:
        break
"""


def test_a_script_that_leaves_an_epoch_early_exits_cleanly(small_digits_betons):
    """The plain ``for ... break`` of a user's script: the dropped iterator ends its thread, so
    the process exits 0 (it used to abort with SIGABRT at exit, every time)."""
    done = subprocess.run([sys.executable, "-c", LEAVE_EARLY, str(small_digits_betons[0])],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
