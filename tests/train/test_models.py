"""BlurPool and the optimizer's parameter groups."""
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ffcv_utils.train.checkpoint import strip_wrappers
from ffcv_utils.train.models import BlurPoolConv2d, apply_blurpool, create_model, param_groups


def test_blurpool_equals_fixed_blur_then_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, stride=2, padding=1, bias=True)
    blur = BlurPoolConv2d.from_conv(conv)
    x = torch.randn(2, 16, 15, 15)
    k = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    blurred = F.conv2d(x, k.repeat(16, 1, 1, 1), padding=1, groups=16)
    out = blur(x)
    assert out.shape == conv(x).shape == (2, 8, 8, 8)
    torch.testing.assert_close(out, conv(blurred))
    assert not torch.allclose(out, conv(x))  # it really blurs
    # a constant image is unchanged by the blur away from the zero-padded border
    c = torch.ones(1, 16, 9, 9)
    inner = F.conv2d(c, blur.blur, padding=1, groups=16)[..., 1:-1, 1:-1]
    torch.testing.assert_close(inner, torch.ones_like(inner))


def test_blurpool_on_resnet_strided_convs_only_and_portable_weights():
    model = create_model("resnet18", 10, use_blurpool=True)
    blurred = [n for n, m in model.named_modules() if isinstance(m, BlurPoolConv2d)]
    # layer2-4: the 3x3 strided conv and the 1x1 downsample conv; not the 3-channel stem
    assert sorted(blurred) == sorted(f"layer{i}.0.{c}" for i in (2, 3, 4)
                                     for c in ("conv1", "downsample.0"))
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    # weights trained with BlurPool load into the stock torchvision model, key for key
    plain = torchvision.models.resnet18(num_classes=10)
    plain.load_state_dict(model.state_dict())
    assert apply_blurpool(model) == 0  # idempotent


def test_param_groups_no_weight_decay_on_batchnorm():
    model = create_model("resnet18", 10)
    groups = {g["name"]: g for g in param_groups(model, 5e-5, bn_wd=False)}
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_ids = {id(p) for m in bn for p in m.parameters()}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    decay = {id(p) for p in groups["decay"]["params"]}
    assert no_decay == bn_ids  # including downsample.1, whose name has no "bn" in it
    assert groups["decay"]["weight_decay"] == 5e-5 and groups["no_decay"]["weight_decay"] == 0
    assert id(model.fc.bias) in decay and id(model.fc.weight) in decay
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    # biases can be excluded too; bn_wd=1 decays everything
    groups = {g["name"]: g for g in param_groups(model, 1e-4, bn_wd=False, bias_wd=False)}
    assert id(model.fc.bias) in {id(p) for p in groups["no_decay"]["params"]}
    assert [g["name"] for g in param_groups(model, 1e-4, bn_wd=True)] == ["decay"]


def test_strip_wrapper_prefixes():
    sd = {"module._orig_mod.fc.bias": torch.zeros(1), "fc.weight": torch.zeros(1)}
    assert set(strip_wrappers(sd)) == {"fc.bias", "fc.weight"}


def test_timm_names_and_fixed_input_sizes():
    """timm:NAME builds timm's model; a misspelt or unprefixed name gets one line with the
    closest names; a fixed-size model without a dynamic size refuses a resolution change."""
    import pytest as _pytest
    from ffcv_utils.base.cli import UserError
    from ffcv_utils.train.models import blurpool_layers, check_arch

    model = create_model("timm:test_vit", 10, resolutions={24, 32, 48}, use_blurpool=True)
    assert model(torch.zeros(2, 3, 24, 24)).shape == (2, 10)  # dynamic size, padded patches
    assert model(torch.zeros(2, 3, 48, 48)).shape == (2, 10)
    assert blurpool_layers(model) == []  # a ViT has no strided conv past its stem
    cnn = create_model("timm:resnet10t", 10, use_blurpool=True)
    assert blurpool_layers(cnn) and cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with _pytest.raises(UserError, match=r"timm:test_coatnet takes a fixed input size"):
        create_model("timm:test_coatnet", 10, resolutions={160, 192})
    with _pytest.raises(UserError, match=r"did you mean timm:convnext_tiny"):
        check_arch("timm:convnxt_tiny")
    with _pytest.raises(UserError, match=r"a timm model: use --model.arch timm:resnet10t"):
        check_arch("resnet10t")


def test_timm_pretrained_without_network_is_one_line(tmp_path):
    import subprocess
    import sys

    code = ("from ffcv_utils.base.cli import run_main\n"
            "from ffcv_utils.train.models import create_model\n"
            "run_main(lambda: create_model('timm:resnet10t', 10, pretrained=True) and 0)\n")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = result.stderr.strip().splitlines()
    assert "model.pretrained: cannot load timm's pretrained weights for resnet10t" in line
