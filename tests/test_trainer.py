"""Trainer: parameter groups, lr schedule, EMA (all against mmengine's rules), stage switches (the criterion
the trainer sets each epoch), checkpoints, exact resume, DDP (2 Gloo processes vs one process), recipes
(mmpose configs)."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rtmo import RTMO, RTMOConfig
from rtmo.train.data import TrainData, resize_batch
from rtmo.train.ema import ModelEMA
from rtmo.train.losses import Criterion
from rtmo.train.optim import LRSchedule, build_optimizer, lr_at, param_groups
from rtmo.train.recipes import ScheduleRecipe, TrainRecipe, data_stage, list_recipes, scale_epochs
from rtmo.train.rundir import load_checkpoint
from rtmo.train.trainer import Trainer

torch.set_num_threads(2)


# ---------------------------------------------------------------------------------------------- stand-ins
class ToyDataset(torch.utils.data.Dataset):
    """Fixed images and targets; `noisy` adds numpy-RNG augmentation so resume must restore the RNG."""

    def __init__(self, n: int = 8, noisy: bool = True):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 32, 32, generator=g) * 255
        self.y = torch.rand(n, generator=g)
        self.noisy = noisy

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if self.noisy:
            x = x + torch.from_numpy(np.random.uniform(-20, 20, size=x.shape).astype(np.float32))
        return x, {"y": self.y[i:i + 1], "bboxes": torch.tensor([[4.0, 4.0, 20.0, 24.0]])}


def toy_collate(samples):
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


class ToyNet(nn.Module):
    """Conv (+ optional BN) + pooling + linear, with an `encoder` submodule named like the neck's."""

    def __init__(self, bn: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.fc = nn.Linear(4, 1)

    def forward(self, images, targets):
        f = torch.relu(self.bn(self.conv(images / 255.0))).mean((2, 3))
        pred = self.fc(f).squeeze(1)
        y = torch.cat([t["y"] for t in targets])
        # the box term checks that multi-scale resizing reached the targets (boxes scale with the image)
        box = torch.stack([t["bboxes"][0] for t in targets]) / images.shape[-1]
        mse = ((pred - y) ** 2).mean()
        return {"loss_mse": mse, "loss_box": 0.0 * pred.sum() + box.mean(), "loss": mse + 0.0 * pred.sum()}


def toy_recipe(epochs: int = 3, batch: int = 4, multiscale=(32, 64), ema: bool = True) -> TrainRecipe:
    r = TrainRecipe()
    return r.with_overrides(**{
        "schedule.epochs": epochs, "schedule.warmup_epochs": 1, "schedule.cosine1": [1, 2, 2],
        "schedule.bump_epoch": 2, "schedule.cosine2": [2, epochs, max(epochs - 2, 1)],
        "schedule.head_switch_epoch": 2, "schedule.num_last_epochs": 1,
        "data.batch_size": batch, "data.workers": 0, "input_size": [32, 32],
        "augment.multiscale_range": list(multiscale), "runtime.val_interval": 1,
        "runtime.checkpoint_interval": 2, "runtime.keep_checkpoints": 1, "runtime.log_interval": 1,
        "optim.lr": 0.01, "optim.clip_grad": 1.0, "ema.enabled": ema,
    })


def toy_data(noisy: bool = True, n: int = 8, stages: list | None = None) -> TrainData:
    def build(stage):
        if stages is not None:
            stages.append(stage)
        return ToyDataset(n, noisy)

    return TrainData(build_dataset=build, collate_fn=toy_collate)


def read_losses(path):
    return [r["loss"] for r in map(json.loads, open(path)) if r["type"] == "train"]


# ---------------------------------------------------------------------------------------------- optimiser
def test_param_groups_follow_reference_rules():
    model = RTMO(RTMOConfig.preset("t"))
    groups = param_groups(model, TrainRecipe().optim)
    where = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert len(where) == len(list(model.named_parameters()))  # every parameter exactly once
    enc = "neck.encoder.0.layers.0."
    # mmpose's optim_wrapper: encoder lr x0.05; decay off for norms and parameters named exactly `bias`, on
    # for the rest
    expected = {
        "backbone.stem.conv.conv.weight": (0.004, 0.05),
        "backbone.stem.conv.bn.weight": (0.004, 0.0),
        "backbone.stem.conv.bn.bias": (0.004, 0.0),
        "head.head_module.out_cls.0.bias": (0.004, 0.0),
        "head.dcc.gau.gamma": (0.004, 0.05),
        "head.dcc.gau.ln.g": (0.004, 0.05),
        "head.dcc.gau.res_scale.scale": (0.004, 0.05),
        "head.dcc.pos_enc": (0.004, 0.05),
        "head.dcc.sigma_fc.2.scale": (0.004, 0.05),
        "head.dcc.pose_to_kpts.1.weight": (0.004, 0.0),  # BatchNorm1d
        enc + "self_attn.attn.in_proj_weight": (0.0002, 0.05),
        enc + "self_attn.attn.in_proj_bias": (0.0002, 0.05),  # not named `bias`
        enc + "self_attn.attn.out_proj.bias": (0.0002, 0.0),
        enc + "norms.0.weight": (0.0002, 0.0),  # LayerNorm
        enc + "ffn.layers.0.0.weight": (0.0002, 0.05),
    }
    for name, (lr, wd) in expected.items():
        assert where[name] == pytest.approx((lr, wd), rel=1e-12), name
    opt = build_optimizer(model, TrainRecipe().optim)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)


