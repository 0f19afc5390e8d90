"""Configuration: every public ffcv-imagenet key accepted, bad input refused in one line before
any work starts, and the LR scaling rule."""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from ffcv_utils.base.cli import UserError
from ffcv_utils.train.config import load_config
from ffcv_utils.beton.sidecar import write_info
from ffcv_utils.train import plan
from helpers import run_script

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(ROOT.glob("rn*_configs/*.yaml"))


@pytest.fixture
def betons(tmp_path):
    """Two files standing in for betons (config checks only look at their existence)."""
    train, val = tmp_path / "train.beton", tmp_path / "val.beton"
    train.write_bytes(b"x")
    val.write_bytes(b"x")
    return ["--data.train_dataset", str(train), "--data.val_dataset", str(val)]


def test_all_shipped_configs_load_with_published_values(betons):
    names = {c.name for c in CONFIGS}
    for arch in ("rn18", "rn50"):
        for epochs in (16, 24, 32, 40, 56, 88):
            assert f"{arch}_{epochs}_epochs.yaml" in names
    for cfg in CONFIGS:
        p, meta = load_config(["--config-file", str(cfg), *betons])
        if not re.fullmatch(r"rn(18|50)_\d+_epochs\.yaml", cfg.name):
            continue  # demo, recipes and hardware overlays: loading is the check here
        if cfg.name.startswith("rn50_"):
            assert (p.model.arch, p.lr.lr, p.training.batch_size, p.dist.world_size) == \
                ("resnet50", 1.7, 512, 8)
            assert p.training.weight_decay == 1e-4 and p.training.distributed == 1
        elif "demo" not in cfg.name:
            assert (p.model.arch, p.lr.lr, p.training.batch_size, p.dist.world_size) == \
                ("resnet18", 0.5, 1024, 1)
            assert p.training.weight_decay == 5e-5
        if "demo" not in cfg.name:
            epochs = p.training.epochs
            ramps = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48),
                     88: (65, 76)}
            assert (p.resolution.start_ramp, p.resolution.end_ramp) == ramps[epochs]
            assert (p.resolution.min_res, p.resolution.max_res) == (160, 192)
            assert p.lr.lr_schedule_type == "cyclic" and p.lr.lr_peak_epoch == 2
            assert p.training.label_smoothing == 0.1 and p.training.use_blurpool == 1
            assert p.validation.resolution == 256 and p.validation.lr_tta == 1


def test_public_ffcv_imagenet_config_accepted_unchanged(tmp_path, betons):
    # the upstream files' spelling: lr_tta: true, weight_decay as 5e-5 (a YAML string), data.gpu
    cfg = tmp_path / "upstream.yaml"
    cfg.write_text("""data:
  gpu: 0
  in_memory: 1
  num_workers: 12
dist:
  world_size: 1
  address: localhost
  port: 12355
logging:
  folder: /tmp/
  log_level: 0
lr:
  lr: 0.5
  lr_peak_epoch: 2
  lr_schedule_type: cyclic
  step_ratio: 0.1
  step_length: 30
model:
  arch: resnet18
  pretrained: 0
resolution:
  end_ramp: 13
  max_res: 192
  min_res: 160
  start_ramp: 11
training:
  batch_size: 1024
  bn_wd: 0
  distributed: 0
  epochs: 16
  eval_only: 0
  label_smoothing: 0.1
  momentum: 0.9
  optimizer: sgd
  weight_decay: 5e-5
  use_blurpool: 1
validation:
  batch_size: 512
  lr_tta: true
  resolution: 256
""")
    p, _ = load_config(["-C", str(cfg), *betons, "--training.epochs=20"])
    assert p.validation.lr_tta == 1 and p.training.weight_decay == 5e-5
    assert p.dist.port == "12355" and p.training.epochs == 20  # CLI beats the file


