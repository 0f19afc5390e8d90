"""The training order (ffcv_utils.load.order) and the seeded crops (ffcv_utils.load.draws), on a beton
whose labels are the sample ids: the global sequence per epoch on 1 and 2 real processes and
across two torchrun nodes, the page-aware order, resuming on another number of processes, and
crops that do not depend on the loader's threads."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffcv_utils.load import order as O
from helpers import read_log

WORKER = str(Path(__file__).with_name("order_worker.py"))
ROOT = str(Path(__file__).resolve().parents[2])
N = 600


class _Noise:
    """Random JPEG-able images of varied sizes, label = index (poorly compressible, so the
    2 MiB pages hold few samples and the beton has many pages)."""

    def __len__(self):
        return N

    def __getitem__(self, i):
        rng = np.random.default_rng(i)
        side = int(rng.integers(112, 161))
        return rng.integers(0, 256, (side, side + 5, 3), dtype=np.uint8), i


@pytest.fixture(scope="session")
def ids_beton(tmp_path_factory):
    """A JPEG beton of N samples whose label is the sample index, on 2 MiB pages."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    path = tmp_path_factory.mktemp("ids") / "ids.beton"
    fields = {"image": RGBImageField(write_mode="jpg", jpeg_quality=100), "label": IntField()}
    DatasetWriter(str(path), fields, page_size=1 << 21, num_workers=2).from_indexed_dataset(
        _Noise())
    return path


@pytest.fixture(scope="session")
def layout(ids_beton):
    layout = O.PageLayout.from_file(ids_beton)
    assert len(np.unique(layout.sample_page)) >= 8  # the page-aware tests need many pages
    return layout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_epoch(streams, batch_size, num_samples, max_drop):
    """Same count per rank, each sample at most once, at most ``max_drop`` left out."""
    assert len({len(s) for s in streams}) == 1 and len(streams[0]) % batch_size == 0
    seen = np.concatenate(streams)
    assert len(np.unique(seen)) == len(seen)
    assert num_samples - len(seen) <= max_drop


# -- the orders as functions --------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3])
def test_random_order_is_one_global_sequence(world):
    b = 16
    seq = O.random_sequence(N, 5, 2)
    streams = [O.random_order(N, 5, 2, b, world, r) for r in range(world)]
    _check_epoch(streams, b, N, world * b - 1)
    # global step k is seq[k*W*b : (k+1)*W*b], rank r taking its r-th batch_size
    steps = np.stack([s.reshape(-1, b) for s in streams], axis=1).reshape(-1)
    assert (steps == seq[:len(steps)]).all()
    assert not (O.random_sequence(N, 5, 3) == seq).all()
    assert not (O.random_sequence(N, 6, 2) == seq).all()


def test_linear_time_sorts_agree_with_numpys():
    """The page-aware order's radix argsort is numpy's stable argsort (keys of 0 to 50 bits,
    many ties), and the smallest pages' count is the sorted counts' prefix."""
    rng = np.random.default_rng(1)
    for top in (1, 2, 300, 1 << 16, 1 << 17, 1 << 33, 1 << 50):
        keys = rng.integers(0, top, 5000)
        assert (O.stable_argsort(keys) == np.argsort(keys, kind="stable")).all(), top
    assert len(O.stable_argsort(np.zeros(0, np.int64))) == 0
    pages = rng.integers(-1, 40, 3000)  # -1: samples held in the metadata, on no page
    counts = np.sort(np.unique(pages[pages >= 0], return_counts=True)[1])
    layout = O.PageLayout(pages, 1 << 20)
    for w in (1, 5, 40, 50):
        assert layout.min_window_samples(w) == counts[:w].sum(), w


