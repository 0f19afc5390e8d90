"""Fit a recipe's epoch-based keys to a shortened run, so that a published config shrunk for a
smoke test (``--training.epochs 1``) runs instead of being refused.

Only keys that came from config files or defaults are changed, and only when the run is shorter
than the recipe (``training.epochs`` given on the command line below the files' value) and the
key no longer fits: they are scaled by ``epochs / recipe_epochs``, keeping the recipe's shape.
A value the user typed on the command line is never changed; nonsense is still refused by
``checks.check_values``.
"""
from __future__ import annotations

from .schedules import LR_KEYS, SCHEDULES, parse_stages


def _scaled(value, epochs: int, recipe: int, as_int: bool):
    x = value * epochs / recipe
    return max(0, round(x)) if as_int else round(x, 4)


def fit_to_epochs(p, recipe_epochs: int, given: set[str]) -> list[str]:
    """Scale what no longer fits in ``p.training.epochs``; returns ``'key a -> b'`` notes.

    ``given``: the keys set on the command line (left alone), ``recipe_epochs``: what the
    config files (or the default) say ``training.epochs`` is.
    """
    epochs = p.training.epochs
    if not 1 <= epochs < recipe_epochs:
        return []
    notes = []

    def fit(section, key, as_int=False, minimum=None):
        name = f"{section}.{key}"
        if name in given:
            return
        old = getattr(getattr(p, section), key)
        new = _scaled(old, epochs, recipe_epochs, as_int)
        if minimum is not None:
            new = max(new, minimum)
        if new != old:
            setattr(getattr(p, section), key, new)
            notes.append(f"{name} {old:g} -> {new:g}")

    lr, res = p.lr, p.resolution
    for key in SCHEDULES[lr.lr_schedule_type].keys:  # e.g. a cyclic peak past the end
        rule = LR_KEYS[key].shrink
        if rule is not None and getattr(lr, key) >= epochs:
            fit("lr", key, as_int=rule[0], minimum=rule[1])
    if res.end_ramp > epochs and not {"resolution.start_ramp", "resolution.end_ramp"} & given:
        fit("resolution", "start_ramp", as_int=True)
        fit("resolution", "end_ramp", as_int=True)
    if res.schedule and "resolution.schedule" not in given:
        fit_stages(p, epochs, recipe_epochs, notes)
    return notes


def fit_stages(p, epochs: int, recipe_epochs: int, notes: list[str]) -> None:
    """Scale the start epochs of ``resolution.schedule``'s stages; stages that land on the same
    epoch keep the later one (the one ``stage_at`` would use from then on)."""
    try:
        stages = parse_stages(p.resolution.schedule, p.training.batch_size)
    except ValueError:
        return  # refused with its reason by checks.check_values
    if stages[-1][0] < epochs:
        return
    fitted: dict[int, tuple[int, int]] = {}
    for epoch, size, batch in stages:
        fitted[min(epochs - 1, epoch * epochs // recipe_epochs)] = (size, batch)
    new = ";".join(f"{e},{s},{b}" for e, (s, b) in sorted(fitted.items()))
    notes.append(f"resolution.schedule '{p.resolution.schedule}' -> '{new}'")
    p.resolution.schedule = new


def warning(notes: list[str], epochs: int, recipe_epochs: int) -> str:
    return (f"warning: training.epochs {epochs} is shorter than the config's {recipe_epochs}; "
            f"scaled to fit: {', '.join(notes)} (set them on the command line to choose)")
