"""CSPDarknet backbone (YOLOX / YOLOv5 style, arch "P5") with a Focus stem."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CSPConfig
from .layers import YOLO_NORM, ConvModule

# (in, out, blocks, add_identity, use_spp) before widening/deepening
_ARCH_P5 = ((64, 128, 3, True, False), (128, 256, 9, True, False),
            (256, 512, 9, True, False), (512, 1024, 3, False, True))


class Focus(nn.Module):
    """Space-to-depth by 2, then a 3x3 conv."""

    def __init__(self, c_out: int):
        super().__init__()
        self.conv = ConvModule(12, c_out, 3, **YOLO_NORM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Order top-left, bottom-left, top-right, bottom-right, as the checkpoints were trained.
        x = torch.cat([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], dim=1)
        return self.conv(x)


class DarknetBottleneck(nn.Module):
    def __init__(self, c: int, add_identity: bool):
        super().__init__()
        self.conv1 = ConvModule(c, c, 1, **YOLO_NORM)
        self.conv2 = ConvModule(c, c, 3, **YOLO_NORM)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.add_identity else y


class CSPLayer(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_blocks: int, add_identity: bool):
        super().__init__()
        mid = int(c_out * 0.5)
        self.main_conv = ConvModule(c_in, mid, 1, **YOLO_NORM)
        self.short_conv = ConvModule(c_in, mid, 1, **YOLO_NORM)
        self.final_conv = ConvModule(2 * mid, c_out, 1, **YOLO_NORM)
        self.blocks = nn.Sequential(*[DarknetBottleneck(mid, add_identity) for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(torch.cat([self.blocks(self.main_conv(x)), self.short_conv(x)], dim=1))


class SPPBottleneck(nn.Module):
    """Classic SPP: parallel max-pools (5, 9, 13) on the same input."""

    def __init__(self, c_in: int, c_out: int, kernel_sizes: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        mid = c_in // 2
        self.conv1 = ConvModule(c_in, mid, 1, **YOLO_NORM)
        self.kernel_sizes = tuple(kernel_sizes)
        self.conv2 = ConvModule(mid * (len(kernel_sizes) + 1), c_out, 1, **YOLO_NORM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.kernel_sizes == (5, 9, 13):
            # Chained 5x5 pools equal 9x9 and 13x13 pools exactly (max is exact, padding is -inf) and
            # cost a fraction: the SPPF trick, without changing a bit of the output.
            p5 = F.max_pool2d(x, 5, 1, 2)
            p9 = F.max_pool2d(p5, 5, 1, 2)
            pools = [p5, p9, F.max_pool2d(p9, 5, 1, 2)]
        else:
            pools = [F.max_pool2d(x, k, 1, k // 2) for k in self.kernel_sizes]
        return self.conv2(torch.cat([x, *pools], dim=1))


class CSPDarknet(nn.Module):
    """Returns the feature maps of `out_indices` over [stem, stage1..stage4] (strides 2..32)."""

    def __init__(self, cfg: CSPConfig):
        super().__init__()
        w, d = cfg.widen_factor, cfg.deepen_factor
        self.out_indices = tuple(cfg.out_indices)
        self.stem = Focus(int(_ARCH_P5[0][0] * w))
        for i, (c_in, c_out, n, add_identity, use_spp) in enumerate(_ARCH_P5):
            c_in, c_out, n = int(c_in * w), int(c_out * w), max(round(n * d), 1)
            layers: list[nn.Module] = [ConvModule(c_in, c_out, 3, stride=2, **YOLO_NORM)]
            if use_spp:
                layers.append(SPPBottleneck(c_out, c_out, cfg.spp_kernel_sizes))
            layers.append(CSPLayer(c_out, c_out, n, add_identity))
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
        self.out_channels = cfg.out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i, name in enumerate(("stem", "stage1", "stage2", "stage3", "stage4")):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