@pytest.mark.parametrize("args, expected", [
    (["--training.batchsize", "64"], "unknown option --training.batchsize (did you mean "
                                     "training.batch_size?)"),
    (["--lr.lr_schedule", "cyclic"], "unknown option --lr.lr_schedule"),
    (["--training.batch_size", "sixty"], "training.batch_size: expected an integer"),
    (["--training.epochs", "1.5"], "training.epochs: expected an integer"),
    (["--lr.lr", "fast"], "lr.lr: expected a number"),
    (["--training.use_blurpool", "maybe"], "training.use_blurpool: expected 0 or 1"),
    (["--lr.lr_schedule_type", "linear"], "lr.lr_schedule_type: expected One of"),
    (["--training.precision", "fp8"], "training.precision: expected One of"),
    (["--data.decoder", "turbo"], "data.decoder: expected One of"),
    (["--resolution.min_res", "-32"], "resolution.min_res: must be at least 8"),
    (["--resolution.min_res", "224", "--resolution.max_res", "192"],
     "resolution.min_res: 224 is larger than resolution.max_res 192"),
    (["--resolution.start_ramp", "5", "--resolution.end_ramp", "2"],
     "resolution.start_ramp: 5 is after resolution.end_ramp 2"),
    (["--validation.resolution", "0"], "validation.resolution: must be at least 8"),
    (["--model.arch", "resnet5O"], "model.arch: unknown torchvision classification model "
                                   "'resnet5O' (did you mean resnet50, "),
    (["--training.epochs", "0"], "training.epochs: must be at least 1"),
    (["--lr.lr_peak_epoch", "40"], "lr.lr_peak_epoch: must be between 0 and training.epochs"),
    (["--training.label_smoothing", "1.5"], "training.label_smoothing: must be in [0, 1)"),
    (["--data.train_dataset", "/nonexistent/train.beton"],
     "data.train_dataset: file not found: /nonexistent/train.beton"),
    (["--model.weights", "/nonexistent/w.pt"], "model.weights: file not found"),
    (["--training.eval_only", "1"], "training.eval_only: needs --model.weights"),
    (["--logging.run_id", "a/b"], "logging.run_id: must be a plain folder name"),
    # the recipe's keys (optimizer, loss, mixup, EMA, augmentation)
    (["--augment.mixup_alpha", "0.2", "--training.batch_size", "7"], "training.batch_size: "),
    (["--training.optimizer", "adamw", "--training.nesterov", "1"], "training.nesterov: "),
    (["--training.optimizer", "rmsprop"], "training.optimizer: "),
    (["--ema.decay", "1"], "ema.decay: "),
    (["--ema.every", "0"], "ema.every: "),
    (["--augment.erase_prob", "1.5"], "augment.erase_prob: "),
    (["--augment.randaug_magnitude", "11"], "augment.randaug_magnitude: "),
    (["--training.accum_steps", "0"], "training.accum_steps: "),
    (["--training.clip_grad", "-1"], "training.clip_grad: "),
    (["--training.loss", "mse"], "training.loss: "),
])
def test_bad_input_is_refused_naming_the_key(betons, args, expected):
    with pytest.raises(UserError) as e:
        load_config([*betons, *args])
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_config_file_errors_name_file_and_key(tmp_path, betons):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  batch_sise: 64\n")
    with pytest.raises(UserError, match=r"bad.yaml: unknown key 'training.batch_sise' \(did you "
                                        r"mean training.batch_size\?\)"):
        load_config(["-C", str(bad), *betons])
    typed = tmp_path / "typed.yaml"
    typed.write_text("resolution:\n  min_res: big\n")
    with pytest.raises(UserError, match="resolution.min_res: expected an integer, got 'big'"):
        load_config(["-C", str(typed), *betons])
    with pytest.raises(UserError, match="config file not found"):
        load_config(["-C", str(tmp_path / "missing.yaml"), *betons])
    with pytest.raises(UserError, match="data.val_dataset is required"):
        load_config(["--data.train_dataset", betons[1]])


def test_linear_lr_scaling_rule(betons):
    rn50 = str(ROOT / "rn50_configs/rn50_88_epochs.yaml")

    def lr(args, world_size):
        p, meta = load_config(["-C", rn50, *betons, *args])
        return plan.effective_lr(p, meta, world_size)

    assert lr([], 8)[0] == pytest.approx(1.7)                       # as written: 512 x 8
    value, note = lr([], 4)
    assert value == pytest.approx(0.85) and "scaled linearly" in note  # half the GPUs
    assert lr(["--training.batch_size", "256"], 8)[0] == pytest.approx(0.85)  # CLI batch
    assert lr(["--training.batch_size", "256"], 16)[0] == pytest.approx(1.7)
    assert lr(["--lr.scale_lr", "0"], 1)[0] == pytest.approx(1.7)
    assert lr(["--lr.batch_size_for_lr", "1024"], 1)[0] == pytest.approx(0.85)
    # the reference batch follows the config file, not a CLI --dist.world_size
    assert lr(["--dist.world_size", "1"], 1)[0] == pytest.approx(1.7 / 8)


