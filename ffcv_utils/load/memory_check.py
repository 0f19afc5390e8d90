"""Do the betons fit in memory? ``data.in_memory 1`` reads them through the page cache, which
thrashes (every epoch from disk, at random) when they do not fit; ``data.in_memory 0`` takes the
page-aware order (``ffcv_utils.load.order``), which reads each page once per epoch.

Available memory is the kernel's MemAvailable (``psutil.virtual_memory().available``): it
already counts page-cache pages the kernel can drop, so a beton that is cached is counted there
once, not again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# Leave room for the model, the optimizer and the loader's own buffers.
FIT_FRACTION = 0.8


@dataclass(frozen=True)
class MemoryVerdict:
    betons_bytes: int
    available_bytes: int

    @property
    def fits(self) -> bool:
        return self.betons_bytes <= FIT_FRACTION * self.available_bytes

    def describe(self) -> str:
        """The verdict in one line (``python -m ffcv_utils.tools.inspect_beton`` prints it)."""
        return self.warning() or (
            f"the betons ({self.betons_bytes / 1e9:.1f} GB) fit in the memory available "
            f"({self.available_bytes / 1e9:.1f} GB): --data.in_memory 1")

    def warning(self) -> str | None:
        """One line when they do not fit: the sizes and the two ways out."""
        if self.fits:
            return None
        return (f"data: the betons ({self.betons_bytes / 1e9:.1f} GB) do not fit in the memory "
                f"available ({self.available_bytes / 1e9:.1f} GB, {FIT_FRACTION:.0%} usable): "
                "use --data.in_memory 0 (page-aware order, each page read once per epoch), or a "
                "smaller all-JPEG beton (write_ffcv.py --cfg.write_mode jpg) read by the fast "
                "decoder")


def check_memory(paths: Iterable[str | Path], available: int | None = None) -> MemoryVerdict:
    """The verdict for the betons one node reads (its processes share one page cache)."""
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    unique = {Path(p).resolve() for p in paths if p}
    return MemoryVerdict(sum(p.stat().st_size for p in unique if p.is_file()), int(available))


def resolve_in_memory(setting, paths: Iterable[str | Path]) -> bool:
    """``data.in_memory``: 1/0 as given, ``auto``: 1 when the betons fit in memory."""
    text = str(setting).strip().lower()
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    if text == "auto":
        return check_memory(paths).fits
    from ..base.cli import UserError

    raise UserError(f"data.in_memory: {setting!r} is not 1, 0 or auto")
