"""data.in_memory auto: the betons' size against available memory (ffcv_utils.load.memory_check)."""
from __future__ import annotations

import pytest

from ffcv_utils.base.cli import UserError
from ffcv_utils.load.memory_check import check_memory, resolve_in_memory


def _sparse(path, size):
    """A file of ``size`` bytes that takes no disk (a beton bigger than this machine's memory)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_verdict_names_sizes_and_both_fixes(tmp_path):
    small = _sparse(tmp_path / "a.beton", 10**9)
    assert check_memory([small, small], available=2 * 10**9).fits  # one node reads a file once
    verdict = check_memory([small, _sparse(tmp_path / "b.beton", 3 * 10**9)], available=4 * 10**9)
    assert not verdict.fits
    line = verdict.warning()
    assert "4.0 GB" in line and "--data.in_memory 0" in line and "all-JPEG" in line
    assert "\n" not in line and verdict.describe() == line
    assert check_memory([small], available=4 * 10**9).warning() is None


def test_resolve_in_memory(tmp_path):
    small = _sparse(tmp_path / "small.beton", 1000)
    huge = _sparse(tmp_path / "huge.beton", 2**40)  # a terabyte
    assert resolve_in_memory("auto", [small]) is True
    assert resolve_in_memory("auto", [small, huge]) is False
    assert resolve_in_memory(1, [huge]) is True and resolve_in_memory("0", [small]) is False
    with pytest.raises(UserError, match="data.in_memory"):
        resolve_in_memory("sometimes", [small])


def test_inspect_prints_the_verdict(digits_betons, capsys):
    from ffcv_utils.tools.inspect_beton import main

    main([str(p) for p in digits_betons])
    assert "memory: the betons (0.0 GB) fit in the memory available" in capsys.readouterr().out