def _mmengine_chain(base: float, L: int, cfg: ScheduleRecipe, epochs: int) -> list[float]:
    """Step-by-step simulation of mmengine's chained schedulers (their recurrences), independent of
    the closed form under test."""
    lr, out = base, []
    W = cfg.warmup_epochs * L
    b1, e1, t1 = (v * L for v in cfg.cosine1)
    b2, e2, t2 = (v * L for v in cfg.cosine2)
    for it in range(epochs * L):
        epoch = it // L
        if it < W:  # QuadraticWarmupLR: base*(2t+1)/T^2 added each step
            lr = base * 1 / W**2 if it == 0 else lr + base * (2 * it + 1) / W**2
        if b1 <= it < e1 and it > b1:
            t = it - b1
            lr = cfg.eta_min + (lr - cfg.eta_min) * (1 + math.cos(math.pi * t / t1)) / (
                1 + math.cos(math.pi * (t - 1) / t1))
        if it % L == 0 and epoch == cfg.bump_epoch:
            lr *= cfg.bump_factor
        if b2 <= it < e2 and it > b2:
            t = it - b2
            lr = cfg.eta_min + (lr - cfg.eta_min) * (1 + math.cos(math.pi * t / t2)) / (
                1 + math.cos(math.pi * (t - 1) / t2))
        out.append(lr)
    return out


