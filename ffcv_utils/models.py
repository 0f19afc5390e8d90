"""Models: any torchvision classifier by name, BlurPool on strided convs, optimizer param groups."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Normalisation layers: their scale and shift are not decayed when training.bn_wd is 0.
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
              nn.modules.instancenorm._InstanceNorm)


def classification_archs() -> list[str]:
    """Names accepted by ``model.arch``: torchvision's classification models (not detection etc.)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def blur_filter(channels: int) -> torch.Tensor:
    """Depthwise 3x3 binomial low-pass filter ([1,2,1] outer [1,2,1] / 16), one per channel."""
    k = torch.tensor([1.0, 2.0, 1.0])
    k2 = torch.outer(k, k) / 16.0
    return k2.expand(channels, 1, 3, 3).contiguous()


class BlurPoolConv2d(nn.Conv2d):
    """A strided conv that low-pass filters its input first (Zhang 2019, as in ffcv-imagenet).

    Subclassing Conv2d with a non-persistent filter keeps the state_dict identical to the plain
    conv's, so the trained weights load straight into the stock torchvision model.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("blur", blur_filter(self.in_channels).to(self.weight.device),
                             persistent=False)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "BlurPoolConv2d":
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                  bias=conv.bias is not None, padding_mode=conv.padding_mode,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        new.weight = conv.weight
        if conv.bias is not None:
            new.bias = conv.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.blur.to(x.dtype), padding=1, groups=self.in_channels)
        return super().forward(x)


def apply_blurpool(model: nn.Module, min_channels: int = 16) -> int:
    """Swap every strided Conv2d with at least ``min_channels`` inputs for a BlurPoolConv2d.

    The stem (3 input channels) is left alone, as in ffcv-imagenet. Returns how many were swapped.
    """
    swapped = 0
    for name, child in model.named_children():
        if (isinstance(child, nn.Conv2d) and not isinstance(child, BlurPoolConv2d)
                and max(child.stride) > 1 and child.in_channels >= min_channels):
            setattr(model, name, BlurPoolConv2d.from_conv(child))
            swapped += 1
        else:
            swapped += apply_blurpool(child, min_channels)
    return swapped


def create_model(arch: str, num_classes: int, *, pretrained: bool = False,
                 use_blurpool: bool = False) -> nn.Module:
    """A torchvision classifier with ``num_classes`` outputs, optionally with BlurPool."""
    import torchvision

    if pretrained:
        if num_classes != 1000:
            raise ValueError("model.pretrained loads ImageNet-1k heads: it needs 1000 classes")
        model = torchvision.models.get_model(arch, weights="DEFAULT")
    else:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if use_blurpool:
        apply_blurpool(model)
    return model


def param_groups(model: nn.Module, weight_decay: float, *, bn_wd: bool = False,
                 bias_wd: bool = True) -> list[dict]:
    """SGD param groups: weight decay everywhere except normalisation layers (unless ``bn_wd``)
    and, when ``bias_wd`` is off, biases. Decaying BN scales only shrinks them for no benefit."""
    decay, no_decay = [], []
    seen = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            skip = (is_norm and not bn_wd) or (name == "bias" and not bias_wd)
            (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]
