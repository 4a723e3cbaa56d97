"""Pose-aware SimOTA label assignment, as mmpose's `SimOTAAssigner` configured for RTMO.

One image at a time, without gradient. Every step follows mmpose's operation order so that float32 costs
come out identical: the discrete decisions (dynamic k, top-k, conflicts) then match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..ops.boxes import box_iou
from ..ops.oks import pairwise_pose_oks

INF = 100000.0
EPS = 1e-7


@dataclass
class SimOTAConfig:
    center_radius: float = 2.5
    candidate_topk: int = 10
    iou_weight: float = 3.0
    cls_weight: float = 1.0
    oks_weight: float = 3.0
    use_keypoints_for_center: bool = True  # t/s COCO & body7; False for m, l and CrowdPose


@dataclass
class Assignment:
    """Result for one image. `gt_inds` (N,): 0 = negative, g+1 = positive of GT g; `max_overlaps` (N,):
    PoseOKS of a positive's proxy keypoints with its GT, -1e5 elsewhere. The rest are the intermediates
    (over the Nc candidate priors `cand_idx`) kept for inspection and tests."""

    gt_inds: torch.Tensor
    max_overlaps: torch.Tensor
    cand_idx: torch.Tensor
    in_box_and_center: torch.Tensor  # (Nc, G) bool
    iou: torch.Tensor  # (Nc, G)
    oks: torch.Tensor  # (Nc, G)
    cost: torch.Tensor  # (Nc, G)
    dynamic_k: torch.Tensor  # (G,)

    @property
    def pos_idx(self) -> torch.Tensor:
        return torch.nonzero(self.gt_inds > 0).squeeze(1)


def candidate_masks(priors: torch.Tensor, strides: torch.Tensor, gt_bboxes: torch.Tensor,
                    gt_keypoints: torch.Tensor, gt_visible: torch.Tensor, center_radius: float,
                    use_keypoints_for_center: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) candidate mask (inside any box or centre region) and (Nc, G) inside box *and* centre region.

    Strict inequalities; the centre is the mean visible GT keypoint when asked (box centre if none)."""
    x, y = priors[:, 0:1], priors[:, 1:2]
    s = strides[:, None]
    in_box = torch.stack([x - gt_bboxes[:, 0], y - gt_bboxes[:, 1], gt_bboxes[:, 2] - x,
                          gt_bboxes[:, 3] - y], dim=1).min(dim=1).values > 0
    cx = (gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0
    cy = (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0
    if use_keypoints_for_center:
        vis = gt_visible.to(gt_keypoints)
        n_vis = vis.sum(dim=-1)
        ctr = (gt_keypoints * vis.unsqueeze(-1)).sum(dim=-2) / n_vis.unsqueeze(-1)
        has = n_vis > 0
        cx = torch.where(has, ctr[:, 0].to(cx), cx)
        cy = torch.where(has, ctr[:, 1].to(cy), cy)
    r = center_radius * s
    in_ctr = torch.stack([x - (cx - r), y - (cy - r), (cx + r) - x, (cy + r) - y],
                         dim=1).min(dim=1).values > 0
    valid = in_box.any(dim=1) | in_ctr.any(dim=1)
    return valid, in_box[valid] & in_ctr[valid]


@torch.no_grad()
def simota_assign(priors: torch.Tensor, strides: torch.Tensor, pred_bboxes: torch.Tensor,
                  pred_scores: torch.Tensor, pred_keypoints: torch.Tensor, gt_bboxes: torch.Tensor,
                  gt_keypoints: torch.Tensor, gt_visible: torch.Tensor, gt_areas: torch.Tensor,
                  sigmas: torch.Tensor, cfg: SimOTAConfig | None = None) -> Assignment:
    """Assign one image's N priors to its G ground-truth persons.

    priors (N,2) xy, strides (N,), pred_bboxes (N,4) xyxy, pred_scores (N,) = sqrt(sigmoid(cls logit)),
    pred_keypoints (N,K,2) decoded proxy keypoints; GT: bboxes (G,4), keypoints (G,K,2), visible (G,K),
    areas (G,); sigmas (K,). All coordinates in network-input pixels.
    """
    cfg = cfg or SimOTAConfig()
    n, g = pred_bboxes.shape[0], gt_bboxes.shape[0]
    dev = pred_bboxes.device
    gt_inds = torch.zeros(n, dtype=torch.long, device=dev)
    max_overlaps = torch.full((n,), -INF, dtype=torch.float32, device=dev)
    empty = Assignment(gt_inds, max_overlaps, torch.zeros(0, dtype=torch.long, device=dev),
                       torch.zeros(0, g, dtype=torch.bool, device=dev), *(pred_bboxes.new_zeros(0, g),) * 3,
                       torch.zeros(g, dtype=torch.long, device=dev))
    if g == 0 or n == 0:
        empty.max_overlaps = pred_bboxes.new_zeros(n)  # mmpose's early return uses zeros
        return empty
    valid, in_bc = candidate_masks(priors, strides, gt_bboxes, gt_keypoints, gt_visible,
                                   cfg.center_radius, cfg.use_keypoints_for_center)
    cand = torch.nonzero(valid).squeeze(1)
    if cand.numel() == 0:
        empty.max_overlaps = pred_bboxes.new_zeros(n)
        return empty

    # Cost terms are added in mmpose's order so the float32 sums are the same numbers.
    cost = (~in_bc) * INF
    iou = box_iou(pred_bboxes[cand], gt_bboxes)
    cost = cost + (-torch.log(iou + EPS)) * cfg.iou_weight
    oks = pairwise_pose_oks(pred_keypoints[cand], gt_keypoints, gt_visible, gt_areas, sigmas)
    cost = cost + (-torch.log(oks + EPS)) * cfg.oks_weight
    scores = pred_scores[cand].float()[:, None].expand(-1, g)
    cls_cost = F.binary_cross_entropy(scores, torch.ones_like(scores), reduction="none")
    cost = cost + cls_cost * cfg.cls_weight

    # Dynamic k from the top OKS values (dynamic_k_indicator='oks'), then the k cheapest per GT.
    topk = min(cfg.candidate_topk, cand.numel())
    dynamic_k = torch.topk(oks, topk, dim=0).values.sum(0).int().clamp(min=1)
    matching = torch.zeros_like(cost, dtype=torch.uint8)
    for j in range(g):
        idx = torch.topk(cost[:, j], k=int(dynamic_k[j]), largest=False).indices
        matching[idx, j] = 1
    # A prior taken by several GTs goes to the cheapest GT of its whole cost row (mmpose's rule).
    multi = matching.sum(1) > 1
    if multi.any():
        best = cost[multi].argmin(dim=1)
        matching[multi] = 0
        matching[torch.nonzero(multi).squeeze(1), best] = 1
    fg = matching.sum(1) > 0
    pos = cand[fg]
    gt_inds[pos] = matching[fg].argmax(1) + 1
    max_overlaps[pos] = (matching * oks).sum(1)[fg].float()
    return Assignment(gt_inds, max_overlaps, cand, in_bc, iou, oks, cost, dynamic_k.long())
