"""Fuzz the beton check (``ffcv_utils.beton.check``) with mutants of a small real beton.

Each mutant of a beton the toolkit wrote (bit flips; header, metadata and allocation-table values
overwritten with boundary values such as 0, 2**63 or 2**64 - 1, also pointer/size pairs made
consistent so that only the region check stands in the way; byte runs; truncations; extensions;
changed, swapped or extra field descriptors; a corrupted sidecar) must be refused in one line
(``BetonError``) or pass. The check must raise nothing else and must not need more memory than a
few times the file's size. Passing mutants are then decoded for real through the validation
loader (the fast decoder from the page cache, ffcv's decoder through its process cache) in a
child process under a memory limit and a timeout: none may die by a signal, hang, raise or need
more memory than the limit.

    python benchmarks/fuzz_beton.py --cases 100000 --decode 16 --seed 2026 \
        --out benchmarks/results/fuzz_beton.json

``tests/test_beton_fuzz.py`` runs a few thousand cases in ``make test``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEMORY_BOUND = 2 << 30  # what the decode child may allocate beyond its imports
DECODE_TIMEOUT = 120  # seconds per decoded mutant (a numba compile per loader on a busy machine)


@dataclass(frozen=True)
class Layout:
    """Where a sound beton keeps its parts (byte offsets), read with ffcv's own record types."""

    size: int
    samples: int
    meta_start: int
    meta_end: int
    table: int
    page: int
    desc_size: int
    meta_item: int

    @classmethod
    def of(cls, data: bytes) -> "Layout":
        import numpy as np
        from ffcv.types import FieldDescType, HeaderType

        from ffcv_utils.beton.check import _metadata_type

        head = np.frombuffer(data[:HeaderType.itemsize], HeaderType)[0]
        fields, samples = int(head["num_fields"]), int(head["num_samples"])
        meta_start = HeaderType.itemsize + fields * FieldDescType.itemsize
        item = _metadata_type().itemsize
        return cls(len(data), samples, meta_start, meta_start + samples * item,
                   int(head["alloc_table_ptr"]), int(head["page_size"]),
                   FieldDescType.itemsize, item)


@dataclass
class Mutant:
    """One mutation: byte edits, then a new length (extended with ``tail``), or a new sidecar."""

    kind: str
    what: str
    edits: list = field(default_factory=list)  # (offset, bytes)
    size: int | None = None
    tail: bytes = b""
    sidecar: str | None = None
    # Known without the check to be unsound (an oracle of its own): passing it is a finding.
    must_refuse: bool = False


# -- the values and places a mutation picks ---------------------------------------------------

HEADER_FIELDS = [("version", 0, 2), ("num_fields", 2, 2), ("page_size", 4, 4),
                 ("num_samples", 8, 8), ("alloc_table_ptr", 16, 8)]
META_FIELDS = [("mode", 0, 1), ("width", 1, 2), ("height", 3, 2), ("data_ptr", 5, 8),
               ("label", 16, 8)]
TABLE_FIELDS = [("sample_id", 0, 8), ("ptr", 8, 8), ("size", 16, 8)]


def boundary_values(rng: random.Random, width: int, original: int, lay: Layout) -> list[int]:
    """Values worth writing into a ``width``-byte unsigned field that held ``original``."""
    top = 1 << (8 * width)
    values = [0, 1, 2, 3, top - 1, top - 2, top >> 1, (top >> 1) - 1, original + 1,
              original - 1, original ^ (1 << rng.randrange(8 * width)), rng.randrange(top)]
    if width == 2:
        values += [31, 32, 33, 8192, 8193]
    if width == 8:
        values += [lay.size, lay.size - 1, lay.size + 1, lay.table, lay.table - 1,
                   lay.meta_end, lay.meta_end - 1, lay.page, original + lay.page,
                   original + (1 << 63), top - original, top - original + 1,
                   lay.size - original, lay.table - original, lay.samples, lay.samples + 1]
    return [v % top for v in values]


def pack(value: int, width: int) -> bytes:
    return value.to_bytes(width, "little")


