"""What several test modules share: the trainer's command line on the digits betons, reading a
run's log, a beton with one damaged JPEG, free ports for torchrun, and running an entry-point
script in process (its one-line error path included)."""
from __future__ import annotations

import runpy
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3  # epochs of the shared digits run (conftest.py's ``digits_run``)


def args_for(betons, folder, *extra, epochs=EPOCHS, plot=False):
    """A small ResNet-18 run on the digits betons (32 px, batch 64, BlurPool) into ``folder``;
    without its plot unless ``plot`` (matplotlib's import and drawing cost 1.5 s a process), so
    the run that checks the plot uses the default."""
    train, val = betons
    if not plot:
        extra = ("--logging.plot", "0", *extra)
    return ["--data.train_dataset", str(train), "--data.val_dataset", str(val),
            "--model.arch", "resnet18", "--training.use_blurpool", "1",
            "--resolution.min_res", "32", "--resolution.max_res", "32",
            "--validation.resolution", "32", "--training.batch_size", "64",
            "--validation.batch_size", "128", "--data.num_workers", "2",
            "--lr.lr", "0.05", "--lr.batch_size_for_lr", "64", "--lr.lr_peak_epoch", "1",
            "--training.epochs", str(epochs), "--logging.folder", str(folder), *extra]


def command(*args):
    """The trainer's command line, as a user types it."""
    return [sys.executable, str(ROOT / "train_imagenet.py"), *args]


def run(*args, timeout=600, **kw):
    return subprocess.run(command(*args), capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, **kw)


def read_log(run_dir):
    """A run's log.jsonl records, read as the package reads them (the one log reader)."""
    from ffcv_utils.train.runlog import read_jsonl

    return read_jsonl(Path(run_dir) / "log.jsonl")


def damaged_copy(beton, out: Path) -> Path:
    """``beton`` and its sidecar copied to ``out``, the header of its first JPEG sample zeroed
    (that image decodes grey and is counted as a decode failure)."""
    from ffcv.reader import Reader

    from ffcv_utils.beton.sidecar import sidecar_path

    shutil.copyfile(beton, out)
    shutil.copyfile(sidecar_path(beton), sidecar_path(out))
    meta = Reader(str(out)).metadata["f0"]
    first_jpeg = int((meta["mode"] == 0).nonzero()[0][0])
    with open(out, "r+b") as f:
        f.seek(int(meta["data_ptr"][first_jpeg]))
        f.write(b"\x00" * 64)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(script: str, args, capsys, monkeypatch) -> tuple[int, str, str]:
    """Run ``ROOT/script`` (or the module ``-m name``) as ``__main__`` in this process with
    ``args``: ``(exit status, stdout, stderr)``. Its own ``run_main`` turns a UserError into one
    line and exit 2, as in a subprocess, without a fresh interpreter's imports for each case."""
    from ffcv_utils.base import cli

    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    monkeypatch.setattr(cli, "exit_now", sys.exit)  # os._exit would end pytest itself
    for hook in ("excepthook", "unraisablehook"):  # run_main wraps them: restored after the test
        monkeypatch.setattr(sys, hook, getattr(sys, hook))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        if script.startswith("-m "):
            with warnings.catch_warnings():  # "found in sys.modules": imported by the tests too
                warnings.simplefilter("ignore", RuntimeWarning)
                runpy.run_module(script[3:], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / script), run_name="__main__")
    out, err = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out, err


# Hand-built tar blocks, for hostile archives (tarfile would refuse to write them)

BLOCK = 512
END = bytes(2 * BLOCK)
# -512: tarfile's next header is this one again, forever (checked on 3.11.7)
NEGATIVE = {"base-256 -512": ((1 << 96) - 512).to_bytes(12, "big"),
            "octal -512": b"-0000001000\0"}


def tar_header(name: str, size: int = 0, flag: bytes = b"0", size_field: bytes | None = None,
               at: dict[int, bytes] | None = None) -> bytes:
    """One ustar header block with a correct checksum; ``size_field`` replaces the octal size
    (a negative one), ``at`` sets other bytes (a sparse header's flags)."""
    b = bytearray(BLOCK)
    b[:len(name.encode())] = name.encode()
    b[100:108], b[108:116], b[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    b[124:136] = size_field if size_field is not None else b"%011o\0" % size
    b[136:148], b[156:157], b[257:265] = b"00000000000\0", flag, b"ustar\x0000"
    for offset, raw in (at or {}).items():
        b[offset:offset + len(raw)] = raw
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def tar_member(name: str, data: bytes, flag: bytes = b"0", **kw) -> bytes:
    return tar_header(name, len(data), flag, **kw) + data + bytes(-len(data) % BLOCK)
