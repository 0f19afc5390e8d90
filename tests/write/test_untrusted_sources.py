"""Hostile archives, folders and parquet rows, each a real file built here: the writer refuses
them in one line or skips and reports the bad entry (writing the good images), in bounded time,
and never reads what it was not given (CVE-2025-8194 negative sizes, CVE-2024-6232 pax headers,
sparse members, decompression bombs, FIFOs, /dev/zero, link loops, files from outside)."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest
from ffcv.reader import Reader

from helpers import BLOCK, END, NEGATIVE, tar_header as header, tar_member as member

from ffcv_utils.beton import sidecar as dataset_info
from ffcv_utils.tools import sample_data as sd
from ffcv_utils.base.cli import UserError
from ffcv_utils.write.sources.select import open_source
from ffcv_utils.write.sources.untrusted import EXPAND_CAP, read_regular, scan_tar, walk_files
from ffcv_utils.write.writer import write_split

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------- hostile files


def pax(**records: str) -> bytes:
    """A pax extended header (``x``) member holding ``records``."""
    out = b""
    for key, value in records.items():
        body = f" {key}={value}\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        out += f"{n}{body}".encode()
    return member("././@PaxHeader", out, b"x")


def sparse(name: str, extended: bool = False) -> bytes:
    """An old GNU sparse member (type S), with one extra sparse-map block when ``extended``."""
    data = b"\x01" * 100
    head = header(name, len(data), b"S", at={483: b"%011o\0" % (1 << 31), 482: bytes([extended])})
    return head + (bytes(BLOCK) if extended else b"") + data + bytes(-len(data) % BLOCK)


@pytest.fixture(scope="module")
def archives(photos_dir, tmp_path_factory):
    """ImageNet's official files for the photos (val tar, devkit folder and tar.gz)."""
    return sd.make_imagenet_archives(photos_dir, tmp_path_factory.mktemp("archives") / "a")


def val_members(photos_dir) -> bytes:
    return b"".join(member(name, f.read_bytes()) for f, _, name in
                    sd.photo_set(photos_dir)["val"])


def refused(match: str, **options) -> str:
    with pytest.raises(UserError, match=match) as e:
        open_source(options.pop("split", "val"), **options)
    assert "\n" not in str(e.value)
    return str(e.value)


def write(tmp_path: Path, data_dir, split="val", **source_options) -> tuple[int, list[dict]]:
    """Write in-process; (samples in the beton as ffcv reads it, the skipped list)."""
    out = tmp_path / f"{split}.beton"
    write_split(data_dir, split, out, num_workers=1, progress=False, max_resolution=64,
                source_options=source_options)
    return Reader(str(out)).num_samples, dataset_info.read_info(out)["skipped"]


