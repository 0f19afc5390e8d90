"""Recipe builders on real batches (decoded digit JPEGs from the fixtures), in process: per-sample
draws and their seeding, soft labels, losses, optimizers, EMA arithmetic, clipping under a
GradScaler, and gradient accumulation equal to one big batch through the trainer's own step."""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from ffcv_utils.base.cli import UserError
from ffcv_utils.train.config import load_config
from ffcv_utils.train.models import create_model
from ffcv_utils.train.ema import build_ema, update_ema
from ffcv_utils.train.loss import RecipeLoss, build_criterion
from ffcv_utils.train.mixup import build_batch_augment
from ffcv_utils.train.optim import Recipe, accumulation_groups, build_optimizer, optimizer_step

pytestmark = pytest.mark.timeout(120)
CPU = torch.device("cpu")


def params_for(betons, *extra):
    train, val = betons
    p, meta = load_config(["--data.train_dataset", str(train), "--data.val_dataset", str(val),
                           "--training.batch_size", "8", *extra])
    return p


@pytest.fixture(scope="module")
def images(digits_dir):
    """uint8 NCHW batch of 8 real digit JPEGs, 32x32."""
    files = sorted(Path(digits_dir, "train").rglob("*.*"))[:8]
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    batch = [TF.resize(TF.pil_to_tensor(Image.open(f).convert("RGB")), [32, 32]) for f in files]
    return torch.stack(batch)


def prepare(im):
    return im.float() / 255


def same_image_batch(images, n=8):
    return images[:1].repeat(n, 1, 1, 1).contiguous()


def distinct(batch):
    return len({hash(x.numpy().tobytes()) for x in batch})


@pytest.mark.parametrize("keys", [
    ("--augment.randaug_ops", "2", "--augment.randaug_magnitude", "9"),
    ("--augment.erase_prob", "1.0",),
    ("--augment.mixup_alpha", "0.2", "--augment.cutmix_alpha", "1.0"),
], ids=["randaugment", "erasing", "mixup_cutmix"])
def test_each_augmentation_is_per_sample_and_seeded(digits_betons, images, keys):
    p = params_for(digits_betons, *keys)
    aug = build_batch_augment(p, 10, CPU)
    # Mixing needs different partners; the other two get 8 copies of one image.
    batch = images.clone() if "--augment.mixup_alpha" in keys else same_image_batch(images)
    labels = torch.arange(8) % 10
    x1, t1 = aug(batch, labels, prepare, epoch=0, step=3)
    x2, t2 = aug(batch, labels, prepare, epoch=0, step=3)
    x3, _ = aug(batch, labels, prepare, epoch=0, step=4)
    assert torch.equal(x1, x2) and torch.equal(t1, t2)  # same (seed, epoch, step): same draws
    assert not torch.equal(x1, x3)  # the next step draws anew
    if "--augment.mixup_alpha" in keys:
        lam = t1.max(dim=1).values
        assert len(set(lam.tolist())) > 2  # a lambda per sample, not one per batch
    else:
        assert distinct(x1) >= 4, "copies of one image got the same draw"
    assert torch.equal(batch, images.clone() if "--augment.mixup_alpha" in keys
                       else same_image_batch(images))  # the loader's batch is left alone
    other = build_batch_augment(params_for(digits_betons, *keys, "--data.seed", "1"), 10, CPU)
    assert not torch.equal(other(batch, labels, prepare, 0, 3)[0], x1)  # data.seed matters


