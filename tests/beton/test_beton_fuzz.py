"""The beton check under fuzzing (issue 24): mutants of a real beton the toolkit wrote are each
refused in one line or pass, and those that pass decode through the validation loader without
dying by a signal, hanging or asking for more memory than a bound. The mutations and both
stages are ``benchmarks/fuzz_beton.py``'s, whose long run (>= 100,000 mutants) is recorded in
``benchmarks/results/fuzz_beton.json``."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import fuzz_beton as fz  # noqa: E402
from ffcv_utils.beton.check import check  # noqa: E402

SEED = int(os.environ.get("BETON_FUZZ_SEED", "0"))
CASES = 2000


@pytest.fixture
def work(small_digits_betons, tmp_path):
    """A copy of the 100-image digits val beton and its sidecar, for the fuzz to mutate."""
    src, dst = small_digits_betons[1], tmp_path / "work.beton"
    shutil.copyfile(src, dst)
    shutil.copyfile(str(src) + ".json", str(dst) + ".json")
    return dst


@pytest.mark.timeout(300)
def test_every_mutant_is_refused_in_one_line_or_passes(work, small_digits_betons):
    result = fz.fuzz_check(work, CASES, seed=SEED)
    # a failure: anything but BetonError, a message of more than one line or not naming the
    # file, more memory than 3x the file, or a pass of a mutant that is surely unsound
    assert result["failure_count"] == 0, result["failures"][:5]
    assert result["refused"] + result["passed"] == CASES
    kinds = result["by_kind"]
    assert set(kinds) >= {"flip", "overwrite", "value", "pointer", "swap", "truncate", "extend",
                          "descriptor", "fields", "sidecar", "combined"}, kinds
    for kind in ("truncate", "extend", "fields"):  # every one of these breaks the file
        assert kinds[kind]["passed"] == 0 and kinds[kind]["refused"] > 0, (kind, kinds[kind])
    assert result["passed"] > 0 and result["distinct_reasons"] >= 30, result["reasons"]
    assert work.read_bytes() == small_digits_betons[1].read_bytes()  # each mutant undone


def lying_copy(src: Path, dst: Path, width: int, height: int) -> Path:
    """``src`` with its first JPEG sample's metadata claiming ``width`` x ``height`` (the JPEG
    inside stays 32x32): a mismatch no check short of reading every image can see."""
    data = bytearray(src.read_bytes())
    lay = fz.Layout.of(bytes(data))
    modes = np.frombuffer(bytes(data[lay.meta_start:lay.meta_end]), np.uint8).reshape(
        lay.samples, lay.meta_item)[:, 0]
    at = lay.meta_start + lay.meta_item * int(np.flatnonzero(modes == 0)[0])
    data[at + 1:at + 5] = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    dst.write_bytes(bytes(data))
    shutil.copyfile(str(src) + ".json", str(dst) + ".json")
    return dst


@pytest.mark.slow  # a child process building a loader (a numba compile) per file and decoder
@pytest.mark.timeout(900)
def test_mutants_that_pass_decode_within_bounds(work, tmp_path):
    """Passing mutants decode with both decoders (fast from the page cache, ffcv's through its
    process cache) under an address-space limit of 2 GiB beyond the imports and a timeout.
    Among them two JPEGs whose metadata lie: 8x8 (ffcv's decoder scales the 32x32 JPEG down
    to fit, the fast one refuses it as damaged) and 32x1, whose centre crop was 0 pixels in
    ffcv's decoder (OpenCV threw through C++: SIGABRT) before ``data.py`` kept it at 1."""
    result = fz.fuzz_check(work, 300, seed=SEED + 1, keep=2, keep_dir=tmp_path / "kept")
    files = [k["file"] for k in result["kept"]]
    assert len(files) == 2, result["by_kind"]  # (the long run decodes dozens)
    files += [str(lying_copy(work, tmp_path / f"{w}x{h}.beton", w, h)) for w, h in
              ((8, 8), (32, 1))]
    assert all(check(f) == 100 for f in files)  # nothing in the file gives them away
    decoded = fz.decode(files)
    assert decoded["failures"] == [], decoded["failures"]
    assert decoded["decoded"] == decoded["ways"] == 2 * len(files)
