"""Shared fixtures: small real image folders and the betons written from them (session-scoped,
so the suite pays for each only once)."""
from __future__ import annotations

import pytest

from ffcv_utils.sample_data import make_digits_folder, make_photo_folder


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """scikit-learn digits as ImageFolder: train/ (~1,440 images) and val/ (~360), 10 classes."""
    return make_digits_folder(tmp_path_factory.mktemp("digits") / "digits", size=32)


@pytest.fixture(scope="session")
def photos_dir(tmp_path_factory):
    """ImageNet-like JPEGs cut from real photos: 60 train / 30 val images in 3 classes."""
    return make_photo_folder(tmp_path_factory.mktemp("photos") / "photos", images=60,
                             classes=3, val_images=30)


@pytest.fixture(scope="session")
def digits_betons(tmp_path_factory, digits_dir):
    """(train.beton, val.beton) written from ``digits_dir`` by the toolkit's writer."""
    from ffcv_utils.writer import write_split

    out = tmp_path_factory.mktemp("digits_betons")
    train = out / "train.beton"
    val = out / "val.beton"
    write_split(digits_dir, "train", train, max_resolution=32, num_workers=2)
    write_split(digits_dir, "val", val, max_resolution=32, num_workers=2)
    return train, val