def test_randaugment_groups_equal_torchvision_applied_image_by_image(images):
    """Each op runs once on all the images that drew it; torchvision's ops keep per-image
    statistics (contrast mean, equalize/autocontrast histograms), so the result must be what the
    same op and magnitude give applied to each image alone. Every op is drawn by two different
    images with the same magnitude, so each group holds images of different content."""
    from ffcv_utils.train.mixup import PerSampleRandAugment

    ra = PerSampleRandAugment(num_ops=2, magnitude=7, magnitude_std=0.0)
    n_ops = len(ra.ops)
    batch = torch.cat([images, images.flip(-1), 255 - images, images.roll(5, -2)])[:2 * n_ops]
    n = batch.shape[0]
    first = torch.stack([torch.arange(n) % n_ops, torch.full((n,), 7), torch.zeros(n).long()], 1)
    second = ra.draw(n)[0]
    out = ra.apply(batch, [first, second])
    assert not torch.equal(out, batch)
    h, w = batch.shape[-2:]
    for i in range(n):
        img = batch[i:i + 1]
        for op, level, sign in (first[i].tolist(), second[i].tolist()):
            name, (magnitudes_fn, signed) = ra.ops[op]
            mags = magnitudes_fn(ra.BINS, h, w)
            value = 0.0 if mags is None else float(mags[level]) * (-1 if signed and sign else 1)
            img = ra.transform._apply_image_or_video_transform(
                img, name, value, interpolation=ra.transform.interpolation,
                fill=ra.transform._fill)
        assert torch.equal(out[i:i + 1], img), (i, ra.ops[first[i, 0]][0])


def test_randaugment_magnitudes_follow_the_noise(images):
    from ffcv_utils.train.mixup import PerSampleRandAugment

    torch.manual_seed(0)
    fixed = PerSampleRandAugment(2, 9, 0.0).draw(4000)
    assert (fixed[0][:, 1] == 9).all() and (fixed[1][:, 1] == 9).all()
    noisy = torch.cat(PerSampleRandAugment(2, 9, 0.5).draw(4000))
    levels = noisy[:, 1].float()
    assert 8.7 < levels.mean() < 9.2 and set(levels.unique().tolist()) >= {8.0, 9.0, 10.0}
    assert levels.max() <= 10  # clamped to torchvision's 11 bins
    ops = torch.bincount(noisy[:, 0], minlength=14).float() / len(noisy)
    assert (ops - 1 / 14).abs().max() < 0.02  # ops drawn uniformly, Identity included
    assert 0.45 < noisy[:, 2].float().mean() < 0.55


def test_mixed_labels_sum_to_one_and_keep_smoothing(digits_betons, images):
    p = params_for(digits_betons, "--augment.mixup_alpha", "0.8", "--augment.cutmix_alpha",
                   "1.0", "--training.label_smoothing", "0.1")
    aug = build_batch_augment(p, 10, CPU)
    labels = torch.arange(8)
    _, targets = aug(images, labels, prepare, 0, 0)
    assert targets.shape == (8, 10)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
    assert targets.min() > 0  # label smoothing spreads mass to every class


def test_losses_on_hard_and_soft_targets():
    logits = torch.randn(6, 10)
    labels = torch.randint(0, 10, (6,))
    one_hot = nn.functional.one_hot(labels, 10).float()
    ce = RecipeLoss("ce", 0.0)
    torch.testing.assert_close(ce(logits, labels), ce(logits, one_hot))
    torch.testing.assert_close(ce(logits, labels), nn.functional.cross_entropy(logits, labels))
    smoothed = RecipeLoss("ce", 0.1)(logits, labels)
    torch.testing.assert_close(smoothed, nn.functional.cross_entropy(logits, labels,
                                                                     label_smoothing=0.1))
    bce = RecipeLoss("bce", 0.0)
    torch.testing.assert_close(bce(logits, labels),
                               nn.functional.binary_cross_entropy_with_logits(logits, one_hot))
    thresh = RecipeLoss("bce", 0.0, bce_target_thresh=0.2)
    soft = 0.15 * one_hot.roll(1, dims=1) + 0.85 * one_hot  # mixed target: 0.15 falls below 0.2
    torch.testing.assert_close(thresh(logits, soft), bce(logits, one_hot))


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adamw", "lamb"])
def test_optimizers_step_and_keep_no_decay_groups(digits_betons, name):
    extra = (["--training.optimizer", "sgd", "--training.nesterov", "1"] if name == "nesterov"
             else ["--training.optimizer", name])
    p = params_for(digits_betons, *extra, "--training.weight_decay", "0.05")
    model = create_model("resnet18", 10)
    opt = build_optimizer(p, model, lr=0.01)
    decays = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decays == {"decay": 0.05, "no_decay": 0.0}
    if name == "nesterov":
        assert opt.param_groups[0]["nesterov"]
    before = copy.deepcopy(model.state_dict())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    assert not torch.equal(before["fc.weight"], model.state_dict()["fc.weight"])
    assert type(opt).__name__ == {"sgd": "SGD", "nesterov": "SGD", "adamw": "AdamW",
                                  "lamb": "Lamb"}[name]


