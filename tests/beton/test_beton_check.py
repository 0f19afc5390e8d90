"""Truncated, empty and foreign betons are refused with one line naming the file, before ffcv
opens them: by ``ffcv_utils.beton.check.check``, the trainer, ``python -m ffcv_utils.tools.inspect_beton`` and the
benchmarks (real betons written by the toolkit, cut or replaced)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ffcv_utils.beton.check import BetonError, check
from ffcv_utils.beton.sidecar import read_info
from helpers import run_script

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def broken_copy(src: Path, folder: Path, kind: str) -> Path:
    """A copy of ``src`` (with its sidecar) made broken in the way ``kind`` names."""
    dst = folder / f"{kind}-{src.name}"
    shutil.copy(str(src) + ".json", str(dst) + ".json")
    data = src.read_bytes()
    if kind == "empty":
        dst.write_bytes(b"")
    elif kind == "random":
        dst.write_bytes(os.urandom(len(data) // 4))
    elif kind.startswith("cut"):  # cut-<bytes from the end>, or cut-half
        end = len(data) // 2 if kind == "cut-half" else len(data) - int(kind.split("-")[1])
        dst.write_bytes(data[:end])
    elif kind == "sidecar":
        dst.write_bytes(data)
        info = json.loads(Path(str(dst) + ".json").read_text())
        info["num_samples"] += 5  # a sidecar of another (consistent) file
        first = info["classes"][0]
        info["class_counts"][first] += 5
        Path(str(dst) + ".json").write_text(json.dumps(info))
    return dst


CASES = {"empty": "empty file", "random": "not a .beton of ffcv format 2",
         "cut-half": "truncated", "cut-10": "allocation table is misplaced or cut",
         "cut-24": "some samples point at data the allocation table lacks",
         "cut-1000000": "truncated", "sidecar": "says"}


@pytest.mark.parametrize("split", [0, 1], ids=["train", "val"])
def test_check_refuses_broken_betons_with_one_line(digits_betons, tmp_path, split):
    good = digits_betons[split]
    assert check(good) == read_info(good)["num_samples"]
    for kind, words in CASES.items():
        bad = broken_copy(good, tmp_path, kind)
        with pytest.raises(BetonError) as err:
            check(bad, "data.x")
        message = str(err.value)
        assert message.startswith(f"data.x: {bad}: ") and words in message, (kind, message)
        assert "\n" not in message


def test_inspect_refuses_a_truncated_beton(digits_betons, tmp_path, capsys, monkeypatch):
    bad = broken_copy(digits_betons[1], tmp_path, "cut-half")
    code, _, err = run_script("-m ffcv_utils.tools.inspect_beton", [bad], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"python -m ffcv_utils.tools.inspect_beton: error: {bad}: truncated: "
        + err.split(": truncated: ", 1)[1].strip()]


def test_trainer_refuses_broken_betons_with_one_line(digits_betons, tmp_path, capsys,
                                                     monkeypatch):
    from ffcv_utils.train.config import load_config
    from ffcv_utils.beton.check import check_trainer_betons

    train, val = digits_betons
    bad_train = broken_copy(train, tmp_path, "cut-half")
    code, _, err = run_script("train_imagenet.py", [
        "--data.train_dataset", bad_train, "--data.val_dataset", val,
        "--logging.folder", tmp_path / "runs"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"train_imagenet.py: error: data.train_dataset: {bad_train}: truncated: "), lines
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    # the val beton goes through the same check (in process: the trainer calls exactly this)
    bad_val = broken_copy(val, tmp_path, "random")
    for eval_only in ("0", "1"):
        p, _ = load_config(["--data.train_dataset", str(train), "--data.val_dataset",
                            str(bad_val), "--training.eval_only", eval_only,
                            "--model.pretrained", "1"])
        with pytest.raises(BetonError, match=f"^data.val_dataset: {bad_val}: not a .beton"):
            check_trainer_betons(p)


def test_benchmark_refuses_a_truncated_beton(digits_betons, tmp_path):
    bad = broken_copy(digits_betons[0], tmp_path, "cut-24")
    r = subprocess.run([sys.executable, "benchmarks/profile_loader.py", "--beton", str(bad)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"error: --beton: {bad}: some samples point at data" in r.stderr.splitlines()[-1]


def test_loaders_check_their_beton(digits_betons, tmp_path):
    """find_lr.py, export.py and the benchmarks open betons through these two functions."""
    from ffcv_utils.load.loaders import train_loader, val_loader

    bad = broken_copy(digits_betons[0], tmp_path, "cut-24")
    for make in (train_loader, val_loader):
        with pytest.raises(BetonError, match=f"^{bad}: some samples point at data"):
            make(str(bad), batch_size=8, num_workers=1, res=32)


def test_a_file_found_sound_is_checked_again_once_it_changes(digits_betons, tmp_path):
    # check() remembers sound files (trainer and loaders check the same beton); a file cut
    # after a good check must still be refused.
    good = tmp_path / "copy.beton"
    shutil.copy(digits_betons[0], good)
    shutil.copy(str(digits_betons[0]) + ".json", str(good) + ".json")
    assert check(good) == check(good) > 0
    good.write_bytes(good.read_bytes()[:-48])
    with pytest.raises(BetonError, match="copy.beton"):
        check(good)


# -- hostile betons (issue 24): files that are complete but lie ------------------------------

sys.path.insert(0, str(ROOT))
from benchmarks import fuzz_beton as fz  # noqa: E402  (the fuzz's layout and field rewriting)

META = {name: (off, width) for name, off, width in fz.META_FIELDS}
TABLE = {name: (off, width) for name, off, width in fz.TABLE_FIELDS}


def hostile_copy(src: Path, dst: Path, **changes) -> Path:
    """``src`` (and its sidecar) with sample 0's metadata or table fields set: ``meta_width=31``,
    ``table_size=2**64 - 1``, ``type_label=0`` (the label field's type id)."""
    data = bytearray(src.read_bytes())
    lay = fz.Layout.of(bytes(data))
    entry = fz._entry_of(bytes(data), lay, 0)
    for key, value in changes.items():
        part, name = key.split("_", 1)
        if part == "type":
            at, width = 24 + lay.desc_size * ["image", "label"].index(name), 1
        elif part == "meta":
            (off, width), at = META[name], lay.meta_start + META[name][0]
        else:
            (off, width), at = TABLE[name], entry + TABLE[name][0]
        data[at:at + width] = (value % (1 << 8 * width)).to_bytes(width, "little")
    dst.write_bytes(bytes(data))
    shutil.copy(str(src) + ".json", str(dst) + ".json")
    return dst


def sample0(beton: Path) -> dict:
    from ffcv.reader import Reader

    r = Reader(str(beton))
    entry = r.alloc_table[r.alloc_table["sample_id"] == 0][0]
    return {"ptr": int(entry["ptr"]), "size": int(entry["size"]),
            "mode": int(r.metadata["f0"]["mode"][0]), "table": int(r.header["alloc_table_ptr"])}


def refusal(bad: Path) -> str:
    with pytest.raises(BetonError) as err:
        check(bad, "data.x")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"data.x: {bad}"), message
    return message


