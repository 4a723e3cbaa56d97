"""RTMO head: per-level classification and pose branches, plus the DCC."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import RTMOConfig, keypoint_info_for
from .dcc import DCC
from .layers import YOLO_NORM, ConvModule


@dataclass
class HeadMaps:
    """Raw per-level outputs, each a list over levels (stride 16 first) of (B, C, h, w) maps."""

    cls: list[torch.Tensor]
    bbox: list[torch.Tensor]
    kpt_reg: list[torch.Tensor] | None  # training only
    vis: list[torch.Tensor]
    pose: list[torch.Tensor]


class RTMOHeadModule(nn.Module):
    def __init__(self, cfg: RTMOConfig):
        super().__init__()
        w = cfg.widen_factor
        c_in = int(cfg.in_channels * w)
        c_cls = int(cfg.cls_feat_channels * w)
        c_pose = cfg.num_groups * int(cfg.channels_per_group * w)
        k = cfg.num_keypoints
        levels = range(len(cfg.featmap_strides))
        self.conv_cls = nn.ModuleList([nn.Sequential(*[
            ConvModule(c_in if i == 0 else c_cls, c_cls, 3, **YOLO_NORM) for i in range(cfg.stacked_convs)
        ]) for _ in levels])
        self.out_cls = nn.ModuleList([nn.Conv2d(c_cls, cfg.num_classes, 1) for _ in levels])
        self.conv_pose = nn.ModuleList([nn.Sequential(*[
            ConvModule(c_in if i == 0 else c_pose, c_pose, 3, groups=1 if i == 0 else cfg.num_groups,
                       **YOLO_NORM)
            for i in range(2 * cfg.stacked_convs)
        ]) for _ in levels])
        self.out_bbox = nn.ModuleList([nn.Conv2d(c_pose, 4, 1) for _ in levels])
        self.out_kpt_reg = nn.ModuleList([nn.Conv2d(c_pose, 2 * k, 1) for _ in levels])
        self.out_kpt_vis = nn.ModuleList([nn.Conv2d(c_pose, k, 1) for _ in levels])
        self.out_pose = nn.ModuleList([nn.Conv2d(c_pose, cfg.pose_vec_channels, 1) for _ in levels])
        for conv in self.out_cls:  # prior probability 0.01
            nn.init.constant_(conv.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, feats: tuple[torch.Tensor, ...], with_kpt_reg: bool = False) -> HeadMaps:
        maps = HeadMaps([], [], [] if with_kpt_reg else None, [], [])
        for i, x in enumerate(feats):
            cls_feat, pose_feat = x.split(x.size(1) // 2, 1)
            cls_feat = self.conv_cls[i](cls_feat)
            pose_feat = self.conv_pose[i](pose_feat)
            maps.cls.append(self.out_cls[i](cls_feat))
            maps.bbox.append(self.out_bbox[i](pose_feat))
            if with_kpt_reg:
                maps.kpt_reg.append(self.out_kpt_reg[i](pose_feat))
            maps.vis.append(self.out_kpt_vis[i](pose_feat))
            maps.pose.append(self.out_pose[i](pose_feat))
        return maps


class KeypointSigmas(nn.Module):
    """Holds the OKS sigmas where the checkpoints keep them (`head.loss_oks.sigmas`)."""

    def __init__(self, sigmas: tuple[float, ...]):
        super().__init__()
        self.register_buffer("sigmas", torch.tensor(sigmas, dtype=torch.float32))


class RTMOHead(nn.Module):
    def __init__(self, cfg: RTMOConfig, sigmas: tuple[float, ...] | None = None):
        super().__init__()
        self.loss_oks = KeypointSigmas(sigmas or keypoint_info_for(cfg.num_keypoints).sigmas)
        self.head_module = RTMOHeadModule(cfg)
        self.dcc = DCC(cfg)

    def forward(self, feats: tuple[torch.Tensor, ...], with_kpt_reg: bool = False) -> HeadMaps:
        return self.head_module(feats, with_kpt_reg)


def flatten_maps(maps: list[torch.Tensor]) -> torch.Tensor:
    """Levels of (B, C, h, w) -> (B, sum h*w, C), stride-16 level first, row-major."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1)
