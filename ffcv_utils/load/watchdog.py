"""A watchdog around ffcv loaders: a failing or silent loader thread ends the run, never hangs it.

ffcv 1.0.2 fills each epoch's batches in a background thread (``EpochIterator``) and the
consumer blocks on its queue with no timeout. When that thread raises (a bad sample, a bug in
a pipeline op) it simply dies, the exception is printed by ``threading``, and the training
loop waits forever. ``watch(loader, name)`` wraps a Loader so that each epoch's iterator waits
on the queue in short slices, checks that the thread is alive, and raises ``LoaderError`` naming
the file and the batch, or reports a loader that produced nothing for ``stall_seconds``.
It only looks at the thread and its queue, so it works for any pipeline.
"""
from __future__ import annotations

import operator
import sys
import threading
import time
import weakref
from queue import Empty

from ..base.cli import UserError

# Generous by default: the first batch of a loader includes numba's compilation (tens of
# seconds on a small CPU), and a cold page cache on a network disk can be slow too.
DEFAULT_STALL_SECONDS = 600.0
_POLL_SECONDS = 0.25
# How long closing an epoch early waits for its thread to finish the batch it is on.
_JOIN_SECONDS = 60.0

_stall_seconds = DEFAULT_STALL_SECONDS
_failures: "weakref.WeakKeyDictionary[threading.Thread, BaseException]" = weakref.WeakKeyDictionary()
_hook_lock = threading.Lock()
_hook_installed = False


class LoaderError(UserError):
    """A loader thread failed or stalled: one line naming the file and the batch."""


def set_stall_timeout(seconds: float) -> None:
    """Seconds without a batch before a live loader is reported as stuck (0: wait forever)."""
    global _stall_seconds
    _stall_seconds = float(seconds)


def _install_hook() -> None:
    """Record exceptions of ffcv loader threads instead of printing their traceback."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        from ffcv.loader.epoch_iterator import EpochIterator

        previous = threading.excepthook

        def hook(args):
            if isinstance(args.thread, EpochIterator):
                _failures[args.thread] = args.exc_value
                return
            previous(args)

        threading.excepthook = hook
        _hook_installed = True


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class WatchedIterator:
    """One epoch of a watched loader; same items and CUDA stream handling as ffcv's own."""

    def __init__(self, inner, name: str, epoch: int, stall_seconds: float):
        self.inner, self.name, self.epoch = inner, name, epoch
        self.stall_seconds = stall_seconds
        self.batch = 0  # batches handed out so far: the failing one is number ``batch``

    def __iter__(self):
        return self

    def _where(self) -> str:
        return f"loader for {self.name} (epoch {self.epoch}, batch {self.batch})"

    def _wait_for_item(self) -> None:
        inner = self.inner
        queue = inner.output_queue
        start = time.monotonic()
        while True:
            with queue.not_empty:
                if queue._qsize():
                    return
                # Woken at once by the producer's put(); the timeout is only for the checks.
                queue.not_empty.wait(_POLL_SECONDS)
                if queue._qsize():
                    return
            if not inner.is_alive():
                if queue.qsize():
                    return
                exc = _failures.pop(inner, None)
                self.close()
                why = _describe(exc) if exc is not None else "its thread ended without a result"
                raise LoaderError(f"{self._where()} failed: {why}")
            waited = time.monotonic() - start
            if self.stall_seconds and waited > self.stall_seconds:
                _abandon(inner)
                raise LoaderError(f"{self._where()} produced nothing for {waited:.0f} s "
                                  "(data.loader_timeout); is the disk or the machine overloaded?")

    def __next__(self):
        self._wait_for_item()
        try:
            item = next(self.inner)  # ffcv's own __next__: end of epoch, CUDA stream waits
        except StopIteration:  # ffcv closed the epoch's memory; its close never records that
            self.inner.closed = True
            raise
        self.batch += 1
        return item

    def close(self, wait: bool = True) -> None:
        """End the epoch early and wait for its thread: set its stop flag, join it, then
        release its memory. A loader thread left running when the process exits is killed by
        Python's shutdown mid-pipeline, and inside numba's or torch's C++ frames that aborts
        the process ("terminate called without an active exception", exit -6) after the
        run's work is done. ``wait=False`` (an interrupt: out at once) only stops it."""
        inner = self.inner
        if inner.closed:
            return
        if not wait:
            _abandon(inner)
            return
        inner.terminate_event.set()
        deadline = time.monotonic() + _JOIN_SECONDS
        while inner.is_alive() and time.monotonic() < deadline:
            _unblock_last_put(inner)
            inner.join(_POLL_SECONDS)
        if inner.is_alive():
            _abandon(inner)
            return
        inner.close()
        inner.closed = True

    def __del__(self):
        if not sys.is_finalizing():
            self.close()


def _abandon(inner) -> None:
    """Stop a loader thread that is stuck (in a read, say) without waiting for it: its buffers
    stay allocated, as it may still write to them, and it ends with the process."""
    inner.terminate_event.set()
    inner.closed = True


def _unblock_last_put(inner) -> None:
    """ffcv's loader thread sees its stop flag only when a timed ``put`` finds its queue full,
    but once it has taken the epoch's last batch its ``put(None)`` waits without a timeout:
    then one free slot lets it finish."""
    if operator.length_hint(inner.iter_ixes) == 0 and inner.output_queue.full():
        try:
            inner.output_queue.get_nowait()
        except Empty:
            pass


class WatchedLoader:
    """Delegates everything to the ffcv Loader; only iteration is watched."""

    def __init__(self, loader, name: str):
        object.__setattr__(self, "_loader", loader)
        object.__setattr__(self, "_name", str(name))

    def __iter__(self):
        _install_hook()
        epoch = self._loader.next_epoch
        return WatchedIterator(iter(self._loader), self._name, epoch, _stall_seconds)

    def __len__(self):
        return len(self._loader)

    def __getattr__(self, key):
        return getattr(self._loader, key)

    def __setattr__(self, key, value):
        setattr(self._loader, key, value)


def watch(loader, name: str | None = None) -> WatchedLoader:
    """``loader`` with a watchdog; ``name`` (default: its file) appears in the error line."""
    return WatchedLoader(loader, name or getattr(loader, "fname", "?"))
