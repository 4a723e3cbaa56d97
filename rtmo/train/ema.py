"""Exponential moving average of the weights: mmengine's `ExpMomentumEMA`, `update_buffers=True`."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """EMA of every floating-point state-dict entry of a model (parameters *and* buffers).

    After the `step`-th update (0-based): `m = (1 - momentum) * exp(-(1 + step) / gamma) + momentum`,
    `ema = ema * (1 - m) + model * m`. Update 0 copies everything (integer buffers such as
    `num_batches_tracked` included, which are never averaged afterwards).
    The EMA copy is always in eval mode and never gets gradients; validate and save it directly.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.0002, gamma: float = 2000.0):
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.momentum, self.gamma = momentum, gamma
        self.steps = 0

    def momentum_at(self, step: int) -> float:
        return (1 - self.momentum) * math.exp(-(1 + step) / self.gamma) + self.momentum

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = _unwrap(model).state_dict()
        dst = self.module.state_dict()
        if self.steps == 0:
            for k, v in dst.items():
                v.copy_(src[k])
        else:
            m = self.momentum_at(self.steps)
            avg = [v for k, v in dst.items() if v.is_floating_point()]
            new = [src[k].to(v.dtype) for k, v in dst.items() if v.is_floating_point()]
            torch._foreach_mul_(avg, 1 - m)
            torch._foreach_add_(avg, new, alpha=m)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps, "momentum": self.momentum, "gamma": self.gamma}

    def load_state_dict(self, state: dict, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.steps = int(state["steps"])
        if weights is not None:
            self.module.load_state_dict(weights)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
