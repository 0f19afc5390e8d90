"""The one class-list resolver: which class order a split is written in (the names given, a
beton's sidecar, a JSON or text file, or for val the train sidecar beside the target), so the
labels of the two splits cannot drift apart."""
from __future__ import annotations

import json
from pathlib import Path

from ..base.cli import UserError
from ..base.files import read_regular
from ..beton import sidecar as dataset_info


def read_class_list(path: str | Path) -> list[str]:
    """Class names from a beton (its sidecar), a sidecar/JSON file, or a text file (one a line)."""
    p = Path(path).expanduser()
    if p.suffix != ".json" and dataset_info.sidecar_path(p).exists():
        p = dataset_info.sidecar_path(p)
    if not p.exists():
        raise UserError(f"class list not found: {path}")
    try:  # untrusted: a FIFO must not block, a huge file must not fill memory
        text = read_regular(p, dataset_info.MAX_BYTES).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"class list {p}: cannot be read ({e})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        if p.suffix == ".json":
            raise UserError(f"class list is not valid JSON: {p}") from None
        data = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = data.get("classes")
    if (not isinstance(data, list) or not data
            or not all(isinstance(c, str) and c for c in data)):
        raise UserError(f"no class list in {p} (expected a list of names or a 'classes' key)")
    if len(set(data)) != len(data):
        raise UserError(f"class list in {p} names a class twice")
    return data


def given_classes(class_list: str | Path | list[str] | tuple | None,
                  list_label: str) -> tuple[list[str] | None, str | None]:
    """``(classes, where from)`` for a class list given as names (``list_label`` says where from)
    or as a beton, its sidecar or a text file (the path says it); ``(None, None)`` for none."""
    if class_list is None:
        return None, None
    if isinstance(class_list, (list, tuple)):
        return [str(c) for c in class_list], list_label
    return read_class_list(class_list), str(class_list)


def train_sidecar_for(target: Path) -> Path | None:
    """The train beton whose sidecar sits beside a val ``target``: ``val`` -> ``train`` in the
    file name (``demo_val.beton`` -> ``demo_train.beton``), else ``train.beton``."""
    candidates = []
    name = target.name
    i = name.rfind("val")
    if i >= 0:
        candidates.append(target.with_name(name[:i] + "train" + name[i + 3:]))
    candidates.append(target.with_name("train.beton"))
    for c in candidates:
        if c != target and dataset_info.sidecar_path(c).is_file():
            return c
    return None


def reference_classes(split: str, target: Path,
                      class_list: str | Path | list[str] | None) -> tuple[list | None, str | None]:
    """``(classes, where from)`` the split must use: ``class_list`` (a list, a beton, its JSON
    sidecar or a text file), else for ``val`` the train sidecar beside ``target``, else
    ``(None, None)``: the source's own order."""
    if class_list is not None:
        return given_classes(class_list, "argument")
    if split == "val" and (train := train_sidecar_for(target)) is not None:
        return read_class_list(train), str(dataset_info.sidecar_path(train))
    return None, None
