"""The writer's data sources: one set of real photos laid out as every form the writer reads
(Kaggle, official archives + devkit, Hugging Face parquet, webdataset shards, a CSV) must give
the same (image bytes, label) per image and the same class list, and bad input one line naming
the file and line."""
from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
from collections import Counter
from types import SimpleNamespace

import pytest

from ffcv_utils.tools import sample_data as sd
from ffcv_utils.base.cli import UserError
from ffcv_utils.write.sources.select import data_root, open_source

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module", autouse=True)
def hf_cache(tmp_path_factory):
    """load_dataset converts parquet into its cache: keep that out of the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
        yield


@pytest.fixture(scope="module")
def layouts(photos_dir, tmp_path_factory):
    forms = sd.make_source_forms(photos_dir, tmp_path_factory.mktemp("layouts") / "forms")
    return dict(forms, photos=photos_dir)


def _expected(photos, split, order=None):
    """Counter of (sha1 of the file, label) for the photo set; ``order`` relabels by name."""
    synsets = sd.photo_synsets(3)
    rows = sd.photo_set(photos)[split]
    relabel = (lambda y: y) if order is None else (lambda y: order.index(synsets[y][0]))
    return Counter((hashlib.sha1(f.read_bytes()).hexdigest(), relabel(y)) for f, y, _ in rows)


def _got(source):
    """Counter of (sha1, label) over the source; also checks ``len``, ``labels()`` (known
    before reading) and that ``subset`` yields exactly the samples asked for."""
    samples = list(source)
    assert len(samples) == len(source)
    assert [s.label for s in samples] == source.labels()
    part = source.subset([2, 0])
    assert len(part) == 2
    assert [(s.name, s.read()) for s in part] == [(x.name, x.read()) for x in samples[2::-2]]
    return Counter((hashlib.sha1(s.read()).hexdigest(), s.label) for s in samples)


WNIDS = [w for w, _ in sd.photo_synsets(3)]
WORDS = [t for _, t in sd.photo_synsets(3)]


def _val_sources(L):
    a, k = L["archives"], L["kaggle"]
    flat = k / "ILSVRC/Data/CLS-LOC/val"
    return {
        "kaggle root": dict(data_dir=k),
        "kaggle CLS-LOC": dict(data_dir=k / "ILSVRC/Data/CLS-LOC"),
        "kaggle val folder": dict(data_dir=flat),
        "kaggle csv": dict(data_dir=flat, val_labels=k / "LOC_val_solution.csv"),
        "custom csv": dict(data_dir=flat, val_labels=L["csv"]),
        "devkit folder": dict(data_dir=flat, devkit=a / "ILSVRC2012_devkit_t12"),
        "val tar + devkit tar.gz": dict(data_dir=a / "ILSVRC2012_img_val.tar",
                                        devkit=a / "ILSVRC2012_devkit_t12.tar.gz"),
        "val tar + kaggle csv": dict(data_dir=a / "ILSVRC2012_img_val.tar",
                                     val_labels=k / "LOC_val_solution.csv"),
        "downloads folder": dict(data_dir=a),
        "wds pattern": dict(wds_shards=str(L["wds"] / "val-{0000..0001}.tar")),
        "wds folder": dict(wds_shards=str(L["wds"])),
    }


def test_every_val_form_gives_the_same_images_labels_and_classes(layouts):
    want = _expected(layouts["photos"], "val")
    for form, options in _val_sources(layouts).items():
        source = open_source("val", **options)
        assert source.classes == WNIDS, form
        assert len(source) == sum(want.values()), form
        assert _got(source) == want, form
        assert source.skipped == [], form


def test_every_train_form_gives_the_same_images_labels_and_classes(layouts):
    want = _expected(layouts["photos"], "train")
    # Kaggle's train is an ImageFolder tree under ILSVRC/Data/CLS-LOC: the writer's own scan
    assert open_source("train", data_dir=layouts["kaggle"]) is None
    assert data_root(layouts["kaggle"]) == layouts["kaggle"] / "ILSVRC/Data/CLS-LOC"
    tar = open_source("train", data_dir=layouts["archives"] / "ILSVRC2012_img_train.tar")
    wds = open_source("train", wds_shards=str(layouts["wds"]))
    downloads = open_source("train", data_dir=layouts["archives"])
    for source in (tar, wds, downloads):
        assert source.classes == WNIDS
        assert _got(source) == want
    labels = [s.label for s in tar]
    assert labels == sorted(labels)  # class by class although the outer tar is not in order


def test_hugging_face_splits_and_names(layouts):
    for split in ("train", "val"):
        source = open_source(split, hf_dataset=str(layouts["hf"]))
        assert source.classes == WORDS  # the ClassLabel's names as the dataset gives them
        assert _got(source) == _expected(layouts["photos"], split)
    named = open_source("val", hf_dataset=str(layouts["hf"]), hf_split="train",
                        hf_image_column="image", hf_label_column="label")
    assert _got(named) == _expected(layouts["photos"], "train")


def test_labels_follow_the_train_class_list(layouts, tmp_path):
    order = WNIDS[::-1]
    class_file = tmp_path / "classes.txt"
    class_file.write_text("\n".join(order) + "\n")
    a = layouts["archives"]
    for class_list in (order, str(class_file)):
        val = open_source("val", data_dir=a / "ILSVRC2012_img_val.tar",
                          devkit=a / "ILSVRC2012_devkit_t12", class_list=class_list)
        assert val.classes == order
        assert _got(val) == _expected(layouts["photos"], "val", order)
    train = open_source("train", data_dir=a / "ILSVRC2012_img_train.tar", class_list=order)
    assert _got(train) == _expected(layouts["photos"], "train", order)
    hf = open_source("val", hf_dataset=str(layouts["hf"]), class_list=WORDS[::-1])
    assert _got(hf) == _expected(layouts["photos"], "val", order)
    extra = ["a class the dataset lacks"] + WORDS[::-1]
    hf = open_source("val", hf_dataset=str(layouts["hf"]), class_list=extra)
    assert _got(hf) == _expected(layouts["photos"], "val", ["none"] + order)
    _one_line_error(r"class 'tench, Tinca tinca' of .* is not in the class list from the class "
                    r"list given", hf_dataset=str(layouts["hf"]), class_list=WORDS[1:])
    # webdataset labels are numbers: a class list that disagrees with the shards' json is refused
    with pytest.raises(UserError, match=r"val-0000\.tar:.*json names"):
        open_source("val", wds_shards=str(layouts["wds"]), class_list=order)


def test_archives_are_read_without_temporary_files(layouts, tmp_path, monkeypatch):
    empty = tmp_path / "tmp"
    empty.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(empty))
    monkeypatch.setenv("TMPDIR", str(empty))
    a = layouts["archives"]
    for source in (open_source("train", data_dir=a / "ILSVRC2012_img_train.tar"),
                   open_source("val", data_dir=a / "ILSVRC2012_img_val.tar",
                               devkit=a / "ILSVRC2012_devkit_t12.tar.gz"),
                   open_source("train", wds_shards=str(layouts["wds"]))):
        assert len(list(source)) == len(source)
    assert list(empty.iterdir()) == []


def _one_line_error(match, **options):
    with pytest.raises(UserError, match=match) as e:
        open_source(options.pop("split", "val"), **options)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_label_file_errors_name_file_and_line(layouts, tmp_path):
    k = layouts["kaggle"]
    flat = k / "ILSVRC/Data/CLS-LOC/val"
    lines = (k / "LOC_val_solution.csv").read_text().splitlines()
    missing = tmp_path / "missing.csv"
    missing.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    name = lines[3].split(",")[0]
    _one_line_error(rf"no label for image .*{name}\.JPEG in .*missing\.csv",
                    data_dir=flat, val_labels=missing)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("file,class\nILSVRC2012_val_00000001.JPEG,n01440764\n"
                       "ILSVRC2012_val_00000002.JPEG,n99999999\n")
    _one_line_error(r"unknown\.csv line 3: class 'n99999999' is not in the class list from "
                    r"the class list given", data_dir=flat, val_labels=unknown, class_list=WNIDS)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\nILSVRC2012_val_00000001.JPEG,n01440764\nno_class_here.JPEG\n")
    _one_line_error(r"bad\.csv line 3: expected 'file,class'", data_dir=flat, val_labels=bad)
    kaggle = tmp_path / "kaggle.csv"
    kaggle.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,\n")
    _one_line_error(r"kaggle\.csv line 2: expected 'ImageId,PredictionString'",
                    data_dir=flat, val_labels=kaggle)


def test_devkit_errors_name_the_missing_file_or_line(layouts, tmp_path):
    a = layouts["archives"]
    flat = layouts["kaggle"] / "ILSVRC/Data/CLS-LOC/val"
    no_meta = tmp_path / "no_meta"
    shutil.copytree(a / "ILSVRC2012_devkit_t12", no_meta)
    (no_meta / "data" / "meta.mat").unlink()
    _one_line_error(r"devkit .*no_meta has no data/meta\.mat", data_dir=flat, devkit=no_meta)
    no_truth = tmp_path / "no_truth.tar.gz"
    with tarfile.open(no_truth, "w:gz") as tar:
        tar.add(a / "ILSVRC2012_devkit_t12/data/meta.mat", arcname="devkit/data/meta.mat")
    _one_line_error(r"no_truth\.tar\.gz has no data/ILSVRC2012_validation_ground_truth\.txt",
                    data_dir=flat, devkit=no_truth)
    bad_id = tmp_path / "bad_id"
    shutil.copytree(a / "ILSVRC2012_devkit_t12", bad_id)
    truth = bad_id / "data" / "ILSVRC2012_validation_ground_truth.txt"
    ids = truth.read_text().splitlines()
    truth.write_text("\n".join(ids[:1] + ["4"] + ids[2:]) + "\n")  # 4: the parent synset
    _one_line_error(r"ground_truth\.txt line 2: ILSVRC2012_ID 4 is not one of the leaf",
                    data_dir=flat, devkit=bad_id)


def test_hugging_face_errors(layouts, tmp_path, monkeypatch):
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=WORDS)})
    jpeg = next(layouts["photos"].rglob("*.JPEG")).read_bytes()
    rows = {"image": [{"bytes": jpeg, "path": "a.JPEG"}] * 3, "label": [0, 1, -1]}
    (tmp_path / "test" / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        str(tmp_path / "test" / "data" / "test-00000-of-00001.parquet"))
    _one_line_error(r"test split test row 2: label -1 \(unlabelled",
                    hf_dataset=str(tmp_path / "test"), hf_split="test")
    _one_line_error(r"cannot load .* \(split validation\): Unknown split",
                    hf_dataset=str(tmp_path / "test"))
    _one_line_error(r"--cfg.hf_label_column 'image' is a Image, not ClassLabel",
                    hf_dataset=str(layouts["hf"]), hf_label_column="image")
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    _one_line_error(r"needs the 'datasets' package: pip install -e '\.\[hf\]'",
                    hf_dataset=str(layouts["hf"]))


def test_shard_and_archive_errors(layouts, tmp_path):
    shard = tmp_path / "shards" / "val-0000.tar"
    shard.parent.mkdir()
    with tarfile.open(layouts["wds"] / "val-0000.tar") as src, tarfile.open(shard, "w") as dst:
        for info in src:
            if info.name != "ILSVRC2012_val_00000002.cls":
                dst.addfile(info, src.extractfile(info))
    _one_line_error(r"val-0000\.tar:ILSVRC2012_val_00000002: no \.cls label",
                    wds_shards=str(shard.parent))
    _one_line_error(r"shard not found: .*val-0002\.tar \(8 of 10 shards",
                    wds_shards=str(layouts["wds"] / "val-{0000..0009}.tar"))
    _one_line_error(r"ILSVRC2012_img_val\.tar holds images, not per-class tars.*--cfg.devkit",
                    data_dir=layouts["archives"] / "ILSVRC2012_img_val.tar")
    not_tar = tmp_path / "not.tar"
    not_tar.write_bytes(b"hello" * 100)
    _one_line_error(r"cannot read .*not\.tar as a tar archive", data_dir=not_tar)
    _one_line_error(r"--cfg.hf_dataset and --cfg.wds_shards name two sources",
                    hf_dataset="x", wds_shards="y")


def test_a_form_added_to_the_registry_gets_its_option_check_and_dispatch(monkeypatch):
    """One function plus one FORMS entry: the writer's option list names it, a second source
    named beside it is refused, and open_source hands it the options."""
    from ffcv_utils.write.sources.registry import FORMS, Form, source_options

    opened = []
    demo = SimpleNamespace(classes=["a", "b"], describe=lambda: "the demo source")

    def open_demo(split, options, classes, class_source, max_classes):
        opened.append((split, options["demo_source"], classes, max_classes))
        return demo

    monkeypatch.setitem(FORMS, "demo", Form("demo_source", "a demo layout", open_demo))
    assert source_options()["demo_source"] == "a demo layout"
    assert open_source("val", demo_source="here", class_list=["a", "b"], max_classes=5) is demo
    assert opened == [("val", "here", ["a", "b"], 5)]
    _one_line_error(r"--cfg.wds_shards and --cfg.demo_source name two sources",
                    wds_shards="x", demo_source="here")
