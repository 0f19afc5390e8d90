"""The exponential moving average of the weights: timm's ModelEmaV3, updated every N optimizer
steps."""
from __future__ import annotations

from torch import nn


def build_ema(p, model: nn.Module):
    """timm's ModelEmaV3 (a copy of the model, lerped toward it), or None when ema.decay is 0."""
    if p.ema.decay <= 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=p.ema.decay)


def update_ema(ema, model: nn.Module, optimizer_steps: int, every: int) -> None:
    """Update every ``every`` optimizer steps (the decay is per update, as in timm)."""
    if ema is not None and optimizer_steps % every == 0:
        ema.update(model)
