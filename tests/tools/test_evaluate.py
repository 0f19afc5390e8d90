"""ffcv-eval on the shared digits run and the digits laid out as each evaluation set ships
(``eval_suites``): every figure equals a direct computation from the same model's logits on the
same decoded images, the EMA weights of a checkpoint are the ones evaluated, every refusal is one
line, and a second run (under torchrun, two processes) reuses the cached betons and counts every
image once."""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import END, NEGATIVE, ROOT, free_port, read_log, tar_header, tar_member

from ffcv_utils.train import checkpoint as ckpt
from ffcv_utils.beton.sidecar import read_info, sidecar_path
from ffcv_utils.tools.sample_data import A_CLASSES, R_CLASSES

V2 = "imagenetv2-matched-frequency-format-val"


def v2_archive(suites: Path) -> Path:
    return suites / "archives/imagenetv2-matched-frequency.tar.gz"


def set_args(suites: Path) -> list[str]:
    """Every set, in both forms: archives for V2 (.tar.gz), R (.tar); folders for A, Sketch."""
    return ["--real-labels", str(suites / "real.json"), "--val-dir", str(suites),
            "--v2", str(v2_archive(suites)),
            "--imagenet-r", str(suites / "archives/imagenet-r.tar"),
            "--imagenet-a", str(suites / "imagenet-a"), "--sketch", str(suites / "sketch")]


@pytest.fixture(scope="module")
def evaluated(digits_run, eval_suites, tmp_path_factory):
    """ffcv-eval of the digits run's final weights on every set, run once for the module."""
    from ffcv_utils.tools.evaluate import main

    base = tmp_path_factory.mktemp("eval")
    weights = digits_run[2] / "final_weights.pt"
    args = ["--weights", str(weights), "--out", str(base / "out"), "--cache",
            str(base / "cache"), *set_args(eval_suites)]
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert main(args) == 0
    return SimpleNamespace(weights=weights, out=base / "out", cache=base / "cache", args=args,
                           stdout=stdout.getvalue(),
                           results=json.loads((base / "out/eval.json").read_text()))


def cached(cache: Path, suite: str) -> Path:
    (beton,) = cache.glob(f"{suite}-*.beton")
    return beton


def logits_of(weights: Path, beton: Path, ema: bool = False):
    """``(logits, labels)`` of every image of ``beton`` in its order, computed here: the run's
    model (flip TTA averaged, as it validated) on the val loader's decoded images."""
    from ffcv_utils.load.loaders import normalize, val_loader
    from ffcv_utils.tools.predict import load_run_model

    rm = load_run_model(weights)
    if ema:
        ckpt.load_weights(rm.model, weights, "test", ema=True)
    params = json.loads((weights.parent / "params.json").read_text())
    loader = val_loader(str(beton), batch_size=params["validation.batch_size"], num_workers=1,
                        res=rm.resolution, crop_ratio=rm.crop_ratio,
                        decoder=params["data.decoder"])
    outs, ys = [], []
    with torch.no_grad():
        for images, labels in loader:
            x = normalize(images)
            out = rm.model(x)
            if rm.flip_tta:
                out = (out + rm.model(torch.flip(x, dims=[3]))) / 2
            outs.append(out.float())
            ys.append(labels)
    return torch.cat(outs).numpy(), torch.cat(ys).numpy()


def ranked(logits: np.ndarray, classes=None) -> np.ndarray:
    """Classes by falling logit (only ``classes`` when given), the top 5."""
    if classes is not None:
        masked = np.full_like(logits, -np.inf)
        masked[:, list(classes)] = logits[:, list(classes)]
        logits = masked
    return np.argsort(-logits, axis=1, kind="stable")[:, :min(5, len(classes or logits[0]))]


def plain(top: np.ndarray, labels: np.ndarray) -> dict:
    return {"top1": float(np.mean(top[:, 0] == labels)),
            "top5": float(np.mean((top == labels[:, None]).any(1))), "n": len(labels)}


def assert_same(got: dict, want: dict) -> None:
    assert got["n"] == want["n"]
    assert got["top1"] == pytest.approx(want["top1"], abs=1e-12)
    assert got["top5"] == pytest.approx(want["top5"], abs=1e-12)