def test_ema_arithmetic_and_every_k(digits_betons):
    p = params_for(digits_betons, "--ema.decay", "0.9", "--ema.every", "2")
    model = nn.Linear(3, 2)
    ema = build_ema(p, model)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    update_ema(ema, model, optimizer_steps=1, every=p.ema.every)  # odd step: no update
    torch.testing.assert_close(ema.module.weight, w0)
    update_ema(ema, model, optimizer_steps=2, every=p.ema.every)
    torch.testing.assert_close(ema.module.weight, 0.9 * w0 + 0.1 * (w0 + 1.0))
    assert build_ema(params_for(digits_betons), model) is None


@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "grad_scaler"])
def test_clipping_bounds_the_real_gradient(scaled):
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=scaled, init_scale=2.0 ** 10)
    before = [q.detach().clone() for q in model.parameters()]
    loss = (model(torch.randn(8, 16)) * 100).pow(2).mean()
    real = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()),
                                                               retain_graph=True)]).norm()
    scaler.scale(loss).backward()
    norm = optimizer_step(opt, scaler, model, clip_grad=0.5)
    torch.testing.assert_close(norm, real)  # clipped in real units: unscaled first
    step = torch.cat([(b - q.detach()).flatten() for b, q in zip(before, model.parameters())])
    torch.testing.assert_close(step.norm(), torch.tensor(0.5), rtol=1e-4, atol=1e-5)
    assert all(q.grad is None for q in model.parameters())  # zeroed for the next step


def test_accumulation_groups():
    assert accumulation_groups(5, 2) == [2, 2, 2, 2, 1]
    assert accumulation_groups(4, 1) == [1, 1, 1, 1]