def test_page_order_memory_bound_holds_for_any_layout():
    """``peak_pages`` bounds ffcv's slots for random layouts, windows, batch sizes and ranks."""
    from ffcv.memory_managers.process_cache.schedule import compute_schedule

    rng = np.random.default_rng(0)
    for trial in range(80):
        counts = rng.integers(1, 20, rng.integers(5, 60))
        layout = O.PageLayout(np.repeat(np.arange(len(counts)), counts), 1 << 20)
        window, b, world = (int(rng.choice(v)) for v in ([1, 2, 4, 8], [1, 4, 16], [1, 2, 3]))
        bound = O.peak_pages(window, b, layout.min_window_samples(window))
        for r in range(world):
            s = O.page_order(layout, trial, 1, b, world, r, window_pages=window)
            batches = [set(layout.sample_page[x]) for x in s.reshape(-1, b)]
            assert compute_schedule(batches).num_slots <= bound, (trial, window, b, world, r)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_page_order_deals_whole_pages_within_the_memory_bound(layout, world):
    """Each page goes to one rank and is held once by ffcv's process cache, whose slots stay
    within ``peak_pages``; far fewer than the random order makes it hold."""
    from ffcv.memory_managers.process_cache.schedule import compute_schedule

    b, window = 8, 2
    streams = [O.page_order(layout, 3, 1, b, world, r, window_pages=window)
               for r in range(world)]
    biggest_page = np.unique(layout.sample_page, return_counts=True)[1].max()
    _check_epoch(streams, b, N, world * (b + biggest_page))
    owners = [set(layout.sample_page[s]) for s in streams]
    assert sum(map(len, owners)) == len(set().union(*owners))  # no page on two ranks
    bound = O.peak_pages(window, b, layout.min_window_samples(window))
    for s in streams:
        batches = [set(layout.sample_page[x]) for x in s.reshape(-1, b)]
        schedule = compute_schedule(batches)
        assert len(schedule.page_to_slot) == len(set().union(*batches))  # each page read once
        assert schedule.num_slots <= bound
    random_batches = [set(layout.sample_page[x])
                      for x in O.random_order(N, 3, 1, b, 1, 0).reshape(-1, b)]
    assert bound < compute_schedule(random_batches).num_slots
    assert not (O.page_order(layout, 3, 2, b, world, 0, window_pages=window)[:b * 4]
                == streams[0][:b * 4]).all()


@pytest.mark.parametrize("paged", [False, True])
def test_resume_on_other_world_sizes_covers_the_rest_once(layout, paged):
    """2 ranks stop after 3 global steps, 1 rank goes on for 2, 3 ranks finish the epoch:
    nothing trained twice; the same world size continues its own dealing exactly."""
    b = 8

    def streams(world, start):
        if paged:
            return [O.page_order(layout, 1, 4, b, world, r, start, window_pages=2)
                    for r in range(world)]
        return [O.random_order(N, 1, 4, b, world, r, start) for r in range(world)]

    first = streams(2, 0)
    done = [s[:3 * b] for s in first]
    pos = O.progress(0, 2, 3 * b * 2)
    assert all((a == c[3 * b:]).all() for a, c in zip(streams(2, pos), first))
    second = streams(1, pos)
    done.append(second[0][:2 * b])
    pos = O.progress(pos, 1, 2 * b)
    assert pos == ((2, 48), (1, 16))
    rest = streams(3, pos)
    _check_epoch(rest, b, N - 8 * b, 3 * b - 1 if not paged else N)
    seen = np.concatenate(done + rest)
    assert len(np.unique(seen)) == len(seen)
    if not paged:  # the random order loses nothing but the last partial step
        assert len(seen) > N - 3 * b


# -- real loaders and processes -----------------------------------------------------------------

def _run_ranks(cmds, env_of, timeout=240):
    procs = [subprocess.Popen(c, env=env_of(i), cwd=ROOT, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, c in enumerate(cmds)]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]


def _env(**extra):
    return {**os.environ, "PYTHONPATH": ROOT, **{k: str(v) for k, v in extra.items()}}


def _walk(tmp_path, beton, world, start=None, part=0, tag="run"):
    """``world`` plain processes (RANK/WORLD_SIZE) walk epoch 1 in both orders: per rank the
    worker's saved arrays (see tests/order_worker.py)."""
    outs = [tmp_path / f"{tag}-{r}.npz" for r in range(world)]
    cmds = [[sys.executable, WORKER, str(beton), str(o), "--in-memory", "1,0",
             "--start", json.dumps(start or {}), "--part", str(part)] for o in outs]
    _run_ranks(cmds, lambda r: _env(RANK=r, WORLD_SIZE=world, LOCAL_RANK=r))
    return [dict(np.load(o)) for o in outs]


