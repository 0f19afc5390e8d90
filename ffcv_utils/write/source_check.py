"""The checks every source gets before packing: the ``subset`` choice (round-robin over the
classes), decoding each candidate in parallel so that only good images reach the writer
processes, and the count of readable images per class.

Samples travel to the check processes as the source yields them: a path (the process reads the
file) or the bytes of an archive member. At most ``WINDOW`` samples are in flight at once, so a
streamed source never has more than that many encoded images in memory here.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass, field
from itertools import islice
from typing import Iterable, Iterator

from ..base.processes import child_setup
from ..base.cli import UserError
from .images import probe
from .sources.base import Sample, Source

WINDOW = 2048  # samples handed to the check processes at a time (the memory bound)
SERIAL_BELOW = 64  # fewer candidates than this are checked in this process


@dataclass
class Checked:
    """What the check pass found: the samples to pack (by position in the source's order, with
    their names to recognise them on the second read), their sizes, and what was skipped."""

    num_classes: int
    positions: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    as_is: list[bool] = field(default_factory=list)  # its own bytes could be the stored JPEG
    skipped: list[dict] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.counts = [0] * self.num_classes


def subset_positions(labels: list[int], num_classes: int, n: int) -> set[int]:
    """Positions of the first ``n`` samples taken round-robin over the classes (every class
    represented), each class's in source order."""
    have = [0] * num_classes
    for label in labels:
        have[label] += 1
    keep, left = [0] * num_classes, n
    while left > 0:
        progressed = False
        for c in range(num_classes):
            if left and keep[c] < have[c]:
                keep[c] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    chosen, taken = set(), [0] * num_classes
    for i, label in enumerate(labels):
        if taken[label] < keep[label]:
            taken[label] += 1
            chosen.add(i)
    return chosen


def _probe_sample(args) -> tuple[str | None, int, int, bool]:
    sample, max_resolution = args
    try:
        data = sample.read()
    except OSError as e:
        return f"unreadable image: {str(e)[:200]}", 0, 0, False
    return probe(data, max_resolution)


def _windows(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _probe_all(items: Iterable[tuple[int, Sample]], max_resolution: int, num_workers: int,
               total: int) -> Iterator[tuple[int, Sample, tuple]]:
    """``(position, sample, probe result)`` for each item, in order, decoded by
    ``num_workers`` processes."""
    if num_workers <= 1 or total < SERIAL_BELOW:
        for pos, s in items:
            yield pos, s, _probe_sample((s, max_resolution))
        return
    step = max(1, min(64, total // (num_workers * 8)))
    with mp.get_context("fork").Pool(num_workers, initializer=child_setup,
                                     initargs=(os.getpid(),)) as pool:
        for window in _windows(items, WINDOW):
            results = pool.imap(_probe_sample, [(s, max_resolution) for _, s in window],
                                chunksize=step)
            yield from ((pos, s, r) for (pos, s), r in zip(window, results))


def check_source(source: Source, *, max_resolution: int, num_workers: int, subset: int = -1,
                 progress: bool = False) -> Checked:
    """Decode every candidate of ``source`` (or of its ``subset``, chosen from
    ``source.labels()``) and sort good from bad."""
    from tqdm import tqdm

    chosen = None
    if subset > 0:
        chosen = subset_positions(source.labels(), len(source.classes), subset)
    total = len(source) if chosen is None else len(chosen)
    items = ((i, s) for i, s in enumerate(source) if chosen is None or i in chosen)
    out = Checked(len(source.classes))
    out.skipped = [{"file": name, "reason": why} for name, why in source.skipped]
    with tqdm(total=total, desc="checking", unit="file", disable=not progress,
              dynamic_ncols=True) as bar:
        for pos, s, (reason, w, h, as_is) in _probe_all(items, max_resolution, num_workers, total):
            if not 0 <= s.label < len(source.classes):
                raise UserError(f"{s.name}: label {s.label} is outside the "
                                f"{len(source.classes)} classes of {source.describe()}")
            if reason is None:
                out.positions.append(pos)
                out.names.append(s.name)
                out.sizes.append((w, h))
                out.as_is.append(as_is)
                out.counts[s.label] += 1
            else:
                out.skipped.append({"file": s.name, "reason": reason})
            bar.update(1)
    return out
