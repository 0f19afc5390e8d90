"""The training sample order: one global sequence per epoch, dealt to the ranks step by step.

Why not ffcv's orders: RANDOM under ``distributed=True`` is torch's DistributedSampler, whose
sequence depends on the number of processes (and pads with repeats), and QUASI_RANDOM refuses
``distributed=True``, so a beton bigger than memory was read one 8 MiB page per sample.

Two orders, both a pure function of (seed, epoch) and the world size:

* **random** (``in_memory``): the epoch's global sequence is a permutation of the samples that
  does not depend on the number of processes. Global step k is the next ``batch_size x W``
  samples; rank r takes the r-th ``batch_size`` of them. Every rank yields the same number of
  batches, and fewer than ``batch_size x W`` samples are dropped at the end.
* **page-aware** (``in_memory 0``): pages are shuffled and dealt whole to the ranks (each page
  to the rank with the fewest samples so far), each rank shuffles its samples within a sliding
  window of ``window_pages`` consecutive pages of its share (its k-th page's samples are spread
  over positions k to k + window_pages), and all ranks are cut to the same multiple of
  ``batch_size``. A page is read by one rank, once per epoch; a process holds at most
  ``peak_pages(...)`` pages at a time (ffcv's process cache loads pages 3 batches ahead).

Resuming: ``start`` is what the epoch has already consumed, either an int (samples of the global
sequence, any world size, for the random order; for the page-aware order samples consumed on the
current world size) or a tuple of legs ``((world_size, samples), ...)``, one per stretch of the
epoch run on one world size (``progress`` builds it). The rest is dealt to the current ranks.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

# The prefetch distance of ffcv 1.0.2's process cache (compute_schedule's prefetch_ahead).
FFCV_PREFETCH_BATCHES = 3
DEFAULT_WINDOW_PAGES = 32  # 8 MiB pages: 256 MiB a window, ~2,000 ImageNet samples
# Stream ids of the per-epoch generators, so the draws of one use never shift another's.
_PERMUTATION, _PAGES, _WINDOWS = 0, 1, 2
# A sample's place in the sliding window is drawn in steps of 1/2**20 of a page.
_WINDOW_STEPS_BITS = 20

Start = Union[int, Sequence[Sequence[int]]]


def epoch_rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    """A generator that is a function of (seed, epoch, stream) alone."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0 (got {seed}, {epoch})")
    return np.random.default_rng([int(seed), int(epoch), *map(int, stream)])


def legs_of(start: Start, world_size: int) -> tuple[tuple[int, int], ...]:
    """``start`` as legs ((world_size, samples consumed), ...); an int is one leg on this W."""
    if isinstance(start, (int, np.integer)):
        return ((int(world_size), int(start)),) if start else ()
    legs = tuple((int(w), int(n)) for w, n in start)
    if any(w < 1 or n < 0 for w, n in legs):
        raise ValueError(f"bad resume position {start!r}")
    return legs


def progress(start: Start, world_size: int, samples: int) -> tuple[tuple[int, int], ...]:
    """The position after ``samples`` more of this epoch were consumed on ``world_size`` ranks
    (``steps x batch_size x world_size``): what a checkpoint stores and ``start`` takes back."""
    legs = list(legs_of(start, world_size))
    if legs and legs[-1][0] == world_size:
        legs[-1] = (world_size, legs[-1][1] + int(samples))
    elif samples:
        legs.append((int(world_size), int(samples)))
    return tuple(legs)


def deal(sequence: np.ndarray, batch_size: int, world_size: int, rank: int,
         drop_last: bool = True) -> np.ndarray:
    """Rank ``rank``'s share of a global sequence: its ``batch_size`` of every global step.

    ``drop_last=False`` keeps a last partial batch, only possible on one rank."""
    if not drop_last and world_size == 1:
        return sequence
    steps = len(sequence) // (batch_size * world_size)
    shaped = sequence[:steps * batch_size * world_size].reshape(steps, world_size, batch_size)
    return shaped[:, rank].reshape(-1)


