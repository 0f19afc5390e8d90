"""``ffcv-eval --weights CKPT --out DIR [--real-labels real.json --val-dir D | --val-beton B]
[--v2 D] [--imagenet-r D] [--imagenet-a D] [--sketch D]``: a trained run evaluated the way
papers report it, on ImageNet's val, ImageNet-ReaL, ImageNetV2, ImageNet-R, -A and -Sketch.

Each set (a folder or a ``.tar``/``.tar.gz`` as it ships, see ``eval_sets``) is written once to
a val beton with the run's class list by the toolkit's writer, cached in ``--cache`` (default
``eval_betons/`` beside ``--out``) and rewritten only when its source changed. Every beton is
read by the trainer's val loader with the run's validation preprocessing (its resolution, centre
crop, decoder and flip TTA) and the checkpoint's EMA weights when it holds them, as
``--training.eval_only`` does; under torchrun each process takes a disjoint shard, so every
image counts once. Writes ``DIR/eval.json`` and ``DIR/eval.png`` and prints a table.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..train import checkpoint as ckpt
from ..beton import sidecar as dataset_info
from ..base import distributed as du
from . import eval_sets
from ..base.atomic import atomic_write_text
from ..base.processes import Terminated
from ..base.cli import ArgParser, UserError, run_main
from ..base.atomic import WriteError

CACHE_VERSION = 1
# collectives wait this long for rank 0 to write the sets (ImageNet-Sketch: ~50k images)
PREPARE_TIMEOUT_S = 6 * 3600
WRITE_KEYS = ("max_resolution", "write_mode", "compress_probability", "jpeg_quality")


@dataclass(frozen=True)
class Suite:
    """A shifted test set: its eval.json name, option, folder rule and scoring."""

    name: str
    option: str
    to_labels: object  # eval_sets.index_labels or eval_sets.wnid_labels
    subset: bool  # top-1/top-5 over the classes its folders name only (R, A)


SUITES = (
    Suite("v2", "--v2", eval_sets.index_labels, False),
    Suite("imagenet-r", "--imagenet-r", eval_sets.wnid_labels, True),
    Suite("imagenet-a", "--imagenet-a", eval_sets.wnid_labels, True),
    Suite("sketch", "--sketch", eval_sets.wnid_labels, False),
)


@dataclass
class Scorer:
    """A batch's (top-1 hits, top-5 hits, images counted): plain, over ``subset``'s classes
    (logits of the others never win), or ReaL (``real``: each sample's labels, -1 padded;
    right when in the list; samples with an empty list left out)."""

    subset: list[int] | None = None
    real: np.ndarray | None = None

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, index: np.ndarray):
        k = min(5, logits.shape[1])
        if self.subset is not None:
            allowed = torch.full_like(logits[0], float("-inf"))
            allowed[self.subset] = 0.0
            logits, k = logits + allowed, min(k, len(self.subset))
        top = logits.topk(k, dim=1).indices
        if self.real is not None:
            truth = torch.from_numpy(self.real[index]).to(top.device)
            keep = truth[:, 0] >= 0
            hit1 = (top[:, :1, None] == truth[:, None, :]).flatten(1).any(1) & keep
            hit5 = (top[:, :, None] == truth[:, None, :]).flatten(1).any(1) & keep
            return torch.stack([hit1.sum(), hit5.sum(), keep.sum()]).double().cpu()
        hits = top.eq(labels.view(-1, 1))
        return torch.tensor([hits[:, 0].sum().item(), hits.any(1).sum().item(),
                             labels.shape[0]], dtype=torch.float64)


@dataclass
class Job:
    """One beton and the scores read from one pass over it (val and ReaL share a pass)."""

    beton: str
    scorers: dict[str, Scorer] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The cache: one beton per (set, run classes, write settings), rewritten when the source changed


def cache_name(suite: str, classes: list[str], settings: dict) -> str:
    key = json.dumps([CACHE_VERSION, suite, classes, settings], sort_keys=True)
    return f"{suite}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.beton"


def fingerprint(path: Path) -> str:
    """What must not change for a cached beton to stand: an archive's size and time, or every
    file's relative path, size and time in a folder."""
    h = hashlib.sha256()
    if path.is_file():
        st = path.stat()
        h.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()
    for root, dirs, files in sorted(os.walk(path, followlinks=True)):
        dirs.sort()
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(root, f), path)
            try:
                st = os.stat(os.path.join(root, f))
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:  # a dangling link: the writer skips it, a change shows here
                h.update(f"{rel}\0?\n".encode())
    return h.hexdigest()


