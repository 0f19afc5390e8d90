"""The class list that travels with every ``.beton``: ``X.beton`` has ``X.beton.json`` beside it.

The JSON holds the class names in label order, per-class counts, the writer's settings and the
files it skipped. The trainer reads it for ``num_classes`` and refuses train/val pairs whose
class lists differ, so labels can never drift apart between splits.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..base.atomic import atomic_write_text

SUFFIX = ".json"


def sidecar_path(beton: str | Path) -> Path:
    return Path(str(beton) + SUFFIX)


def write_info(beton: str | Path, info: dict) -> Path:
    path = sidecar_path(beton)
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    return path


def read_info(beton: str | Path) -> dict | None:
    """The sidecar of ``beton`` as a dict, or None when there is none."""
    path = sidecar_path(beton)
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


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
