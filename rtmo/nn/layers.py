"""Building blocks shared by backbone, neck and head.

Attribute names (`conv`, `bn`, `activate`, ...) follow mmcv's so that official checkpoints load as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Swish(nn.Module):
    """`x * sigmoid(x)` as two ops: mmpose's backbone and head use this form, which differs from the
    fused `F.silu` in the last bit of about a quarter of the elements."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            return x * torch.sigmoid(x)
        return torch.sigmoid(x).mul_(x)  # same bits (IEEE products commute), one allocation fewer


def make_act(act: str | None) -> nn.Module | None:
    if act is None:
        return None
    if act == "swish":
        return Swish()
    if act == "silu":
        return nn.SiLU(inplace=True)
    raise ValueError(f"unknown activation {act!r}")


class ConvModule(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
                 act: str | None = "swish", bn_eps: float = 1e-3, bn_momentum: float = 0.03):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=bn_eps, momentum=bn_momentum)
        self.activate = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.activate is None else self.activate(x)


# BatchNorm settings of the two module families: the YOLOX-style backbone and head use eps 1e-3 / momentum
# 0.03, the RT-DETR-style neck and the DCC PyTorch's defaults 1e-5 / 0.1; the checkpoints were trained so.
YOLO_NORM = dict(bn_eps=1e-3, bn_momentum=0.03)  # backbone, head
NECK_NORM = dict(bn_eps=1e-5, bn_momentum=0.1)  # HybridEncoder, projector


class SinePositionalEncoding(nn.Module):
    """Sine encoding of scalar positions with a persistent `dim_t` buffer (loaded from checkpoints,
    whose EMA may have perturbed the last bits)."""

    def __init__(self, out_channels: int, temperature: float):
        super().__init__()
        half = out_channels // 2
        dim_t = torch.arange(half, dtype=torch.float32) / half
        self.register_buffer("dim_t", temperature ** dim_t)

    def encode_1d(self, pos: torch.Tensor) -> torch.Tensor:
        """(...,) positions -> (..., C) = [cos(p / t), sin(p / t)]."""
        freq = pos.unsqueeze(-1) / self.dim_t
        return torch.cat([freq.cos(), freq.sin()], dim=-1)

    def encode_2d(self, h: int, w: int) -> torch.Tensor:
        """(1, h*w, 2C) encodings of a row-major grid: [cos y, sin y, cos x, sin x]."""
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=self.dim_t.device),
                                torch.arange(w, dtype=torch.float32, device=self.dim_t.device),
                                indexing="ij")
        return torch.cat([self.encode_1d(ys.reshape(-1)), self.encode_1d(xs.reshape(-1))], -1)[None]


def upsample2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")
