"""Small real image folders built from data that ships inside installed packages (no download).

* ``digits``: scikit-learn's 1,797 handwritten digits (10 classes), upsampled and saved as
  grayscale JPEGs in an ImageFolder tree with ``train/`` and ``val/``. Learnable in a few CPU
  epochs, so the demo and the end-to-end tests can check that training really learns.
* ``photos``: ImageNet-like JPEGs (random crops of scikit-learn's two sample photographs at
  ImageNet's typical sizes, quality 90) for loader benchmarks and writer tests.

Both are written to a temporary folder and renamed into place, so a folder that exists is complete.

    python -m ffcv_utils.sample_data digits demo_data/digits
    python -m ffcv_utils.sample_data photos bench_data/photos --images 2000 --classes 10
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _publish(tmp: Path, root: Path) -> Path:
    """Move a finished temporary tree into place (atomic on one file system)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)
    return root


def _tempdir_beside(root: Path) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))


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
    tmp = _tempdir_beside(root)
    try:
        for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
            gray = (pixels * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
            img = Image.fromarray(gray, mode="L").resize((size, size), Image.BICUBIC)
            split = "val" if is_val[i] else "train"
            folder = tmp / split / f"{label}_{DIGIT_NAMES[label]}"
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"{i:05d}.jpg", quality=95)
        return _publish(tmp, root)
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
    tmp = _tempdir_beside(root)
    try:
        for split, count in (("train", images), ("val", val_images)):
            for i in range(count):
                folder = tmp / split / f"class_{i % classes:03d}"
                folder.mkdir(parents=True, exist_ok=True)
                imagenet_like_jpeg(rng, photos).save(folder / f"{i:06d}.JPEG", quality=90)
        return _publish(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    d = sub.add_parser("digits", help="scikit-learn digits as an ImageFolder (train/ and val/)")
    d.add_argument("root")
    d.add_argument("--size", type=int, default=64)
    p = sub.add_parser("photos", help="ImageNet-like JPEGs cut from real photographs")
    p.add_argument("root")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=0)
    p.add_argument("--classes", type=int, default=10)
    args = parser.parse_args(argv)
    if Path(args.root).exists():
        print(f"{args.root} exists; keeping it")
        return
    if args.kind == "digits":
        make_digits_folder(args.root, size=args.size)
    else:
        make_photo_folder(args.root, images=args.images, classes=args.classes,
                          val_images=args.val_images)
    n = sum(1 for _ in Path(args.root).rglob("*.*"))
    print(f"wrote {n} images to {args.root}")


if __name__ == "__main__":
    main()