@pytest.mark.timeout(400)
@pytest.mark.slow
def test_two_processes_walk_the_order_then_one_finishes(tmp_path, ids_beton, layout):
    """2 real processes, both orders: equal batch counts, the order's samples (random: the
    global sequence of (seed, epoch)); stopped after 3 steps, 1 process takes exactly the rest."""
    b, k = 16, 3
    ranks = _walk(tmp_path, ids_beton, 2, part=k, tag="two")
    positions = {}
    for mode in "10":
        for r, got in enumerate(ranks):
            assert len(got[f"labels{mode}"]) == got[f"length{mode}"]
            want = (O.random_order(N, 3, 1, b, 2, r) if mode == "1"
                    else O.page_order(layout, 3, 1, b, 2, r, window_pages=2))
            assert (got[f"labels{mode}"].reshape(-1) == want).all()
            assert (got[f"part{mode}"].reshape(-1) == want[:k * b]).all()
        _check_epoch([g[f"labels{mode}"].reshape(-1) for g in ranks], b, N,
                     2 * b - 1 if mode == "1" else N)
        positions[mode] = json.loads(str(ranks[0][f"position{mode}"]))
        assert positions[mode] == json.loads(str(ranks[1][f"position{mode}"])) == [[2, k * b * 2]]

    (rest,) = _walk(tmp_path, ids_beton, 1, start=positions, tag="rest")
    for mode in "10":
        assert len(rest[f"labels{mode}"]) == rest[f"length{mode}"]
        seen = np.concatenate([g[f"part{mode}"].reshape(-1) for g in ranks]
                              + [rest[f"labels{mode}"].reshape(-1)])
        assert len(np.unique(seen)) == len(seen)
        if mode == "1":  # the rest of the global sequence, in its order
            tail = O.random_sequence(N, 3, 1)[2 * k * b:len(seen)]
            assert (seen[2 * k * b:] == tail).all() and len(seen) > N - b


@pytest.mark.timeout(400)
@pytest.mark.slow
def test_two_torchrun_nodes_share_the_global_order(tmp_path, ids_beton, layout):
    """Two torchrun agents on this machine as two nodes (c10d rendezvous on localhost), one
    process each: each node's rank walks its share of both orders, pages on one node only."""
    port, b = _free_port(), 16
    outs = [tmp_path / f"node{i}.npz" for i in range(2)]
    cmds = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc_per_node", "1", "--rdzv_backend", "c10d",
             "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "order-test",
             "--max_restarts", "0", WORKER, str(ids_beton), str(o), "--in-memory", "1,0"]
            for o in outs]
    _run_ranks(cmds, lambda i: _env(OMP_NUM_THREADS=1))
    nodes = [np.load(o) for o in outs]
    # which node got rank 0 is up to the rendezvous: the random shares tell
    shares = [O.random_order(N, 3, 1, b, 2, r) for r in range(2)]
    ranks = [next(r for r, s in enumerate(shares) if (n["labels1"].reshape(-1) == s).all())
             for n in nodes]
    assert sorted(ranks) == [0, 1]
    for n, r in zip(nodes, ranks):
        assert (n["labels0"].reshape(-1) == O.page_order(layout, 3, 1, b, 2, r,
                                                          window_pages=2)).all()
    for mode, drop in (("1", 2 * b - 1), ("0", N)):
        _check_epoch([n[f"labels{mode}"].reshape(-1) for n in nodes], b, N, drop)
    pages = [set(layout.sample_page[n["labels0"].reshape(-1)]) for n in nodes]
    assert not pages[0] & pages[1]


def _images_by_label(data, epoch):
    data.set_epoch(epoch)
    pairs = [(y.numpy().copy(), x.numpy().copy()) for x, y in data.loader]
    labels = np.concatenate([p[0] for p in pairs])
    images = np.concatenate([p[1] for p in pairs])
    return images[np.argsort(labels)]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("decoder", ["fast", "ffcv"])
def test_crops_are_seeded_per_sample(ids_beton, decoder):
    """Same seed: the same crops and flips with 1 or 2 loader threads; another epoch or
    another seed: other crops. The loader leaves torch's thread count alone (ffcv set it to
    num_workers, which changed the model's CPU rounding with a loader setting)."""
    import torch

    from ffcv_utils.load.loaders import train_loader

    torch.set_num_threads(2)

    def loader(workers, seed):
        return train_loader(str(ids_beton), batch_size=50, num_workers=workers, res=24,
                            seed=seed, decoder=decoder)

    two = loader(2, 7)
    a0, a1 = _images_by_label(two, 0), _images_by_label(two, 1)
    one = loader(1, 7)
    assert (_images_by_label(one, 1) == a1).all()
    assert (_images_by_label(one, 0) == a0).all()
    assert torch.get_num_threads() == 2
    assert (a0 != a1).any(axis=(1, 2, 3)).mean() > 0.9
    other = loader(2, 8)
    assert (_images_by_label(other, 0) != a0).any(axis=(1, 2, 3)).mean() > 0.9