def record_path(beton: Path) -> Path:
    return beton.with_name(beton.name + ".source.json")


def cached_record(beton: Path, fp: str) -> dict | None:
    """The record of a cached beton written from a source with fingerprint ``fp``, or None."""
    try:
        record = json.loads(record_path(beton).read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(record, dict) and record.get("fingerprint") == fp and beton.is_file()
          and dataset_info.sidecar_path(beton).is_file())
    return record if ok else None


def write_cached(beton: Path, fp: str, write, record: dict) -> None:
    """``write(beton)``, then the record that marks it current (a crash between the two
    leaves a stale record, so the set is written again next time)."""
    beton.parent.mkdir(parents=True, exist_ok=True)
    write(beton)
    atomic_write_text(record_path(beton), json.dumps({**record, "fingerprint": fp}) + "\n")


# --------------------------------------------------------------------------------------------
# Preparing the jobs (rank 0): check every set, then write those not cached


@dataclass
class Plan:
    """What the sets need from the run: its classes, write settings, cache folder."""

    classes: list[str]
    settings: dict
    cache: Path
    progress: bool


def read_sidecar(beton: Path | str) -> dict | None:
    """A beton's sidecar as a dict, None when there is none; a broken one is one line."""
    try:
        info = dataset_info.read_info(beton)
    except (OSError, ValueError) as e:
        raise UserError(f"{dataset_info.sidecar_path(beton)}: unreadable sidecar ({e})") from None
    if info is not None and not (isinstance(info, dict) and isinstance(info.get("classes"), list)
                                 and isinstance(info.get("settings", {}), dict)):
        raise UserError(f"{dataset_info.sidecar_path(beton)}: not a sidecar this toolkit wrote")
    return info


def write_settings(val_dataset: str) -> dict:
    """The run's val beton's storage settings (the sets are stored as its val was), else the
    published ones."""
    from ..write.writer import PUBLISHED

    info = read_sidecar(val_dataset) if val_dataset and Path(val_dataset).is_file() else None
    stored = (info or {}).get("settings") or {}
    return {k: stored.get(k, PUBLISHED[k]) for k in WRITE_KEYS}


def set_job(suite: Suite, path: str, plan: Plan) -> tuple[Job, object | None]:
    """``(job, pending write or None)`` of a shifted set; its classes checked first."""
    from ..write.writer import write_source

    source_path = Path(path).expanduser()
    if not source_path.exists():
        raise UserError(f"{suite.option}: no such folder or archive: {source_path}")
    beton = plan.cache / cache_name(suite.name, plan.classes, plan.settings)
    fp = fingerprint(source_path)
    record = cached_record(beton, fp)
    pending = None
    if record is None:
        source = eval_sets.open_set(source_path, suite.option, plan.classes, suite.to_labels)
        subset = sorted(set(source.labels()))
        record = {"source": str(source_path), "subset": subset}
        pending = (beton, fp, lambda out: write_source(
            source, out, split="val", class_list=plan.classes, progress=plan.progress,
            **plan.settings), record)
    subset = record["subset"] if suite.subset else None
    return Job(str(beton), {suite.name: Scorer(subset=subset)}), pending


def val_beton(args, run_val: str, plan: Plan) -> tuple[Path | None, object | None]:
    """``(val beton or None, pending write)``: --val-beton, --val-dir written (cached), or the
    run's own val beton when it is where params.json says."""
    from ..write.sources.select import data_root
    from ..write.writer import write_split

    if args.val_beton and args.val_dir:
        raise UserError("--val-beton and --val-dir both name the val split; give one")
    if args.val_dir:
        src = Path(args.val_dir).expanduser()
        if not src.exists():
            raise UserError(f"--val-dir: no such folder or archive: {src}")
        root = data_root(src)
        fp = fingerprint(root / "val" if (root / "val").is_dir() else src)
        beton = plan.cache / cache_name("val", plan.classes, plan.settings)
        if cached_record(beton, fp) is not None:
            return beton, None
        return beton, (beton, fp, lambda out: write_split(
            src, "val", out, class_list=plan.classes, progress=plan.progress, **plan.settings),
            {"source": str(src)})
    if args.val_beton:
        if not Path(args.val_beton).is_file():
            raise UserError(f"--val-beton: no such file {args.val_beton}")
        return Path(args.val_beton), None
    return (Path(run_val), None) if run_val and Path(run_val).is_file() else (None, None)


