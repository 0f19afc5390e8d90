"""``python -m ffcv_utils.tools.plot RUN_DIR [RUN_DIR ...] [--out FILE]``: one picture of how runs went.

Reads each run's log.jsonl and writes metrics.png (into the single run's folder, or --out) with
loss, accuracy, LR, images/s and resolution against epochs; several runs are overlaid."""
from __future__ import annotations

from ..base.cli import ArgParser, run_main
from ..train.metrics_plot import write_plot


def main(argv=None) -> int:
    ap = ArgParser(prog="python -m ffcv_utils.tools.plot", description=__doc__.split("\n")[0])
    ap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    ap.add_argument("--out", help="output PNG (default: RUN_DIR/metrics.png of the first run)")
    a = ap.parse_args(argv)
    print(write_plot(a.run_dirs, a.out))
    return 0


if __name__ == "__main__":
    run_main(main, prog="python -m ffcv_utils.tools.plot")
