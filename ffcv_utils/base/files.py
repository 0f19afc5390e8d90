"""Opening files that came from anywhere: regular files only, opened without blocking, read to a
bound. A FIFO planted where a data file, class list or sidecar should be would block a plain
``open`` forever, and ``/dev/zero`` would fill memory; every reader of untrusted files opens them
here."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, kind in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


class NotRegular(OSError):
    """A FIFO, device, socket or folder where a regular file was expected; says which."""


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file (never blocks on a FIFO or device);
    else OSError (FileNotFoundError when it is absent, ValueError for a NUL in the name)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegular(f"not a regular file ({file_kind(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes; else OSError saying why."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(min(size, cap) + 1)  # read(n) allocates n bytes at once
    if len(data) > cap:
        raise OSError(f"larger than {cap:,} bytes: {path}")
    return data
