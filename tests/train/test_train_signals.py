"""Stopping a real trainer process: SIGINT in an epoch stops it at the next step with exit status
130, the resume hint and the last completed epoch's checkpoint intact; a second SIGINT interrupts
at once; ``data.loader_timeout`` reaches the loader watchdog. A training loader that goes silent
(tests/injected_trainer.py) holds each run at a known point, so no timing is guessed. The three runs
start together (their start-up overlaps) and are stopped one by one."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import ROOT, args_for, read_log

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]
ITERS = 320 // 64  # training batches per epoch of the small digits train beton
LOADER_TIMEOUT = 20  # not the default 600; generous, as the first batch waits for numba too


def start_stalled(betons, folder, stall_at, *extra):
    """The trainer, its training loader stalled at batch ``stall_at`` (counted over the run):
    ``(process, marker)``, the marker created once the stall has begun. The first batch of an
    epoch stalls: the training loop is then waiting for it, with no step left to finish."""
    folder.mkdir()
    marker = folder / "stalled"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "injected_trainer.py"), "stall", str(stall_at),
         str(marker),
         *args_for(betons, folder, "--logging.run_id", "s", *extra)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, marker


def wait_for(proc, marker):
    deadline = time.time() + 300
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached the stall: {proc.communicate()[1][-3000:]}")
        time.sleep(0.1)


def finish(proc, timeout):
    """stderr, or None when the process outlived ``timeout`` (then killed)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None


@pytest.fixture(scope="module")
def stopped(small_digits_betons, tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    runs = {"once": start_stalled(small_digits_betons, root / "once", ITERS + 1),  # epoch 1
            "twice": start_stalled(small_digits_betons, root / "twice", 1),  # never released
            "timeout": start_stalled(small_digits_betons, root / "timeout", 1,
                                     "--data.loader_timeout", str(LOADER_TIMEOUT))}
    out = {}
    try:
        proc, marker = runs["twice"]
        wait_for(proc, marker)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.5)
        alive = proc.poll() is None  # the first one waits for a safe point, which never comes
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        out["twice"] = dict(err=finish(proc, 60), rc=proc.returncode, alive=alive,
                            took=time.monotonic() - sent, dir=root / "twice" / "s")

        proc, marker = runs["once"]
        wait_for(proc, marker)
        proc.send_signal(signal.SIGINT)
        time.sleep(1.5)
        alive = proc.poll() is None  # no step has run since: it waits for a safe point
        Path(str(marker) + ".release").touch()
        out["once"] = dict(err=finish(proc, 120), rc=proc.returncode, alive=alive,
                           dir=root / "once" / "s")

        proc, marker = runs["timeout"]
        wait_for(proc, marker)
        stalled = time.monotonic()
        # the default of 600 s would outlast this and the 120 s stall
        out["timeout"] = dict(err=finish(proc, LOADER_TIMEOUT + 60), rc=proc.returncode,
                              took=time.monotonic() - stalled)
        yield out
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_sigint_in_an_epoch_stops_at_the_next_step_with_the_checkpoint_intact(stopped):
    run = stopped["once"]
    assert run["alive"]
    assert run["rc"] == 130, run["err"] and run["err"][-3000:]
    assert "Traceback" not in run["err"]
    # the stop is taken at the next step (the first of epoch 1 once the loader is released),
    # which is saved as a step checkpoint a resume continues from
    assert ("stopped by SIGINT; the checkpoint of global step 1 of epoch 1 is intact. Continue "
            "with: --training.resume auto --logging.run_id s") in run["err"]
    saved = torch.load(run["dir"] / "checkpoint_last.pt", weights_only=True)
    assert saved["epoch"] == 1 and saved["step"]["step"] == 1, saved["step"]
    assert [r["epoch"] for r in read_log(run["dir"])] == [0]
    assert not list(run["dir"].glob("*.tmp"))


def test_second_sigint_interrupts_at_once(stopped):
    run = stopped["twice"]
    assert run["alive"]
    assert run["err"] is not None and run["took"] < 30  # at once, not after the 120 s stall
    assert run["rc"] == 130, run["err"][-3000:]
    assert run["err"].strip().splitlines()[-1] == "train_imagenet.py: interrupted"
    assert "Traceback" not in run["err"]
    assert not (run["dir"] / "checkpoint_last.pt").exists()  # no epoch was completed


def test_loader_timeout_reaches_the_watchdog(stopped, small_digits_betons):
    run = stopped["timeout"]
    assert run["err"] is not None, "still running long after data.loader_timeout"
    assert run["rc"] == 2, run["err"][-3000:]
    assert "Traceback" not in run["err"]
    last = run["err"].strip().splitlines()[-1]
    train = small_digits_betons[0]
    assert last.startswith(f"train_imagenet.py: error: loader for {train} (epoch 0, batch 0) "
                           "produced nothing for "), last
    assert "s (data.loader_timeout)" in last
    assert last.endswith("Continue with: --training.resume auto --logging.run_id s"), last
