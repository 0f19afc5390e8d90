"""Recognise a collective that failed because another rank died or hung, and say so in one line.

With gloo a rank killed mid-epoch makes the survivors' next collective fail at once ("Connection
reset by peer"); with NCCL, or a rank that hangs, the process-group timeout (``dist.timeout``)
ends it. Either way torch raises a RuntimeError (``DistError`` in recent versions) with a long
C++ context that is no help to a user; the run's checkpoints are intact and resume continues.
"""
from __future__ import annotations

import torch.distributed as dist

_MARKERS = ("gloo", "nccl", "connection reset", "connection closed", "timed out", "timeout",
            "broken pipe", "socket")


def is_peer_failure(e: BaseException, env) -> bool:
    """Did this exception come from a collective that lost the other ranks?"""
    if not env.distributed:
        return False
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(m in text for m in _MARKERS)


def message(e: BaseException, env, run_id: str) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # gloo's text starts with the C++ source location: drop it
    reason = first.split("] ", 1)[-1][:160]
    return (f"rank {env.rank}: lost contact with another process ({reason}); checkpoints of "
            f"completed epochs are intact. Continue with: --training.resume auto "
            f"--logging.run_id {run_id}")
