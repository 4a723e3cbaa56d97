"""ResNet-18/34/50 backbone with torchvision's parameter names, so ImageNet files load as they are."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ResNetConfig


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, c, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)  # stride on the 3x3 (torchvision "v1.5")
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, c * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


_LAYOUT = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):
    """Returns the maps of `out_indices` over [stem, layer1..layer4] (strides 4, 4, 8, 16, 32)."""

    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        block, counts = _LAYOUT[cfg.depth]
        self.out_indices = tuple(cfg.out_indices)
        self.out_channels = cfg.out_channels
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for i, (n, c) in enumerate(zip(counts, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, c, 2 if (j == 0 and i > 0) else 1))
                c_in = c * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        # cfg.pretrained is loaded by rtmo.model.load_pretrained_backbone: files are read above nn/.

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # The network sees BGR 0..255 like RTMO's CSPDarknet; an ImageNet-initialised ResNet adapts
        # through its first BatchNorm during fine-tuning.
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = [x]
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return tuple(outs[i] for i in self.out_indices)
