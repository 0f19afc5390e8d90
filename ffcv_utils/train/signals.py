"""SIGTERM/SIGINT (a preemption, a Ctrl-C) become a stop at a safe point of the loop: never in
the middle of a checkpoint write. A second SIGINT interrupts at once."""
from __future__ import annotations

import signal
import time

from ..base import distributed as du


class Stop(Exception):
    """Raised inside the loop once every rank has seen SIGTERM/SIGINT; ``saved`` says what the
    last checkpoint holds."""

    def __init__(self, signum: int, saved: str = "the last completed epoch"):
        self.signum, self.saved = signum, saved


class StopSignals:
    """Context manager: the handlers only set a flag that ``check`` turns into ``Stop``."""

    def __init__(self):
        self.signum = 0
        self.previous = {}

    def __enter__(self):
        for s in (signal.SIGTERM, signal.SIGINT):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def check(self, env: du.DistEnv, collective: bool = True) -> None:
        """Raise Stop when a signal arrived on any rank (``collective``: all ranks call this)."""
        stop = du.any_rank(bool(self.signum), env) if collective else bool(self.signum)
        if stop:
            raise Stop(self.signum or signal.SIGTERM)


class Pauses:
    """When a step of the epoch should stop for a step checkpoint: a stop signal on any rank, or
    ``minutes`` since the last one on rank 0's clock. Every rank polls at the same steps."""

    def __init__(self, stop: StopSignals, minutes: float):
        self.stop, self.every, self.last = stop, minutes * 60, time.monotonic()

    def poll(self, env: du.DistEnv) -> str | None:
        """'stop', 'save' or None (collective under torchrun)."""
        stopping = bool(self.stop.signum)
        if env.distributed:
            stopping = du.any_rank(stopping, env)
        due = self.every > 0 and time.monotonic() - self.last >= self.every
        if env.distributed and self.every > 0:
            due = du.any_rank(due and env.is_main, env)
        if stopping or due:
            self.last = time.monotonic()
        return "stop" if stopping else "save" if due else None