class NoBN(nn.Module):
    """Batch-independent model: accumulated micro-batches must equal the big batch exactly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean(dim=(2, 3)))


def test_accumulation_equals_one_big_batch(digits_betons, images):
    from ffcv_utils.train.steps import train_step

    env = SimpleNamespace(distributed=False, device=CPU)
    labels = torch.arange(8) % 10
    results = []
    for accum, batch in ((1, 8), (2, 4), (4, 2)):
        p = params_for(digits_betons, "--training.accum_steps", str(accum), "--training.optimizer",
                       "sgd", "--training.momentum", "0", "--training.weight_decay", "0",
                       "--training.label_smoothing", "0.1", "--training.clip_grad", "1000")
        torch.manual_seed(0)
        model = NoBN()
        recipe = Recipe(model, build_optimizer(p, model, 0.5), torch.amp.GradScaler("cpu"),
                        build_criterion(p))
        for i, start in enumerate(range(0, 8, batch)):
            train_step(model, images[start:start + batch], labels[start:start + batch],
                       recipe, env, None, True, 0, i, accum, steps_now=(i + 1) % accum == 0)
        assert recipe.steps == 1
        results.append(torch.cat([q.detach().flatten() for q in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[2], results[0], rtol=1e-5, atol=1e-6)


def test_sync_bn_is_a_no_op_alone_and_refused_on_cpu():
    from ffcv_utils.train.models import apply_sync_bn

    model = create_model("resnet18", 10)
    assert apply_sync_bn(model, False, True, CPU) == (model, "")
    same, note = apply_sync_bn(model, True, False, CPU)  # one process: nothing to sync
    assert same is model and "plain BatchNorm" in note
    with pytest.raises(UserError, match="^training.sync_bn: SyncBatchNorm runs on GPUs only"):
        apply_sync_bn(model, True, True, CPU)


def test_periodic_checkpoint_names():
    from ffcv_utils.train.checkpoint import periodic_checkpoint_name

    assert [periodic_checkpoint_name(e, 2) for e in (1, 2, 3, 4)] == \
        [None, "checkpoint_epoch_2.pt", None, "checkpoint_epoch_4.pt"]
    assert periodic_checkpoint_name(3, 0) is None


def test_stage_schedule_parses_seed_000_form_and_refuses_nonsense():
    from ffcv_utils.train.schedules import parse_stages, stage_at

    stages = parse_stages("0,128,512;5,160,384;10,192,320;15,224,256", 999)
    assert stages == [(0, 128, 512), (5, 160, 384), (10, 192, 320), (15, 224, 256)]
    assert [stage_at(stages, e)[1:] for e in (0, 4, 5, 9, 10, 14, 15, 20)] == [
        (128, 512), (128, 512), (160, 384), (160, 384), (192, 320), (192, 320), (224, 256),
        (224, 256)]
    assert parse_stages("0,160;85,224", 256) == [(0, 160, 256), (85, 224, 256)]  # FixRes tail
    for bad in ("5,128,512", "0,128,512;0,160,256", "0,128,x", "0,4,512", "0,128,512,1"):
        with pytest.raises(ValueError):
            parse_stages(bad, 256)


@pytest.mark.parametrize("schedule, why", [
    ("1,128,64", "first stage must start at epoch 0"),
    ("0,128,64;40,160,32", "starts after the last epoch"),
    ("0,128;3,160", None),
])
def test_stage_schedule_key_is_checked(digits_betons, schedule, why):
    args = ["--resolution.schedule", schedule, "--training.epochs", "10"]
    if why is None:
        assert params_for(digits_betons, *args).resolution.schedule == schedule
        return
    with pytest.raises(UserError, match=f"^resolution.schedule: .*{why}"):
        params_for(digits_betons, *args)


def test_stage_schedule_sets_batch_resolution_and_lr_per_epoch(digits_betons):
    """Each epoch (including one a resumed run starts at) gets its stage's batch and size, and
    the LR follows the linear scaling rule relative to training.batch_size."""
    import numpy as np
    from ffcv_utils.train.schedules import epoch_lrs, stage_epoch_lrs
    from ffcv_utils.train import plan as ti

    p = params_for(digits_betons, "--training.batch_size", "64", "--training.epochs", "6",
                   "--resolution.schedule", "0,24,64;2,32,32;5,40,16")
    assert [(ti.resolution_for(p, e), ti.batch_for(p, e)) for e in range(6)] == [
        (24, 64), (24, 64), (32, 32), (32, 32), (32, 32), (40, 16)]
    sched = ti.schedule_kwargs(p, 0.1)
    lrs = stage_epoch_lrs(3, 10, batch=ti.batch_for(p, 3), base_batch=64, **sched)
    np.testing.assert_allclose(lrs, epoch_lrs(3, 10, **sched) / 2)  # batch 32 of 64: half
    same = stage_epoch_lrs(1, 10, batch=ti.batch_for(p, 1), base_batch=64, **sched)
    np.testing.assert_allclose(same, epoch_lrs(1, 10, **sched))


def test_an_optimizer_outside_the_table_is_an_error_never_a_fallback(monkeypatch):
    """A name the config accepts but OPTIMIZERS lacks fails with one line (it used to train as
    LAMB); an entry added to the table is built."""
    from ffcv_utils.train import optim

    p = load_config(["--data.train_dataset", __file__, "--data.val_dataset", __file__])[0]
    p.training.optimizer = "rmsprop"
    model = torch.nn.Linear(2, 2)
    with pytest.raises(UserError, match=r"training.optimizer: unknown 'rmsprop' \(one of sgd, "):
        build_optimizer(p, model, 0.1)
    monkeypatch.setitem(optim.OPTIMIZERS, "rmsprop",
                        lambda groups, lr, t: torch.optim.RMSprop(groups, lr=lr))
    assert isinstance(build_optimizer(p, model, 0.1), torch.optim.RMSprop)