def test_a_pointer_8_eib_past_the_end_is_refused(small_digits_betons, tmp_path):
    """The old end-of-data check summed uint64s: pointer + 2**63 with size + 2**63 wraps to the
    true end and passed; ffcv's process cache then asked for a page table of terabytes."""
    val = small_digits_betons[1]
    s = sample0(val)
    ptr, size = s["ptr"] + (1 << 63), s["size"] + (1 << 63)
    with np.errstate(over="ignore"):  # the arithmetic the old check did
        assert int(np.uint64(ptr) + np.uint64(size)) <= s["table"]
    bad = hostile_copy(val, tmp_path / "far.beton", meta_data_ptr=ptr, table_ptr=ptr,
                       table_size=size)
    assert "lie outside the data region" in refusal(bad)
    from ffcv_utils.load.loaders import train_loader

    with pytest.raises(BetonError, match="outside the data region"):  # before any loader
        train_loader(str(bad), batch_size=8, num_workers=1, res=32, in_memory=False)


HOSTILE = {  # sample 0's fields -> the words of its refusal
    "huge-size": (dict(table_size=(1 << 64) - 1), "lie outside the data region"),
    "size-2**63": (dict(table_size=1 << 63), "lie outside the data region"),
    "pointer-0": (dict(meta_data_ptr=0, table_ptr=0), "lie outside the data region"),
    "pointer-only-in-metadata": (dict(meta_data_ptr=1 << 40), "points at data the allocation"),
    "label-float": (dict(type_label=0), "holds the fields image (RGBImageField), label "
                                        "(FloatField); this toolkit's betons hold exactly "
                                        "image (RGBImageField) and label (IntField)"),
    "image-ndarray": (dict(type_image=4), "image (NDArrayField)"),
    "mode-7": (dict(meta_mode=7), "image mode 7"),
    "width-0": (dict(meta_width=0), "declares a 0x32 image"),
    "height-65535": (dict(meta_height=65535), "sides must be within 1..32"),
    "label-10": (dict(meta_label=10), "holds label 10, but its class list names 10 classes"),
    "label-negative": (dict(meta_label=-1), "holds label -1"),
    "sample-twice": (dict(table_sample_id=1), "does not list each sample exactly once"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_fields_are_refused_in_one_line(small_digits_betons, tmp_path, case):
    changes, words = HOSTILE[case]
    bad = hostile_copy(small_digits_betons[1], tmp_path / f"{case}.beton", **changes)
    assert words in refusal(bad)


def test_a_raw_image_of_the_wrong_size_is_refused(small_digits_betons, tmp_path):
    """ffcv reshapes a raw sample's bytes to the metadata's height x width x 3."""
    from ffcv.reader import Reader

    val = small_digits_betons[1]
    meta = Reader(str(val)).metadata["f0"]
    raw = int(np.flatnonzero(meta["mode"] == 1)[0])
    data = bytearray(val.read_bytes())
    lay = fz.Layout.of(bytes(data))
    data[lay.meta_start + lay.meta_item * raw + 1] = 31  # width 32 -> 31
    bad = tmp_path / "raw.beton"
    bad.write_bytes(bytes(data))
    shutil.copy(str(val) + ".json", str(bad) + ".json")
    assert f"sample {raw} is a raw 31x32 image (2,976 bytes) stored in 3,072 bytes" in refusal(bad)


def with_extra_field(src: Path, dst: Path) -> Path:
    """``src`` rewritten by ffcv's layout with a third field, ``extra``: an RGB image field
    whose metadata claim 1x1 raw pixels over each real image's bytes."""
    data = src.read_bytes()
    head = fz.relaid(data, fz.Layout.of(data), (2, "RGBImageField", b"extra"))
    dst.write_bytes(head + data[len(head):])
    shutil.copy(str(src) + ".json", str(dst) + ".json")
    return dst


@pytest.mark.slow  # a loader in a child process: a numba compile
@pytest.mark.timeout(300)
def test_an_extra_field_crashed_the_loader_and_is_refused_now(digits_betons, tmp_path, capsys,
                                                              monkeypatch):
    train, val = digits_betons
    bad = with_extra_field(val, tmp_path / "extra.beton")
    # without the check (the loaders as they were): ffcv decodes 'extra' with its default
    # decoder, copying ~1-3 kB per image into 3-byte slots; glibc aborts (exit 134)
    code = ("from ffcv_utils.load import loaders as data\n"
            "data.check_beton = lambda *a, **k: None\n"
            f"for _ in data.val_loader({str(bad)!r}, batch_size=64, num_workers=2, res=32):\n"
            "    pass\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode < 0, (r.returncode, r.stderr[-2000:])  # died by a signal
    assert refusal(bad).endswith(
        "holds the fields image (RGBImageField), label (IntField), extra (RGBImageField); this "
        "toolkit's betons hold exactly image (RGBImageField) and label (IntField)")
    code, _, err = run_script("train_imagenet.py", [
        "--data.train_dataset", train, "--data.val_dataset", bad, "--training.eval_only", "1",
        "--model.pretrained", "1", "--logging.folder", tmp_path / "runs"], capsys, monkeypatch)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    [line] = err.strip().splitlines()
    assert line.startswith(f"train_imagenet.py: error: data.val_dataset: {bad}: holds the "
                           "fields image (RGBImageField), label (IntField), extra"), line
    assert not (tmp_path / "runs").exists()


SIDECARS = {
    "not-json": ('{"classes": ["a"', "not valid JSON (Expecting"),
    "a-list": ('["a", "b"]', "holds a JSON list, not an object"),
    "no-classes": ('{"num_samples": 100}', "has no 'classes' list"),
    "classes-numbers": ('{"classes": [0, 1]}', "'classes' is not a non-empty list"),
    "count-text": ('{"classes": ["a"], "num_samples": "100"}', "'num_samples' is str, not int"),
    "count-bool": ('{"classes": ["a"], "num_samples": true}', "'num_samples' is bool"),
    "num-classes": ('{"classes": ["a", "b"], "num_classes": 3}', "'num_classes' is 3 but"),
    "counts-sum": ('{"classes": ["a"], "class_counts": {"a": 5}, "num_samples": 6}',
                   "'class_counts' add up to 5 but 'num_samples' is 6"),
    "resolution": ('{"classes": ["a"], "settings": {"max_resolution": "big"}}',
                   "'settings.max_resolution' is 'big'"),
    "deep": ("[" * 100000 + "]" * 100000, "nested too deeply"),
    "latin-1": (b'{"classes": ["\xe9"]}', "not UTF-8 text"),
}


@pytest.mark.parametrize("case", SIDECARS)
def test_a_sidecar_that_is_not_the_writers_json_is_one_line(small_digits_betons, tmp_path, case):
    text, words = SIDECARS[case]
    bad = tmp_path / "side.beton"
    shutil.copy(small_digits_betons[1], bad)
    side = Path(str(bad) + ".json")
    side.write_bytes(text if isinstance(text, bytes) else text.encode())
    message = refusal(bad)
    assert message.startswith(f"data.x: {side}: ") and words in message, message


@pytest.mark.timeout(60)
def test_fifos_are_refused_without_blocking(small_digits_betons, tmp_path):
    """A FIFO at the sidecar's or the beton's name: open() would wait for a writer forever."""
    bad = tmp_path / "fifo.beton"
    shutil.copy(small_digits_betons[1], bad)
    os.mkfifo(str(bad) + ".json")
    assert refusal(bad) == f"data.x: {bad}.json: not a regular file (FIFO)"
    os.unlink(str(bad) + ".json")
    bad.unlink()
    os.mkfifo(bad)
    assert refusal(bad) == f"data.x: {bad}: not a regular file (FIFO)"


def test_labels_must_fit_model_num_classes_without_a_sidecar(small_digits_betons, tmp_path):
    from ffcv_utils.beton.check import check_trainer_betons
    from ffcv_utils.train.config import load_config

    bare = tmp_path / "bare.beton"  # no class list: the config's num_classes is the bound
    shutil.copy(small_digits_betons[1], bare)
    args = ["--data.train_dataset", str(bare), "--data.val_dataset", str(bare),
            "--model.num_classes"]
    check_trainer_betons(load_config([*args, "10"])[0])
    with pytest.raises(BetonError, match=r"^data.train_dataset: .*bare.beton: holds label 9, "
                                         r"but model.num_classes is 5$"):
        check_trainer_betons(load_config([*args, "5"])[0])
