"""Helper processes that die with the writer and leave signals to it.

Ctrl-C and SIGTERM reach the writer's main thread as ``KeyboardInterrupt`` (``Terminated`` for
SIGTERM), so one clean-up path stops the helpers and removes the temporary file; helpers ask the
kernel to kill them when their parent dies, even by SIGKILL, so none outlives the writer.
"""
from __future__ import annotations

import ctypes
import os
import signal
import threading
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so the same clean-up as for Ctrl-C runs."""


def default_num_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def child_setup(parent_pid: int) -> None:
    """In a forked helper: ignore Ctrl-C (the parent stops us), default SIGTERM, and ask the
    kernel to SIGKILL us when the parent dies, so no helper outlives the writer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


@contextmanager
def sigterm_raises():
    """In the main thread, turn SIGTERM into ``Terminated`` (a KeyboardInterrupt) for a while."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_blocked():
    """Hold SIGINT/SIGTERM back while the finished file is moved into place."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
