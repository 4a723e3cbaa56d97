"""Object keypoint similarity (OKS) in the two flavours mmpose's RTMO uses.

* `pose_oks`: the assigner's `PoseOKS` (SimOTA cost, dynamic k, VariFocal targets, tracking): the
  visibility weights are normalised by the number of visible keypoints.
* `keypoint_oks`: the per-keypoint similarities `exp(-d^2/2)` behind `OKSLoss`, whose weights are divided
  by K instead (see `rtmo.train.losses.oks_loss`).

Both broadcast over leading dimensions: pass (P,1,K,2) predictions and (1,G,K,2) targets for a matrix.
The numpy twin the tracker uses (no torch needed) is `rtmo.ops.oks_np.oks_matrix`.
"""

from __future__ import annotations

import torch


def keypoint_oks(pred: torch.Tensor, target: torch.Tensor, areas: torch.Tensor, sigmas: torch.Tensor,
                 eps: float = 1e-8) -> torch.Tensor:
    """Per-keypoint similarity exp(-d^2/2), d = ||pred - target|| / sqrt(area) / (2 sigma): (..., K).

    `pred`, `target` (..., K, 2); `areas` broadcastable to the leading shape (...); `sigmas` (K,).
    """
    if pred.shape[-1] != 2 or target.shape[-1] != 2:
        raise ValueError(f"keypoints must end in (K, 2); got {tuple(pred.shape)} and {tuple(target.shape)}")
    dist = torch.norm(pred - target, dim=-1)
    dist = dist / areas.pow(0.5).clip(min=eps).unsqueeze(-1)
    dist = dist / (sigmas.to(dist) * 2)
    return torch.exp(-dist.pow(2) / 2)


def pose_oks(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, areas: torch.Tensor,
             sigmas: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """OKS of keypoint sets, weights = visibility / number of visible keypoints: (...).

    mmpose's `PoseOKS` (the SimOTA oks_calculator): an instance without visible keypoints gets 0.
    """
    sims = keypoint_oks(pred, target, areas, sigmas, eps)
    w = visible.to(sims)
    w = w / w.sum(dim=-1, keepdim=True).clip(min=eps)
    return (sims * w).sum(dim=-1)


def pairwise_pose_oks(pred: torch.Tensor, target: torch.Tensor, visible: torch.Tensor, areas: torch.Tensor,
                      sigmas: torch.Tensor) -> torch.Tensor:
    """(N,K,2) predictions x (G,K,2) targets with (G,K) visibility and (G,) areas -> (N,G) OKS."""
    return pose_oks(pred[:, None], target[None], visible[None], areas[None], sigmas)
