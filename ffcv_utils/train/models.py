"""Models: any torchvision classifier by name, BlurPool on strided convs, optimizer param groups."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base.cli import UserError

# Normalisation layers: their scale and shift are not decayed when training.bn_wd is 0.
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
              nn.modules.instancenorm._InstanceNorm)


TIMM_PREFIX = "timm:"


def classification_archs() -> list[str]:
    """torchvision's classification models (not detection etc.): ``model.arch`` names as is."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_arch(arch: str) -> None:
    """Refuse an unknown ``model.arch`` in one line, naming the closest names."""
    import difflib

    if arch.startswith(TIMM_PREFIX):
        import timm

        name = arch[len(TIMM_PREFIX):]
        if name not in timm.list_models():
            close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
            hint = _did_you_mean([TIMM_PREFIX + c for c in close])
            raise UserError(f"model.arch: unknown timm model {name!r}{hint}")
        return
    if arch in classification_archs():
        return
    import timm

    hint = _did_you_mean(difflib.get_close_matches(arch, classification_archs(), n=3,
                                                   cutoff=0.6))
    if arch in timm.list_models():
        hint = f" (a timm model: use --model.arch {TIMM_PREFIX}{arch})"
    raise UserError(f"model.arch: unknown torchvision classification model {arch!r}{hint}")


def _did_you_mean(names: list[str]) -> str:
    if not names:
        return ""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f" (did you mean {listed}?)"


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


def blurpool_layers(model: nn.Module) -> list[str]:
    """Names of the convolutions BlurPool changed (the run lists them: none for a ViT)."""
    return [name for name, m in model.named_modules() if isinstance(m, BlurPoolConv2d)]


def create_model(arch: str, num_classes: int, *, pretrained: bool = False,
                 use_blurpool: bool = False, resolutions=()) -> nn.Module:
    """A torchvision classifier, or a timm one for ``timm:NAME``, with ``num_classes`` outputs,
    optionally with BlurPool. ``resolutions``: every input size the run will feed it (timm
    models of fixed input size are built for them or refused)."""
    if arch.startswith(TIMM_PREFIX):
        model = _timm_model(arch[len(TIMM_PREFIX):], num_classes, pretrained, set(resolutions))
    else:
        model = _torchvision_model(arch, num_classes, pretrained)
    if use_blurpool:
        apply_blurpool(model)
    return model


def _torchvision_model(arch: str, num_classes: int, pretrained: bool) -> nn.Module:
    import torchvision

    if not pretrained:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if num_classes != 1000:
        raise UserError("model.pretrained: torchvision's weights have 1000 classes, "
                        f"the model has {num_classes}")
    try:
        return torchvision.models.get_model(arch, weights="DEFAULT")
    except Exception as e:  # no network and nothing in torch's cache
        raise UserError(f"model.pretrained: cannot load torchvision's weights for {arch} "
                        f"({_first_line(e)}); download them once on a machine with network "
                        "access into the torch hub cache (~/.cache/torch)") from None


def _timm_model(name: str, num_classes: int, pretrained: bool, resolutions: set) -> nn.Module:
    """timm's model; one of fixed input size is built with a dynamic image size where it has
    one (progressive resizing and FixRes then work), else for the run's one resolution."""
    import timm

    kwargs = dict(num_classes=num_classes, pretrained=pretrained)
    cfg = timm.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        kwargs.update(_fixed_size_kwargs(name, cfg.input_size[-1], resolutions))
    try:
        return timm.create_model(name, **kwargs)
    except Exception as e:
        if not pretrained:
            raise
        raise UserError(f"model.pretrained: cannot load timm's pretrained weights for {name} "
                        f"({_first_line(e)}); they come from the Hugging Face Hub: download "
                        "them once where there is network access (they are cached in "
                        "~/.cache/huggingface), or train from scratch") from None


def _fixed_size_kwargs(name: str, size: int, resolutions: set) -> dict:
    """Keyword arguments that let a fixed-size timm model take the run's resolutions."""
    import timm

    def accepts(**kwargs) -> bool:  # probed without weights
        try:
            timm.create_model(name, pretrained=False, num_classes=1, **kwargs)
            return True
        except TypeError:
            return False

    for dynamic in ({"dynamic_img_size": True, "dynamic_img_pad": True},  # any size: padded
                    {"dynamic_img_size": True}):
        if accepts(**dynamic):
            return dynamic
    if not resolutions or resolutions == {size}:
        return {}
    if len(resolutions) == 1 and accepts(img_size=next(iter(resolutions))):
        return {"img_size": next(iter(resolutions))}
    raise UserError(f"model.arch: timm:{name} takes a fixed input size ({size} px) and no "
                    f"dynamic size, but this run uses {sorted(resolutions)} px; set "
                    "resolution.min_res, resolution.max_res and validation.resolution to one size")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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


def apply_sync_bn(model: nn.Module, enabled: bool, distributed: bool,
                  device: torch.device) -> tuple[nn.Module, str]:
    """SyncBatchNorm when asked for and useful (several processes); torch has it on GPUs only."""
    if not enabled:
        return model, ""
    if not distributed:
        return model, "training.sync_bn: one process, plain BatchNorm is the same thing"
    if device.type != "cuda":
        raise UserError("training.sync_bn: SyncBatchNorm runs on GPUs only (torch); "
                        "use --training.sync_bn 0 on CPU")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), "SyncBatchNorm across processes"
