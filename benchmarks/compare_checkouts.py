"""One benchmark run on two checkouts of this repository, interleaved (old, new, old, new, ...),
to show that a change keeps its figures: each run is the checkout's own script in its own
process, with the checkout first on PYTHONPATH, and every CSV row is kept with the checkout,
its commit and the round it came from. Example (issue 25: the layout against the commit before):

    git worktree add /tmp/old 595aa12 && (cd /tmp/old && python setup.py build_ext --inplace)
    python benchmarks/compare_checkouts.py --old /tmp/old --new . --rounds 3 \\
        --out benchmarks/results/layout_loader_cpu.csv -- \\
        benchmarks/loader_throughput.py --data-dir bench_data/photos --res 160 --workers 2 \\
        --batch-size 128 --loaders toolkit-proportion,ffcv-stock,val-fast --beton-dir {work}/betons

``{work}`` in the command is a folder of the checkout's own under ``--work-dir``; ``--out`` of
each run is added here. The table printed at the end is each checkout's median per row key.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

KEY_COLUMNS = ["loader", "writer", "mode", "variant", "res"]  # whichever a benchmark's CSV has


def commit_of(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()


def run_once(checkout: Path, command: list[str], work: Path, out: Path) -> pd.DataFrame:
    work.mkdir(parents=True, exist_ok=True)
    args = [a.replace("{work}", str(work)) for a in command]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(checkout), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, *args, "--out", str(out)], cwd=checkout, env=env, check=True)
    return pd.read_csv(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", type=Path, required=True, help="the checkout before the change")
    p.add_argument("--new", type=Path, required=True, help="the checkout with the change")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, required=True, help="CSV of every row of every run")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/compare_checkouts"))
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="-- SCRIPT ARGS...: the benchmark, relative to each checkout")
    a = p.parse_args(argv)
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    frames = []
    for r in range(a.rounds):
        for name, checkout in (("old", a.old.resolve()), ("new", a.new.resolve())):
            df = run_once(checkout, command, a.work_dir / name, a.work_dir / f"{name}-{r}.csv")
            frames.append(df.assign(checkout=name, commit=commit_of(checkout), round=r))
    rows = pd.concat(frames, ignore_index=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(a.out, index=False)
    keys = [c for c in KEY_COLUMNS if c in rows.columns]
    table = rows.groupby(keys + ["checkout"])["img_per_s"].median().unstack("checkout")
    table["new / old"] = table["new"] / table["old"]
    print(table.round(3).to_string())
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
