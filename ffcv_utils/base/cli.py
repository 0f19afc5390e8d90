"""Entry-point plumbing shared by the scripts: one clear line for bad input, a clean screen at exit."""
from __future__ import annotations

import argparse
import os
import sys
import traceback


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2, no traceback."""


def _from_numba_finalizer(exc_type, tb) -> bool:
    """numba's finalizers may raise KeyError at interpreter exit; the message is pure noise."""
    if exc_type is not KeyError:
        return False
    return any("numba" in frame.filename for frame in traceback.extract_tb(tb))


def quiet_numba_exit_noise() -> None:
    """Hide the ignored ``KeyError`` that numba's finalizers may print at interpreter exit."""
    prev_excepthook, prev_unraisable = sys.excepthook, sys.unraisablehook

    def excepthook(exc_type, exc, tb):
        if not _from_numba_finalizer(exc_type, tb):
            prev_excepthook(exc_type, exc, tb)

    def unraisablehook(info):
        if not _from_numba_finalizer(info.exc_type, info.exc_traceback):
            prev_unraisable(info)

    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def run_main(main, prog: str | None = None) -> None:
    """Run ``main()``; a UserError becomes ``prog: error: ...`` on stderr and exit 2."""
    prog = prog or os.path.basename(sys.argv[0])
    quiet_numba_exit_noise()
    try:
        code = main()
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one ``UserError`` line (no usage block), like the config's."""

    def error(self, message):
        raise UserError(message)
