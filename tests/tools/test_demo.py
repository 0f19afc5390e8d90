"""The browser demo (ffcv_utils/tools/demo.py): its predict function against ``predict.predict``,
bad uploads as page errors, a checkpoint it cannot use refused before serving (on the shared
``digits_run``), and the real page in headless Chromium (Debian's ``chromium``, driven by
Playwright; no browser download) serving the run ``make demo`` trains (``demo_run``)."""
from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import gradio  # noqa: F401  (imported before any test starts threads: see tests/conftest.py)
import pytest

from helpers import ROOT

CHROMIUM = "/usr/lib/chromium/chromium"
LABEL = "#prediction [data-testid=label-output-value]"  # gr.Label's top class

pytestmark = pytest.mark.timeout(600)  # the first test here may build the demo run


@pytest.fixture(scope="module")
def run_model(digits_run):
    """The shared 3-epoch run: what the page does with any model."""
    from ffcv_utils.tools.predict import load_run_model
    weights = digits_run[2] / "final_weights.pt"
    return weights, load_run_model(weights)


@pytest.fixture(scope="module")
def demo_model(demo_run):
    """The run ``make demo`` trains: the page as a user first sees it, 8 of 10 digits right."""
    from ffcv_utils.tools.predict import load_run_model
    return demo_run, load_run_model(demo_run)


def val_files(digits_dir) -> list[Path]:
    return sorted((Path(digits_dir) / "val").rglob("*.jpg"))


def test_page_gives_the_same_top5_as_predict(run_model, digits_dir):
    from ffcv_utils.tools.demo import classify
    from ffcv_utils.tools.predict import predict
    _, rm = run_model
    files = val_files(digits_dir)[::36]  # ten files across the classes
    reference, unreadable = predict(rm, files)  # as predict.py runs it: one batch
    assert not unreadable and len(reference) == len(files)
    for f, top in reference:
        shown, seconds = classify(rm, str(f))
        assert list(shown) == [c for c, _ in top], f
        assert list(shown.values()) == pytest.approx([p for _, p in top], abs=1e-5)
        assert seconds > 0


def test_class_names_shown_are_readable_and_distinct():
    from ffcv_utils.tools.demo import display_names
    rm = SimpleNamespace(classes=["n02012849", "n03126707", "n01440764"],
                         card={"class_names": ["crane", "crane", "tench"]})
    assert display_names(rm) == ["crane (n02012849)", "crane (n03126707)", "tench"]
    rm.card = {}
    assert display_names(rm) == rm.classes


def test_class_names_come_from_a_synset_mapping_file(tmp_path):
    """--class-names: Kaggle's LOC_synset_mapping.txt gives words; an id it lacks keeps its id;
    a file that names none of the classes, or a FIFO, is one line."""
    from ffcv_utils.base.cli import UserError
    from ffcv_utils.tools.demo import read_class_names
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n01440764 tench, Tinca tinca\nn02012849 crane\n")
    classes = ["n01440764", "n02012849", "n09999999"]
    assert read_class_names(mapping, classes) == ["tench", "crane", "n09999999"]
    with pytest.raises(UserError, match="names none of the run's 1 classes"):
        read_class_names(mapping, ["0_zero"])
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="not a regular file"):
        read_class_names(fifo, classes)


def test_examples_are_one_image_a_class(digits_dir):
    from ffcv_utils.tools.demo import example_files
    files = example_files(Path(digits_dir) / "val")
    assert len(files) == 10 and len({f.parent for f in files}) == 10
    assert example_files(files[0].parent) == sorted(files[0].parent.iterdir())[:10]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels and holds none: a decompression bomb's
    header, refused before any pixel is decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


def test_bad_uploads_are_page_errors_and_a_huge_photo_is_answered(run_model, digits_dir,
                                                                   tmp_path):
    import gradio as gr
    from PIL import Image

    from ffcv_utils.tools.demo import classify
    _, rm = run_model
    good = val_files(digits_dir)[0].read_bytes()
    bad = {"notes.jpg": b"these are notes, not pixels\n", "empty.png": b"",
           "truncated.jpg": good[:len(good) // 2], "bomb.png": png_header(60000, 60000)}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(gr.Error) as err:
            classify(rm, str(tmp_path / name))
        assert err.value.message.startswith(f"{name} is not an image this demo can read: "), name
        assert str(tmp_path) not in err.value.message  # names the upload, not a server path
    huge = tmp_path / "huge.jpg"  # a camera's 64-megapixel photo: resized and answered
    buf = io.BytesIO()
    Image.open(io.BytesIO(good)).convert("L").resize((8000, 8000)).save(buf, "JPEG", quality=80)
    huge.write_bytes(buf.getvalue())
    top, _ = classify(rm, str(huge))
    assert len(top) == 5 and sum(top.values()) <= 1 + 1e-6


def test_a_checkpoint_it_cannot_use_ends_it_in_one_line_before_serving(run_model, tmp_path, tool,
                                                                       monkeypatch):
    """So do other bad arguments: the server never starts."""
    import gradio as gr

    def served(*args, **kwargs):
        raise AssertionError("the demo started serving")

    monkeypatch.setattr(gr.Blocks, "launch", served)
    weights, _ = run_model
    broken = tmp_path / "run" / "final_weights.pt"
    broken.parent.mkdir()
    for name in ("params.json", "classes.json"):
        shutil.copy(weights.parent / name, broken.parent / name)
    broken.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    cases = [((tmp_path / "missing.pt",), "no such file"), ((broken,), "not a PyTorch checkpoint"),
             ((weights, "--examples", tmp_path / "nowhere"), "--examples: no such folder"),
             ((weights, "--examples", tmp_path), "--examples: no images in"),
             ((weights, "--concurrency", "0"), "--concurrency: must be at least 1")]
    for (w, *rest), why in cases:
        result = tool("-m ffcv_utils.tools.demo", "--weights", w, *rest)
        assert result.returncode == 2 and why in result.stderr, result.stderr
        assert result.stderr.startswith("ffcv-demo: error: ")
        assert len(result.stderr.strip().splitlines()) == 1


# --- the real page in a real browser -------------------------------------------------------------

def chromium() -> str:
    """Debian's Chromium, installed with apt when missing (as the Makefile installs system
    libraries); never Playwright's browser download."""
    if not Path(CHROMIUM).exists():
        if os.geteuid() != 0:
            pytest.fail(f"no {CHROMIUM}: run sudo apt-get install -y chromium")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, timeout=300, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, timeout=600,
                       env=env)
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo_server(demo_model, digits_dir, tmp_path):
    """``ffcv-demo`` serving the demo run in its own process; killed however the test ends."""
    import urllib.request

    weights, _ = demo_model
    port = free_port()
    log = open(tmp_path / "server.log", "w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "ffcv_utils.tools.demo", "--weights", str(weights), "--port", str(port),
         "--examples", str(Path(digits_dir) / "val"), "--concurrency", "2"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "uploads")))
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "ffcv-demo did not serve within 180 s"
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.kill()
        server.wait(timeout=30)
        log.close()