def test_class_lists_must_agree(tmp_path, capsys):
    train, val = tmp_path / "train.beton", tmp_path / "val.beton"
    train.write_bytes(b"x")
    val.write_bytes(b"x")
    args = ["--data.train_dataset", str(train), "--data.val_dataset", str(val)]
    write_info(train, {"classes": ["cat", "dog", "fox"]})
    write_info(val, {"classes": ["cat", "dog", "fox"]})
    p, _ = load_config(args)
    assert plan.check_class_lists(p) == (3, ["cat", "dog", "fox"])
    write_info(val, {"classes": ["dog", "cat", "fox"]})
    with pytest.raises(UserError, match="train and val class lists differ: same class names in "
                                        "a different order"):
        plan.check_class_lists(p)
    write_info(val, {"classes": ["cat", "dog"]})
    with pytest.raises(UserError, match="train has 3 classes, val has 2"):
        plan.check_class_lists(p)
    Path(str(val) + ".json").unlink()
    assert plan.check_class_lists(p)[0] == 3
    assert "warning: no class list beside" in capsys.readouterr().err
    Path(str(train) + ".json").unlink()
    with pytest.raises(UserError, match="model.num_classes"):
        plan.check_class_lists(p)
    p, _ = load_config([*args, "--model.num_classes", "7"])
    assert plan.check_class_lists(p)[0] == 7


def test_cli_errors_are_one_line_exit_2_no_traceback(tmp_path, betons, capsys, monkeypatch):
    def run_cli(*args):
        code, out, err = run_script("train_imagenet.py", args, capsys, monkeypatch)
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    bad = run_cli(*betons, "--training.batch_sise", "64")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "train_imagenet.py: error: unknown option --training.batch_sise "
        "(did you mean training.batch_size?)"]
    # a distributed config outside torchrun: one line with the command to use
    rn50 = ROOT / "rn50_configs/rn50_16_epochs.yaml"
    need = run_cli("--config-file", str(rn50), *betons)
    assert need.returncode == 2 and "Traceback" not in need.stderr
    [line] = need.stderr.strip().splitlines()
    assert "torchrun --nproc_per_node=8 train_imagenet.py --config-file" in line
    # class lists that differ stop the run before any work
    write_info(betons[1], {"classes": ["a", "b"]})
    write_info(betons[3], {"classes": ["b", "a"]})
    mismatch = run_cli(*betons, "--logging.folder", str(tmp_path / "logs"))
    assert mismatch.returncode == 2 and "Traceback" not in mismatch.stderr
    [line] = mismatch.stderr.strip().splitlines()
    assert "train and val class lists differ" in line
    assert not (tmp_path / "logs").exists()


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        load_config(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in ("--lr.scale_lr", "--training.resume", "--data.train_dataset", "--dist.port"):
        assert key in out


def test_schedule_keys_checked_only_where_they_apply(betons):
    # lr_peak_epoch (default 2) only matters to the cyclic schedule
    p, _ = load_config([*betons, "--lr.lr_schedule_type", "cosine", "--training.epochs", "1"])
    assert p.lr.lr_schedule_type == "cosine" and p.lr.lr_peak_epoch == 2
    # cyclic: the default peak (2) is scaled into a run shortened below it (ffcv_utils/shrink)
    p, meta = load_config([*betons, "--training.epochs", "1"])
    assert p.lr.lr_peak_epoch == pytest.approx(2 / 30, abs=1e-3) and meta["shrunk"]
    with pytest.raises(UserError, match="lr.lr_peak_epoch"):  # typed by the user: refused
        load_config([*betons, "--training.epochs", "1", "--lr.lr_peak_epoch", "2"])
