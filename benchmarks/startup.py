"""Start-up cost of the training loader: time to the first batch, and to the first batch after a
resolution change (what the progressive-resizing schedule does between epochs), per decoder.

Each decoder runs in a fresh process (numba compiles the pipeline on the first iteration):
``build_s`` (Loader construction), ``first_batch_s`` (first ``next()``: compilation + first
decode), ``epoch1_s`` (the rest of that epoch), then ``set_resolution(--res2)`` and
``first_batch_res2_s`` / ``epoch2_s`` for the next epoch.

    python benchmarks/startup.py --beton benchmarks/results/betons/<jpg>.beton \\
        --out benchmarks/results/startup_cpu.csv
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine_info, markdown_table, now  # noqa: E402


def child(args) -> dict:
    t0 = now()
    from ffcv_utils.load.loaders import train_loader

    data = train_loader(args.beton, batch_size=args.batch_size, num_workers=args.workers,
                        res=args.res, device="cpu", seed=0, decoder=args.decoder)
    out = {"build_s": now() - t0}

    def epoch(key):
        t = now()
        it = iter(data.loader)
        next(it)
        out[f"first_batch{key}_s"] = now() - t
        t = now()
        for _ in it:
            pass
        out[f"epoch{'2' if key else '1'}_s"] = now() - t

    epoch("")
    data.set_resolution(args.res2)
    data.set_epoch(1)
    epoch("_res2")
    out["total_s"] = now() - t0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beton", required=True)
    ap.add_argument("--res", type=int, default=160)
    ap.add_argument("--res2", type=int, default=192)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--decoders", default="fast,ffcv")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--decoder", default="fast", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return None
    import pandas as pd

    rows = []
    for decoder in args.decoders.split(","):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--decoder", decoder,
               "--beton", args.beton, "--res", str(args.res), "--res2", str(args.res2),
               "--workers", str(args.workers), "--batch-size", str(args.batch_size)]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        if r.returncode != 0:
            raise SystemExit(f"{decoder}: exit {r.returncode}\n{r.stderr[-2000:]}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append({"decoder": decoder, "res": args.res, "res2": args.res2,
                     "workers": args.workers, "batch_size": args.batch_size,
                     **res})
        print(json.dumps(rows[-1]), flush=True)
    df = pd.DataFrame(rows)
    for k, v in machine_info("cpu").items():
        df[k] = v
    df["beton"] = Path(args.beton).name
    print(markdown_table(df[[c for c in df.columns if c.endswith("_s") or c == "decoder"]]))
    if args.out:
        df.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return df


if __name__ == "__main__":
    main()