def region(rng: random.Random, lay: Layout) -> tuple[str, int, int]:
    """A named byte range of the file, weighted towards the parts the check reads."""
    regions = [("header", 0, 24, 3), ("descriptor head", 24, 24 + 17, 2),
               ("descriptor head", 24 + lay.desc_size, 24 + lay.desc_size + 17, 2),
               ("descriptor arguments", 41, lay.meta_start, 1),
               ("metadata", lay.meta_start, lay.meta_end, 5),
               ("data", lay.meta_end, lay.table, 1), ("table", lay.table, lay.size, 5)]
    name, lo, hi, _ = rng.choices(regions, weights=[r[3] for r in regions])[0]
    return name, lo, hi


# -- the mutations ------------------------------------------------------------------------------

def flip(rng, data: bytes, lay: Layout) -> Mutant:
    name, lo, hi = region(rng, lay)
    at = rng.randrange(lo, hi)
    span = data[at:at + 8]
    new = bytearray(span)
    for _ in range(rng.randint(1, 4)):
        new[rng.randrange(len(new))] ^= 1 << rng.randrange(8)
    return Mutant("flip", f"bits flipped in {name} at {at}", [(at, bytes(new))])


def overwrite(rng, data: bytes, lay: Layout) -> Mutant:
    name, lo, hi = region(rng, lay)
    at, n = rng.randrange(lo, hi), rng.choice([1, 2, 4, 8, 16, 64])
    fill = rng.choice(["00", "ff", "80", "random"])
    new = os.urandom(n) if fill == "random" else bytes.fromhex(fill) * n
    return Mutant("overwrite", f"{n} bytes of {fill} in {name} at {at}", [(at, new)])


