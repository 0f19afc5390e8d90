"""Small real image folders built from data that ships inside installed packages (no download).

* ``digits``: scikit-learn's 1,797 handwritten digits (10 classes), upsampled and saved as
  grayscale JPEGs in an ImageFolder tree with ``train/`` and ``val/``. Learnable in a few CPU
  epochs, so the demo and the end-to-end tests can check that training really learns.
* ``photos``: ImageNet-like JPEGs (random crops of scikit-learn's two sample photographs at
  ImageNet's typical sizes, quality 90) for loader benchmarks and writer tests.
* ``forms``: a ``photos`` set laid out as every other source the writer reads: Kaggle's
  layout, ImageNet's official archives and devkit, Hugging Face parquet, webdataset shards and
  a CSV of ``file,class`` (classes named by ImageNet-style wnids).
* ``suites``: the digits laid out as ImageNet and the evaluation sets ship (``ffcv-eval``):
  ``train/`` and ``val/`` with wnid-style class folders and ``ILSVRC2012_val_<n>`` file names,
  ``real.json``, ImageNetV2's numbered folders, ImageNet-R/-A's class subsets and Sketch;
  V2, R and A also as the archives they are downloaded as.

Each is written to a temporary folder and renamed into place, so a folder that exists is complete.

    python -m ffcv_utils.tools.sample_data digits demo_data/digits
    python -m ffcv_utils.tools.sample_data photos bench_data/photos --images 2000 --classes 10
    python -m ffcv_utils.tools.sample_data forms demo_data/forms --photos bench_data/photos
    python -m ffcv_utils.tools.sample_data suites demo_data/suites [--classes RUN/classes.json]
"""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from ..base.atomic import publish, temporary_folder_beside
from ..base.cli import ArgParser, UserError, run_main

PROG = "python -m ffcv_utils.tools.sample_data"
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_digits_folder(root: str | Path, size: int = 64, val_fraction: float = 0.2,
                       seed: int = 0) -> Path:
    """ImageFolder tree of scikit-learn's digits: ``root/{train,val}/<digit>/<n>.jpg``."""
    from sklearn.datasets import load_digits

    root = Path(root)
    if root.exists():
        return root
    digits = load_digits()
    rng = np.random.default_rng(seed)
    is_val = rng.random(len(digits.target)) < val_fraction
    tmp = temporary_folder_beside(root)
    try:
        for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            gray = (pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            img = Image.fromarray(gray, mode="L").resize((size, size), Image.BICUBIC)
            split = "val" if is_val[i] else "train"
            folder = tmp / split / f"{label}_{DIGIT_NAMES[label]}"
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{i:05d}.jpg", quality=95)
        publish(tmp, root)
        return root
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _source_photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im) for im in load_sample_images().images]