def test_page_aware_loader_reads_pages_directly_with_the_same_images(ids_beton, monkeypatch):
    """in_memory 0 reads its pages with O_DIRECT (no page-cache copy) and yields exactly what
    ffcv's buffered page reads give; where O_DIRECT is refused (tmpfs) it reads buffered."""
    from ffcv.memory_managers import ProcessCacheManager

    from ffcv_utils.load import direct_pages
    from ffcv_utils.load.loaders import train_loader

    real_open, opened = direct_pages._open_direct, []
    if real_open(str(ids_beton)) is None:
        pytest.skip("this file system refuses O_DIRECT")
    monkeypatch.setattr(direct_pages, "_open_direct",
                        lambda path: opened.append(real_open(path)) or opened[-1])
    data = train_loader(str(ids_beton), batch_size=50, num_workers=1, res=24, seed=1,
                        in_memory=False)
    manager = data.loader.memory_manager
    assert type(manager) is direct_pages.DirectProcessCacheManager  # what train_loader sets up

    def epoch(cls):
        manager.__class__ = cls
        data.set_epoch(0)
        return [(x.numpy().copy(), y.numpy().copy()) for x, y in data.loader]

    direct = epoch(direct_pages.DirectProcessCacheManager)
    assert opened and None not in opened  # every page reader opened the beton with O_DIRECT
    buffered = epoch(ProcessCacheManager)
    monkeypatch.setattr(direct_pages, "_open_direct", lambda path: None)
    fallback = epoch(direct_pages.DirectProcessCacheManager)
    assert len(direct) == len(buffered) == len(fallback) > 1
    for (x, y), (bx, by), (fx, fy) in zip(direct, buffered, fallback):
        assert (y == by).all() and (y == fy).all() and (x == bx).all() and (x == fx).all()


def test_crop_draws_follow_the_sample_not_the_call():
    """The draws are a function of (seed, epoch, index): repeatable, varied, unbiased flips."""
    from ffcv_utils.load.draws import SampleRandom

    r = SampleRandom(3)
    boxes = [r.crop(i, 120, 90) for i in range(400)]
    assert boxes == [r.crop(i, 120, 90) for i in range(400)]
    assert len(set(boxes)) > 390
    assert all(0 <= i and 0 <= j and i + h <= 120 and j + w <= 90 for i, j, h, w in boxes)
    assert 0.4 < np.mean([r.flip(i) for i in range(2000)]) < 0.6
    r.epoch = 1
    assert sum(a == b for a, b in zip(boxes, (r.crop(i, 120, 90) for i in range(400)))) < 5


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_trainer_loss_does_not_depend_on_loader_workers(small_digits_betons, tmp_path):
    """Two CPU runs of the trainer with one seed, 1 and 2 loader workers, deterministic
    algorithms on: identical train_loss (same samples, same crops, torch's threads not set by
    the loader); another seed gives another loss."""
    train, val = small_digits_betons
    losses = []
    for workers, seed in ((1, 5), (2, 5), (2, 6)):
        cmd = [sys.executable, "train_imagenet.py", "--data.train_dataset", str(train),
               "--data.val_dataset", str(val), "--model.arch", "resnet18",
               "--resolution.min_res", "32", "--resolution.max_res", "32",
               "--validation.resolution", "32", "--training.batch_size", "64",
               "--validation.batch_size", "128", "--data.num_workers", str(workers),
               "--lr.lr", "0.05", "--lr.batch_size_for_lr", "64", "--training.epochs", "1",
               "--data.seed", str(seed), "--training.deterministic", "1",
               "--logging.folder", str(tmp_path), "--logging.run_id", f"w{workers}s{seed}"]
        done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=500)
        assert done.returncode == 0, done.stderr[-3000:]
        losses.append([r["train_loss"] for r in read_log(tmp_path / f"w{workers}s{seed}")])
    assert losses[0] == losses[1] and len(losses[0]) == 1
    assert losses[2] != losses[0]