def random_sequence(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's global sequence of the random order (int64 sample indices)."""
    return epoch_rng(seed, epoch, _PERMUTATION).permutation(num_samples).astype(np.int64)


def random_order(num_samples: int, seed: int, epoch: int, batch_size: int, world_size: int,
                 rank: int, start: Start = 0, drop_last: bool = True) -> np.ndarray:
    """This rank's samples for the epoch, after the ``start`` already consumed."""
    consumed = sum(n for _, n in legs_of(start, world_size))
    rest = random_sequence(num_samples, seed, epoch)[consumed:]
    return deal(rest, batch_size, world_size, rank, drop_last)


@dataclass(frozen=True)
class PageLayout:
    """Which page of the beton holds each sample's data (-1: none, all in the metadata; the
    first page where a sample's fields lie on several, which a one-image beton never does)."""

    sample_page: np.ndarray  # int64 per sample
    page_size: int

    @classmethod
    def from_reader(cls, reader) -> "PageLayout":
        """From an ffcv ``Reader``: its allocation table gives each sample's data pointers."""
        table = reader.alloc_table
        pages = (table["ptr"] // np.uint64(reader.page_size)).astype(np.int64)
        sample_page = np.full(reader.num_samples, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(sample_page, table["sample_id"].astype(np.int64), pages)
        sample_page[sample_page == np.iinfo(np.int64).max] = -1
        return cls(sample_page, int(reader.page_size))

    def min_window_samples(self, window_pages: int) -> int:
        """A lower bound of the samples in any ``window_pages`` pages: the smallest pages'."""
        counts = np.bincount(self.sample_page[self.sample_page >= 0])
        counts = counts[counts > 0]
        if window_pages >= len(counts):
            return int(counts.sum())
        return int(np.partition(counts, window_pages - 1)[:window_pages].sum())

    @classmethod
    def from_file(cls, path) -> "PageLayout":
        from ffcv.reader import Reader

        return cls.from_reader(Reader(str(path)))


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative integers, in linear time: least
    significant 16 bits first, each pass numpy's radix sort of 16-bit keys (its stable sort of
    wider integers is a merge sort, n log n: the order of 1.28M samples is built every epoch)."""
    keys = np.asarray(keys, np.int64)
    order = np.arange(len(keys))
    bits = int(keys.max()).bit_length() if len(keys) else 0
    for shift in range(0, bits, 16):
        digit = ((keys[order] >> shift) & 0xFFFF).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
    return order


def _pages_in_order(layout: PageLayout, samples: np.ndarray, rng: np.random.Generator):
    """``samples`` shuffled and grouped by page, pages in a shuffled order:
    (samples, page id of each, start offset of each page's run). Linear in the samples."""
    samples = rng.permutation(samples)
    pages = layout.sample_page[samples] + 1  # 0: the samples held in the metadata alone
    present = np.zeros(int(layout.sample_page.max(initial=-1)) + 2, bool)
    present[pages] = True
    unique = np.flatnonzero(present)
    rank_of_page = np.zeros(len(present), np.int64)
    rank_of_page[unique[rng.permutation(len(unique))]] = np.arange(len(unique))
    key = rank_of_page[pages]
    order = stable_argsort(key)
    samples, key = samples[order], key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, int)
    return samples, layout.sample_page[samples], starts


def _deal_pages(counts: np.ndarray, world_size: int) -> np.ndarray:
    """Owner rank of each page, in order: the rank with the fewest samples so far (ties: lowest
    rank), so ranks differ by at most one page's samples."""
    heap = [(0, r) for r in range(world_size)]
    owner = np.empty(len(counts), np.int64)
    for i, c in enumerate(counts):
        load, r = heapq.heappop(heap)
        owner[i] = r
        heapq.heappush(heap, (load + int(c), r))
    return owner


def page_streams(layout: PageLayout, samples: np.ndarray, world_size: int, batch_size: int,
                 window_pages: int, rng_pages: np.random.Generator,
                 rng_windows: np.random.Generator) -> list[np.ndarray]:
    """Every rank's stream for these samples: whole pages per rank, shuffled within windows of
    ``window_pages`` of its pages, cut to the same multiple of ``batch_size``."""
    samples, _, starts = _pages_in_order(layout, samples, rng_pages)
    counts = np.diff(np.r_[starts, len(samples)])
    owner = _deal_pages(counts, world_size)
    # position of each page among its owner's pages -> window number within that rank
    local = np.empty(len(owner), np.int64)
    for r in range(world_size):
        mine = np.flatnonzero(owner == r)
        local[mine] = np.arange(len(mine))
    page_of = np.repeat(np.arange(len(counts)), counts)
    # a sliding window: the samples of a rank's k-th page get keys spread over [k, k + window);
    # pages then enter (and leave) one by one, not a whole window's worth at one batch, so
    # ffcv's few batches of prefetch keep the reads flowing beside the decoding
    steps = _WINDOW_STEPS_BITS
    key = (local[page_of] << steps) + rng_windows.integers(0, window_pages << steps, len(samples))
    sort = stable_argsort(key)  # each rank's stream is then picked out in this order
    ordered, sample_owner = samples[sort], owner[page_of][sort]
    streams = [ordered[sample_owner == r] for r in range(world_size)]
    keep = min(len(s) for s in streams) // batch_size * batch_size
    return [s[:keep] for s in streams]


def page_order(layout: PageLayout, seed: int, epoch: int, batch_size: int, world_size: int,
               rank: int, start: Start = 0, window_pages: int = DEFAULT_WINDOW_PAGES,
               samples: np.ndarray | None = None) -> np.ndarray:
    """This rank's samples for the epoch in the page-aware order, after ``start``.

    Each leg of ``start`` is replayed (its own dealing on its world size, each rank's first
    samples/W consumed); on the same world size as the last leg the run continues that leg's
    dealing, otherwise what is left is dealt anew to the current ranks.
    """
    left = np.arange(len(layout.sample_page)) if samples is None else np.asarray(samples)
    legs = legs_of(start, world_size)
    if not legs or legs[-1][0] != world_size:
        legs = (*legs, (world_size, 0))  # a new dealing of what is left to these ranks
    for i, (w, n) in enumerate(legs):
        streams = page_streams(layout, left, w, batch_size, window_pages,
                               epoch_rng(seed, epoch, _PAGES), epoch_rng(seed, epoch, _WINDOWS, i))
        if n % w or n // w > len(streams[0]):
            raise ValueError(f"resume position: {n} samples on {w} ranks is not a point of "
                             "this epoch's order")
        if i == len(legs) - 1:  # the current leg: continue its dealing where it stopped
            return streams[rank][n // w:]
        keep = np.zeros(len(layout.sample_page), bool)  # what is left, sorted, in linear time
        keep[left] = True
        keep[np.concatenate([s[:n // w] for s in streams])] = False
        left = np.flatnonzero(keep)


def peak_pages(window_pages: int, batch_size: int, min_window_samples: int,
               prefetch: int = FFCV_PREFETCH_BATCHES) -> int:
    """Most pages the page-aware order makes ffcv's process cache hold at once.

    ffcv keeps a page from ``prefetch`` batches before its first use to its last use. The
    samples of a rank's k-th page have keys in [k, k + window_pages); if batches b..b+prefetch
    cover keys [k0, k1], the pages held at b are those with k in (k0 - window_pages, k1]. The
    pages wholly inside (k0, k1) are consecutive, all their samples lie in those
    (prefetch+1) x batch_size samples, and any ``window_pages`` of them hold at least
    ``min_window_samples`` (PageLayout's bound), which caps k1 - k0 and gives this count."""
    whole = (prefetch + 1) * batch_size // max(1, min_window_samples)
    return window_pages * (3 + whole) + 3


def peak_bytes(page_size: int, window_pages: int, batch_size: int, min_window_samples: int,
               batch_bytes: int, batches_ahead: int = 3) -> int:
    """Bound of a process's loader memory for the page-aware order: pages held by the cache
    plus ffcv's ``batches_ahead + 2`` output slots of ``batch_bytes`` each."""
    pages = peak_pages(window_pages, batch_size, min_window_samples)
    return page_size * pages + (batches_ahead + 2) * batch_bytes


class EpochOrder:
    """One rank's order, as ffcv's Loader asks for it (``sample_order(epoch)``; the Loader's
    ``traversal_order``), with the resume point of one epoch and the decoders' draws to update.

    ``layout`` None: the random order; a PageLayout: the page-aware one."""

    def __init__(self, num_samples: int, *, seed: int, batch_size: int, world_size: int = 1,
                 rank: int = 0, layout: PageLayout | None = None,
                 window_pages: int = DEFAULT_WINDOW_PAGES, drop_last: bool = True, draws=None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.num_samples, self.seed, self.batch_size = int(num_samples), int(seed), int(batch_size)
        self.world_size, self.rank, self.layout = int(world_size), int(rank), layout
        self.window_pages, self.drop_last, self.draws = int(window_pages), drop_last, draws
        self.resume: tuple[int, Start] = (0, 0)  # (epoch, start) of a resumed epoch
        self._cache: tuple | None = None
        self.epoch = 0  # the epoch being walked (the last one ffcv asked for)

    def start_of(self, epoch: int) -> Start:
        return self.resume[1] if self.resume[0] == epoch else 0

    def sample_order(self, epoch: int) -> np.ndarray:
        """This rank's sample indices for ``epoch`` (uint64, as ffcv's own orders); called by
        ffcv as the epoch starts, so it also sets the epoch of the decoders' draws."""
        self.epoch = epoch
        if self.draws is not None:
            self.draws.epoch = epoch
        return self.indices(epoch)

    def indices(self, epoch: int) -> np.ndarray:
        key = (epoch, self.start_of(epoch))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._compute(epoch, key[1]).astype(np.uint64))
        return self._cache[1]

    def _compute(self, epoch: int, start: Start) -> np.ndarray:
        if self.layout is None:
            return random_order(self.num_samples, self.seed, epoch, self.batch_size,
                                self.world_size, self.rank, start, self.drop_last)
        return page_order(self.layout, self.seed, epoch, self.batch_size, self.world_size,
                          self.rank, start, self.window_pages)

    def num_batches(self, epoch: int) -> int:
        return -(-len(self.indices(epoch)) // self.batch_size)

    def position(self, batches: int) -> Start:
        """The resume point of the current epoch after ``batches`` global steps from where it
        started (this rank's batches: all ranks step together)."""
        return progress(self.start_of(self.epoch), self.world_size,
                        batches * self.batch_size * self.world_size)