def val_job(args, run_val: str, plan: Plan) -> tuple[Job | None, object | None, object]:
    """The val pass (val top-1, and ReaL when asked) and the check ReaL needs once it is
    written: ``(job, pending write, finish(job))``."""
    beton, pending = val_beton(args, run_val, plan)
    if beton is None:
        if args.real_labels:
            raise UserError("--real-labels needs the val split: give --val-dir or --val-beton")
        return None, None, lambda job: None
    real = None
    if args.real_labels:
        eval_sets.require_sorted(plan.classes, "--real-labels")
        real = eval_sets.read_real(args.real_labels, len(plan.classes))

    def finish(job: Job) -> None:
        info = read_sidecar(beton)
        if info is None:
            raise UserError(f"{beton}: no sidecar {dataset_info.sidecar_path(beton)} beside it")
        why = dataset_info.class_list_mismatch({"classes": plan.classes}, info)
        if why:
            raise UserError(f"{beton}: its classes differ from the run's: {why}")
        if real is not None:
            job.scorers["real"] = Scorer(real=eval_sets.real_table(real, info, beton))

    return Job(str(beton), {"val": Scorer()}), pending, finish


def prepare(args, rm, plan: Plan) -> list[Job]:
    """Every job: all sets checked before any is written, then the uncached ones written."""
    job, pending, finish = val_job(args, rm.val_dataset, plan)
    jobs, writes = ([job] if job else []), ([pending] if pending else [])
    if job and not pending:  # a val beton that exists: its checks before any set is written
        finish(job)
    for suite in SUITES:
        path = getattr(args, suite.name.replace("-", "_"))
        if path:
            job_, pending_ = set_job(suite, path, plan)
            jobs.append(job_)
            writes += [pending_] if pending_ else []
    for beton, fp, write, record in writes:
        write_cached(beton, fp, write, record)
    if job and pending:
        finish(job)
    written = {str(w[0]) for w in writes}
    for j in jobs:
        if plan.progress:
            how = "written now" if str(j.beton) in written else "reused"
            print(f"{', '.join(j.scorers)}: {j.beton} ({how})", file=sys.stderr, flush=True)
    if job is None and plan.progress:
        print(f"=> no val split: the run's val beton {rm.val_dataset or '(none)'} is not here; "
              "give --val-dir or --val-beton for val top-1 and the gaps", file=sys.stderr)
    return jobs


# --------------------------------------------------------------------------------------------
# Evaluating


def load_model(weights: str, device) -> tuple[object, dict, str]:
    """``(RunModel with the checkpoint's EMA weights when it has them, params.json, which
    weights in words)``, as ``--training.eval_only`` with ``model.weights_ema 1`` loads."""
    from .predict import load_run_model

    rm = load_run_model(weights, device)
    _, which = ckpt.load_weights(rm.model, weights, "--weights", ema=True)
    params = json.loads((Path(weights).parent / "params.json").read_text())
    return rm, params, which