def run_writer(*args, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "write_ffcv.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def one_line_error(r: subprocess.CompletedProcess, expect: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("write_ffcv.py: error: ") and expect in lines[0], lines
    assert "Traceback" not in r.stderr + r.stdout


# --------------------------------------------------------------------- tars


@pytest.mark.parametrize("form", ["USTAR_FORMAT", "GNU_FORMAT", "PAX_FORMAT"])
def test_honest_tars_read_as_tarfile_reads_them(form, tmp_path):
    """Long names (ustar prefix, GNU ``L``, pax ``path``), folders, links: the same regular
    members at the same offsets as tarfile finds; links reported, folders not."""
    path = tmp_path / "t.tar"
    long = "d" * 90 + "/" + "n" * 60 + ".JPEG"
    with tarfile.open(path, "w", format=getattr(tarfile, form)) as tar:
        for name, data in (("a.JPEG", b"a" * 700), (long, b"long"), ("z/e.JPEG", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.JPEG")
        link.type, link.linkname = tarfile.SYMTYPE, "a.JPEG"
        folder = tarfile.TarInfo("z")
        folder.type = tarfile.DIRTYPE
        tar.addfile(link)
        tar.addfile(folder)
    members, skipped = scan_tar(path)
    with tarfile.open(path) as tar:
        expected = [(i.name, i.offset_data, i.size) for i in tar if i.isfile()]
    assert [(m.name, m.offset, m.size) for m in members] == expected
    assert [m.name for m in members] == ["a.JPEG", long, "z/e.JPEG"]
    assert skipped == [(f"{path}:link.JPEG", "not a regular file (symbolic link member)")]


@pytest.mark.parametrize("kind", NEGATIVE)
def test_a_negative_member_size_is_refused_not_looped_on(kind, photos_dir, archives, tmp_path):
    tar = tmp_path / "ILSVRC2012_img_val.tar"
    tar.write_bytes(val_members(photos_dir) + header("x.JPEG", size_field=NEGATIVE[kind]) + END)
    refused(r"ILSVRC2012_img_val\.tar: damaged tar archive at byte \d+: not a non-negative",
            data_dir=tar, devkit=archives / "ILSVRC2012_devkit_t12")


def test_a_negative_size_through_the_command_line(photos_dir, archives, tmp_path):
    tar = tmp_path / "ILSVRC2012_img_val.tar"
    negative = header("x.JPEG", size_field=NEGATIVE["base-256 -512"])
    tar.write_bytes(val_members(photos_dir) + negative + END)
    out = tmp_path / "val.beton"
    r = run_writer("--split", "val", "--cfg.data_dir", tar, "--cfg.write_path", out,
                   "--cfg.devkit", archives / "ILSVRC2012_devkit_t12.tar.gz")
    one_line_error(r, "damaged tar archive")
    assert not out.exists()


def test_a_crafted_pax_header_is_refused_in_linear_time(photos_dir, archives, tmp_path):
    tar = tmp_path / "val.tar"
    # CVE-2024-6232: tarfile's hdrcharset search is quadratic in a run of digits (2 s for
    # 20,000 on 3.11.7; these 500,000 would take about 20 minutes)
    quadratic = member("././@PaxHeader", b"0" * 500_000, b"x")
    tar.write_bytes(val_members(photos_dir) + quadratic + member("y.JPEG", b"y") + END)
    refused(r"val\.tar: damaged tar archive at byte \d+: malformed pax header",
            data_dir=tar, devkit=archives / "ILSVRC2012_devkit_t12")
    huge = member("././@PaxHeader", b"0" * (2 << 20), b"x")  # over the 1 MiB header cap
    tar.write_bytes(val_members(photos_dir) + huge + END)
    refused(r"extended header of 2097152 bytes", data_dir=tar,
            devkit=archives / "ILSVRC2012_devkit_t12")


def test_sparse_members_are_skipped_and_reported_the_rest_written(photos_dir, archives,
                                                                  tmp_path):
    tar = tmp_path / "ILSVRC2012_img_val.tar"
    tar.write_bytes(sparse("old_sparse.JPEG", extended=True) + val_members(photos_dir)
                    + pax(**{"GNU.sparse.major": "1", "GNU.sparse.minor": "0"})
                    + member("pax_sparse.JPEG", b"\0" * 700) + END)
    members, skipped = scan_tar(tar)
    assert len(members) == 30
    assert [(Path(n).name, why) for n, why in skipped] == [
        ("ILSVRC2012_img_val.tar:old_sparse.JPEG", "not a regular file (sparse member)"),
        ("ILSVRC2012_img_val.tar:pax_sparse.JPEG", "not a regular file (sparse member)")]
    count, report = write(tmp_path, tar, devkit=archives / "ILSVRC2012_devkit_t12")
    assert count == 30
    assert {r["file"].rsplit(":", 1)[1] for r in report} == {"old_sparse.JPEG",
                                                             "pax_sparse.JPEG"}


def _train_tar(photos_dir, path: Path, hostile: bytes) -> None:
    """A train tar of per-class tars, the first class's tar ending in ``hostile``."""
    sets = sd.photo_set(photos_dir)["train"]
    outer = b""
    for y, (wnid, _) in enumerate(sd.photo_synsets(3)):
        inner = b"".join(member(name, f.read_bytes()) for f, label, name in sets if label == y)
        outer += member(f"{wnid}.tar", inner + (hostile if y == 0 else b"") + END)
    path.write_bytes(outer + END)


def test_nested_class_tars_are_read_with_the_same_guards(photos_dir, tmp_path):
    tar = tmp_path / "ILSVRC2012_img_train.tar"
    _train_tar(photos_dir, tar, sparse("n_sparse.JPEG"))
    source = open_source("train", data_dir=tar)
    assert len(source) == 60 and len(list(source)) == 60
    assert [(Path(name).name, why) for name, why in source.skipped] == [
        (f"ILSVRC2012_img_train.tar:{sd.photo_synsets(3)[0][0]}.tar:n_sparse.JPEG",
         "not a regular file (sparse member)")]
    _train_tar(photos_dir, tar, header("neg.JPEG", size_field=NEGATIVE["octal -512"]))
    refused(r"\.tar:n\w+\.tar: damaged tar archive at byte \d+", split="train", data_dir=tar)


def test_a_devkit_bomb_is_refused_after_a_bounded_expansion(photos_dir, archives, tmp_path):
    """1 MB of gzip that expands past 1 GiB (concatenated gzip members of zeros)."""
    bomb = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    zeros = gzip.compress(bytes(1 << 20), 9)
    with open(bomb, "wb") as f:
        f.write(gzip.compress(header("ILSVRC2012_devkit_t12/data/junk.bin", 1100 << 20)))
        for _ in range(1100):
            f.write(zeros)
    assert bomb.stat().st_size < 2 << 20
    flat = tmp_path / "flat"
    flat.mkdir()
    refused(rf"devkit_t12\.tar\.gz: expands to more than {EXPAND_CAP >> 20} MiB",
            data_dir=flat, devkit=bomb)
    big_meta = tmp_path / "big_meta.tar.gz"
    big_meta.write_bytes(gzip.compress(header("devkit/data/meta.mat", 1100 << 20)) + zeros)
    refused(r"big_meta\.tar\.gz:devkit/data/meta\.mat: 1,153,433,600 bytes, over the",
            data_dir=flat, devkit=big_meta)


def _mat_v5_compressed(packed: bytes) -> bytes:
    """A little-endian MAT-file v5 holding one miCOMPRESSED (15) element."""
    head = b"MATLAB 5.0 MAT-file".ljust(124, b" ") + b"\x00\x01IM"
    return head + (15).to_bytes(4, "little") + len(packed).to_bytes(4, "little") + packed


def test_a_damaged_meta_mat_is_one_line_naming_it(photos_dir, archives, tmp_path):
    flat = archives / "ILSVRC2012_img_val.tar"
    devkit = tmp_path / "devkit"
    shutil.copytree(archives / "ILSVRC2012_devkit_t12", devkit)
    meta = devkit / "data" / "meta.mat"
    good = meta.read_bytes()
    for damaged in (good[:300], good[:128] + b"\xff" * 64, b"not a MAT-file " * 300):
        meta.write_bytes(damaged)
        refused(r"devkit: data/meta\.mat: not a readable devkit meta\.mat", data_dir=flat,
                devkit=devkit)
    meta.write_bytes(_mat_v5_compressed(zlib.compress(bytes(72 << 20), 9)))  # 72 MiB inflated
    refused(r"meta\.mat: a compressed variable expands to more than 64 MiB", data_dir=flat,
            devkit=devkit)


def test_damaged_label_files_are_one_line(archives, tmp_path):
    flat = archives / "ILSVRC2012_img_val.tar"
    csv = tmp_path / "labels.csv"
    csv.write_bytes(b"file,class\nILSVRC2012_val_00000001.JPEG,n01440764\n\""
                    + b"x" * 200_000 + b"\",n01440764\n")  # over csv's field size limit
    refused(r"labels\.csv line 3: not a CSV line", data_dir=flat, val_labels=csv)
    csv.write_bytes(b"\xff\xfe not utf-8")
    refused(r"cannot read labels file .*labels\.csv", data_dir=flat, val_labels=csv)
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    refused(r"cannot read labels file .*fifo\.csv: not a regular file \(FIFO\)",
            data_dir=flat, val_labels=fifo)


def _shard(path: Path, photos_dir, labels: list[int]) -> None:
    files = [f for f, _, _ in sd.photo_set(photos_dir)["val"]][:len(labels)]
    with tarfile.open(path, "w") as tar:
        for i, (f, label) in enumerate(zip(files, labels)):
            for field, data in (("jpg", f.read_bytes()), ("cls", str(label).encode())):
                info = tarfile.TarInfo(f"s{i:04d}.{field}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_cls_label_of_five_million_is_refused(photos_dir, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _shard(shards / "val-0000.tar", photos_dir, [0, 1, 5_000_000])
    refused(r"largest \.cls label of .* \(5,000,000\) makes 5,000,001 classes, more than "
            r"--cfg.max_classes 100,000", wds_shards=str(shards))
    out = tmp_path / "val.beton"
    r = run_writer("--split", "val", "--cfg.wds_shards", shards, "--cfg.write_path", out)
    one_line_error(r, "more than --cfg.max_classes 100,000")
    _shard(shards / "val-0000.tar", photos_dir, [0, 1, 5000])
    refused(r"makes 5,001 classes for 3 samples; give the class list", wds_shards=str(shards))
    refused(r"more than --cfg.max_classes 2", wds_shards=str(shards),
            class_list=["a", "b", "c"], max_classes=2)
    assert not out.exists()


# --------------------------------------------------------------------- folders


@pytest.fixture
def hostile_folder(photos_dir, tmp_path):
    """train/<3 classes>/ with 2 photos each, plus a FIFO, a link to /dev/zero, a folder
    link loop, a link to a photo outside the tree and a hidden folder holding a photo."""
    root, outside = tmp_path / "data", tmp_path / "outside.JPEG"
    photos = sd.photo_set(photos_dir)["train"]
    for f, label, name in photos:
        folder = root / "train" / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        if len(list(folder.iterdir())) < 2:
            shutil.copy(f, folder / Path(name).name)
    shutil.copy(photos[0][0], outside)
    train = root / "train"
    os.mkfifo(train / "c0" / "fifo.JPEG")
    (train / "c1" / "zero.JPEG").symlink_to("/dev/zero")
    (train / "c2" / "sub").mkdir()
    (train / "c2" / "sub" / "up").symlink_to("..", target_is_directory=True)
    (train / "c2" / "parent").symlink_to("../", target_is_directory=True)
    (train / "c2" / "stolen.JPEG").symlink_to(outside)
    (train / "c2" / ".hidden").mkdir()
    shutil.copy(photos[0][0], train / "c2" / ".hidden" / "x.JPEG")
    return root


EXPECTED_SKIPS = {"c0/fifo.JPEG": "not a regular file (FIFO)",
                  "c1/zero.JPEG": "symbolic link to outside",
                  "c2/sub/up": "folder already visited",
                  "c2/parent": "symbolic link to outside",
                  "c2/stolen.JPEG": "symbolic link to outside"}


def test_the_folder_walk_skips_and_reports_each_hostile_entry(hostile_folder):
    files, skipped = walk_files(hostile_folder / "train" / "c2", hostile_folder / "train")
    assert [Path(f).name for f in files] == sorted(Path(f).name for f in files)
    assert len(files) == 2 and not any(".hidden" in f for f in files)
    got = {Path(p).relative_to(hostile_folder / "train").as_posix(): why for p, why in skipped}
    assert got.keys() == {"c2/sub/up", "c2/parent", "c2/stolen.JPEG"}
    with pytest.raises(OSError, match=r"not a regular file \(FIFO\)"):
        read_regular(hostile_folder / "train" / "c0" / "fifo.JPEG")
    with pytest.raises(OSError, match=r"not a regular file \(character device\)"):
        read_regular(hostile_folder / "train" / "c1" / "zero.JPEG")


def test_a_hostile_folder_is_written_without_its_bad_entries(hostile_folder, tmp_path):
    """The real command line: no hang, no MemoryError; 6 photos written, 5 entries reported."""
    out = tmp_path / "train.beton"
    r = run_writer("--split", "train", "--cfg.data_dir", hostile_folder, "--cfg.write_path",
                   out, "--cfg.max_resolution", "64", "--cfg.num_workers", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert Reader(str(out)).num_samples == 6
    skipped = {s["file"]: s["reason"] for s in dataset_info.read_info(out)["skipped"]}
    assert skipped.keys() == EXPECTED_SKIPS.keys()
    for name, why in EXPECTED_SKIPS.items():
        assert skipped[name].startswith(why), (name, skipped[name])


# --------------------------------------------------------------------- Hugging Face


def test_a_parquet_row_without_bytes_never_reads_its_path(photos_dir, tmp_path):
    """Rows 2 and 3 name a private file (absolute, and relative escaping the root), row 4 a
    file inside --cfg.hf_path_root: without the option none is read, with it only row 4."""
    datasets = pytest.importorskip("datasets")
    root, private = tmp_path / "root", tmp_path / "private"
    root.mkdir()
    private.mkdir()
    jpegs = [f.read_bytes() for f, _, _ in sd.photo_set(photos_dir)["train"][:3]]
    (private / "secret.JPEG").write_bytes(jpegs[2])
    (root / "img.JPEG").write_bytes(jpegs[2])
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["a", "b"])})
    paths = [None, "b.jpg", str(private / "secret.JPEG"), "../private/secret.JPEG", "img.JPEG"]
    rows = {"image": [{"bytes": data, "path": path}
                      for data, path in zip([*jpegs[:2], None, None, None], paths)],
            "label": [0, 1, 1, 0, 1]}
    (tmp_path / "hf" / "data").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # to_parquet sizes the rows without bytes by their paths
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            str(tmp_path / "hf" / "data" / "train-00000-of-00001.parquet"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
        count, report = write(tmp_path, None, split="train", hf_dataset=str(tmp_path / "hf"))
        assert count == 2
        assert [r["file"].split(" row ")[1][:1] for r in report] == ["2", "3", "4"]
        assert all("not read unless --cfg.hf_path_root" in r["reason"] for r in report)
        source = open_source("train", hf_dataset=str(tmp_path / "hf"), hf_path_root=str(root))
    assert [s.read() for s in source] == jpegs  # row 4 read from the root
    assert [name.split(" row ")[1][:1] for name, _ in source.skipped] == ["2", "3"]
    assert {why for _, why in source.skipped} == {
        f"no image bytes; its path is outside --cfg.hf_path_root {root.resolve()}"}


def test_member_and_entry_caps_end_a_scan_in_one_line(photos_dir, tmp_path, monkeypatch):
    from ffcv_utils.write.sources import untrusted

    monkeypatch.setattr(untrusted, "MEMBERS_CAP", 5)
    tar = tmp_path / "val.tar"
    tar.write_bytes(val_members(photos_dir) + END)
    with pytest.raises(UserError, match=r"val\.tar: more than 5 members"):
        scan_tar(tar)
    monkeypatch.setattr(untrusted, "ENTRIES_CAP", 3)
    for i in range(4):
        (tmp_path / "many" / str(i)).mkdir(parents=True)
    with pytest.raises(UserError, match=r"more than 3 entries under .*many"):
        walk_files(tmp_path / "many")


@pytest.mark.timeout(30)
def test_a_class_list_that_is_a_fifo_or_a_device_is_refused_without_blocking(tmp_path):
    """--cfg.class_list (and a train beton's sidecar) is read as an untrusted file."""
    from ffcv_utils.write.writer import read_class_list

    fifo = tmp_path / "classes.json"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(UserError, match="not a regular file"):
            read_class_list(path)
    good = tmp_path / "good.json"
    good.write_text('["a", "b"]')
    assert read_class_list(good) == ["a", "b"]
