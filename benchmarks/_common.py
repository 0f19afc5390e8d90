"""Shared by the benchmark scripts: machine description, peak-memory sampling, CSV writing."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str | None = None) -> dict:
    """Columns every results row carries, so each absolute number names where and when."""
    import torch

    try:  # ffcv 1.0.2's own __version__ still says 0.0.3rc1: ask the installed metadata
        from importlib.metadata import version

        ffcv_version = version("ffcv")
    except Exception:  # noqa: BLE001 - the model-side benchmark runs without ffcv
        ffcv_version = "absent"
    gpu = "none"
    if torch.cuda.is_available():
        gpu = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "gpu": gpu,
        "device": device or "cpu",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ffcv": ffcv_version,
        "load_avg_1m_at_start": round(load, 2),
    }


class PeakRSS:
    """Samples the resident memory of a process tree (the process and all its children) in a
    thread: ``peak_bytes``, the largest sum seen. ``visit(process)``, called for each process at
    each sample, lets a subclass record more."""

    def __init__(self, pid: int, interval: float = 0.1):
        import psutil

        self._proc = psutil.Process(pid)
        self._interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def visit(self, process) -> None:
        pass

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self._proc, *self._proc.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
                self.visit(p)
            except (psutil.Error, OSError, ValueError):
                pass
        self.peak_bytes = max(self.peak_bytes, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def finish_table(df, columns: list[str], info: dict):
    """``df`` with exactly ``columns`` (missing ones NaN) in that order, then the machine's
    ``info`` as constant columns."""
    for col in columns:
        if col not in df.columns:
            df[col] = float("nan")
    df = df[columns]
    for k, v in info.items():
        df[k] = v
    return df


def run_child(argv: list[str], timeout: float | None = None, env: dict | None = None):
    """Run ``argv`` as a subprocess; return (last JSON line it printed or None, peak RSS MiB, rc).

    The child prints its result as one JSON line on stdout; everything else passes through.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    sampler = PeakRSS(proc.pid)
    with sampler:
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if not line.startswith("{"):
                    sys.stdout.write(line)
                    sys.stdout.flush()
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    result = None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    return result, sampler.peak_bytes / 2**20, proc.returncode


def markdown_table(df) -> str:
    """GitHub Markdown table from a DataFrame without needing ``tabulate``."""
    cols = [str(c) for c in df.columns]

    def fmt(v):
        if isinstance(v, float):
            if v != v:  # NaN
                return ""
            if abs(v) >= 100:
                return f"{v:,.0f}"
            return f"{v:.2f}"
        return str(v).replace("|", "\\|")

    out = ["| " + " | ".join(cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(out)


def print_summary(setting: str, info: dict, table, out) -> None:
    """The end of a benchmark run: what was measured, on which machine and load, the table,
    and where the rows went."""
    print()
    print(f"{setting}, {info['cpu_model']} ({info['cpu_cores']} cores), {info['date']}, "
          f"load {info['load_avg_1m_at_start']}")
    print(markdown_table(table))
    print(f"wrote {out}")


def now() -> float:
    return time.perf_counter()