@pytest.mark.timeout(900)
def test_every_figure_equals_a_direct_computation(evaluated, eval_suites, digits_run):
    res, cache, weights = evaluated.results, evaluated.cache, evaluated.weights
    assert list(res) == ["val", "real", "v2", "imagenet-r", "imagenet-a", "sketch"]
    val_logits, val_labels = logits_of(weights, cached(cache, "val"))
    assert_same(res["val"], plain(ranked(val_logits), val_labels))
    # the same images the run validated on, under ImageNet's file names: its last top-1
    assert res["val"]["top1"] == pytest.approx(read_log(digits_run[2])[-1]["top_1"], abs=1e-9)
    # ReaL: entry n-1 of real.json belongs to ILSVRC2012_val_<n>; empty entries left out
    real = json.loads((eval_suites / "real.json").read_text())
    files = read_info(cached(cache, "val"))["files"]
    entries = [real[int(Path(f).stem.rsplit("_", 1)[1]) - 1] for f in files]
    keep = [i for i, e in enumerate(entries) if e]
    top = ranked(val_logits)
    assert_same(res["real"], {"n": len(keep),
                              "top1": np.mean([top[i, 0] in entries[i] for i in keep]),
                              "top5": np.mean([bool(set(top[i]) & set(entries[i]))
                                               for i in keep])})
    assert 0 < len(keep) < len(files) and any(len(e) > 1 for e in entries)
    for suite, classes in (("v2", None), ("imagenet-r", R_CLASSES), ("imagenet-a", A_CLASSES),
                           ("sketch", None)):
        logits, labels = logits_of(weights, cached(cache, suite))
        if classes is not None:
            assert set(labels) <= set(classes)
        assert_same(res[suite], plain(ranked(logits, classes), labels))
        assert res[suite]["n"] == len(labels)


def test_v2_folder_i_is_the_runs_class_i(evaluated, eval_suites):
    counts = read_info(cached(evaluated.cache, "v2"))["class_counts"]
    classes = json.loads((evaluated.weights.parent / "classes.json").read_text())
    assert [counts[c] for c in classes] == [
        len(list((eval_suites / V2 / str(i)).iterdir())) for i in range(10)]


