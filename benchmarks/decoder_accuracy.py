"""Does the digits demo learn as well with the fast decoder as with ffcv's? (issue 7)

Trains the demo recipe (rn18_configs/rn18_demo.yaml) through the real trainer with
``--data.decoder fast`` and ``--data.decoder ffcv``, interleaved, for several seeds, and writes one
row per run (final top-1, train loss, time, first-epoch speed) plus a per-decoder summary. Crops
and flips are seeded per sample since issue 17 (``ffcv_utils.load.draws``; before, numba's per-thread
generators made runs with one seed differ), and the two decoders resample differently, so compare
the spread over seeds, not single runs.

    python benchmarks/decoder_accuracy.py --seeds 0,1,2 --out benchmarks/results/decoder_accuracy.csv
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, machine_info  # noqa: E402


def ensure_demo_betons(work: Path) -> tuple[Path, Path]:
    from ffcv_utils.tools.sample_data import make_digits_folder
    from ffcv_utils.write.writer import write_split

    digits = make_digits_folder(work / "digits")
    out = []
    for split in ("train", "val"):
        beton = work / f"demo_{split}.beton"
        if not beton.exists():
            write_split(digits, split, beton, max_resolution=64, num_workers=2, progress=False)
        out.append(beton)
    return out[0], out[1]


def train(train: Path, val: Path, decoder: str, seed: int, logs: Path, timeout: float) -> dict:
    run_id = f"{decoder}-seed{seed}"
    cmd = [sys.executable, str(REPO / "train_imagenet.py"), "--config-file",
           str(REPO / "rn18_configs" / "rn18_demo.yaml"), "--data.train_dataset", str(train),
           "--data.val_dataset", str(val), "--data.decoder", decoder, "--data.seed", str(seed),
           "--logging.folder", str(logs), "--logging.run_id", run_id, "--logging.plot", "0"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{run_id} failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    epochs = [json.loads(line) for line in (logs / run_id / "log.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if "epoch" in e]
    last = epochs[-1]
    return {"decoder": decoder, "seed": seed, "top_1": last["top_1"],
            "train_loss": last["train_loss"], "wall_s": round(wall, 1),
            "first_epoch_img_per_s": round(epochs[0]["train_images_per_s"], 1),
            "last_epoch_img_per_s": round(last["train_images_per_s"], 1),
            "decode_failures": sum(e.get("decode_failures", 0) or 0 for e in epochs)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", default="bench_data/decoder_accuracy",
                    help="folder for the demo data, betons and run logs")
    ap.add_argument("--out", default="benchmarks/results/decoder_accuracy.csv")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args(argv)
    import pandas as pd

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    train_beton, val_beton = ensure_demo_betons(work)
    info = machine_info("cpu")
    logs = work / "logs" / time.strftime("%Y%m%dT%H%M%S", time.gmtime())  # fresh per invocation
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        for decoder in ("fast", "ffcv"):  # interleaved: load from elsewhere hits both alike
            row = train(train_beton, val_beton, decoder, seed, logs, args.timeout)
            print(json.dumps(row), flush=True)
            rows.append(row)
    df = pd.DataFrame(rows)
    for k, v in info.items():
        df[k] = v
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    summary = df.groupby("decoder").agg(runs=("top_1", "size"), top_1_mean=("top_1", "mean"),
                                        top_1_min=("top_1", "min"), top_1_max=("top_1", "max"),
                                        wall_s_mean=("wall_s", "mean"))
    print(summary.to_string(float_format=lambda x: f"{x:.4f}"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