def imagenet_like_jpeg(rng: np.random.Generator, photos: list[np.ndarray]) -> Image.Image:
    """One ImageNet-sized image (about 500x375, aspect 3:4 to 4:3) cut from a real photograph."""
    src = photos[rng.integers(len(photos))]
    h, w = src.shape[:2]
    ch = int(rng.integers(h // 3, h + 1))
    cw = int(min(w, ch * rng.uniform(0.75, 1.6)))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(src[y:y + ch, x:x + cw])
    out_w = int(rng.integers(333, 501))
    out_h = int(round(out_w * ch / cw))
    img = crop.resize((out_w, max(out_h, 64)), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def make_photo_folder(root: str | Path, images: int = 2000, classes: int = 10,
                      val_images: int = 0, seed: int = 0) -> Path:
    """ImageFolder tree of ImageNet-like JPEGs: ``root/train/class_XXX/*.jpg`` (+ ``val/``)."""
    root = Path(root)
    if root.exists():
        return root
    rng = np.random.default_rng(seed)
    photos = _source_photos()
    tmp = temporary_folder_beside(root)
    try:
        for split, count in (("train", images), ("val", val_images)):
            for i in range(count):
                folder = tmp / split / f"class_{i % classes:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                imagenet_like_jpeg(rng, photos).save(folder / f"{i:06d}.JPEG", quality=90)
        publish(tmp, root)
        return root
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# One photo set laid out as each source the writer reads (tests, README examples): ImageNet's
# Kaggle layout, its official archives and devkit, Hugging Face parquet, webdataset shards and a
# CSV of file,class. Class folders become ImageNet-style wnids so every layout names classes
# alike; the devkit's ILSVRC2012_IDs are deliberately not in sorted-wnid order, as in ImageNet.

_IMAGENET_FIRST = [("n01440764", "tench, Tinca tinca"),
                   ("n01443537", "goldfish, Carassius auratus"),
                   ("n01484850", "great white shark, white shark, man-eater"),
                   ("n01491361", "tiger shark, Galeocerdo cuvieri"),
                   ("n01494475", "hammerhead, hammerhead shark")]


def photo_synsets(count: int) -> list[tuple[str, str]]:
    """(wnid, words) for ``count`` classes, sorted by wnid: ImageNet's first ones, then made up."""
    extra = [(f"n{99000000 + i:08d}", f"made-up class {i}")
             for i in range(len(_IMAGENET_FIRST), count)]
    return (_IMAGENET_FIRST + extra)[:count]


def photo_set(photos: str | Path) -> dict[str, list[tuple[Path, int, str]]]:
    """Per split of an ImageFolder tree: (source file, label, ImageNet-style file name). Train
    files are ``<wnid>_<k>.JPEG``; val files ``ILSVRC2012_val_<n>.JPEG`` numbered from 1."""
    photos = Path(photos)
    classes = sorted(d.name for d in (photos / "train").iterdir() if d.is_dir())
    wnids = [w for w, _ in photo_synsets(len(classes))]
    out = {}
    for split in ("train", "val"):
        files = sorted((f for c in classes for f in (photos / split / c).glob("*")
                        if f.is_file()), key=lambda f: f.name)
        rows = [(f, classes.index(f.parent.name)) for f in files]
        if split == "train":
            out[split] = [(f, y, f"{wnids[y]}_{f.stem}.JPEG") for f, y in rows]
        else:
            out[split] = [(f, y, f"ILSVRC2012_val_{n:08d}.JPEG")
                          for n, (f, y) in enumerate(rows, 1)]
    return out


@contextmanager
def _building(root: Path):
    """A temporary folder beside ``root``, published as ``root`` only when the body succeeds."""
    tmp = temporary_folder_beside(root)
    try:
        yield tmp
        publish(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_kaggle_layout(photos: str | Path, root: str | Path) -> Path:
    """Kaggle's ImageNet: ``ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG``, a flat ``.../val/``,
    ``LOC_val_solution.csv`` and ``LOC_synset_mapping.txt``."""
    root, sets = Path(root), photo_set(photos)
    synsets = photo_synsets(len({y for _, y, _ in sets["train"]}))
    with _building(root) as tmp:
        data = tmp / "ILSVRC" / "Data" / "CLS-LOC"
        for f, y, name in sets["train"]:
            (data / "train" / synsets[y][0]).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, data / "train" / synsets[y][0] / name)
        (data / "val").mkdir(parents=True)
        rows = ["ImageId,PredictionString"]
        for f, y, name in sets["val"]:
            shutil.copyfile(f, data / "val" / name)
            wnid = synsets[y][0]
            rows.append(f"{Path(name).stem},{wnid} 10 20 200 300 {wnid} 5 5 50 50")
        (tmp / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
        (tmp / "LOC_synset_mapping.txt").write_text("".join(f"{w} {t}\n" for w, t in synsets))
    return root


def write_labels_csv(photos: str | Path, path: str | Path, split: str = "val") -> Path:
    """A CSV of ``file,class`` (header, wnids) for the ImageNet-style names of ``split``."""
    sets = photo_set(photos)
    synsets = photo_synsets(len({y for _, y, _ in sets["train"]}))
    lines = ["file,class"] + [f"{name},{synsets[y][0]}" for _, y, name in sets[split]]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


def _devkit_meta(synsets: list[tuple[str, str]]) -> np.ndarray:
    """The devkit's ``synsets`` struct array: leaves with IDs in reverse wnid order, and one
    parent synset (num_children > 0) that readers must ignore."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    meta = np.zeros((len(synsets) + 1, 1), dtype=[(f, "O") for f in fields])
    n = len(synsets)
    for i, (wnid, words) in enumerate(synsets):
        meta[i, 0] = (n - i, wnid, words, "", 0, np.zeros(0), 0, 0)
    meta[n, 0] = (n + 1, "n00001740", "entity", "", n, np.arange(1, n + 1), 1, 0)
    return meta


def make_imagenet_archives(photos: str | Path, root: str | Path) -> Path:
    """ImageNet's official files: ``ILSVRC2012_img_train.tar`` (one ``<wnid>.tar`` per class),
    ``ILSVRC2012_img_val.tar`` (flat) and the devkit as a folder and as ``.tar.gz``."""
    import scipy.io

    root, sets = Path(root), photo_set(photos)
    synsets = photo_synsets(len({y for _, y, _ in sets["train"]}))
    with _building(root) as tmp:
        train_tar = tmp / "ILSVRC2012_img_train.tar"
        with tarfile.open(train_tar, "w", format=tarfile.GNU_FORMAT) as outer:
            for y, (wnid, _) in reversed(list(enumerate(synsets))):  # not in class order
                inner = io.BytesIO()
                with tarfile.open(fileobj=inner, mode="w", format=tarfile.GNU_FORMAT) as tar:
                    for f, label, name in sets["train"]:
                        if label == y:
                            _add_file(tar, name, f.read_bytes())
                _add_file(outer, f"{wnid}.tar", inner.getvalue())
        with tarfile.open(tmp / "ILSVRC2012_img_val.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for f, _, name in sets["val"]:
                _add_file(tar, name, f.read_bytes())
        data = tmp / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        scipy.io.savemat(data / "meta.mat", {"synsets": _devkit_meta(synsets)})
        ids = {wnid: len(synsets) - i for i, (wnid, _) in enumerate(synsets)}
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "".join(f"{ids[synsets[y][0]]}\n" for _, y, _ in sets["val"]))
        with tarfile.open(tmp / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
            tar.add(tmp / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
    return root


def make_hf_parquet(photos: str | Path, root: str | Path) -> Path:
    """A Hugging Face dataset folder like ``ILSVRC/imagenet-1k``: ``data/<split>-00000-of-00001
    .parquet`` with an ``image`` (bytes, path) and a ``label`` ClassLabel named by the words."""
    import datasets

    root, sets = Path(root), photo_set(photos)
    synsets = photo_synsets(len({y for _, y, _ in sets["train"]}))
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[t for _, t in synsets])})
    with _building(root) as tmp:
        (tmp / "data").mkdir()
        for split, hf_split in (("train", "train"), ("val", "validation")):
            rows = {"image": [{"bytes": f.read_bytes(), "path": name}
                              for f, _, name in sets[split]],
                    "label": [y for _, y, _ in sets[split]]}
            ds = datasets.Dataset.from_dict(rows, features=features)
            ds.to_parquet(str(tmp / "data" / f"{hf_split}-00000-of-00001.parquet"))
    return root


def make_wds_shards(photos: str | Path, root: str | Path, per_shard: int = 16) -> Path:
    """webdataset shards like timm's: ``<split>-NNNN.tar`` of ``<key>.jpg``, ``<key>.cls`` and
    ``<key>.json`` (``filename`` as ``<wnid>/<file>``, ``label``)."""
    root, sets = Path(root), photo_set(photos)
    synsets = photo_synsets(len({y for _, y, _ in sets["train"]}))
    with _building(root) as tmp:
        for split, rows in sets.items():
            for start in range(0, len(rows), per_shard):
                shard = tmp / f"{split}-{start // per_shard:04d}.tar"
                with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
                    for f, y, name in rows[start:start + per_shard]:
                        key = Path(name).stem
                        meta = {"filename": f"{synsets[y][0]}/{name}", "label": y}
                        _add_file(tar, f"{key}.jpg", f.read_bytes())
                        _add_file(tar, f"{key}.cls", f"{y}".encode())
                        _add_file(tar, f"{key}.json", json.dumps(meta).encode())
    return root


def make_source_forms(photos: str | Path, root: str | Path) -> dict[str, Path]:
    """Every form above under ``root``: ``kaggle/``, ``archives/``, ``wds/``, ``val_labels.csv``
    and, when ``datasets`` is installed, ``hf/``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    forms = dict(kaggle=make_kaggle_layout(photos, root / "kaggle"),
                 archives=make_imagenet_archives(photos, root / "archives"),
                 wds=make_wds_shards(photos, root / "wds"),
                 csv=write_labels_csv(photos, root / "val_labels.csv"))
    try:
        import datasets  # noqa: F401
    except ImportError:
        return forms
    forms["hf"] = make_hf_parquet(photos, root / "hf")
    return forms


# --------------------------------------------------------------------------------------------
# The evaluation sets (ffcv-eval) laid out from the digits: a 10-class stand-in for ImageNet
# (train/, val/ with ImageNet's val file names, ReaL's real.json) and for the sets that test
# it: ImageNetV2 (folders named by class index), ImageNet-R and -A (a subset of the classes,
# named by wnid) and ImageNet-Sketch (every class). Each shifted set gets its own change of
# the val digits, so its numbers differ from val's.

WNID_CLASSES = [f"n{i:08d}" for i in range(10)]
R_CLASSES = (0, 2, 4, 6, 8)  # ImageNet-R: 200 of the 1,000 classes; here 5 of 10
A_CLASSES = (1, 3, 5, 7)  # ImageNet-A: another 200; here 4 of 10
V2_FORM = "imagenetv2-matched-frequency-format-val"  # the folder ImageNetV2's archive holds
ARCHIVES = {"imagenet-r": "imagenet-r.tar", "imagenet-a": "imagenet-a.tar",
            V2_FORM: "imagenetv2-matched-frequency.tar.gz"}


def _digit_images(size: int, seed: int):
    """``[(gray PIL image, label, is_val)]`` of the digits, split as ``make_digits_folder``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    is_val = np.random.default_rng(seed).random(len(digits.target)) < 0.2
    out = []
    for pixels, label, val in zip(digits.images, digits.target, is_val):
        gray = (pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
        out.append((Image.fromarray(gray, mode="L").resize((size, size), Image.BICUBIC),
                    int(label), bool(val)))
    return out


def real_labels(label: int, n: int) -> list[int]:
    """ReaL-style labels of val image number ``n``: every 10th none (ReaL leaves it out), every
    10th two (the original and another), every 10th a single other label, else the original."""
    return [[], [label, (label + 1) % 10], [(label + 3) % 10]][n % 10] if n % 10 < 3 else [label]


def _suite_images(images, classes: list[str]):
    """``{folder form: [(class folder, file name, image)]}`` of the shifted sets."""
    from PIL import ImageFilter, ImageOps

    val = [(im, y) for im, y, v in images if v]
    return {
        "imagenetv2-matched-frequency-format-val": [
            (str(y), f"{k:04x}.jpeg", im.filter(ImageFilter.GaussianBlur(1)))
            for k, (im, y) in enumerate(val) if k % 3 == 0],
        "imagenet-r": [(classes[y], f"art_{k}.jpg", ImageOps.invert(im))
                       for k, (im, y) in enumerate(val) if y in R_CLASSES],
        "imagenet-a": [(classes[y], f"{k}.jpg", im.rotate(25, fillcolor=128))
                       for k, (im, y) in enumerate(val) if y in A_CLASSES],
        "sketch": [(classes[y], f"sketch_{k}.JPEG", ImageOps.invert(im.filter(
            ImageFilter.FIND_EDGES))) for k, (im, y) in enumerate(val) if k % 3 == 1],
    }


def make_eval_suites(root: str | Path, classes: list[str] | None = None, size: int = 32,
                     seed: int = 0) -> Path:
    """``root/{train,val}/<class>/``, ``real.json``, ``imagenetv2-matched-frequency-format-val/
    <i>/``, ``imagenet-r/``, ``imagenet-a/``, ``sketch/`` (class folders) and ``archives/``
    (``imagenet-r.tar``, ``imagenet-a.tar``, ``imagenetv2-matched-frequency.tar.gz``, as
    downloaded). ``classes``: the 10 class names in label order (default wnid-style names)."""
    root, classes = Path(root), list(classes or WNID_CLASSES)
    if len(classes) != 10:
        raise ValueError(f"the digits have 10 classes, not {len(classes)}")
    if root.exists():
        return root
    images = _digit_images(size, seed)
    with _building(root) as tmp:
        real, n = [], 0
        for k, (im, y, is_val) in enumerate(images):
            if is_val:
                n += 1
                name = f"val/{classes[y]}/ILSVRC2012_val_{n:08d}.JPEG"
                real.append(real_labels(y, n))
            else:
                name = f"train/{classes[y]}/{classes[y]}_{k}.JPEG"
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            im.save(tmp / name, quality=95)
        (tmp / "real.json").write_text(json.dumps(real) + "\n")
        for form, rows in _suite_images(images, classes).items():
            for folder, name, im in rows:
                (tmp / form / folder).mkdir(parents=True, exist_ok=True)
                im.save(tmp / form / folder / name, quality=95)
        (tmp / "archives").mkdir()
        for form, archive in ARCHIVES.items():
            mode = "w:gz" if archive.endswith(".gz") else "w"
            with tarfile.open(tmp / "archives" / archive, mode, format=tarfile.GNU_FORMAT) as tar:
                tar.add(tmp / form, arcname=form)
    return root


def write_suites(root: str, classes_file: str | None, size: int) -> None:
    """``make_eval_suites`` for the command line: the run's class list read as an untrusted
    file, then the ffcv-eval command that evaluates that run on every suite."""
    from ..write.classes import read_class_list

    classes = read_class_list(classes_file) if classes_file else None
    if classes is not None and len(classes) != 10:
        raise UserError(f"--classes: {classes_file} names {len(classes)} classes; the digits "
                        "have 10")
    make_eval_suites(root, classes, size=size)
    run = Path(classes_file).parent if classes_file else Path("RUN")
    s = Path(root)
    print(f"wrote the evaluation sets to {root}; evaluate the run on every one of them with:\n"
          f"  ffcv-eval --weights {run / 'final_weights.pt'} --out {run / 'eval'} "
          f"--val-dir {s} --real-labels {s / 'real.json'} "
          f"--v2 {s / 'archives' / ARCHIVES[V2_FORM]} "
          f"--imagenet-r {s / 'archives' / 'imagenet-r.tar'} --imagenet-a {s / 'imagenet-a'} "
          f"--sketch {s / 'sketch'}")


def main(argv: list[str] | None = None) -> None:
    parser = ArgParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    d = sub.add_parser("digits", help="scikit-learn digits as an ImageFolder (train/ and val/)")
    d.add_argument("root")
    d.add_argument("--size", type=int, default=64)
    p = sub.add_parser("photos", help="ImageNet-like JPEGs cut from real photographs")
    p.add_argument("root")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=0)
    p.add_argument("--classes", type=int, default=10)
    f = sub.add_parser("forms", help="an ImageFolder photo set laid out as every source the "
                                     "writer reads (Kaggle, archives + devkit, parquet, shards)")
    f.add_argument("root")
    f.add_argument("--photos", required=True, help="ImageFolder tree with train/ and val/")
    e = sub.add_parser("suites", help="the digits as ImageNet's val, ReaL labels, ImageNetV2, "
                                      "-R, -A and -Sketch ship (for ffcv-eval)")
    e.add_argument("root")
    e.add_argument("--classes", help="the run's classes.json (default: wnid-style names)")
    e.add_argument("--size", type=int, default=32)
    args = parser.parse_args(argv)
    if Path(args.root).exists():
        print(f"{args.root} exists; keeping it")
        return
    if args.kind == "digits":
        make_digits_folder(args.root, size=args.size)
    elif args.kind == "suites":
        write_suites(args.root, args.classes, args.size)
        return
    elif args.kind == "forms":
        forms = make_source_forms(args.photos, args.root)
        print(f"wrote {', '.join(forms)} to {args.root}")
        return
    else:
        make_photo_folder(args.root, images=args.images, classes=args.classes,
                          val_images=args.val_images)
    n = sum(1 for _ in Path(args.root).rglob("*.*"))
    print(f"wrote {n} images to {args.root}")


if __name__ == "__main__":
    run_main(main, prog=PROG)
