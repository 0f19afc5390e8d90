"""write_ffcv.py as a user runs it: defaults, one-line errors, config files, and interruption
(SIGTERM, SIGINT, SIGKILL mid-write) leaving no partial file and no process behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from ffcv_utils.beton import sidecar as dataset_info
from ffcv_utils.base.cli import UserError
from ffcv_utils.base.atomic import claim_temporary
from ffcv_utils.write.cli import parse_args

REPO = Path(__file__).resolve().parents[2]
WRITE = str(REPO / "write_ffcv.py")


def _run(args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, WRITE, *map(str, args)], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout)


def _jpeg(path: Path, seed: int, size=(64, 48)):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    Image.fromarray(base).resize(size, Image.BILINEAR).save(path, quality=90)


# ------------------------------------------------------------------------------ defaults


def test_defaults_write_data_split_beton_with_summary_and_a_clean_screen(tmp_path):
    """`python write_ffcv.py --split train` reads ./imagenet and writes ./data/train.beton."""
    for c in ("n01440764", "n01443537"):
        d = tmp_path / "imagenet" / "train" / c
        d.mkdir(parents=True)
        for i in range(3):
            _jpeg(d / f"{c}_{i}.JPEG", hash((c, i)) % 1000)
    (tmp_path / "imagenet" / "train" / "n01443537" / "readme.txt").write_text("not an image")
    r = _run(["--split", "train"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    beton = tmp_path / "data" / "train.beton"
    assert beton.is_file()
    info = dataset_info.read_info(beton)
    assert info["classes"] == ["n01440764", "n01443537"]
    assert info["num_samples"] == 6 and info["num_skipped"] == 1
    assert info["settings"]["max_resolution"] == 500
    assert info["settings"]["write_mode"] == "proportion"
    assert info["settings"]["compress_probability"] == 0.5
    assert info["settings"]["jpeg_quality"] == 90
    assert "wrote data/train.beton: 6 images, 2 classes" in r.stdout
    assert "n01443537/readme.txt: not an image" in r.stdout
    assert "images/s" in r.stdout
    # no traceback and none of numba's exit-time KeyError noise reaches the screen
    for noise in ("Traceback", "KeyError", "Exception ignored"):
        assert noise not in r.stderr, r.stderr
    assert [p.name for p in (tmp_path / "data").iterdir()] != []
    assert not list((tmp_path / "data").glob(".*tmp"))


# ------------------------------------------------------------------------------ errors


@pytest.fixture
def flat_dir(tmp_path):
    d = tmp_path / "flat"
    d.mkdir()
    _jpeg(d / "a.jpg", 0)
    return d


@pytest.fixture
def good_dir(tmp_path):
    d = tmp_path / "good" / "train" / "cls"
    d.mkdir(parents=True)
    _jpeg(d / "a.jpg", 1)
    return tmp_path / "good"


def _config(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("case", [
    "missing_dir", "no_class_folders", "unwritable_output", "bad_write_mode",
    "misspelt_yaml_key", "misspelt_json_key", "misspelt_cli_flag", "no_split", "split_clash",
    "bad_int", "missing_config_file", "zero_max_classes",
])
def test_cli_errors_are_one_line_without_traceback(case, tmp_path, flat_dir, good_dir):
    out = tmp_path / "out.beton"
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    base = ["--split", "train", "--cfg.data_dir", good_dir, "--cfg.write_path", out]
    args, expect = {
        "missing_dir": (["--split", "train", "--cfg.data_dir", tmp_path / "nope"],
                        f"data folder not found: {tmp_path / 'nope'}"),
        "no_class_folders": (["--split", "train", "--cfg.data_dir", flat_dir],
                             f"no class folders in {flat_dir}"),
        "unwritable_output": (["--split", "train", "--cfg.data_dir", good_dir,
                               "--cfg.write_path", blocker / "x.beton"], str(blocker)),
        "bad_write_mode": (base + ["--cfg.write_mode", "png"], "cfg.write_mode"),
        "misspelt_yaml_key": (base + ["--config-file", _config(
            tmp_path, "c.yaml", "cfg:\n  max_resolution: 64\n  jpeg_qualty: 80\n")],
            "unknown key 'cfg.jpeg_qualty'"),
        "misspelt_json_key": (base + ["-C", _config(
            tmp_path, "c.json", json.dumps({"cfg": {"data_dri": "x"}}))],
            "did you mean cfg.data_dir"),
        "misspelt_cli_flag": (base + ["--cfg.max_res", "64"], "--cfg.max_res"),
        "no_split": (["--cfg.data_dir", good_dir], "--split"),
        "split_clash": (base + ["--cfg.split", "val"], "disagree"),
        "bad_int": (base + ["--cfg.max_resolution", "big"], "cfg.max_resolution"),
        "missing_config_file": (base + ["-C", tmp_path / "none.yaml"], "none.yaml"),
        "zero_max_classes": (base + ["--cfg.max_classes", "0"], "cfg.max_classes"),
    }[case]
    r = _run(args, cwd=tmp_path, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("write_ffcv.py: error: ")
    assert expect in lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


def test_config_file_then_command_line(tmp_path):
    cfg = _config(tmp_path, "rn50.yaml",
                  "cfg:\n  data_dir: /data/imagenet\n  max_resolution: 256\n"
                  "  write_mode: jpg\n  jpeg_quality: 95\n  split: val\n")
    kw = parse_args(["-C", str(cfg), "--cfg.jpeg_quality", "80"])
    assert kw["split"] == "val" and kw["data_dir"] == "/data/imagenet"
    assert kw["max_resolution"] == 256 and kw["write_mode"] == "jpg"
    assert kw["jpeg_quality"] == 80  # the command line wins over the file
    assert kw["write_path"] == "data/val.beton"
    dotted = _config(tmp_path, "d.json", json.dumps({"cfg.subset": 10}))
    assert parse_args(["--split", "train", "-C", str(dotted)])["subset"] == 10
    with pytest.raises(UserError, match="unknown key 'train.subset'"):
        parse_args(["--split", "train", "-C",
                    str(_config(tmp_path, "e.json", json.dumps({"train": {"subset": 1}})))])


# ------------------------------------------------------------------------------ interruption


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    """1,200 ImageNet-sized JPEGs (hard links to 40 distinct ones): a write of several seconds."""
    from ffcv_utils.tools.sample_data import _source_photos, imagenet_like_jpeg

    root = tmp_path_factory.mktemp("big") / "train"
    src = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    photos = _source_photos()
    originals = []
    for i in range(40):
        p = src / f"{i}.jpg"
        imagenet_like_jpeg(rng, photos).save(p, quality=90)
        originals.append(p)
    for i in range(1200):
        d = root / f"class_{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        os.link(originals[i % 40], d / f"{i:05d}.jpg")
    return root.parent


@pytest.fixture(scope="module")
def interrupted(big_dir, tmp_path_factory):
    """Start three writes at once; when each is mid-write, send SIGTERM, SIGINT or SIGKILL."""
    runs = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        out = tmp_path_factory.mktemp(f"out_{sig.name}")
        target = out / "train.beton"
        proc = subprocess.Popen(
            [sys.executable, WRITE, "--split", "train", "--cfg.data_dir", str(big_dir),
             "--cfg.write_path", str(target), "--cfg.num_workers", "2",
             "--cfg.write_mode", "raw", "--cfg.max_resolution", "256"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)  # a Ctrl-C in the test's terminal must not reach it
        runs[sig] = dict(proc=proc, out=out, target=target,
                         tmp=out / f".train.beton.{proc.pid}.tmp")
    try:
        deadline = time.time() + 90
        pending = dict(runs)
        while pending and time.time() < deadline:
            for sig, run in list(pending.items()):
                proc = run["proc"]
                assert proc.poll() is None, f"writer exited early: {proc.communicate()}"
                try:
                    size = run["tmp"].stat().st_size
                except FileNotFoundError:
                    size = 0
                children = psutil.Process(proc.pid).children(recursive=True)
                # SIGTERM/SIGINT once pages are being written (mid-write); SIGKILL as soon as
                # the writer processes run, so that nearly all their work is still ahead and
                # only PR_SET_PDEATHSIG can stop them within the few seconds allowed below
                started = size > (1 << 20) if sig != signal.SIGKILL else (
                    size > 0 and len(children) >= 3)  # 2 writers + multiprocessing's tracker
                if started:
                    run["children"] = children
                    run["size"] = size
                    proc.send_signal(sig)
                    del pending[sig]
            time.sleep(0.05)
        assert not pending, "the writes never got under way"
        for run in runs.values():
            run["rc"] = run["proc"].wait(timeout=60)
            # not communicate() first: orphans would hold its pipes open until they finish
            run["gone"], run["alive"] = psutil.wait_procs(run["children"], timeout=3)
            for p in run["alive"]:
                p.kill()
            run["stdout"], run["stderr"] = run["proc"].communicate(timeout=60)
        yield runs
    finally:
        for run in runs.values():
            if run["proc"].poll() is None:
                os.killpg(run["proc"].pid, signal.SIGKILL)
                run["proc"].wait()


@pytest.mark.slow
@pytest.mark.parametrize("sig,rc,word", [(signal.SIGTERM, 143, "terminated"),
                                         (signal.SIGINT, 130, "interrupted")])
def test_signal_mid_write_removes_the_partial_file_and_stops_every_process(
        interrupted, sig, rc, word):
    run = interrupted[sig]
    assert run["rc"] == rc, run["stderr"]
    assert f"write_ffcv.py: {word}; no partial file left" in run["stderr"]
    assert "Traceback" not in run["stderr"]
    assert len(run["children"]) >= 2  # the writer processes really were running
    assert run["alive"] == []
    assert not run["target"].exists()
    assert not dataset_info.sidecar_path(run["target"]).exists()
    assert list(run["out"].iterdir()) == []  # no temporary file either


@pytest.mark.slow
def test_sigkill_of_the_parent_takes_the_writer_processes_down(interrupted):
    run = interrupted[signal.SIGKILL]
    assert run["rc"] == -signal.SIGKILL
    assert len(run["children"]) >= 2
    assert run["alive"] == []  # PR_SET_PDEATHSIG: no orphan keeps writing
    assert not run["target"].exists()  # the target path never holds a partial beton
    # the dead writer's hidden temporary file is cleared by the next write to that path
    assert run["tmp"].exists()
    fresh = claim_temporary(run["target"])
    assert not run["tmp"].exists()
    fresh.unlink()
