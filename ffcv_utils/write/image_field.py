"""The beton's image field, and what a writer process hands it for each sample.

ffcv's ``RGBImageField`` stores a sample as raw pixels or as a JPEG it encodes itself, with the
mode, height and width in the metadata. A source JPEG that needs no resize and that the write
mode would store as JPEG is instead stored as its own bytes (``JpegBytes``): no second lossy
encode, and the writer's CPU goes to reading files. ``reencode`` turns this off. The choice
between JPEG and raw per image is the field's own, including 'proportion' mode's random draw
(seeded per beton index), so whether an image is passed through never changes that choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .images import open_rgb
from ..base.atomic import WriteError
from .sources.base import Sample

# write_mode='smart': JPEG-compress images whose raw pixels exceed a 256x256 RGB image; keep
# smaller ones raw (ffcv's own default threshold of None would store every image raw).
SMART_THRESHOLD = 256 * 256 * 3


@dataclass(frozen=True)
class JpegBytes:
    """A sample's JPEG exactly as the source holds it, with its size."""

    data: bytes
    width: int
    height: int


def image_field(write_mode: str, max_resolution: int, jpeg_quality: int,
                compress_probability: float):
    """ffcv's ``RGBImageField`` whose encode also accepts ``JpegBytes`` (an instance attribute:
    the field's type stays ffcv's, so the beton is an ordinary one)."""
    from ffcv.fields import RGBImageField
    from ffcv.fields.rgb_image import IMAGE_MODES

    field = RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                          smart_threshold=SMART_THRESHOLD, jpeg_quality=jpeg_quality,
                          compress_probability=compress_probability)
    encode = field.encode

    def encode_or_store(destination, value, malloc):
        if not isinstance(value, JpegBytes):
            return encode(destination, value, malloc)
        destination["mode"] = IMAGE_MODES["jpg"]
        destination["height"], destination["width"] = value.height, value.width
        destination["data_ptr"], storage = malloc(len(value.data))
        storage[:] = np.frombuffer(value.data, np.uint8)

    field.encode = encode_or_store
    return field


def stores_jpeg(write_mode: str, compress_probability: float, seed: int, w: int, h: int) -> bool:
    """Whether the field stores an image of ``w x h`` (after its resize) as JPEG, given the
    seed its writer process sets for that image: the field's own rule and random draw."""
    if write_mode == "jpg":
        return True
    if write_mode == "smart":
        return 3 * w * h > SMART_THRESHOLD
    if write_mode == "proportion":
        return np.random.RandomState(seed).rand() < compress_probability
    return False


class ImageJob:
    """``(beton index, (sample, size if its bytes may be stored as they are, else None))`` ->
    the field values, in a writer process. 'proportion' mode draws np.random in the field's
    encode: seeding per beton index makes the JPEG/raw choice of every image reproducible,
    whatever process writes it."""

    def __init__(self, write_mode: str, compress_probability: float, seed: int = 0):
        self.write_mode, self.p, self.seed = write_mode, compress_probability, seed

    def __call__(self, index: int, item: tuple[Sample, tuple[int, int] | None]):
        sample, size = item
        seed = (self.seed + index) % (1 << 32)
        try:
            data = sample.read()
            if size is not None and stores_jpeg(self.write_mode, self.p, seed, *size):
                return JpegBytes(data, *size), sample.label
            image = open_rgb(data)
        except Exception as e:
            raise WriteError(f"{sample.name} could not be read although it passed the check "
                             f"(did it change during the write?): {e}") from None
        np.random.seed(seed)
        return image, sample.label
