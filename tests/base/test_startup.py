"""Start-up cost: numba code that every process compiled afresh is cached on disk, so each
process after the first (trainer runs, torchrun ranks, scripts) loads it instead: the dict code
that importing ffcv compiles (~2 s of CPU) and the per-sample draws of the fast decoder (~0.6 s)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json
import numpy as np
import ffcv_utils, ffcv
from numba.typed import typeddict
from numba import njit
from ffcv_utils.load import draws
address = draws.SampleRandom(0).address  # captured as the decoders capture it: new each process
key = njit(lambda i: draws.state_key(address, i))(np.int64(3))
draws.random_crop(100, 120, np.array((0.08, 1.0)), np.array((0.75, 1.33)), key)
draws.flip_draw(key, 0.5)
print(json.dumps([sum(d.stats.cache_hits.values()) for d in (
    typeddict._make_dict, typeddict._setitem, draws.state_key, draws.random_crop,
    draws.flip_draw)]))
"""


def cache_hits(probe: str, env: dict) -> list[int]:
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_numba_code_is_compiled_once_then_loaded(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))  # numba's own setting: a fresh cache
    hits = [cache_hits(PROBE, env) for _ in range(2)]
    assert hits == [[0] * 5, [1] * 5]  # compiled and stored, then loaded


def test_without_a_writable_cache_folder_the_code_still_compiles_and_runs():
    """A read-only install with no writable home: numba finds no cache folder, where
    ``@njit(cache=True)`` would fail the import."""
    no_folder = "from numba.core import caching\ncaching.CacheImpl._locator_classes = []\n"
    assert cache_hits(no_folder + PROBE, dict(os.environ)) == [0] * 5
