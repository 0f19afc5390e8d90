"""A browser page that shows a trained run's model to people: drop an image, see its top-5.

    ffcv-demo --weights RUN_DIR/final_weights.pt [--examples DATA_DIR/val] [--port 7860]

A Gradio page, served offline on 127.0.0.1 unless asked otherwise. The page classifies with
``predict.predict``, so it and ``predict.py`` share the model, the validation preprocessing and the
top-5 for the same file. Bad uploads are shown on the page (``gr.Error``); the server keeps serving.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import torch

from ..base.cli import ArgParser, UserError, run_main
from ..base.files import read_regular
from .predict import IMAGE_SUFFIXES, RunModel, load_run_model, predict

# Gradio otherwise calls out for a version check and telemetry at import and launch.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

MAX_UPLOAD = "50mb"  # a bound on each upload's bytes; the pixel bound is preprocess's
QUEUE_SIZE = 64  # requests waiting beyond this are refused with a toast, not held in memory
EXAMPLES = 10  # example images shown from --examples (one a class where the folder has classes)


def run_card(rm: RunModel, weights: Path) -> dict:
    """What the title says about the run: the checkpoint's card where it has one, else what the
    run folder tells (its name, the architecture, the validation resolution)."""
    card = dict(getattr(rm, "card", None) or {})
    card["name"] = card.get("name") or weights.parent.name
    card["arch"] = card.get("arch") or rm.arch
    card["resolution"] = card.get("resolution") or rm.resolution
    return card


def read_class_names(path: Path, classes: list[str]) -> list[str]:
    """Words for each class id from a file of ``<id> <words>`` lines (Kaggle's
    ``LOC_synset_mapping.txt``, ``n01440764 tench, Tinca tinca``): the words before the first
    comma; a class the file does not name keeps its id. Untrusted: a regular file of at most
    16 MiB in UTF-8, else one line."""
    try:
        text = read_regular(path, 16 << 20).decode("utf-8")
    except (OSError, ValueError) as e:
        raise UserError(f"--class-names: cannot read {path}: {getattr(e, 'strerror', None) or e}"
                        ) from None
    words = {}
    for line in text.splitlines():
        key, _, rest = line.strip().partition(" ")
        if key and rest.strip():
            words[key] = rest.split(",")[0].strip()
    if not any(c in words for c in classes):
        raise UserError(f"--class-names: {path} names none of the run's {len(classes)} classes "
                        f"(e.g. {classes[0]!r})")
    return [words.get(c, c) for c in classes]


def title_markdown(card: dict) -> str:
    """The run's name, then what is known of it (a card may lack any of these)."""
    facts = [f"**{card['arch']}**"]
    if card.get("train_resolution"):
        facts.append(f"trained at {card['train_resolution']} px")
    facts.append(f"validated at {card['resolution']} px")
    if card.get("val_top1") is not None:
        facts.append(f"val top-1 {card['val_top1']:.1%}")
    return f"# {card['name']}\n{' · '.join(facts)}"


def display_names(rm: RunModel) -> list[str]:
    """Human-readable class names where the run has them (the card's ``class_names``), else the
    class list; a name two classes share (ImageNet has two 'crane's) gets its class id added,
    since the label shows one row per name."""
    words = (getattr(rm, "card", None) or {}).get("class_names")
    names = list(words) if words and len(words) == len(rm.classes) else list(rm.classes)
    shared = {n for n, count in Counter(names).items() if count > 1}
    return [f"{n} ({c})" if n in shared else n for n, c in zip(names, rm.classes)]


def classify(rm: RunModel, path: str, names: list[str] | None = None, shown: str | None = None,
             device: str = "cpu") -> tuple[dict[str, float], float]:
    """``({name: probability} of the top-5, seconds)`` for the image file ``path``, computed by
    ``predict.predict``; a file it cannot use is a ``gr.Error`` naming ``shown`` (the upload's
    own name) and why."""
    import gradio as gr

    shown = shown or Path(path).name
    start = time.perf_counter()
    results, unreadable = predict(rm, [path], batch_size=1, device=device)
    seconds = time.perf_counter() - start
    if unreadable:
        why = unreadable[0][1].replace(str(path), shown)
        raise gr.Error(f"{shown} is not an image this demo can read: {why}", title="Bad image",
                       print_exception=False)  # the visitor's mistake: no traceback in the log
    index = {c: i for i, c in enumerate(rm.classes)}
    names = names or rm.classes
    return {names[index[c]]: p for c, p in results[0][1]}, seconds