def confident_per_class(rm, digits_dir) -> list[tuple[Path, str, str]]:
    """``(file, its class, predict.py's top class)``: of each class's held-out images, the one the
    model is surest of. The demo run reads about 90% of the val split right; a demo shows
    the model at its clearest, and the choice looks at confidence, never at whether the answer
    is right."""
    from ffcv_utils.tools.predict import predict
    results, _ = predict(rm, val_files(digits_dir))
    best = {}
    for f, top in results:
        label = f.parent.name
        if label not in best or top[0][1] > best[label][2]:
            best[label] = (f, top[0][0], top[0][1])
    return [(f, label, predicted) for label, (f, predicted, _) in sorted(best.items())]


def upload_and_read(page, file: Path) -> str:
    """Upload ``file`` through the page's image input; the top class once the page shows the
    answer for this very file (after an error the old label stays on screen, faded)."""
    from playwright.sync_api import expect
    page.locator("#image input[type=file]").set_input_files(str(file))
    expect(page.locator("#timing")).to_contain_text(file.name, timeout=60_000)
    return page.locator(LABEL).inner_text().strip()


@pytest.mark.slow
def test_the_page_in_chromium_classifies_uploads_and_survives_a_bad_one(
        demo_server, demo_model, digits_dir, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    weights, rm = demo_model
    chosen = confident_per_class(rm, digits_dir)
    assert len(chosen) == 10
    not_an_image = tmp_path / "holiday.jpg"
    not_an_image.write_bytes(b"this file is text, whatever its name says\n")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 680})
            page.set_default_timeout(60_000)
            page.goto(demo_server)
            expect(page.locator("h1")).to_contain_text(weights.parent.name)
            shown = [upload_and_read(page, f) for f, _, _ in chosen]
            assert shown == [predicted for _, _, predicted in chosen]  # the page is predict.py
            right = sum(top == label for top, (_, label, _) in zip(shown, chosen))
            assert right >= 8, f"{right} of 10 held-out digits right"
            save_screenshot(page, tmp_path)
            page.locator("#image input[type=file]").set_input_files(str(not_an_image))
            expect(page.locator(".toast-body")).to_contain_text(
                "holiday.jpg is not an image this demo can read")
            # the server still answers, and anew: a file whose answer differs from the label left
            f, _, predicted = next(c for c in chosen if c[2] != shown[-1])
            assert upload_and_read(page, f) == predicted
            uploads_at_once(browser, page.url, chosen[5:8])
        finally:
            browser.close()


def uploads_at_once(browser, url, chosen) -> None:
    """Three visitors upload at the same time: the queue answers each of them."""
    from playwright.sync_api import expect
    pages = [browser.new_page() for _ in chosen]
    for page in pages:
        page.set_default_timeout(60_000)
        page.goto(url)
    for page, (f, _, _) in zip(pages, chosen):
        page.locator("#image input[type=file]").set_input_files(str(f))
    for page, (f, _, predicted) in zip(pages, chosen):
        expect(page.locator("#timing")).to_contain_text(f.name, timeout=60_000)
        assert page.locator(LABEL).inner_text().strip() == predicted


def save_screenshot(page, tmp_path) -> None:
    """The page with an answer, small (900 px wide, 256 colours): kept in ``tmp_path``, and
    written where FFCV_DEMO_SCREENSHOT says (the README's docs/images/demo.png)."""
    from PIL import Image
    raw = tmp_path / "page.png"
    page.screenshot(path=str(raw))
    with Image.open(raw) as im:
        small = im.convert("RGB").resize((900, round(im.height * 900 / im.width)),
                                         Image.LANCZOS).quantize(256)
    small.save(tmp_path / "demo.png", optimize=True)
    if os.environ.get("FFCV_DEMO_SCREENSHOT"):
        shutil.copy(tmp_path / "demo.png", os.environ["FFCV_DEMO_SCREENSHOT"])
