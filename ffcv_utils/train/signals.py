"""SIGTERM/SIGINT (a preemption, a Ctrl-C) become a stop at a safe point of the loop: never in
the middle of a checkpoint write. A second SIGINT interrupts at once."""
from __future__ import annotations

import signal

from .. import distributed as du


class Stop(Exception):
    """Raised inside the loop once every rank has seen SIGTERM/SIGINT."""

    def __init__(self, signum: int):
        self.signum = signum


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
