"""The class list that travels with every ``.beton``: ``X.beton`` has ``X.beton.json`` beside it.

The JSON holds the class names in label order, per-class counts, the writer's settings and the
files it skipped. The trainer reads it for ``num_classes`` and refuses train/val pairs whose
class lists differ, so labels can never drift apart between splits.

A sidecar arrives with the beton, from whoever wrote it: ``read_info`` treats it as untrusted.
Anything but a regular file of at most ``MAX_BYTES`` of JSON whose known keys have the types the
writer gives them, and whose counts agree with each other, is one line (``SidecarError``).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..base.atomic import atomic_write_text
from ..base.cli import UserError
from ..base.files import NotRegular, read_regular

SUFFIX = ".json"
# ImageNet's sidecar is ~60 kB (class names, counts, settings); the list of skipped files is
# the only part that grows with a messy source. Larger is not a sidecar this toolkit wrote.
MAX_BYTES = 64 << 20

# Keys the writer sets (writer._info) and the types it gives them; other keys are ignored.
KEY_TYPES = {"split": str, "source": str, "fields": dict, "classes": list, "num_classes": int,
             "num_samples": int, "class_counts": dict, "empty_classes": list,
             "class_list_from": (str, type(None)), "num_skipped": int, "skipped": list,
             "settings": dict, "warnings": list, "bytes": int, "created": str}


class SidecarError(UserError):
    """A sidecar that is not the writer's JSON: one line naming the file and what is wrong."""


def sidecar_path(beton: str | Path) -> Path:
    return Path(str(beton) + SUFFIX)


def write_info(beton: str | Path, info: dict) -> Path:
    path = sidecar_path(beton)
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    return path


def read_info(beton: str | Path) -> dict | None:
    """The sidecar of ``beton`` as a dict, None when there is none, or SidecarError."""
    path = sidecar_path(beton)

    def bad(why: str) -> SidecarError:
        return SidecarError(f"{path}: {why}")

    try:  # non-blocking: a FIFO planted at the name must not hang the reader
        data = read_regular(path, MAX_BYTES)
    except FileNotFoundError:
        return None
    except NotRegular as e:
        raise bad(str(e)) from None
    except OSError as e:  # over MAX_BYTES, unreadable
        raise bad(f"cannot be read ({e.strerror or e}): not a class list this toolkit wrote") \
            from None
    except ValueError:  # a NUL in the name
        raise bad("not a usable file name") from None
    try:
        info = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("not UTF-8 text: not a class list this toolkit wrote") from None
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise bad("JSON nested too deeply: not a class list this toolkit wrote") from None
    why = problem(info)
    if why:
        raise bad(why)
    return info


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_problem(info: dict) -> str | None:
    for key, kind in KEY_TYPES.items():
        if key not in info:
            continue
        value = info[key]
        wrong = not _is_int(value) if kind is int else not isinstance(value, kind)
        if wrong:
            return f"{key!r} is {type(value).__name__}, not {getattr(kind, '__name__', 'text')}"
        if kind is int and value < 0:
            return f"{key!r} is {value}, not a count"
    return None


def problem(info) -> str | None:
    """Why ``info`` is not a sidecar the writer could have written, or None."""
    if not isinstance(info, dict):
        return f"holds a JSON {type(info).__name__}, not an object with a 'classes' list"
    if "classes" not in info:
        return "has no 'classes' list"
    why = _type_problem(info)
    if why:
        return why
    classes = info["classes"]
    if not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' is not a non-empty list of class names"
    if info.get("num_classes", len(classes)) != len(classes):
        return f"'num_classes' is {info['num_classes']} but 'classes' names {len(classes)}"
    counts = info.get("class_counts")
    if counts is not None:
        if set(counts) != set(classes) or not all(_is_int(v) and v >= 0
                                                  for v in counts.values()):
            return "'class_counts' is not a count for each class in 'classes'"
        if info.get("num_samples", sum(counts.values())) != sum(counts.values()):
            return (f"'class_counts' add up to {sum(counts.values())} but 'num_samples' is "
                    f"{info['num_samples']}")
    resolution = info.get("settings", {}).get("max_resolution", 1)
    if not _is_int(resolution) or resolution < 1:
        return f"'settings.max_resolution' is {resolution!r}, not a size in pixels"
    return None


def class_list_mismatch(train: dict, val: dict) -> str | None:
    """A sentence saying how two class lists differ, or None when they agree."""
    a, b = list(train["classes"]), list(val["classes"])
    if a == b:
        return None
    if len(a) != len(b):
        return f"train has {len(a)} classes, val has {len(b)}"
    if sorted(a) == sorted(b):
        i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        return f"same class names in a different order (label {i}: train {a[i]!r}, val {b[i]!r})"
    only_train = sorted(set(a) - set(b))[:3]
    only_val = sorted(set(b) - set(a))[:3]
    return f"different class names (only in train: {only_train}, only in val: {only_val})"
