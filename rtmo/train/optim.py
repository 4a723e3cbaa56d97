"""AdamW with the official configs' parameter groups and the warm-up/cosine/bump/cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from .recipes import OptimRecipe, ScheduleRecipe

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm,
              nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def param_groups(model: nn.Module, cfg: OptimRecipe) -> list[dict]:
    """mmengine's ForceDefaultOptimWrapperConstructor result, merged into at most four groups.

    * lr x `encoder_lr_mult` for every parameter whose full name contains `neck.encoder`;
    * weight decay 0 for every parameter of a normalisation layer and every parameter named exactly
      `bias` (also inside the encoder: `force_default_settings`); everything else, notably MHA's
      `in_proj_bias`, GAU `gamma`/`beta`, ScaleNorm `g`, DCC `pos_enc`, decays.
    Each group carries `initial_lr` (its base lr), which the schedule scales.
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_TYPES)
                   for p in m.parameters(recurse=False)}
    groups: dict[tuple[bool, bool], dict] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        no_decay = id(p) in norm_params or name.rsplit(".", 1)[-1] == "bias"
        encoder = "neck.encoder" in name
        key = (encoder, no_decay)
        if key not in groups:
            lr = cfg.lr * (cfg.encoder_lr_mult if encoder else 1.0)
            groups[key] = {"params": [], "names": [], "lr": lr, "initial_lr": lr,
                           "weight_decay": 0.0 if no_decay else cfg.weight_decay}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: OptimRecipe, total_batch: int | None = None) -> torch.optim.AdamW:
    if cfg.auto_scale_lr and total_batch:
        cfg = OptimRecipe(**{**cfg.__dict__, "lr": cfg.lr * total_batch / cfg.base_batch_size})
    groups = param_groups(model, cfg)
    for g in groups:
        g.pop("names")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def lr_at(base: float, it: int, epoch: int, epoch_len: int, cfg: ScheduleRecipe) -> float:
    """The lr of a group with base lr `base` at global iteration `it` (0-based) during `epoch`.

    Closed form of mmengine's chained schedulers: QuadraticWarmupLR and both CosineAnnealingLRs are
    iteration-based (`convert_to_iter_based`, with the epoch length `epoch_len` of the *first* train loader,
    as mmengine converts once), the x`bump_factor` ConstantLR is epoch-based and never restored. Each cosine
    starts from the lr its group has when it begins and runs with steps counted from its own `begin`;
    `eta_min` is absolute for every group. With `cfg.cap_at_base` the result is at most `base`.
    """
    lr = _lr_at(base, it, epoch, epoch_len, cfg)
    return min(lr, base) if cfg.cap_at_base else lr


def _lr_at(base: float, it: int, epoch: int, epoch_len: int, cfg: ScheduleRecipe) -> float:
    L = epoch_len
    warm = cfg.warmup_epochs * L
    if it < warm:
        return base * ((it + 1) / warm) ** 2
    lr = base

    def cosine(start: float, t: int, t_max: int) -> float:
        return cfg.eta_min + (start - cfg.eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2

    b1, e1, t1 = (v * L for v in cfg.cosine1)
    if it < b1:
        return lr
    if it < e1:
        return cosine(lr, it - b1, t1)
    lr = cosine(lr, e1 - 1 - b1, t1)  # value of its last step; later schedulers chain from it
    if epoch >= cfg.bump_epoch:
        lr *= cfg.bump_factor
    b2, e2, t2 = (v * L for v in cfg.cosine2)
    if it < b2:
        return lr
    if it < e2:
        return cosine(lr, it - b2, t2)
    return cosine(lr, e2 - 1 - b2, t2)


class LRSchedule:
    """Sets every group's lr for the coming iteration from its `initial_lr`; stateless apart from the
    epoch length, so resuming needs only the iteration counter."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleRecipe, epoch_len: int):
        if epoch_len < 1:
            raise ValueError(f"epoch length must be >= 1 iteration, got {epoch_len}")
        self.optimizer, self.cfg, self.epoch_len = optimizer, cfg, epoch_len

    def step(self, it: int, epoch: int) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(g["initial_lr"], it, epoch, self.epoch_len, self.cfg)

    def state_dict(self) -> dict:
        return {"epoch_len": self.epoch_len}

    def load_state_dict(self, state: dict) -> None:
        self.epoch_len = int(state["epoch_len"])
