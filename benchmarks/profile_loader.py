"""Where the toolkit's training loader spends its time, per image, on one core.

Times the steps ``RandomResizedCropRGBImageDecoder`` + ``RandomHorizontalFlip`` do for each image
of a beton, each alone, with ffcv's own compiled primitives (``ffcv.libffcv``):

* ``decode_full``: libjpeg-turbo decode of a stored JPEG at full size (what ffcv does today);
* ``resize_jpg`` / ``resize_raw``: OpenCV INTER_AREA resize of the random crop to ``res``
  (from the decoded buffer, or straight from the page-cached raw pixels);
* ``flip_copy``: the flip transform's copy of the output image (ffcv copies every image,
  flipped or not), jitted with numba as ffcv does;
* ``INTER_AREA`` vs ``INTER_LINEAR`` through the cv2 wheel on the same crops (a different OpenCV
  build from the one libffcv links, so compare the two with each other);
* what could be cheaper: ``decode_scaled`` (libjpeg-turbo DCT scaling to the smallest 1/8 multiple
  that still covers ``res`` over the crop) and ``decode_crop`` (decode only the crop's MCU rows/
  columns -- ffcv's ``imdecode`` can crop and scale, the decoder just never asks it to);

and the same steps on the fast path (``ffcv_utils.load.decode``, the toolkit's default since
issue 7): ``fast decode`` (crop-first: only the crop's MCU rows/columns, at the DCT scale the
decoder picks), ``fast resize+flip`` (area resize with the flip fused in, from the decoded crop
or from raw pixels). Each path's sum is compared with its loader's measured cost per image (one
worker, ``data.decoder`` fast and ffcv), the remainder being the pipeline's own overhead. The minimum over ``--repeats`` runs is kept, which is robust to
other processes on the machine.

    python benchmarks/profile_loader.py --beton benchmarks/results/betons/<proportion>.beton --res 160
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine_info, markdown_table, now  # noqa: E402


def load_samples(beton: str, n: int):
    """(mode, height, width, bytes) of the first ``n`` images, read from the beton."""
    import numpy as np
    from ffcv.reader import Reader

    reader = Reader(beton)
    meta = reader.metadata[f"f{reader.field_names.index('image')}"]
    table = reader.alloc_table
    ptr_to_size = dict(zip(table["ptr"].tolist(), table["size"].tolist()))
    raw = np.memmap(beton, dtype=np.uint8, mode="r")
    out = []
    for i in range(min(n, len(meta))):
        ptr = int(meta[i]["data_ptr"])
        size = ptr_to_size[ptr]
        out.append((int(meta[i]["mode"]), int(meta[i]["height"]), int(meta[i]["width"]),
                    np.array(raw[ptr:ptr + size])))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beton", required=True)
    parser.add_argument("--res", type=int, default=160)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="CSV to write (with machine columns)")
    parser.add_argument("--crop", choices=("random", "center"), default="random",
                        help="random: the training loader's RandomResizedCrop (+flip); center: "
                             "the validation loader's centre crop 224/256 (no flip)")
    parser.add_argument("--loader-workers", type=int, default=1,
                        help="workers for the whole-loader reference measurement (0: skip)")
    args = parser.parse_args(argv)
    from ffcv_utils.beton.check import BetonError, check

    try:
        check(args.beton, "--beton")
    except BetonError as e:
        parser.error(str(e))

    import numpy as np
    from ffcv.fields.rgb_image import get_center_crop, get_random_crop
    from ffcv.libffcv import imdecode, resize_crop

    samples = load_samples(args.beton, args.images)
    res = args.res
    dst = np.empty((res, res, 3), np.uint8)
    flipped = np.empty_like(dst)
    max_hw = max(h * w for _, h, w, _ in samples)
    tmp = np.empty(max_hw * 3, np.uint8)
    scale, ratio = np.array((0.08, 1.0)), np.array((0.75, 4 / 3))
    crops = {}
    for k, (_, h, w, _) in enumerate(samples):
        np.random.seed(k)
        crops[k] = (get_random_crop(h, w, scale, ratio) if args.crop == "random"
                    else get_center_crop(h, w, None, 224 / 256))

    def per_image(fn, items):
        if not items:  # e.g. no raw samples in an all-JPEG beton: the row is left out
            return float("nan")
        best = float("inf")
        for _ in range(args.repeats):
            t0 = now()
            for k, item in items:
                fn(k, item)
            best = min(best, now() - t0)
        return best / max(1, len(items)) * 1e3  # ms

    jpg_items = [(k, s) for k, s in enumerate(samples) if s[0] == 0]
    raw_items = [(k, s) for k, s in enumerate(samples) if s[0] == 1]

    def decode_full(k, s):
        _, h, w, data = s
        imdecode(data, tmp, h, w, h, w, 0, 0, 1, 1, False, False)

    decoded = {}

    def resize_jpg(k, s):
        img = decoded[k]
        i, j, ch, cw = crops[k]
        resize_crop(img, i, i + ch, j, j + cw, dst)

    def resize_raw(k, s):
        _, h, w, data = s
        img = data.reshape(h, w, 3)
        i, j, ch, cw = crops[k]
        resize_crop(img, i, i + ch, j, j + cw, dst)

    from numba import njit

    @njit(cache=False)
    def _flip(src, out):  # what ffcv's RandomHorizontalFlip does for one image, jitted
        out[:] = src[:, ::-1]

    _flip(dst, flipped)

    def flip_copy(k, s):
        _flip(dst, flipped)

    import cv2

    def cv2_resize(interp):
        def fn(k, s):
            _, h, w, data = s
            img = data.reshape(h, w, 3)
            i, j, ch, cw = crops[k]
            cv2.resize(img[i:i + ch, j:j + cw], (res, res), dst=dst, interpolation=interp)
        return fn

    def scale_for(h, w, k):
        """Largest libjpeg-turbo scale n/8 (n in 1, 2, 4, 8) keeping the crop >= res."""
        _, _, ch, cw = crops[k]
        for num in (1, 2, 4):
            if min(ch, cw) * num / 8 >= res:
                return num
        return 8

    def decode_scaled(k, s):
        _, h, w, data = s
        num = scale_for(h, w, k)
        imdecode(data, tmp, h, w, h, w, 0, 0, num, 8, False, False)

    def decode_crop(k, s):
        # crop on the 16-pixel MCU grid (lossless transform), full scale
        _, h, w, data = s
        i, j, ch, cw = crops[k]
        y0, x0 = (i // 16) * 16, (j // 16) * 16
        y1, x1 = min(h, -(-(i + ch) // 16) * 16), min(w, -(-(j + cw) // 16) * 16)
        imdecode(data, tmp, h, w, y1 - y0, x1 - x0, x0, y0, 1, 1, True, False)

    rows = []
    decode_ms = per_image(decode_full, jpg_items)
    for k, (_, h, w, data) in jpg_items:  # decoded once, so the resize is timed alone
        decoded[k] = np.empty((h, w, 3), np.uint8)
        imdecode(data, decoded[k], h, w, h, w, 0, 0, 1, 1, False, False)
    resize_j = per_image(resize_jpg, jpg_items)
    resize_r = per_image(resize_raw, raw_items)
    flip_ms = per_image(flip_copy, jpg_items + raw_items)
    scaled_ms = per_image(decode_scaled, jpg_items)
    try:
        crop_ms = per_image(decode_crop, jpg_items)
    except Exception as exc:  # noqa: BLE001 - a transform failure is a finding, not a crash
        crop_ms = float("nan")
        print(f"decode_crop failed: {exc}")
    area_cv2 = per_image(cv2_resize(cv2.INTER_AREA), raw_items)
    linear_cv2 = per_image(cv2_resize(cv2.INTER_LINEAR), raw_items)
    n_j, n_r = len(jpg_items), len(raw_items)
    frac_j = n_j / max(1, n_j + n_r)
    mean_hw = np.mean([h * w for _, h, w, _ in samples])
    mean_jpg_kb = np.mean([len(d) for m, _, _, d in samples if m == 0]) / 1024 if n_j else 0
    rows += [
        {"step": "decode_full (jpg, full size)", "ms_per_image": decode_ms, "share_of": "jpg"},
        {"step": "resize_crop from decoded jpg", "ms_per_image": resize_j, "share_of": "jpg"},
        {"step": "resize_crop from raw (page cache)", "ms_per_image": resize_r, "share_of": "raw"},
        {"step": "flip copy of the output",  # the validation path has none: row left out
         "ms_per_image": flip_ms if args.crop == "random" else float("nan"), "share_of": "all"},
        {"step": "decode with DCT scaling (possible)", "ms_per_image": scaled_ms,
         "share_of": "jpg"},
        {"step": "decode crop region only (possible)", "ms_per_image": crop_ms,
         "share_of": "jpg"},
        {"step": "resize INTER_AREA, cv2 wheel (reference)", "ms_per_image": area_cv2,
         "share_of": "raw"},
        {"step": "resize INTER_LINEAR, cv2 wheel (possible)", "ms_per_image": linear_cv2,
         "share_of": "raw"},
    ]
    def mix(jpg_ms, raw_ms):
        """Per-image cost over this beton's mix (a kind it does not hold counts nothing)."""
        return (frac_j * jpg_ms if n_j else 0.0) + ((1 - frac_j) * raw_ms if n_r else 0.0)

    expected = (mix(decode_ms + resize_j, resize_r)
                + (flip_ms if args.crop == "random" else 0.0))  # the validation path has no flip
    rows.append({"step": "sum per image (mix of this beton)", "ms_per_image": expected,
                 "share_of": f"{frac_j:.0%} jpg"})
    for row in rows:
        row["path"] = "stock ffcv"

    # the fast path on the same crops
    from ffcv_utils.load import decode as fast_decode

    lib = fast_decode.library()
    flips = {k: k % 2 if args.crop == "random" else 0 for k in range(len(samples))}
    slot = 63

    def fast_decode_only(k, s):
        _, h, w, data = s
        i, j, ch, cw = crops[k]
        lib.fj_decode_crop_resize(data.ctypes.data, data.size, h, w, i, j, ch, cw,
                                  tmp.ctypes.data, tmp.size, None, res, res, 0,
                                  int(fast_decode.FAST_DCT), fast_decode.HEADROOM, slot)

    def fast_jpg(k, s):
        _, h, w, data = s
        i, j, ch, cw = crops[k]
        lib.fj_decode_crop_resize(data.ctypes.data, data.size, h, w, i, j, ch, cw,
                                  tmp.ctypes.data, tmp.size, dst.ctypes.data, res, res, flips[k],
                                  int(fast_decode.FAST_DCT), fast_decode.HEADROOM, slot)

    def fast_raw(k, s):
        _, h, w, data = s
        i, j, ch, cw = crops[k]
        lib.fj_crop_resize(data.ctypes.data, data.size, h, w, i, j, ch, cw, dst.ctypes.data,
                           res, res, flips[k], slot)

    fast_dec = per_image(fast_decode_only, jpg_items)
    fast_j = per_image(fast_jpg, jpg_items)
    fast_r = per_image(fast_raw, raw_items)
    fast_expected = mix(fast_j, fast_r)
    rows += [
        {"step": "fast decode (crop only, DCT-scaled)", "ms_per_image": fast_dec,
         "share_of": "jpg"},
        {"step": "fast resize+flip from decoded crop", "ms_per_image": fast_j - fast_dec,
         "share_of": "jpg"},
        {"step": "fast resize+flip from raw (page cache)", "ms_per_image": fast_r,
         "share_of": "raw"},
        {"step": "sum per image (mix of this beton)", "ms_per_image": fast_expected,
         "share_of": f"{frac_j:.0%} jpg"},
    ]
    for row in rows[-4:]:
        row["path"] = "fast"
    if args.loader_workers:
        from ffcv_utils.load.loaders import train_loader, val_loader

        for decoder, path, sum_ms in (("ffcv", "stock ffcv", expected),
                                      ("fast", "fast", fast_expected)):
            if args.crop == "random":
                loader = train_loader(args.beton, batch_size=64, num_workers=args.loader_workers,
                                      res=res, device="cpu", decoder=decoder).loader
            else:
                loader = val_loader(args.beton, batch_size=64, num_workers=args.loader_workers,
                                    res=res, device="cpu", decoder=decoder)
            for _ in loader:  # compile + page cache
                pass
            best = float("inf")
            for _ in range(args.repeats):
                t0 = now()
                n = sum(images.shape[0] for images, _ in loader)
                best = min(best, (now() - t0) / n * args.loader_workers * 1e3)
            rows.append({"step": f"whole loader, {args.loader_workers} worker(s), ms x workers",
                         "ms_per_image": best, "share_of": "all", "path": path})
            rows.append({"step": "pipeline overhead (whole loader - sum)",
                         "ms_per_image": best - sum_ms, "share_of": "all", "path": path})
    import pandas as pd

    df = pd.DataFrame(rows)[["path", "step", "ms_per_image", "share_of"]]
    df = df[df.ms_per_image.notna()].reset_index(drop=True)
    info = machine_info("cpu")
    print(f"{Path(args.beton).name}: {len(samples)} images ({n_j} jpg, {n_r} raw), mean "
          f"{mean_hw / 1e3:.0f} kpixel, mean jpg {mean_jpg_kb:.0f} KiB, res {res}; "
          f"{info['cpu_model']} ({info['cpu_cores']} cores), {info['date']}, "
          f"load {info['load_avg_1m_at_start']}")
    print(markdown_table(df))
    if args.out:
        df["res"] = res
        df["crop"] = args.crop
        df["images"] = len(samples)
        df["jpg_images"] = n_j
        df["mean_kpixel"] = round(mean_hw / 1e3, 1)
        df["beton"] = Path(args.beton).name
        for k, v in info.items():
            df[k] = v
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return df


if __name__ == "__main__":
    main()