@torch.no_grad()
def evaluate_job(rm, job: Job, env: du.DistEnv, batch_size: int, num_workers: int,
                 decoder: str) -> dict[str, dict]:
    """One pass over ``job.beton`` (this process's shard), every scorer summed over ranks."""
    from tqdm import tqdm

    from ..load.loaders import normalize, val_loader
    from .predict import logits as run_logits

    loader = val_loader(job.beton, batch_size=batch_size, num_workers=num_workers,
                        res=rm.resolution, device=env.device, rank=env.rank,
                        world_size=env.world_size, crop_ratio=rm.crop_ratio, decoder=decoder)
    sums = torch.zeros(len(job.scorers), 3, dtype=torch.float64)
    seen = 0
    with tqdm(total=len(loader), desc=f"evaluating {', '.join(job.scorers)}", unit="batch",
              disable=not env.is_main, dynamic_ncols=True) as bar:
        for images, labels in loader:
            out = run_logits(rm, normalize(images))
            # the val loader's shard of rank r is samples r, r + world, ... in order
            index = env.rank + env.world_size * np.arange(seen, seen + labels.shape[0])
            seen += labels.shape[0]
            for row, scorer in enumerate(job.scorers.values()):
                sums[row] += scorer(out, labels, index)
            bar.update(1)
    total = du.all_reduce_sum(sums.to(env.device), env).cpu()
    return {name: {"top1": float(t1 / max(n, 1)), "top5": float(t5 / max(n, 1)), "n": int(n)}
            for name, (t1, t5, n) in zip(job.scorers, total.tolist())}


def prepared_jobs(args, rm, env: du.DistEnv) -> list[Job]:
    """Rank 0 checks and writes the sets; every rank gets its jobs or its one-line refusal."""
    result = None
    if env.is_main:
        plan = Plan(list(rm.classes), write_settings(rm.val_dataset),
                    Path(args.cache) if args.cache else Path(args.out).parent / "eval_betons",
                    progress=True)
        try:
            result = prepare(args, rm, plan)
        except (UserError, WriteError) as e:  # every rank leaves with the same line
            result = str(e)
    result = du.broadcast_object(result, env)
    if isinstance(result, str):
        raise UserError(result)
    return result


def parse_args(argv):
    ap = ArgParser(prog="ffcv-eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="RUN_DIR/final_weights.pt or a checkpoint")
    ap.add_argument("--out", required=True, help="folder for eval.json and eval.png")
    ap.add_argument("--real-labels", help="ImageNet-ReaL's real.json (with the val split)")
    ap.add_argument("--val-beton", help="the val split as a beton this toolkit wrote")
    ap.add_argument("--val-dir", help="the val split in any form the writer reads")
    ap.add_argument("--v2", help="ImageNetV2: folders 0 ... 999 (or its .tar.gz)")
    ap.add_argument("--imagenet-r", help="ImageNet-R: 200 wnid folders (or imagenet-r.tar)")
    ap.add_argument("--imagenet-a", help="ImageNet-A: 200 wnid folders (or imagenet-a.tar)")
    ap.add_argument("--sketch", help="ImageNet-Sketch: 1,000 wnid folders (or a .tar)")
    ap.add_argument("--cache", help="folder of the written sets (default: OUT/../eval_betons)")
    ap.add_argument("--batch-size", type=int, help="per process (default: the run's)")
    ap.add_argument("--num-workers", type=int, help="loader threads (default: the run's)")
    a = ap.parse_args(argv)
    for name in ("batch_size", "num_workers"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be at least 1")
    return a


def main(argv: list[str] | None = None) -> int:
    from ..load.loaders import DEFAULT_DECODER
    from .eval_report import report

    args = parse_args(sys.argv[1:] if argv is None else argv)
    env = du.init(timeout_s=PREPARE_TIMEOUT_S)
    try:
        rm, params, which = load_model(args.weights, env.device)
        jobs = prepared_jobs(args, rm, env)
        if env.is_main:
            print(f"=> {args.weights}: {which}", file=sys.stderr, flush=True)
        if not jobs:
            raise UserError("nothing to evaluate: the run's val beton is not at "
                            f"{rm.val_dataset or '(none)'}; give --val-dir, --val-beton or a set")
        results = {}
        for job in jobs:
            results.update(evaluate_job(
                rm, job, env, args.batch_size or int(params.get("validation.batch_size", 256)),
                args.num_workers or int(params.get("data.num_workers", 8)),
                str(params.get("data.decoder") or DEFAULT_DECODER)))
        if env.is_main:
            report(results, Path(args.out))
        return 0
    except Terminated:  # SIGTERM while writing a set: the writer left no partial file
        print("ffcv-eval: terminated; no partial file left", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        du.teardown()


if __name__ == "__main__":
    run_main(main, prog="ffcv-eval")
