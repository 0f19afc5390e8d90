"""The benchmarks run on a tiny input and write well-formed CSVs. No test asserts a speed."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

MACHINE_COLUMNS = ["cpu_model", "cpu_cores", "gpu", "date", "torch", "ffcv"]


@pytest.fixture(scope="module")
def loader_run(photos_dir, tmp_path_factory):
    from benchmarks import loader_throughput

    out = tmp_path_factory.mktemp("bench") / "loader.csv"
    loader_throughput.run(["--data-dir", str(photos_dir), "--res", "32", "--workers", "1",
                           "--batch-size", "8", "--epochs", "2", "--out", str(out),
                           "--loaders", "toolkit-jpg,ffcv-stock,torchvision"])
    # (toolkit-proportion runs the same code as toolkit-jpg on the beton ffcv-stock reads;
    # each ffcv row costs a numba compilation in its own process, so the test keeps to three)
    return out


@pytest.mark.slow  # loader_run: a process per ffcv loader row
def test_loader_throughput_csv(loader_run):
    df = pd.read_csv(loader_run)
    for col in ["loader", "beton_mode", "res", "workers", "batch_size", "img_per_s",
                "first_epoch_img_per_s", "dataset_bytes", "peak_rss_mb",
                "ratio_vs_torchvision", *MACHINE_COLUMNS]:
        assert col in df.columns, col
    assert list(df.loader) == ["toolkit-jpg", "ffcv-stock", "torchvision"]
    assert (df.img_per_s > 0).all() and (df.first_epoch_img_per_s > 0).all()
    assert (df.peak_rss_mb > 0).all() and (df.dataset_bytes > 0).all()
    assert df.loc[df.loader == "torchvision", "ratio_vs_torchvision"].iloc[0] == pytest.approx(1)
    assert (df.res == 32).all() and (df.workers == 1).all()
    assert list(df.beton_mode[:2]) == ["jpg", "proportion"]
    # 60 images in batches of 8, drop_last: 56 per epoch for every loader
    assert set(df.images_per_epoch) == {56}


@pytest.mark.slow  # loader_run: a process per ffcv loader row
def test_loader_betons_are_cached(loader_run, photos_dir):
    from benchmarks.loader_throughput import ensure_betons, folder_fingerprint, image_files

    cache = loader_run.parent / "betons"
    betons = sorted(cache.glob("*.beton"))
    assert [b.name.split("-")[2] for b in betons] == ["jpg", "proportion"]
    mtimes = [b.stat().st_mtime for b in betons]
    _, fp = folder_fingerprint(image_files(Path(photos_dir) / "train"))
    got = ensure_betons(Path(photos_dir).resolve(), cache, ["proportion", "jpg"], 1, fp)
    assert all(writer == "cached" for _, writer in got.values())
    assert [b.stat().st_mtime for b in betons] == mtimes


@pytest.mark.slow  # loader_run: a process per ffcv loader row
def test_train_throughput_cpu_with_e2e(loader_run, tmp_path):
    from benchmarks import train_throughput

    beton = sorted((loader_run.parent / "betons").glob("*proportion*.beton"))[0]
    out = tmp_path / "train.csv"
    train_throughput.run(["--arch", "resnet18", "--device", "cpu", "--batch-size", "4",
                          "--train-res", "32", "--val-res", "40", "--steps", "2", "--warmup", "1",
                          "--variants", "fp32-cl", "--modes", "train,val,e2e", "--workers", "1",
                          "--beton", str(beton), "--out", str(out)])
    df = pd.read_csv(out)
    for col in ["arch", "mode", "variant", "res", "batch_size", "img_per_s",
                "model_only_img_per_s", "loader_img_per_s", "loader_bound", *MACHINE_COLUMNS]:
        assert col in df.columns, col
    assert list(df["mode"]) == ["train", "val", "e2e"]
    assert (df.img_per_s > 0).all()
    e2e = df[df["mode"] == "e2e"].iloc[0]
    assert e2e.model_only_img_per_s > 0 and e2e.loader_img_per_s > 0
    assert e2e.loader_bound in ("yes", "no")
    assert (df.gpu == "none").all() or df.device.str.startswith("cuda").any()


def test_train_variant_parsing():
    from benchmarks.train_throughput import parse_variant

    assert parse_variant("bf16-cl-compile") == {"name": "bf16-cl-compile", "precision": "bf16",
                                                "channels_last": True, "compile": True}
    with pytest.raises(ValueError):
        parse_variant("cl")
    with pytest.raises(ValueError):
        parse_variant("fp32-fast")


@pytest.mark.slow  # loader_run: a process per ffcv loader row
def test_render_fills_only_the_perf_block(loader_run, tmp_path):
    from benchmarks import render

    results = tmp_path / "results"
    results.mkdir()
    (results / "loader_cpu.csv").write_bytes(loader_run.read_bytes())
    doc = tmp_path / "performance.md"
    doc.write_text("# Title\n\nintro\n\n<!-- perf:start -->\nSTALE-BLOCK\n<!-- perf:end -->\ntail\n")
    render.main(["--results", str(results), "--doc", str(doc)])
    text = doc.read_text()
    assert text.startswith("# Title\n\nintro\n\n<!-- perf:start -->\n")
    assert text.endswith("<!-- perf:end -->\ntail\n")
    assert "STALE-BLOCK" not in text
    assert "| torchvision |" in text and "1.00×" in text
    assert '<a id="loader_cpu"></a>' in text  # the docs link each table by its CSV's name
    df = pd.read_csv(loader_run)
    assert df.cpu_model.iloc[0] in text and df.date.iloc[0] in text
    render.main(["--results", str(results), "--doc", str(doc)])
    assert doc.read_text() == text  # idempotent


@pytest.mark.slow  # loader_run: a process per ffcv loader row
def test_profile_loader_times_both_paths(loader_run, tmp_path):
    from benchmarks import profile_loader

    beton = next((loader_run.parent / "betons").glob("*-proportion-*.beton"))
    out = tmp_path / "profile.csv"
    profile_loader.main(["--beton", str(beton), "--res", "32", "--images", "20", "--repeats", "1",
                         "--loader-workers", "0", "--out", str(out)])
    df = pd.read_csv(out)
    assert set(df.path) == {"stock ffcv", "fast"}
    timed = df.step.str.startswith(("decode_full", "fast decode", "fast resize+flip from raw"))
    assert timed.sum() == 3 and (df.ms_per_image[timed] > 0).all()
    for col in MACHINE_COLUMNS:
        assert col in df.columns, col
    # the validation path: centre crops, no flip step
    profile_loader.main(["--beton", str(beton), "--res", "32", "--images", "20", "--repeats", "1",
                         "--loader-workers", "0", "--crop", "center", "--out", str(out)])
    val = pd.read_csv(out)
    assert (val.crop == "center").all() and not val.step.str.startswith("flip").any()
    assert val.ms_per_image.notna().all()


@pytest.mark.timeout(300)
@pytest.mark.slow  # loader_run: a process per ffcv loader row
def test_startup_reports_first_batch_times(loader_run, tmp_path):
    from benchmarks import startup

    beton = next((loader_run.parent / "betons").glob("*-jpg-*.beton"))
    out = tmp_path / "startup.csv"
    startup.main(["--beton", str(beton), "--res", "32", "--res2", "40", "--workers", "1",
                  "--batch-size", "8", "--decoders", "fast", "--out", str(out)])
    df = pd.read_csv(out)
    assert list(df.decoder) == ["fast"]
    for col in ("build_s", "first_batch_s", "epoch1_s", "first_batch_res2_s", "epoch2_s"):
        assert df[col].iloc[0] > 0, col


@pytest.mark.timeout(300)
@pytest.mark.slow
def test_write_throughput_reads_every_beton_back(photos_dir, tmp_path):
    """Two writers (the toolkit's passthrough, ffcv-imagenet's call), one round: rates, CPU,
    sizes, and the stored-as-source check made from the betons themselves (each writer is a
    process of its own with a small write after it: a third writer would add ~25 s)."""
    from benchmarks import render, write_throughput
    from PIL import Image

    out = tmp_path / "write.csv"
    write_throughput.run(["--data-dir", str(photos_dir), "--workers", "1", "--rounds", "1",
                          "--writers", "toolkit-jpg,ffcv-imagenet-jpg",
                          "--no-warmup", "--out", str(out)])
    df = pd.read_csv(out).set_index("writer")
    for col in ["img_per_s", "data_img_per_s", "startup_s", "cpu_ms_per_img",
                "data_cpu_ms_per_img", "data_bytes_per_img", "stored_as_source_share",
                "load_1m_before", *MACHINE_COLUMNS]:
        assert col in df.columns, col
    assert list(df.index) == ["toolkit-jpg", "ffcv-imagenet-jpg"]
    assert (df.images == 60).all() and (df.as_source_check == "ok").all()
    for col in ("img_per_s", "data_img_per_s", "startup_s", "cpu_ms_per_img",
                "data_cpu_ms_per_img", "data_bytes_per_img"):
        assert (df[col] > 0).all(), col
    # a quarter of the photos written again each round: the marginal columns are filled (their
    # sign is noise with 45 extra photos; the arithmetic is tested below)
    assert (df.small_images == 15).all() and df.marginal_cpu_ms_per_img.notna().all()
    fits = [max(Image.open(p).size) <= 500 for p in Path(photos_dir, "train").rglob("*.JPEG")]
    assert 0 < sum(fits) < 60  # some photos are resized, so not every sample can pass through
    assert df.loc["toolkit-jpg", "stored_as_source_share"] == pytest.approx(sum(fits) / 60)
    assert df.loc["toolkit-jpg", "claimed_as_is"] == sum(fits)
    assert df.loc["ffcv-imagenet-jpg", "stored_as_source_share"] == 0  # it re-encodes all
    assert df.loc["ffcv-imagenet-jpg", "ratio_vs_ffcv_imagenet"] == pytest.approx(1)
    assert df.loc["toolkit-jpg", "ratio_vs_ffcv_imagenet"] > 0
    assert pd.isna(df.loc["toolkit-jpg", "ratio_vs_reencode"])  # no re-encoding row to divide by
    assert not list((tmp_path / "betons").glob("*.beton"))  # each beton removed once read
    text = render.render(tmp_path)
    assert "**Writing a beton** (`write.csv`" in text and "| toolkit-jpg |" in text
    assert "each round also writes 15 of the photos" in text


def test_marginal_rate_is_the_median_difference_to_the_small_write():
    from benchmarks.write_throughput import marginal

    def run(data_s, cpu, small_s, small_cpu):
        return {"data_s": data_s, "data_cpu_s": cpu,
                "small": {"data_s": small_s, "data_cpu_s": small_cpu}}

    unpaired = {"data_s": 1.0, "data_cpu_s": 1.0, "small": None}  # its small write failed
    rounds = [run(5.0, 9.0, 2.0, 3.0), run(4.0, 8.0, 2.0, 3.0), run(9.0, 20.0, 2.0, 3.0),
              unpaired]
    got = marginal(rounds, 4000, 1000)
    assert got["small_images"] == 1000
    assert got["marginal_img_per_s"] == pytest.approx(3000 / 3.0)  # median of 3, 2, 7
    assert got["marginal_cpu_ms_per_img"] == pytest.approx(6.0 / 3000 * 1e3)  # of 6, 5, 17
    assert marginal([unpaired], 4000, 1000) == {}


def test_write_as_source_check_names_a_mismatch():
    from benchmarks.write_throughput import as_source_check

    ok = {"stored": 10, "stored_as_source": 8}
    assert as_source_check("toolkit-jpg", ok, claimed=8, no_resize=8, n=10) == "ok"
    assert as_source_check("toolkit-jpg", dict(ok, stored_as_source=7), 8, 8, 10) == \
        "MISMATCH: 7 samples hold their source bytes, 8 expected"
    assert "6 passed through, 8 photos need no resize" in as_source_check(
        "toolkit-jpg", dict(ok, stored_as_source=6), 6, 8, 10)
    assert "MISMATCH" in as_source_check("ffcv-imagenet-jpg", ok, 0, 8, 10)
    assert "9 samples stored, 10 photos" in as_source_check("toolkit-jpg-reencode",
                                                            {"stored": 9, "stored_as_source": 0},
                                                            0, 8, 10)


# ---------------------------------------------------------------- beyond_ram.py (issue 17)

BEYOND_RAM_STREAM = ["procs", "loader", "outcome", "img_per_s", "read_x_beton", "read_gb",
                     "beton_gb", "max_peak_rss_mb", "loader_mem_mb", "bound_mb", "within_bound",
                     "seen_once_share", "repeats", "missed", "disk_mb_per_s", "disk_img_per_s",
                     "x_target", "load_1m_before", "load_1m_after", *MACHINE_COLUMNS]


@pytest.mark.slow  # starts a loader process (numba compiles its pipeline there)
@pytest.mark.timeout(120)
def test_beyond_ram_stream_smoke(tmp_path, capsys):
    """A 64-photo beton read in a capped cgroup by the page-aware order: every sample once, the
    bytes read from disk counted; where no memory cgroup can be made, one refusal line."""
    from benchmarks import beyond_ram

    out = tmp_path / "stream.csv"
    argv = ["stream", "--images", "64", "--procs", "1", "--variants", "page", "--batch-size",
            "8", "--res", "32", "--window-pages", "2", "--data-dir",
            str(tmp_path / "data"), "--out", str(out)]
    try:
        beyond_ram.run(argv)
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()
        assert e.code == 2 and len(err) == 1, err
        assert err[0].startswith("beyond_ram.py stream: error: ") and "cgroup" in err[0]
        pytest.skip(err[0])
    df = pd.read_csv(out)
    for col in BEYOND_RAM_STREAM:
        assert col in df.columns, col
    row = df.iloc[0]
    assert row.outcome == "ok" and row.loader == "page" and row.procs == 1
    assert row.seen_once_share == 1.0 and row.repeats == 0 and row.missed == 0
    assert row.img_per_s > 0 and row.disk_mb_per_s > 0
    # evicted before the epoch: it reads the data from disk, each page about once (the warm-up
    # epoch on another beton keeps numba's compilation, and the files it reads, out of it)
    assert 0.5 < row.read_x_beton < 1.5, row.read_x_beton
    assert row.bound_mb > 0 and row.max_peak_rss_mb > 0
    assert 0 < row.page_slots <= row.bound_pages  # ffcv's schedule, recorded, within it


def test_beyond_ram_refuses_without_a_memory_cgroup(monkeypatch, capsys, tmp_path):
    from benchmarks import beyond_ram

    def no_cgroup(*_, **__):
        raise OSError("no cgroup memory controller is mounted")

    monkeypatch.setattr(beyond_ram, "MemoryCap", no_cgroup)
    with pytest.raises(SystemExit) as e:
        beyond_ram.run(["stream", "--data-dir", str(tmp_path), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "beyond_ram.py stream: error: no cgroup memory controller is mounted"]
    assert not list(tmp_path.iterdir())  # refused before writing anything


@pytest.mark.slow  # starts loader processes for the first batch
@pytest.mark.timeout(120)
def test_beyond_ram_scale_smoke(tmp_path):
    from benchmarks import beyond_ram

    out = tmp_path / "scale.csv"
    beyond_ram.run(["scale", "--samples", "1000", "--fractions", "0.5,1", "--val-samples",
                    "200", "--classes", "10", "--ranks", "1,8", "--batch-size", "16",
                    "--repeat", "1", "--data-dir", str(tmp_path / "data"), "--out", str(out)])
    df = pd.read_csv(out)
    assert list(df.split) == ["train", "train", "val"]
    assert list(df.samples) == [500, 1000, 200]
    train = df[df.split == "train"]
    for col in beyond_ram.SCALE_METRICS:
        assert (train[col] > 0).all(), col
        assert f"{col}_x_per_doubling" in df.columns
    assert train.samples_x.iloc[1] == 2
    assert (df.check_s > 0).all() and set(MACHINE_COLUMNS) <= set(df.columns)
    # the order's arrays: rank 0's uint64 indices (+ the page layout's int64 per sample)
    assert train.order_random_w1_mb.iloc[1] == pytest.approx(1000 // 16 * 16 * 8 / 2**20)


@pytest.mark.timeout(120)
def test_beyond_ram_sizes_smoke(tmp_path):
    from benchmarks import beyond_ram

    out = tmp_path / "sizes.csv"
    beyond_ram.run(["sizes", "--images", "12", "--modes", "jpg,raw", "--resolutions", "500,400",
                    "--data-dir", str(tmp_path / "data"), "--out", str(out)])
    df = pd.read_csv(out)
    assert list(zip(df.write_mode, df.max_resolution)) == [
        ("jpg", 500), ("raw", 500), ("jpg", 400), ("raw", 400)]
    assert (df.images == 12).all() and (df.data_bytes_per_img > 0).all()
    assert list(df.stored_jpeg_share) == [1.0, 0.0, 1.0, 0.0]
    raw = df[df.write_mode == "raw"].set_index("max_resolution").data_bytes_per_img
    assert raw[400] < raw[500]  # fewer pixels
    assert df.imagenet_gb.tolist() == pytest.approx(
        (df.data_bytes_per_img * 1_281_167 / 1e9).tolist())
    for g in (64, 128, 256):
        assert set(df[f"fits_{g}gb"]) <= {"yes", "no"}


def test_beyond_ram_results_render():
    """The committed beyond_ram CSVs render as their tables (and not as loader tables,
    although the stream CSV has a ``loader`` column)."""
    from benchmarks import render

    text = render.render(REPO / "benchmarks" / "results")
    for head in ("**A beton bigger than memory** (`beyond_ram.csv`",
                 "**At ImageNet's sample count** (`beyond_ram_scale.csv`",
                 "**Bytes per image by write mode** (`write_sizes.csv`",
                 "**Fixed or sliding page windows** (`beyond_ram_window.csv`",
                 "**Buffered or O_DIRECT page reads** (`beyond_ram_direct.csv`"):
        assert text.count(head) == 1, head
    assert "beyond_ram.csv`): " not in text.split("**A beton bigger")[0]