def example_files(folder: Path) -> list[Path]:
    """Up to ``EXAMPLES`` images of ``folder`` (a data set's val/, say): the first of each class
    folder, else its first images. Reads only the folders it takes from: a train/ of a million
    files costs no walk."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    picks: list[Path] = []
    for d in classes or [folder]:
        images = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        picks += images[:1] if classes else images
        if len(picks) >= EXAMPLES:
            break
    if not picks:
        raise UserError(f"--examples: no images in {folder} or its class folders")
    return picks[:EXAMPLES]


def build_page(rm: RunModel, card: dict, examples: list[Path], concurrency: int, device: str):
    """The Gradio Blocks page: title, image input, top-5 label, time per image, examples."""
    import gradio as gr

    names = display_names(rm)

    def on_image(upload):
        # preprocess=False: the upload's own bytes (Gradio has moved them into its cache and
        # checked the path), not a copy Gradio would re-encode; the orig_name names it back.
        if isinstance(upload, str):  # an example: the file --examples named
            upload = {"path": upload}
        if not upload or not upload.get("path"):
            return None, ""
        shown = Path(upload.get("orig_name") or upload["path"]).name
        top, seconds = classify(rm, upload["path"], names, shown, device)
        return top, f"`{shown}` classified in {seconds * 1000:.0f} ms ({device})"

    # delete_cache: uploads older than an hour go, hourly and at the next start (disk stays bounded)
    with gr.Blocks(title=f"{card['name']} · ffcv-demo", delete_cache=(3600, 3600)) as page:
        gr.Markdown(title_markdown(card))
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", image_mode=None, label="Your image", height=320,
                                 sources=["upload", "clipboard", "webcam"], elem_id="image")
            with gr.Column():
                label = gr.Label(num_top_classes=5, label="Top-5", elem_id="prediction")
                timing = gr.Markdown(elem_id="timing")
        if examples:
            gr.Examples([[str(f)] for f in examples], inputs=image, outputs=[label, timing],
                        fn=on_image, run_on_click=True, preprocess=False, label="Examples")
        # input: each upload, paste, snapshot or clear once (change also fires on re-renders);
        # always_last: a new upload while one is waiting replaces it
        image.input(on_image, image, [label, timing], preprocess=False,
                    concurrency_limit=concurrency, trigger_mode="always_last",
                    show_progress="minimal")
    page.queue(max_size=QUEUE_SIZE)
    return page


def main(argv=None) -> int:
    ap = ArgParser(prog="ffcv-demo",
                   description="A browser page that classifies your images with a trained run.")
    ap.add_argument("--weights", required=True, help="RUN_DIR/final_weights.pt (or a checkpoint)")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: all)")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", type=int, choices=(0, 1), default=0,
                    help="1: also a public gradio.live link (needs the internet)")
    ap.add_argument("--examples", type=Path, help="a folder of images to offer as examples")
    ap.add_argument("--class-names", type=Path, help="words for the class ids: lines of '<id> "
                    "<words>' (Kaggle's LOC_synset_mapping.txt)")
    ap.add_argument("--concurrency", type=int, default=1,
                    help="images classified at once; more requests wait in the queue")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    if a.concurrency < 1:
        raise UserError(f"--concurrency: must be at least 1, got {a.concurrency}")
    if not 0 < a.port < 65536:
        raise UserError(f"--port: must be 1-65535, got {a.port}")
    if a.examples is not None and not a.examples.is_dir():
        raise UserError(f"--examples: no such folder {a.examples}")
    rm = load_run_model(a.weights, a.device)
    if a.class_names is not None:
        rm.card["class_names"] = read_class_names(a.class_names, rm.classes)
    examples = example_files(a.examples) if a.examples is not None else []
    page = build_page(rm, run_card(rm, Path(a.weights)), examples, a.concurrency, a.device)
    import gradio as gr

    try:
        page.launch(server_name=a.host, server_port=a.port, share=bool(a.share), ssr_mode=False,
                    max_file_size=MAX_UPLOAD, theme=gr.themes.Soft())
    except OSError as e:  # the port taken, the host not this machine's
        raise UserError(f"cannot serve on {a.host}:{a.port} (in use, or not an address of "
                        f"this machine?): {str(e).split('. ')[0]}") from None
    return 0


if __name__ == "__main__":
    run_main(main, prog="ffcv-demo")