def test_table_json_and_chart(evaluated):
    lines = evaluated.stdout.splitlines()
    header = next(line for line in lines if "suite" in line)
    for word in ("images", "top-1", "top-5", "gap to val top-1"):
        assert word in header
    row = next(line for line in lines if line.strip().startswith("ImageNet-R "))
    r, val = evaluated.results["imagenet-r"], evaluated.results["val"]
    assert f"{100 * (r['top1'] - val['top1']):.2f}" in row.split()
    assert set(evaluated.results["sketch"]) == {"top1", "top5", "n"}
    png = (evaluated.out / "eval.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert not [p for p in evaluated.out.iterdir() if p.name.startswith(".")]  # no temporaries


def test_archives_read_as_their_folders(eval_suites):
    """ImageNet-R's .tar and V2's .tar.gz give the samples of the folders they were made of."""
    from ffcv_utils.tools.eval_sets import index_labels, open_set, wnid_labels

    run_classes = sorted(p.name for p in (eval_suites / "sketch").iterdir())
    for folder, archive, rule in (("imagenet-r", "imagenet-r.tar", wnid_labels),
                                  (V2, "imagenetv2-matched-frequency.tar.gz", index_labels)):
        def samples(path):
            source = open_set(path, "--x", run_classes, rule)
            return sorted((s.label, Path(s.name.split(":")[-1]).name, s.read())
                          for s in source)
        from_folder = samples(eval_suites / folder)
        assert from_folder and from_folder == samples(eval_suites / "archives" / archive)


@pytest.mark.timeout(900)
def test_checkpoint_ema_weights_are_evaluated(evaluated, eval_suites, tmp_path):
    """A checkpoint with EMA weights is evaluated with those, as eval-only does. Here the EMA
    classifier ignores the image (zero weights, biases falling from class 0 to 9), so its
    figures follow from the labels alone: top-1 is the share of class 0, top-5 of classes 0-4."""
    from ffcv_utils.tools.evaluate import main

    run = evaluated.weights.parent
    for name in ("params.json", "classes.json"):
        shutil.copy(run / name, tmp_path / name)
    state = torch.load(evaluated.weights, map_location="cpu")
    ema = dict(state, **{"fc.weight": torch.zeros_like(state["fc.weight"]),
                         "fc.bias": torch.arange(10, 0, -1, dtype=state["fc.bias"].dtype)})
    ckpt.atomic_save({"model": state, "ema": ema, "epoch": 3}, tmp_path / "checkpoint_last.pt")
    weights = tmp_path / "checkpoint_last.pt"
    with redirect_stdout(io.StringIO()):
        assert main(["--weights", str(weights), "--out", str(tmp_path / "out"), "--cache",
                     str(evaluated.cache), "--v2", str(v2_archive(eval_suites))]) == 0
    got = json.loads((tmp_path / "out/eval.json").read_text())["v2"]
    labels = read_info(cached(evaluated.cache, "v2"))["class_counts"]
    counts = [labels[c] for c in json.loads((run / "classes.json").read_text())]
    n = sum(counts)
    assert_same(got, {"n": n, "top1": counts[0] / n, "top5": sum(counts[:5]) / n})
    assert evaluated.results["v2"]["top1"] != got["top1"]  # the plain weights read the images


# --------------------------------------------------------------------------------------------
# Refusals: one line each, before anything is written


def _one_image(eval_suites: Path) -> Path:
    return next((eval_suites / "sketch").rglob("*.JPEG"))


def _folders(tmp: Path, eval_suites: Path, names) -> Path:
    for name in names:
        (tmp / "set" / name).mkdir(parents=True)
        shutil.copy(_one_image(eval_suites), tmp / "set" / name / "a.jpg")
    return tmp / "set"


def _run_copy(tmp: Path, weights: Path, classes=None, val_dataset=None) -> Path:
    """The run folder with its classes.json or its val beton changed."""
    run = tmp / "run"
    run.mkdir()
    shutil.copy(weights, run / weights.name)
    params = json.loads((weights.parent / "params.json").read_text())
    if val_dataset is not None:
        params["data.val_dataset"] = val_dataset
    (run / "params.json").write_text(json.dumps(params))
    names = json.loads((weights.parent / "classes.json").read_text())
    (run / "classes.json").write_text(json.dumps(classes(names) if classes else names))
    return run / weights.name


def _short_real(tmp, s, digits_betons):
    real = json.loads((s / "real.json").read_text())
    (tmp / "real.json").write_text(json.dumps(real[:-1]))
    return ["--real-labels", str(tmp / "real.json"), "--val-dir", str(s)]


def _bad_real_entry(tmp, s, digits_betons):
    real = json.loads((s / "real.json").read_text())
    real[5] = [3, 10]
    (tmp / "real.json").write_text(json.dumps(real))
    return ["--real-labels", str(tmp / "real.json"), "--val-dir", str(s)]


def _val_beton_without_names(tmp, s, digits_betons):
    beton = tmp / "val.beton"
    shutil.copy(digits_betons[1], beton)
    info = read_info(digits_betons[1])
    info.pop("files", None)
    sidecar_path(beton).write_text(json.dumps(info))
    return ["--real-labels", str(s / "real.json"), "--val-beton", str(beton)]


def _damaged_targz(tmp, s, digits_betons):
    data = (s / "archives/imagenetv2-matched-frequency.tar.gz").read_bytes()
    (tmp / "v2.tar.gz").write_bytes(data[: len(data) // 2])
    return ["--v2", str(tmp / "v2.tar.gz")]


def _negative_size_targz(tmp, s, digits_betons):
    """An honest member, then a header whose size is -512 (tarfile reads it forever)."""
    image = _one_image(s).read_bytes()
    bad = tar_header("0/b.jpg", size_field=NEGATIVE["base-256 -512"])
    (tmp / "v2.tar.gz").write_bytes(gzip.compress(tar_member("0/a.jpg", image) + bad + END))
    return ["--v2", str(tmp / "v2.tar.gz")]


def _bomb_targz(tmp, s, digits_betons):
    """Under 1 MB of gzip that expands past 1 GiB: one member of zeros, 1 MiB a gzip member."""
    zeros = gzip.compress(bytes(1 << 20), 9)
    with open(tmp / "r.tar.gz", "wb") as f:
        f.write(gzip.compress(tar_header("2_two/zeros.jpg", 1100 << 20)))
        f.writelines(zeros for _ in range(1100))
    return ["--imagenet-r", str(tmp / "r.tar.gz")]


CASES = {  # name: (arguments, run changes, the words the one line must hold)
    "v2 index beyond the classes": (
        lambda tmp, s, b: ["--v2", str(_folders(tmp, s, ["3", "10"]))], {},
        "--v2: folder 10 is beyond the run's 10 classes"),
    "v2 folder not an index": (
        lambda tmp, s, b: ["--v2", str(_folders(tmp, s, ["2", "n01440764"]))], {},
        "folder 'n01440764' is not a class index"),
    "v2 on an unsorted class list": (
        lambda tmp, s, b: ["--v2", str(s / V2)],
        {"classes": lambda c: [c[1], c[0], *c[2:]], "val_dataset": ""},
        "the run's class list is not sorted (label 1 '0_zero' comes after '1_one')"),
    "unknown wnid": (
        lambda tmp, s, b: ["--imagenet-r", str(_folders(tmp, s, ["2_two", "n00000003"]))], {},
        "--imagenet-r: class folder 'n00000003' is not one of the run's classes"),
    "subset larger than the run's classes": (
        lambda tmp, s, b: ["--imagenet-a", str(_folders(tmp, s, [f"n{i:08d}" for i in
                                                                 range(11)]))], {},
        "--imagenet-a: 11 class folders, more than the run's 10 classes"),
    "real.json of another length": (
        _short_real, {},
        "--real-labels has 362 entries but the val split of"),
    "real.json naming a class beyond the run's": (
        _bad_real_entry, {},
        "entry 5 of"),
    "ReaL on a val beton without ImageNet's file names": (
        lambda tmp, s, b: ["--real-labels", str(s / "real.json")], {},
        "has no ILSVRC2012_val_<number> name"),
    "ReaL on a val beton whose sidecar lists no files": (
        _val_beton_without_names, {}, "its sidecar lists no source file names"),
    "ReaL without a val split": (
        lambda tmp, s, b: ["--real-labels", str(s / "real.json")], {"val_dataset": ""},
        "--real-labels needs the val split"),
    "damaged .tar.gz": (_damaged_targz, {}, "v2.tar.gz: damaged archive"),
    ".tar.gz with a negative member size": (
        _negative_size_targz, {}, "v2.tar.gz: damaged tar archive at byte"),
    ".tar.gz bomb": (_bomb_targz, {}, "r.tar.gz: expands to more than 256 MiB"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refusals_are_one_line(case, tool, evaluated, eval_suites, digits_betons, tmp_path):
    """With the module's cache: the val split is written already, so ReaL's checks against it
    come at once (written from --val-dir, the length is known only after its first write)."""
    make_args, run_changes, words = CASES[case]
    weights = evaluated.weights
    if run_changes:
        weights = _run_copy(tmp_path, weights, **run_changes)
    args = make_args(tmp_path, eval_suites, digits_betons)
    cache_before = sorted(evaluated.cache.iterdir())
    r = tool("-m ffcv_utils.tools.evaluate", "--weights", weights, "--out", tmp_path / "out",
             "--cache", evaluated.cache, *args)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ffcv-eval: error: "), r.stderr[-2000:]
    assert words in lines[0]
    assert not (tmp_path / "out").exists()
    assert sorted(evaluated.cache.iterdir()) == cache_before


# --------------------------------------------------------------------------------------------
# torchrun: two processes, every image once, the cached betons reused


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_torchrun_reuses_the_cache_and_counts_every_image_once(evaluated, tmp_path):
    betons = sorted(evaluated.cache.glob("*.beton"))
    assert len(betons) == 5
    before = {p: p.stat().st_mtime_ns for p in betons}
    args = [a if a != str(evaluated.out) else str(tmp_path / "out") for a in evaluated.args]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={free_port()}", "-m", "ffcv_utils.tools.evaluate", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=840)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in betons} == before
    assert "writing" not in result.stderr and "checking" not in result.stderr
    assert result.stderr.count("(reused)") == 5 and "(written now)" not in result.stderr
    got = json.loads((tmp_path / "out/eval.json").read_text())
    assert got.keys() == evaluated.results.keys()
    for suite, want in evaluated.results.items():
        assert got[suite]["n"] == want["n"]
        assert got[suite]["top1"] == pytest.approx(want["top1"], abs=1e-12)
        assert got[suite]["top5"] == pytest.approx(want["top5"], abs=1e-12)
    assert got["val"]["n"] == read_info(cached(evaluated.cache, "val"))["num_samples"]