def test_lr_schedule_reference_values():
    cfg, L = ScheduleRecipe(), 100
    # values worked out from the official schedule (base group 4e-3 / encoder group 2e-4), L = 100
    checks = [((0, 0), 1.6e-8, 8e-10), ((4, 99), 4e-3, 2e-4), ((100, 0), 3.02e-3, 2e-4),
              ((279, 99), 2.03e-4, 2e-4), ((280, 50), 5.075e-4, 5e-4), ((400, 0), 4.03e-4, 3.98e-4),
              ((590, 0), 2.0e-4, 2.0e-4)]
    for (e, j), base, enc in checks:
        it = e * L + j
        assert lr_at(4e-3, it, e, L, cfg) == pytest.approx(base, rel=3e-3), (e, j)
        assert lr_at(2e-4, it, e, L, cfg) == pytest.approx(enc, rel=3e-3), (e, j)
    # closed form == mmengine's recurrences at every iteration (small L keeps this fast)
    for c, epochs in ((cfg, 600), (TrainRecipe.load("rtmo-s_8xb32-700e_crowdpose-640x640").schedule, 700)):
        L = 3
        ref = _mmengine_chain(4e-3, L, c, epochs)
        ours = [lr_at(4e-3, it, it // L, L, c) for it in range(epochs * L)]
        np.testing.assert_allclose(ours, ref, rtol=1e-9)


def test_schedule_sets_group_lrs():
    model = ToyNet()
    opt = build_optimizer(model, TrainRecipe().optim)
    LRSchedule(opt, ScheduleRecipe(), 10).step(2800, 280)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs[-1] == pytest.approx(2.5 * lr_at(4e-3, 2799, 279, 10, ScheduleRecipe()), rel=1e-12)


# ---------------------------------------------------------------------------------------------- EMA
def test_ema_matches_exp_momentum_recursion():
    torch.manual_seed(0)
    model = ToyNet(bn=True)
    ema = ModelEMA(model, momentum=0.0002, gamma=2000)
    ref = None
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.bn.running_mean.add_(1.0)
            model.bn.num_batches_tracked += 1
        ema.update(model)
        cur = {k: v.double().clone() for k, v in model.state_dict().items()}
        if ref is None:
            ref = cur
        else:
            m = 0.9998 * math.exp(-(1 + step) / 2000) + 0.0002  # ExpMomentumEMA
            ref = {k: ref[k] if k.endswith("num_batches_tracked") else ref[k] * (1 - m) + cur[k] * m
                   for k in ref}
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v.double(), ref[k], rtol=1e-6, atol=1e-6, msg=k)
    assert int(ema.module.bn.num_batches_tracked) == 1  # integer buffer: copied at step 0, never averaged
    assert ema.steps == 5


# ---------------------------------------------------------------------------------------------- stages
def loss_settings(recipe: TrainRecipe, epoch: int) -> dict:
    """The loss settings training runs with in `epoch`: those of the criterion the trainer sets."""
    return dataclasses.asdict(Criterion.from_recipe(recipe, epoch))


def test_stage_switch_epochs_and_weights():
    s = TrainRecipe.load("rtmo-s_8xb32-600e_coco-640x640")
    m = TrainRecipe.load("rtmo-m_16xb16-600e_coco-640x640")
    assert loss_settings(s, 279)["oks_weight"] == 30.0 and not loss_settings(s, 279)["proxy_target_cc"]
    st2 = loss_settings(s, 280)
    assert (st2["oks_weight"], st2["mle_weight"], st2["cls_weight"], st2["overlaps_power"]) == (10, 5, 1, .5)
    assert st2["proxy_target_cc"] and not st2["use_aux_loss"]
    mm = loss_settings(m, 280)
    assert (mm["cls_weight"], mm["overlaps_power"], loss_settings(m, 0)["mle_weight"]) == (2.0, 1.0, 1e-2)
    assert [data_stage(s, e) for e in (578, 579, 599)] == [1, 2, 2]  # the last 21 epochs
    assert loss_settings(s, 579)["use_aux_loss"] and not loss_settings(s, 578)["use_aux_loss"]
    c = TrainRecipe.load("rtmo-s_8xb32-700e_crowdpose-640x640")
    assert [data_stage(c, e) for e in (668, 669)] == [1, 2] and loss_settings(c, 350)["cls_weight"] == 2.0
    short = scale_epochs(s, 30)
    assert short.schedule.head_switch_epoch == 14 and short.schedule.data_switch_epoch == 28


def test_trainer_sets_the_criterion_of_each_stage(tmp_path):
    """The trainer owns the criterion: each epoch the model computes its losses with the one the recipe
    gives that epoch (head switch at epoch 2, data switch with the auxiliary box loss at epoch 1)."""
    class WithCriterion(ToyNet):
        def __init__(self):
            super().__init__()
            self.criterion = None

    seen = []

    def loss_fn(model, images, targets):
        seen.append(model.criterion)
        return model(images, targets)

    recipe = toy_recipe(epochs=3)
    tr = Trainer(WithCriterion(), recipe, toy_data(), tmp_path, loss_fn=loss_fn, progress=False)
    tr.fit()
    assert seen[::2] == [Criterion.from_recipe(recipe, e) for e in range(3)] and seen[-1] is tr.criterion
    assert [(c.use_aux_loss, c.proxy_target_cc) for c in seen[::2]] == [(False, False), (True, False),
                                                                          (True, True)]


def test_resize_batch_scales_targets():
    images = torch.zeros(2, 3, 64, 64)
    targets = [{"bboxes": torch.tensor([[8.0, 16.0, 32.0, 48.0]]), "keypoints": torch.ones(1, 17, 2) * 10,
                "areas": torch.tensor([100.0])}] * 2
    out_img, out_t = resize_batch(images, targets, (96, 32))
    assert out_img.shape == (2, 3, 32, 96)
    assert out_t[0]["bboxes"].tolist() == [[12.0, 8.0, 48.0, 24.0]]
    assert out_t[0]["keypoints"][0, 0].tolist() == [15.0, 5.0]
    assert out_t[0]["areas"].item() == pytest.approx(100 * 1.5 * 0.5)


# ---------------------------------------------------------------------------------------------- resume
def test_resume_is_exact_and_checkpoints_are_safe(tmp_path):
    def evaluate(net):
        return {"AP": float(-net.fc.bias.abs().item())}

    torch.manual_seed(0)
    stages = []
    full = Trainer(ToyNet(), toy_recipe(), toy_data(stages=stages), tmp_path / "full", evaluate=evaluate,
                   progress=False)
    full.fit()
    assert stages == [1, 2]  # the loader is rebuilt with the stage-2 pipeline at the data switch (epoch 1)
    torch.manual_seed(0)
    part = Trainer(ToyNet(), toy_recipe(epochs=3), toy_data(), tmp_path / "part", evaluate=evaluate,
                   progress=False)
    part.fit(stop_after_epoch=2)  # interrupted after 2 of 3 epochs
    resumed = Trainer(ToyNet(), toy_recipe(), toy_data(), tmp_path / "part", evaluate=evaluate,
                      resume=tmp_path / "part" / "last.pth", progress=False)
    resumed.fit()
    a, b = read_losses(tmp_path / "full/metrics.jsonl"), read_losses(tmp_path / "part/metrics.jsonl")
    assert len(a) == len(b) == 6 and len(set(a)) == 6
    assert a == b  # bit-identical losses, augmentation and multi-scale draws included
    records = list(map(json.loads, open(tmp_path / "full/metrics.jsonl")))
    sizes = {r["size"] for r in records if r["type"] == "train"}
    assert len(sizes) > 1 and all(s % 32 == 0 for s in sizes)  # multi-scale was active
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k

    ckpt = torch.load(tmp_path / "full/last.pth", weights_only=True)  # safe format
    assert ckpt["epoch"] == 3 and ckpt["iter"] == 6
    for k, v in full.ema.module.state_dict().items():  # state_dict = EMA weights, model = raw
        assert torch.equal(ckpt["state_dict"][k], v)
        assert torch.equal(ckpt["model"][k], full.model.state_dict()[k])
    assert not torch.equal(ckpt["state_dict"]["fc.weight"], ckpt["model"]["fc.weight"])
    files = sorted(p.name for p in (tmp_path / "full").iterdir() if p.suffix == ".pth")
    assert files == sorted({"best.pth", "last.pth", "epoch_2.pth"})  # no temp files left behind
    with pytest.raises(ValueError, match="not a resumable"):
        torch.save({"state_dict": {}}, tmp_path / "bare.pth")
        load_checkpoint(tmp_path / "bare.pth")


def test_rtmo_checkpoint_loads_with_model_manager(tmp_path):
    from rtmo import ModelManager

    def maps_loss(model, images, targets):  # stand-in for rtmo.train.losses on the real network
        maps = model.forward_maps(images, with_kpt_reg=True)
        terms = [m.float().pow(2).mean() for ms in (maps.cls, maps.bbox, maps.kpt_reg, maps.vis, maps.pose)
                 for m in ms]
        return {"loss_maps": sum(terms)}

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.full((3, 128, 128), 100.0 + i), {}

    def collate(s):
        return torch.stack([x for x, _ in s]), [t for _, t in s]

    recipe = TrainRecipe.load("rtmo-t_8xb32-600e_body7-416x416").with_overrides(**{
        "input_size": [128, 128], "augment.multiscale_range": [128, 128], "data.batch_size": 2,
        "data.workers": 0})
    recipe = scale_epochs(recipe, 1)
    model = RTMO(RTMOConfig.preset("t"))
    tr = Trainer(model, recipe, TrainData(lambda s: Images(), collate), tmp_path, loss_fn=maps_loss,
                 evaluate=lambda m: {"AP": 0.5}, progress=False)
    tr.fit()
    loaded = ModelManager.get(tmp_path / "best.pth")
    assert loaded.input_size == (128, 128) and not loaded.training
    for k, v in tr.ema.module.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ---------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.manual_seed(0)
    recipe = toy_recipe(epochs=2, batch=4 // world, multiscale=(32, 32), ema=False)
    tr = Trainer(ToyNet(bn=False), recipe, toy_data(noisy=False), out_dir, device="cpu", progress=False)
    losses = []
    orig = tr.loss_fn

    def record(model, images, targets):
        out = orig(model, images, targets)
        losses.append(float(out["loss"].detach()))
        return out

    tr.loss_fn = record
    tr.fit()
    torch.save({"losses": losses, "params": tr.model.state_dict(),
                "broadcast_buffers": tr.ddp.broadcast_buffers}, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["broadcast_buffers"] is False  # mmengine's setting: per-GPU BatchNorm statistics

    torch.manual_seed(0)
    single = Trainer(ToyNet(bn=False), toy_recipe(epochs=2, batch=4, multiscale=(32, 32), ema=False),
                     toy_data(noisy=False), tmp_path / "single", device="cpu", progress=False)
    losses = []
    orig = single.loss_fn

    def record(model, images, targets):
        out = orig(model, images, targets)
        losses.append(float(out["loss"].detach()))
        return out

    single.loss_fn = record
    single.fit()

    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k  # DDP keeps ranks identical
        # same global batch => same averaged gradient => same weights, up to float summation order
        torch.testing.assert_close(v, single.model.state_dict()[k], rtol=1e-5, atol=1e-6)
    ddp_mean = (np.array(r0["losses"]) + np.array(r1["losses"])) / 2
    np.testing.assert_allclose(ddp_mean, losses, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- recipes
def test_recipes_hold_the_official_settings():
    names = list_recipes()
    assert len(names) == 11
    # hand-copied from mmpose's configs/body_2d_keypoint/rtmo/**.py
    official = {  # name: (batch/GPU, stage-1 mle, stage-2 cls, MixUp prob, MixUp range, affine shift, epochs)
        "rtmo-s_8xb32-600e_coco-640x640": (32, 1.0, 1.0, 1.0, (0.8, 1.6), 0.1, 600),
        "rtmo-m_16xb16-600e_coco-640x640": (16, 1e-2, 2.0, 1.0, (0.8, 1.6), 0.1, 600),
        "rtmo-t_8xb32-600e_body7-416x416": (32, 1.0, 1.0, 0.0, (0.8, 1.6), 0.1, 600),
        "rtmo-s_8xb32-700e_crowdpose-640x640": (32, 1e-3, 2.0, 1.0, (0.6, 1.6), 0.2, 700),
        "rtmo-l_16xb16-700e_body7-crowdpose-640x640": (16, 1e-3, 2.0, 1.0, (0.8, 1.6), 0.1, 700),
    }
    for name, (bs, mle, cls, mix, ratio, shift, epochs) in official.items():
        r = TrainRecipe.load(name)
        got = (r.data.batch_size, r.loss.stage1.mle_weight, r.loss.stage2.cls_weight, r.augment.mixup_prob,
               r.augment.mixup_ratio, r.augment.affine_shift, r.schedule.epochs)
        assert got == (bs, mle, cls, mix, ratio, shift, epochs), name
    b7 = TrainRecipe.load("rtmo-s_8xb32-600e_body7-640x640")
    assert [d.ratio for d in b7.data.train] == [1, 0.3, 0.5, 0.3, 0.3, 0.4, 0.3]
    assert [d.name for d in b7.data.stage2_train] == ["coco"]
    assert TrainRecipe.load("rtmo-m_16xb16-600e_body7-640x640").augment.stage2_affine == "default"
    assert TrainRecipe.load("rtmo-t_8xb32-600e_body7-416x416").augment.multiscale_range == (320, 640)
    with pytest.raises(ValueError, match="unknown field"):
        TrainRecipe.from_dict({"optim": {"lrr": 1}})
    with pytest.raises(FileNotFoundError, match="no recipe"):
        TrainRecipe.load("rtmo-x")


def test_cpu_bf16_autocast_is_opt_in(tmp_path):
    runs = {}
    for amp in (False, True):
        torch.manual_seed(0)
        recipe = toy_recipe(epochs=1, multiscale=(32, 32)).with_overrides(**{"runtime.cpu_amp": amp})
        tr = Trainer(ToyNet(), recipe, toy_data(noisy=False), tmp_path / str(amp), progress=False)
        assert tr.amp_dtype == (torch.bfloat16 if amp else None) and not tr.scaler.is_enabled()
        tr.fit()
        runs[amp] = read_losses(tmp_path / str(amp) / "metrics.jsonl")
    # bf16 keeps ~3 significant digits: same losses to 2e-2, but not bit-identical (autocast was active)
    np.testing.assert_allclose(runs[True], runs[False], rtol=2e-2)
    assert runs[True] != runs[False]


@pytest.mark.parametrize("section, line, match", [
    ("schedule", "epochs = -5", r"schedule.epochs = -5: must be >= 1"),
    ("", "input_size = [100, 100]", r"input_size\[0\] = 100: must be a positive multiple of 32"),
    ("", "input_size = [0, 0]", r"input_size\[0\] = 0"),
    ("augment", "multiscale_range = [800, 480]", r"multiscale_range = \[800, 480\]: must be \[low, high\]"),
    ("augment", "size_divisor = 0", r"size_divisor = 0: must be >= 1"),
    ("augment", "size_divisor = 16", r"size_divisor = 16: multi-scale sizes"),
    ("data", "batch_size = 0", r"data.batch_size = 0"),
    ("optim", "lr = -1.0", r"optim.lr = -1.0"),
])
def test_bad_recipes_fail_at_load_time(tmp_path, section, line, match):
    """Each of these used to exit 0 having trained nothing, or die later in a ZeroDivisionError /
    randrange error / shape error; now one line naming the file and the field, exit 2, at load time."""
    import subprocess
    import sys

    toml = tmp_path / "bad.toml"
    toml.write_text(f"[{section}]\n{line}\n" if section else f"{line}\n")
    with pytest.raises(ValueError, match=match):
        TrainRecipe.load(toml)
    if section == "schedule":  # once through the CLI, as typed: exit 2, one line, no model built
        r = subprocess.run([sys.executable, "-m", "rtmo", "train", str(toml), "-o", str(tmp_path / "run")],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "bad.toml" in lines[0] and "epochs" in lines[0]
        assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- robustness
def test_short_schedules_never_exceed_base_lr():
    """3 epochs of 2 iterations, worked by hand from the scaled milestones (warm-up 1 epoch, cosine1
    [1, 2, T=1], bump at 2, cosine2 [2, 3, T=2]; base 4e-3, eta_min 2e-4): the x2.5 bump of a cosine that
    had only half decayed (2.1e-3 * 2.5 = 5.25e-3) used to lift the LR above base; it is capped now."""
    r = scale_epochs(TrainRecipe(), 3).schedule
    assert (r.warmup_epochs, r.cosine1, r.bump_epoch, r.cosine2) == (1, (1, 2, 1), 2, (2, 3, 2))
    got = [lr_at(4e-3, it, it // 2, 2, r) for it in range(6)]
    half = 2e-4 + (4e-3 - 2e-4) * (1 + math.cos(math.pi * 1 / 2)) / 2  # cosine1, step 1 of 2
    np.testing.assert_allclose(got, [4e-3 * (1 / 2) ** 2, 4e-3, 4e-3, half, 4e-3, 4e-3], rtol=1e-12)
    for epochs in (1, 2, 4, 6, 10, 15, 40, 150):
        s = scale_epochs(TrainRecipe(), epochs).schedule
        assert s.warmup_epochs <= s.cosine1[0] <= s.cosine1[1] <= s.bump_epoch <= s.cosine2[0]  # in order
        for L in (1, 3, 50):
            assert max(lr_at(4e-3, it, it // L, L, s) for it in range(epochs * L)) <= 4e-3
    # the official schedule itself is untouched (no cap): its main group peaks at base
    assert not TrainRecipe().schedule.cap_at_base


def test_validation_epochs_follow_mmengine_dynamic_intervals():
    from rtmo.train.recipes import val_due

    coco = TrainRecipe.load("rtmo-s_8xb32-600e_coco-640x640")
    crowd = TrainRecipe.load("rtmo-s_8xb32-700e_crowdpose-640x640")
    # 1-based epochs after which mmengine validates: every 20, then from 579 every epoch
    assert [e + 1 for e in range(600) if val_due(coco, e)] == list(range(20, 579, 20)) + list(range(579, 601))
    # CrowdPose: every 50, then from 669 every epoch
    assert [e + 1 for e in range(640, 700) if val_due(crowd, e)] == [650] + list(range(669, 701))


def test_short_runs_write_no_per_epoch_checkpoints(tmp_path):
    r = scale_epochs(TrainRecipe(), 15)
    assert r.runtime.checkpoint_interval == 0 and r.runtime.keep_checkpoints == 3
    assert scale_epochs(TrainRecipe(), 300).runtime.checkpoint_interval == 20


def test_resume_hygiene(tmp_path, caplog):
    """Metrics truncated to the resume point, stale temp files removed, changed settings named, the resume
    logged; a reused folder without resume refused."""
    out = tmp_path / "run"
    torch.manual_seed(0)
    Trainer(ToyNet(), toy_recipe(epochs=3), toy_data(), out, progress=False).fit(stop_after_epoch=1)
    with open(out / "metrics.jsonl", "a") as f:  # records of an epoch interrupted by a kill
        f.write(json.dumps({"type": "train", "epoch": 1, "iter": 3, "loss": 9.0}) + "\n" + '{"type": "tr')
    (out / ".last.pth.tmp99999999").write_bytes(b"half a checkpoint")
    with pytest.raises(ValueError, match="already holds a training run.*--resume"):
        Trainer(ToyNet(), toy_recipe(epochs=3), toy_data(), out, progress=False)
    caplog.set_level("INFO", logger="rtmo.train")
    tr = Trainer(ToyNet(), toy_recipe(epochs=4), toy_data(), out, resume=out / "last.pth", progress=False)
    assert "epochs 3 -> 4" in caplog.text and "resumed from epoch 1" in caplog.text
    assert not (out / ".last.pth.tmp99999999").exists()
    tr.fit()
    recs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    train_iters = [r["iter"] for r in recs if r["type"] == "train"]
    assert train_iters == sorted(set(train_iters)) == list(range(1, 9))
    assert 9.0 not in [r.get("loss") for r in recs]


def test_resume_refuses_foreign_and_other_architecture_files(tmp_path):
    from rtmo.utils.checkpoint import CheckpointError

    out = tmp_path / "a"
    Trainer(ToyNet(), toy_recipe(epochs=1), toy_data(), out, progress=False).fit()
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="weights.pth is not a resumable.*--init-from"):
        Trainer(ToyNet(), toy_recipe(), toy_data(), tmp_path / "b", resume=tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="last.pth: cannot resume this run from it.*another model"):
        Trainer(ToyNet(bn=False), toy_recipe(), toy_data(), tmp_path / "c", resume=out / "last.pth")


def test_training_survives_nan_validation_and_a_nan_loss(tmp_path, caplog):
    """A diverged step: the loss of one iteration is NaN (update skipped, warned) and validation predicts
    NaN (AP not computable, logged); the epoch's checkpoint is still written and training goes on."""
    from rtmo.eval.coco import EvaluationError

    calls = {"n": 0}

    def loss_fn(model, images, targets):
        out = model(images, targets)  # ToyNet: a dict of loss terms
        calls["n"] += 1
        if calls["n"] == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    def evaluate(net):
        raise EvaluationError("results: record 0: 'keypoints' must be 51 finite numbers")

    caplog.set_level("INFO", logger="rtmo.train")
    tr = Trainer(ToyNet(), toy_recipe(epochs=2), toy_data(), tmp_path, loss_fn=loss_fn, evaluate=evaluate,
                 progress=False)
    tr.fit()
    assert "update skipped" in caplog.text and "AP recorded as not computable" in caplog.text
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    vals = [r for r in recs if r["type"] == "val"]
    assert len(vals) == 2 and all(r["AP"] is None and "finite" in r["error"] for r in vals)
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "best.pth").exists()  # nothing to rank by


def test_worker_errors_reach_the_user_as_one_line(tmp_path):
    class Broken(ToyDataset):
        def __getitem__(self, i):
            raise FileNotFoundError("data/x.jpg: 12 of 40 training images cannot be read")

    data = TrainData(build_dataset=lambda stage: Broken(), collate_fn=toy_collate)
    tr = Trainer(ToyNet(), toy_recipe(epochs=1), data, tmp_path, workers=1, progress=False)
    with pytest.raises(FileNotFoundError) as e:
        tr.fit()
    assert str(e.value) == "data/x.jpg: 12 of 40 training images cannot be read"
    # The failed epoch's worker is gone although its traceback is still held (in `e`): left to the
    # garbage collector, it was torn down later, inside another test.
    assert multiprocessing.active_children() == []

