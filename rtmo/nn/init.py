"""Initialisation of an RTMO network trained from scratch (loading a checkpoint makes it irrelevant).

The official configs initialise module by module, and the released models grew from that start: every
Conv2d as PyTorch's default (Kaiming-uniform, a = sqrt(5)) with bias 0, then the neck's ConvModules
Kaiming-normal (fan_out, relu) with BatchNorm 1/0, the projector Xavier-uniform, the classification bias at
the prior 0.01 and the DCC's GAU `uv` Xavier-uniform. Pretrained backbone weights are loaded afterwards
(`rtmo.model.load_pretrained_backbone`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import ConvModule

# sigmoid(-4.59512) = 0.01: every prior starts as "person with probability 0.01" (focal-loss prior)
CLS_BIAS_PRIOR = -4.59512


@torch.no_grad()
def init_weights(model: nn.Module) -> nn.Module:
    """Initialise `model` (an RTMO network) in place as mmpose does before training; returns it.

    Every Conv2d: Kaiming-uniform (a = sqrt(5), fan_in, leaky_relu), bias 0; the neck's ConvModules in
    `input_proj`, `lateral_convs`, `downsample_convs` and the CSPRep `conv1/2/3`: Kaiming-normal (fan_out,
    relu) with BN 1/0 (RepVGG blocks keep the model-level init); the projector: Xavier-uniform; `out_cls`
    bias -4.59512 (prior 0.01); GAU `uv` Xavier-uniform.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), mode="fan_in", nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    neck = getattr(model, "neck", None)
    if neck is not None:
        reinit = [getattr(neck, n, None) for n in ("input_proj", "lateral_convs", "downsample_convs")]
        for blocks in (getattr(neck, "fpn_blocks", []), getattr(neck, "pan_blocks", [])):
            reinit += [getattr(b, n, None) for b in blocks for n in ("conv1", "conv2", "conv3")]
        for container in reinit:
            for m in (container.modules() if isinstance(container, nn.Module) else []):
                if isinstance(m, ConvModule):
                    nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
                    if isinstance(m.bn, nn.BatchNorm2d):
                        nn.init.ones_(m.bn.weight)
                        nn.init.zeros_(m.bn.bias)
        for m in getattr(neck, "projector", nn.Module()).modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    head = getattr(model, "head", None)
    if head is not None:
        for conv in head.head_module.out_cls:
            nn.init.constant_(conv.bias, CLS_BIAS_PRIOR)
        nn.init.xavier_uniform_(head.dcc.gau.uv.weight)
    return model