def value(rng, data: bytes, lay: Layout) -> Mutant:
    """A header, metadata or table field set to a boundary value."""
    part = rng.choice(["header", "metadata", "table", "table"])
    if part == "header":
        (name, off, width), base = rng.choice(HEADER_FIELDS), 0
    elif part == "metadata":
        (name, off, width) = rng.choice(META_FIELDS)
        base = lay.meta_start + rng.randrange(lay.samples) * lay.meta_item
    else:
        (name, off, width) = rng.choice(TABLE_FIELDS)
        base = lay.table + rng.randrange((lay.size - lay.table) // 24) * 24
    at = base + off
    original = int.from_bytes(data[at:at + width], "little")
    new = rng.choice(boundary_values(rng, width, original, lay))
    return Mutant("value", f"{part} {name} at {at}: {original} -> {new}",
                  [(at, pack(new, width))], must_refuse=_unsound(part, name, new, original))


def _unsound(part: str, name: str, new: int, original: int) -> bool:
    """Whether setting ``name`` from ``original`` to ``new`` surely breaks the digits beton
    (32 px images, 10 classes); False where it may or may not."""
    if new == original:
        return False
    if part == "header":
        return name != "page_size"  # another power of two may still hold every page
    if part == "metadata":
        label = new - (1 << 64) if new >= 1 << 63 else new
        return {"mode": new > 1, "width": not 1 <= new <= 32, "height": not 1 <= new <= 32,
                "data_ptr": True, "label": not 0 <= label < 10}[name]
    return name in ("sample_id", "ptr")  # a duplicate sample, a pointer no sample has


def _entry_of(data: bytes, lay: Layout, sample: int) -> int:
    """Offset of the allocation-table entry of ``sample``."""
    for at in range(lay.table, lay.size, 24):
        if struct.unpack_from("<Q", data, at)[0] == sample:
            return at
    raise ValueError(sample)


def pointer(rng, data: bytes, lay: Layout) -> Mutant:
    """A sample's pointer and/or size changed in the metadata and the table alike, so the check
    must catch it by the region and page bounds (the 8 EiB pointer of issue 24 among them)."""
    sample = rng.randrange(lay.samples)
    meta_ptr, entry = lay.meta_start + sample * lay.meta_item + 5, _entry_of(data, lay, sample)
    ptr, size = struct.unpack_from("<QQ", data, entry + 8)
    new_ptr, new_size = ptr, size
    if rng.random() < 0.7:
        new_ptr = rng.choice(boundary_values(rng, 8, ptr, lay))
    if new_ptr == ptr or rng.random() < 0.5:
        new_size = rng.choice(boundary_values(rng, 8, size, lay) + [(1 << 64) - new_ptr])
    new_ptr, new_size = new_ptr % (1 << 64), new_size % (1 << 64)
    data_start = -(-lay.meta_end // lay.page) * lay.page
    outside = not (data_start <= new_ptr and new_ptr + new_size <= lay.table  # Python ints
                   and new_ptr % lay.page + new_size <= lay.page and new_size > 0)
    return Mutant("pointer", f"sample {sample}: ptr {ptr} -> {new_ptr}, size {size} -> "
                  f"{new_size}", [(meta_ptr, pack(new_ptr, 8)),
                                  (entry + 8, pack(new_ptr, 8) + pack(new_size, 8))],
                  must_refuse=outside)


def swap(rng, data: bytes, lay: Layout) -> Mutant:
    """Two table entries, or two samples' whole metadata, or their data, exchanged."""
    n = (lay.size - lay.table) // 24
    i, j = rng.sample(range(min(n, lay.samples)), 2)
    kind = rng.choice(["table entries", "metadata rows", "data"])
    if kind == "table entries":
        a, b, width = lay.table + 24 * i, lay.table + 24 * j, 24
    elif kind == "metadata rows":
        a, b = (lay.meta_start + lay.meta_item * k for k in (i, j))
        width = lay.meta_item
    else:  # the pointers and sizes of two samples, in the metadata and the table
        return _swap_data(data, lay, i, j)
    return Mutant("swap", f"{kind} {i} and {j}",
                  [(a, data[b:b + width]), (b, data[a:a + width])])


def _swap_data(data: bytes, lay: Layout, i: int, j: int) -> Mutant:
    mi, mj = (lay.meta_start + lay.meta_item * k + 5 for k in (i, j))
    ei, ej = _entry_of(data, lay, i) + 8, _entry_of(data, lay, j) + 8
    return Mutant("swap", f"data of samples {i} and {j}",
                  [(mi, data[mj:mj + 8]), (mj, data[mi:mi + 8]),
                   (ei, data[ej:ej + 16]), (ej, data[ei:ei + 16])])


def truncate(rng, data: bytes, lay: Layout) -> Mutant:
    marks = [0, 1, 23, 24, 25, lay.meta_start, lay.meta_end, lay.table, lay.size - 1,
             lay.size - 24, lay.size - 12, rng.randrange(lay.size)]
    at = max(0, rng.choice(marks) + rng.choice([-1, 0, 0, 1]))
    return Mutant("truncate", f"cut to {at} bytes", size=min(at, lay.size - 1),
                  must_refuse=True)


def extend(rng, data: bytes, lay: Layout) -> Mutant:
    n = rng.choice([1, 8, 23, 24, 48, 24 * rng.randint(1, 100), 4096, 65536])
    fill = rng.choice(["zeros", "random", "a copy of the table's end"])
    if fill == "zeros":
        tail = bytes(n)
    elif fill == "random":
        tail = os.urandom(n)
    else:
        tail = (data[-24 * (1 + n // 24):] * 2)[:n]
    return Mutant("extend", f"{n} bytes of {fill} appended", size=lay.size + n, tail=tail,
                  must_refuse=True)


def descriptor(rng, data: bytes, lay: Layout) -> Mutant:
    """A field's type or name changed, the two fields swapped, or the field count changed."""
    k, at = rng.randrange(2), 24 + rng.randrange(2) * lay.desc_size
    what = rng.choice(["type", "name", "swap", "count"])
    if what == "type":
        t = rng.choice([0, 1, 2, 3, 4, 5, 6, 255, rng.randrange(256)])
        return Mutant("descriptor", f"field {k} type -> {t}", [(at, bytes([t]))],
                      must_refuse=t != data[at])
    if what == "name":
        name = rng.choice([b"Image", b"labels", b"", b"image", b"label", b"x" * 16,
                           b"image\0junk", b"\xff\xfe", b"ima\nge"])
        new = name.ljust(16, b"\0")[:16]
        return Mutant("descriptor", f"field {k} name -> {name!r}", [(at + 1, new)],
                      must_refuse=new != data[at + 1:at + 17])
    if what == "swap":
        a, b = 24, 24 + lay.desc_size
        return Mutant("descriptor", "the two field descriptors swapped",
                      [(a, data[b:b + lay.desc_size]), (b, data[a:a + lay.desc_size])],
                      must_refuse=True)
    count = rng.choice([0, 1, 3, 4, 255, 65535])
    return Mutant("descriptor", f"num_fields -> {count}", [(2, pack(count, 2))],
                  must_refuse=True)


EXTRA_FIELDS = [(2, "RGBImageField", b"extra"), (1, "IntField", b"label2"),
                (0, "FloatField", b"weight"), (2, "RGBImageField", b"image"), None]


def fields_changed(rng, data: bytes, lay: Layout) -> Mutant:
    """A structurally sound file with an extra field, or with the label field dropped."""
    extra = rng.choice(EXTRA_FIELDS)
    label = f"extra field {extra[2]!r} of type {extra[0]}" if extra else "label field dropped"
    return Mutant("fields", label, [(0, relaid(data, lay, extra))], must_refuse=True)


def relaid(data: bytes, lay: Layout, extra: tuple | None) -> bytes:
    """Header, descriptors and metadata of ``data`` rewritten in ffcv's layout with the field
    ``extra`` = (type id, ffcv field class name, name) added, or (None) the label dropped; the
    data and the table stay where they are. An extra image field claims 1x1 raw pixels over
    each real image's bytes: ffcv's default decoder copies the bytes into a 3-byte slot."""
    import numpy as np
    from ffcv import fields as ffcv_fields
    from ffcv.types import FieldDescType, get_metadata_type

    old = np.frombuffer(data[lay.meta_start:lay.meta_end], _meta_dtype())
    handlers = [ffcv_fields.RGBImageField(), ffcv_fields.IntField()]
    handlers = handlers + [getattr(ffcv_fields, extra[1])()] if extra else handlers[:1]
    descs = np.zeros(len(handlers), FieldDescType)
    descs[:min(2, len(handlers))] = np.frombuffer(data[24:lay.meta_start],
                                                   FieldDescType)[:len(handlers)]
    meta = np.zeros(lay.samples, get_metadata_type(handlers))
    meta["f0"] = old["f0"]
    if extra:
        meta["f1"] = old["f1"]
        descs[2]["type_id"] = extra[0]
        descs[2]["name"][:len(extra[2])] = np.frombuffer(extra[2], np.uint8)
        if extra[0] == 2:
            meta["f2"] = old["f0"]
            meta["f2"]["width"] = meta["f2"]["height"] = 1
            meta["f2"]["mode"] = 1
    head = bytearray(data[:24])
    head[2:4] = pack(len(handlers), 2)
    new = bytes(head) + descs.tobytes() + meta.tobytes()
    assert len(new) <= lay.table  # the data region of a real beton starts a page later
    return new


def _meta_dtype():
    from ffcv_utils.beton.check import _metadata_type

    return _metadata_type()


SIDECAR_EDITS = [
    ("not JSON", lambda info, rng: "{\"classes\": [\"a\""),
    ("not UTF-8", lambda info, rng: b"\xff\xfe{}".decode("latin-1")),
    ("a list", lambda info, rng: json.dumps(info["classes"])),
    ("deeply nested", lambda info, rng: "[" * 100000 + "]" * 100000),
    ("no classes", lambda info, rng: json.dumps({k: v for k, v in info.items()
                                                if k != "classes"})),
    ("classes not names", lambda info, rng: json.dumps({**info, "classes": [1, 2]})),
    ("num_samples text", lambda info, rng: json.dumps({**info, "num_samples": "5"})),
    ("num_samples off", lambda info, rng: json.dumps({**info, "num_samples": info[
        "num_samples"] + rng.choice([-1, 1, 1 << 70])})),
    ("num_classes off", lambda info, rng: json.dumps({**info, "num_classes": 3})),
    ("fewer classes", lambda info, rng: json.dumps({**info, "classes": info["classes"][:2],
                                                   "num_classes": 2})),
    ("max_resolution", lambda info, rng: json.dumps({**info, "settings": {
        **info["settings"], "max_resolution": rng.choice([0, -1, 8, 1 << 40, "32", None])}})),
    ("settings a list", lambda info, rng: json.dumps({**info, "settings": []})),
    ("counts off", lambda info, rng: json.dumps({**info, "class_counts": {
        **info["class_counts"], info["classes"][0]: -1}})),
]


def sidecar(rng, data: bytes, lay: Layout, info: dict) -> Mutant:
    name, edit = rng.choice(SIDECAR_EDITS)
    text = edit(info, rng)
    # every edit is refused, but a max_resolution at or above the images' 32 px is sound
    sound = name == "max_resolution" and isinstance(json.loads(text)["settings"][
        "max_resolution"], int) and json.loads(text)["settings"]["max_resolution"] >= 32
    return Mutant("sidecar", f"sidecar: {name}", sidecar=text, must_refuse=not sound)


MUTATIONS = [(flip, 4), (overwrite, 3), (value, 6), (pointer, 3), (swap, 2), (truncate, 2),
             (extend, 1), (descriptor, 2), (fields_changed, 1)]


def draw(rng: random.Random, data: bytes, lay: Layout, info: dict | None) -> Mutant:
    """One mutant: usually one mutation, sometimes two or three byte-level ones combined."""
    if info is not None and rng.random() < 0.05:
        return sidecar(rng, data, lay, info)
    make = rng.choices([m for m, _ in MUTATIONS], weights=[w for _, w in MUTATIONS])[0]
    mutant = make(rng, data, lay)
    if mutant.kind in ("flip", "overwrite", "value", "pointer") and rng.random() < 0.2:
        for _ in range(rng.randint(1, 2)):
            more = rng.choice([flip, overwrite, value, pointer])(rng, data, lay)
            mutant = Mutant("combined", f"{mutant.what}; {more.what}",
                            mutant.edits + more.edits)
    return mutant


# -- running mutants through the check --------------------------------------------------------

def apply(path: Path, data: bytes, m: Mutant, side: Path) -> None:
    with open(path, "r+b") as f:
        for at, new in m.edits:
            f.seek(at)
            f.write(new)
        if m.size is not None and m.size > len(data):
            f.seek(len(data))
            f.write(m.tail)
        elif m.size is not None:
            f.truncate(m.size)
    if m.sidecar is not None:
        side.write_text(m.sidecar, encoding="latin-1")


def restore(path: Path, data: bytes, m: Mutant, side: Path, side_text: str | None) -> None:
    with open(path, "r+b") as f:
        if m.size is not None and m.size < len(data):
            f.seek(m.size)
            f.write(data[m.size:])
        elif m.size is not None:
            f.truncate(len(data))
        for at, new in m.edits:
            f.seek(at)
            f.write(data[at:at + len(new)])
    if m.sidecar is not None:
        side.write_text(side_text)


def check_once(path: Path) -> tuple[str, str, int]:
    """``(outcome, message, bytes allocated at the peak)``: outcome is 'passed', 'refused' (one
    line naming the file) or 'failure' (anything else)."""
    from ffcv_utils.beton import check as beton
    beton._sound.clear()  # each mutant is checked afresh (same size, same mtime tick)
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        outcome, message = "passed", f"{beton.check(path)} samples"
    except beton.BetonError as e:
        message = str(e)
        one_line = "\n" not in message and message.startswith(str(path))
        outcome = "refused" if one_line else "failure"
    except Exception as e:  # noqa: BLE001 - what the fuzz is looking for
        outcome, message = "failure", f"{type(e).__name__}: {e}"
    return outcome, message, tracemalloc.get_traced_memory()[1] - base


def reason(message: str, path: Path) -> str:
    """A refusal without its file name and numbers: what kind of refusal it was."""
    import re

    text = message.split(f"{path}.json: ", 1)[-1].split(f"{path}: ", 1)[-1]
    return re.sub(r"-?\d[\d,]*", "N", text)[:90]


def fuzz_check(path: Path, cases: int, seed: int = 0, keep: int = 0,
               keep_dir: Path | None = None) -> dict:
    """Check ``cases`` mutants of the beton at ``path`` (restored afterwards); keep up to
    ``keep`` passing ones, of as many kinds as there are, as files in ``keep_dir``."""
    from ffcv_utils.beton.sidecar import sidecar_path

    data, side = path.read_bytes(), sidecar_path(path)
    side_text = side.read_text() if side.exists() else None
    info, lay, rng = json.loads(side_text) if side_text else None, Layout.of(data), \
        random.Random(seed)
    outcomes, reasons, failures, kept, most = Counter(), Counter(), [], [], 0
    tracemalloc.start()
    start = time.perf_counter()
    try:
        for case in range(cases):
            m = draw(rng, data, lay, info)
            apply(path, data, m, side)
            outcome, message, used = check_once(path)
            limit = 3 * max(path.stat().st_size, len(data)) + (8 << 20)
            if used > limit:
                outcome, message = "failure", f"the check allocated {used:,} bytes"
            if outcome == "passed" and m.must_refuse:
                outcome, message = "failure", "passed, but the mutant is surely unsound"
            outcomes[m.kind, outcome] += 1
            if outcome == "failure":
                failures.append({"case": case, "mutant": m.what, "error": message})
            elif outcome == "refused":
                reasons[reason(message, path)] += 1
            elif keep_dir is not None and _worth_keeping(m, kept, keep, lay):
                kept.append(_keep(path, side, keep_dir, case, m))
            most = max(most, used)
            restore(path, data, m, side, side_text)
    finally:
        tracemalloc.stop()
    if path.read_bytes() != data:
        raise RuntimeError("the fuzz did not restore the beton it mutated")
    return _summary(outcomes, reasons, failures, kept, most, cases,
                    time.perf_counter() - start, seed)


def _worth_keeping(m: Mutant, kept: list, keep: int, lay: Layout) -> bool:
    """Passing mutants of kinds not yet kept first; none that only changed the descriptors'
    argument bytes, which ffcv ignores for these two fields."""
    if len(kept) >= keep or all(41 <= at < lay.meta_start for at, _ in m.edits) and m.edits:
        return False
    kinds = Counter(k["kind"] for k in kept)
    return kinds[m.kind] < 1 + len(kept) // 8


def _keep(path: Path, side: Path, keep_dir: Path, case: int, m: Mutant) -> dict:
    keep_dir.mkdir(parents=True, exist_ok=True)
    dst = keep_dir / f"mutant{case}.beton"
    shutil.copyfile(path, dst)
    if side.exists():
        shutil.copyfile(side, str(dst) + ".json")
    return {"file": str(dst), "kind": m.kind, "mutant": m.what}


def _summary(outcomes, reasons, failures, kept, most, cases, seconds, seed) -> dict:
    kinds = sorted({k for k, _ in outcomes})
    return {
        "cases": cases, "seed": seed,
        "refused": sum(n for (_, o), n in outcomes.items() if o == "refused"),
        "passed": sum(n for (_, o), n in outcomes.items() if o == "passed"),
        "failure_count": len(failures), "failures": failures[:50],
        "seconds": round(seconds, 2), "cases_per_s": round(cases / max(seconds, 1e-9)),
        "by_kind": {k: {o: outcomes[k, o] for o in ("refused", "passed", "failure")}
                    for k in kinds},
        "reasons": dict(reasons.most_common(40)), "distinct_reasons": len(reasons),
        "max_check_alloc_bytes": most, "kept": kept,
    }


# -- decoding the mutants that passed -------------------------------------------------------------

# The validation loader two ways: the default fast decoder reading through the page cache, and
# ffcv's own decoder reading pages into its process cache (data.in_memory 0's memory manager).
DECODE_WAYS = (("fast", True), ("ffcv", False))


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def decode_child(files: list[str], memory: int) -> None:
    """In the child: decode every file every way under an address-space limit of ``memory``
    beyond what the imports took; one JSON line before and after each."""
    import torch  # noqa: F401  (imported before the limit: its libraries are large)
    from ffcv.loader import Loader  # noqa: F401

    from ffcv_utils.load import loaders as data

    from ffcv_utils.load import decode as fast_decode
    fast_decode.library()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + memory, hard))
    for path in files:
        for decoder, in_memory in DECODE_WAYS:
            way = {"file": path, "decoder": decoder, "in_memory": in_memory}
            print(json.dumps({"start": way}), flush=True)
            try:
                start = time.perf_counter()
                loader = data.val_loader(path, batch_size=16, num_workers=1, res=32,
                                         decoder=decoder, in_memory=in_memory)
                samples = sum(len(labels) for _, labels in loader)
                print(json.dumps({"done": way, "samples": samples,
                                  "seconds": round(time.perf_counter() - start, 2)}), flush=True)
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                print(json.dumps({"error": way, "message": f"{type(e).__name__}: {e}"[:500]}),
                      flush=True)


def decode(files: list[str], memory: int = MEMORY_BOUND,
           timeout_each: float = DECODE_TIMEOUT) -> dict:
    """Decode ``files`` in a child process: ``{"decoded", "failures"}``; a failure is an error
    raised, a wrong sample count, a death by signal or a hang (with the way it was decoding)."""
    from ffcv_utils.beton.check import check

    expected = {f: check(f) for f in files}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--decode-child", "--memory",
           str(memory), *files]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    timeout = 60 + timeout_each * len(files)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        out, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:  # run() killed the child; its output so far
        out, rc = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or "", None
    decoded, failures, last = 0, [], None
    for line in out.splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if "start" in record:
            last = record["start"]
        elif "done" in record:
            ok = record["samples"] == expected[record["done"]["file"]]
            decoded += ok
            if not ok:
                failures.append({**record["done"], "error": f"{record['samples']} samples"})
            last = None
        elif "error" in record:
            failures.append({**record["error"], "error": record["message"]})
            last = None
    if rc is None or rc != 0 or last is not None:
        what = "hung" if rc is None else f"exit {rc}" if rc >= 0 else f"signal {-rc}"
        failures.append({**(last or {}), "error": f"the decoding process {what}"})
    return {"decoded": decoded, "ways": len(files) * len(DECODE_WAYS), "failures": failures}


# -- the command line ----------------------------------------------------------------------------

def tiny_beton(folder: Path) -> Path:
    """The validation split of 100 scikit-learn digits at 32 px, written by the toolkit."""
    from ffcv_utils.tools.sample_data import make_digits_folder
    from ffcv_utils.write.writer import write_split

    make_digits_folder(folder / "digits", size=32)
    out = folder / "val.beton"
    write_split(folder / "digits", "val", out, max_resolution=32, num_workers=2,
                progress=False, subset=100)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode", type=int, default=20, help="passing mutants to decode")
    ap.add_argument("--beton", type=Path, help="a beton to mutate (default: write a tiny one)")
    ap.add_argument("--out", type=Path, help="write the result as JSON here")
    ap.add_argument("--decode-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory", type=int, default=MEMORY_BOUND, help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.decode_child:
        decode_child(args.files, args.memory)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = args.beton or tiny_beton(tmp / "src")
        work = tmp / "work.beton"
        shutil.copyfile(source, work)
        if Path(str(source) + ".json").exists():
            shutil.copyfile(str(source) + ".json", str(work) + ".json")
        result = fuzz_check(work, args.cases, args.seed, args.decode, tmp / "kept")
        result["decode"] = decode([k["file"] for k in result["kept"]]) if result["kept"] else {}
        result["beton"] = {"samples": Layout.of(work.read_bytes()).samples,
                           "bytes": work.stat().st_size}
    return _report(result, args.out)


def _report(result: dict, out: Path | None) -> int:
    from benchmarks._common import machine_info

    result.update(machine_info())
    for k in result.get("kept", []):
        k.pop("file", None)
    text = json.dumps(result, indent=1)
    if out:
        out.write_text(text + "\n")
    print(json.dumps({k: result[k] for k in ("cases", "refused", "passed", "failure_count",
                                             "seconds", "distinct_reasons")}))
    print(f"decoded {result['decode'].get('decoded', 0)} of {result['decode'].get('ways', 0)} "
          f"passing mutants x ways; failures: {result['failures'][:3]} "
          f"{result['decode'].get('failures', [])[:3]}")
    return 1 if result["failure_count"] or result["decode"].get("failures") else 0


if __name__ == "__main__":
    sys.exit(main())
