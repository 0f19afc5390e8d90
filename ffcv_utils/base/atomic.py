"""Files that are either complete or absent: written to a hidden temporary file beside the target,
flushed to disk, then renamed over it. A crash or a kill at any moment leaves the previous file
(or none), never a truncated one; a failed write removes its temporary file."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .cli import UserError


class WriteError(UserError):
    """An output could not be written (disk full, read-only folder, a writer process died, a
    source changed during the write); whatever was there before is kept."""


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


def claim_temporary(target: Path) -> Path:
    """For a long write by several processes (the writer): create the folder, clear the
    temporaries of dead writers (named by their pid), and claim ``.NAME.<pid>.tmp``."""
    if target.is_dir():
        raise UserError(f"output path is a folder: {target}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {target.parent}: "
                        f"{e.strerror or e}") from None
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            pid = int(stale.name[len(target.name) + 2:-4])
            os.kill(pid, 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except (ValueError, OSError):
            pass
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)
    except FileExistsError:
        tmp.unlink()
        return claim_temporary(target)
    except OSError as e:
        raise UserError(f"cannot write to {target.parent}: {e.strerror or e}") from None
    return tmp


def temporary_folder_beside(path: str | Path) -> Path:
    """A fresh hidden folder ``.NAME.XXXX`` in ``path``'s folder, to fill and then ``publish``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))


def publish(tmp: str | Path, path: str | Path) -> None:
    """Flush ``tmp`` (a file, or a folder to put where none is) to disk and rename it over
    ``path`` (then flush the folder entry)."""
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


def save_figure(fig, out: str | Path) -> Path:
    """Write a matplotlib ``fig`` as a PNG atomically, close it, and return the path."""
    import matplotlib.pyplot as plt

    out = Path(out)
    try:
        with atomic_path(out, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)
    return out
