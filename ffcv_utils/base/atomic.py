"""Files that are either complete or absent: written to a hidden temporary file beside the target,
flushed to disk, then renamed over it. A crash or a kill at any moment leaves the previous file
(or none), never a truncated one; a failed write removes its temporary file."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_beside(path: str | Path, suffix: str = ".tmp") -> Path:
    """Claim a fresh hidden file ``.NAME.XXXX<suffix>`` in ``path``'s folder, with the
    permissions ``open()`` would give (mkstemp's are 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def publish(tmp: str | Path, path: str | Path) -> None:
    """Flush ``tmp`` to disk and rename it over ``path`` (then flush the folder entry)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        dir_fd = os.open(Path(path).parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - a folder we may not open; the rename is done
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(dir_fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` when the block ends without an
    exception and is removed otherwise. ``suffix`` keeps an extension for writers that infer
    the format from the name (matplotlib's ``savefig``)."""
    tmp = temporary_beside(path, suffix)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
