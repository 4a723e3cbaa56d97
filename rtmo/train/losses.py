"""RTMO's training criterion, exact to mmpose's `RTMOHead.loss`: SimOTA assignment and the five losses.

Entry point: `Criterion.from_recipe(recipe, epoch)`, the losses of the stage `epoch` is in. The trainer owns
it and sets it as `model.criterion` at each stage switch; `RTMO.forward(images, targets)` calls it.
`compute_losses(model, images, targets, criterion)` is the same as a function returning the dict.

Terms (all in one dict, as mmpose logs them): `loss_cls` (VariFocal over all priors), `loss_bbox` (IoU²),
`loss_vis` (BCE), `loss_oks` (proxy keypoints), `loss_mle` (DCC coordinate classification with learned
sigma) and, in the last epochs, `loss_bbox_aux` (L1 on raw box outputs). `loss` is their sum.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..nn.head import HeadMaps, flatten_maps
from ..ops.boxes import box_iou_aligned, decode_boxes, xyxy_to_cs
from ..ops.oks import keypoint_oks, pose_oks
from ..outputs import RTMOLoss
from ..utils.dist import reduce_mean
from .assigner import SimOTAConfig, simota_assign
from .recipes import LossStage, TrainRecipe

# VariFocal loss of the classification branch (mmpose's defaults, the same in every official config)
VFL_ALPHA = 0.75
VFL_GAMMA = 2.0


@dataclass
class Targets:
    """Ground truth of one image, in network-input pixels.

    bboxes (n,4) xyxy; keypoints (n,K,2); keypoints_visible (n,K) in {0,1}; areas (n,) (COCO segmentation
    area scaled like the image, not box area); labels (n,) class ids (0 = person); heatmap_mask (H,W):
    1 where persons without keypoint labels are (stage 3 ignores priors pointing there), or None.
    """

    bboxes: torch.Tensor
    keypoints: torch.Tensor
    keypoints_visible: torch.Tensor
    areas: torch.Tensor
    labels: torch.Tensor | None = None
    heatmap_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.bboxes.shape[0] if self.bboxes.dim() == 2 else -1
        if self.bboxes.dim() != 2 or self.bboxes.shape[1] != 4:
            raise ValueError(f"Targets.bboxes must be (n,4), got {tuple(self.bboxes.shape)}")
        if self.keypoints.dim() != 3 or self.keypoints.shape[0] != n or self.keypoints.shape[2] != 2:
            raise ValueError(f"Targets.keypoints must be ({n},K,2), got {tuple(self.keypoints.shape)}")
        if tuple(self.keypoints_visible.shape) != tuple(self.keypoints.shape[:2]):
            raise ValueError(f"Targets.keypoints_visible must be {tuple(self.keypoints.shape[:2])}, "
                             f"got {tuple(self.keypoints_visible.shape)}")
        if tuple(self.areas.shape) != (n,):
            raise ValueError(f"Targets.areas must be ({n},), got {tuple(self.areas.shape)}")
        if self.labels is not None and tuple(self.labels.shape) != (n,):
            raise ValueError(f"Targets.labels must be ({n},), got {tuple(self.labels.shape)}")
        if self.heatmap_mask is not None and self.heatmap_mask.dim() != 2:
            raise ValueError(f"Targets.heatmap_mask must be (H,W), got {tuple(self.heatmap_mask.shape)}")

    def to(self, device: torch.device | str) -> Targets:
        return dataclasses.replace(self, **{f.name: None if getattr(self, f.name) is None
                                            else getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self)})


# ----------------------------------------------------------------------------------------- loss terms
def varifocal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> torch.Tensor:
    """Summed VariFocal loss. The focal factor uses the unclipped logit and keeps its gradient (mmpose)."""
    focal = alpha * logits.sigmoid().pow(gamma) * (target <= 1e-4).float() + target
    loss = F.binary_cross_entropy_with_logits(logits.clip(min=-10, max=10), target, reduction="none")
    loss = loss * focal * weight
    loss = torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss))
    return loss.sum()


def iou_square_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-16) -> torch.Tensor:
    """Summed 1 - IoU² of aligned xyxy boxes (union floored at 1e-6, IoU at eps)."""
    iou = box_iou_aligned(pred, target).clamp(min=eps)
    return (1 - iou.pow(2)).sum()


def oks_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, areas: torch.Tensor,
             sigmas: torch.Tensor) -> torch.Tensor:
    """Per-instance 1 - OKS with the weights divided by K (mmpose `OKSLoss`, norm_target_weight=False)."""
    sims = keypoint_oks(pred, target, areas, sigmas)
    return 1 - (sims * (weight / weight.shape[-1])).sum(dim=-1)


def mle_target_heatmaps(kpts: torch.Tensor, bbox_cs: torch.Tensor, sigmas: torch.Tensor, areas: torch.Tensor,
                        x_bins: torch.Tensor, y_bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Laplace-shaped, unnormalised target heatmaps on the DCC's absolute bins: (P,K,Bx), (P,K,By).

    Not detached: through them the learned sigmas and the predicted box get their MLE gradient."""
    center, scale = bbox_cs.split(2, dim=-1)
    xb = x_bins * scale[:, 0:1] + center[:, 0:1]
    yb = y_bins * scale[:, 1:2] + center[:, 1:2]
    dx = (kpts[..., 0:1] - xb[:, None]).abs()
    dy = (kpts[..., 1:2] - yb[:, None]).abs()
    a = areas.pow(0.5).clip(min=1).reshape(-1, 1, 1)
    s = sigmas.clip(min=1e-3).unsqueeze(2)
    dx = dx / a / s
    dy = dy / a / s
    return torch.exp(-dx / 2) / s, torch.exp(-dy / 2) / s


def mle_loss(hms: tuple[torch.Tensor, torch.Tensor], targets: tuple[torch.Tensor, torch.Tensor],
             weight: torch.Tensor) -> torch.Tensor:
    """Per-instance mean over K of -log(<p_x,h_x><p_y,h_y> + 1e-4) * visibility (NaN -> 0)."""
    prob = 1.0
    for p, t in zip(hms, targets):
        prob = prob * (p * t).sum(dim=-1)
    loss = -torch.log(prob + 1e-4)
    loss = torch.where(torch.isnan(loss), torch.zeros_like(loss), loss)
    return (loss * weight).mean(dim=1)


# ----------------------------------------------------------------------------------------- the criterion
@dataclass
class Criterion(LossStage):
    """The losses of one training stage: `criterion(model, images, targets) -> RTMOLoss`.

    Holds the stage's loss weights and head switches (the recipe's `LossStage` fields: stage 1 until the
    head switch, stage 2 after it) and what the recipe's `[loss]` table adds: the auxiliary L1 box loss,
    on from the data switch, and SimOTA's centre prior. `Criterion()` is stage 1 of RTMO-t/s."""

    use_aux_loss: bool = False  # the last epochs: L1 on the raw box outputs
    bbox_aux_weight: float = 1.0
    use_keypoints_for_center: bool = True  # SimOTA centre region at the mean visible keypoint (t/s)

    @classmethod
    def from_recipe(cls, recipe: TrainRecipe, epoch: int) -> Criterion:
        """The criterion in force during 0-based `epoch` (both switches act before their epoch)."""
        loss, sched = recipe.loss, recipe.schedule
        stage = loss.stage2 if epoch >= sched.head_switch_epoch else loss.stage1
        return cls(**dataclasses.asdict(stage), use_aux_loss=epoch >= sched.data_switch_epoch,
                   bbox_aux_weight=loss.bbox_aux_weight,
                   use_keypoints_for_center=loss.use_keypoints_for_center)

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, targets: list[Targets]) -> RTMOLoss:
        return RTMOLoss.from_dict(compute_losses(model, images, targets, self))


def compute_losses(model: torch.nn.Module, images: torch.Tensor, targets: list[Targets],
                   criterion: Criterion | None = None) -> dict[str, torch.Tensor]:
    """Forward `images` (B,3,H,W float BGR) through `model` and return the loss dict (see module doc)."""
    if not isinstance(targets, (list, tuple)) or len(targets) != images.shape[0]:
        n = len(targets) if hasattr(targets, "__len__") else "?"
        got = f"{type(targets).__name__} of length {n}"
        raise ValueError(f"targets must be a list with one Targets per image ({images.shape[0]}), got {got}")
    maps = model.forward_maps(images, with_kpt_reg=True)
    return head_losses(model, maps, targets, criterion or Criterion())


def head_losses(model: torch.nn.Module, maps: HeadMaps, targets: list[Targets], cfg: Criterion,
                pos_pose_vecs: torch.Tensor | None = None, return_details: bool = False
                ) -> dict[str, Any]:
    """Assignment + losses from raw head maps (what mmpose's `RTMOHead.loss` does after its forward).

    `pos_pose_vecs` replaces the gather from `maps.pose` (tests feed stored DCC inputs); with
    `return_details` the assignments and intermediate targets come back under the key `details`.
    """
    head = model.head
    sigmas = head.loss_oks.sigmas
    k = sigmas.numel()
    priors, strides = model.priors(maps)
    b = maps.cls[0].shape[0]
    n = priors.shape[0]

    cls = flatten_maps(maps.cls)  # (B,N,1)
    bbox_raw = flatten_maps(maps.bbox)  # (B,N,4)
    kpt_raw = flatten_maps(maps.kpt_reg)  # (B,N,2K)
    vis = flatten_maps(maps.vis)  # (B,N,K)
    boxes = decode_boxes(bbox_raw, priors, strides)
    kpts = kpt_raw.reshape(b, n, k, 2) * strides[:, None, None] + priors[:, None, :]

    # 1. assignment, per image, on detached float32 predictions (autocast off: mmpose does the same for its
    #    BCE cost, which CUDA autocast would refuse)
    with torch.no_grad():
        scores = cls.detach().clip(min=-1e4, max=1e4).sigmoid()
        scores = torch.where(torch.isnan(scores), torch.zeros_like(scores), scores).sqrt()[..., 0]
        vis_prob = vis.detach().clip(min=-1e4, max=1e4).sigmoid()
    sim_cfg = SimOTAConfig(use_keypoints_for_center=cfg.use_keypoints_for_center)
    assigns, pos_b, pos_p, pos_g, overlaps, obj_w = [], [], [], [], [], []
    for i, t in enumerate(targets):
        if t.keypoints.shape[1] != k:
            raise ValueError(f"targets[{i}] has {t.keypoints.shape[1]} keypoints, the model {k}")
        with torch.autocast(cls.device.type, enabled=False):
            a = simota_assign(priors, strides, boxes[i].detach().float(), scores[i].float(),
                              kpts[i].detach().float(), t.bboxes.float(), t.keypoints.float(),
                              t.keypoints_visible.float(), t.areas.float(), sigmas, sim_cfg)
        assigns.append(a)
        p = a.pos_idx
        pos_b.append(torch.full_like(p, i))
        pos_p.append(p)
        pos_g.append(a.gt_inds[p] - 1)
        overlaps.append(a.max_overlaps[p])
        obj_w.append(_ignore_weight(t.heatmap_mask, kpts[i].detach(), vis_prob[i]))
    pos_b, pos_p, pos_g = torch.cat(pos_b), torch.cat(pos_p), torch.cat(pos_g)
    overlaps = torch.cat(overlaps)
    obj_w = torch.cat(obj_w)

    per_image_g = pos_g.split([a.pos_idx.numel() for a in assigns])

    def gt(field: str) -> torch.Tensor:  # assigned GT rows, images in batch order, priors in index order
        return torch.cat([getattr(t, field).float()[g] for t, g in zip(targets, per_image_g)])

    num_pos = torch.tensor(float(pos_p.numel()), device=cls.device)
    num_total = reduce_mean(num_pos).clamp(min=1.0)
    losses: dict[str, Any] = {}
    details: dict[str, Any] = {"assignments": assigns, "pos_batch_idx": pos_b, "pos_prior_idx": pos_p,
                               "pos_gt_idx": pos_g}
    cls_target = torch.zeros(b * n, device=cls.device)
    flat = pos_b * n + pos_p

    if pos_p.numel() > 0:
        bbox_t, kpt_t, vis_t, area_t = gt("bboxes"), gt("keypoints"), gt("keypoints_visible"), gt("areas")
        pos_boxes = boxes[pos_b, pos_p]
        losses["loss_bbox"] = cfg.bbox_weight * iou_square_loss(pos_boxes, bbox_t) / num_total
        if cfg.use_aux_loss:
            pr, st = priors[pos_p], strides[pos_p, None]
            aux_t = torch.cat([((bbox_t[:, :2] + bbox_t[:, 2:]) / 2.0 - pr) / st,
                               torch.log((bbox_t[:, 2:] - bbox_t[:, :2]) / st + 1e-8)], dim=-1)
            l1 = (bbox_raw[pos_b, pos_p] - aux_t).abs().sum()
            losses["loss_bbox_aux"] = cfg.bbox_aux_weight * l1 / num_total
            details["bbox_aux_target"] = aux_t
        # visibility weights are all ones: mmpose never packs keypoints_visible_weights
        losses["loss_vis"] = cfg.vis_weight * F.binary_cross_entropy_with_logits(
            vis[pos_b, pos_p], vis_t, reduction="none").mean()
        kpt_reg = kpts[pos_b, pos_p]

        # DCC on all positives of the batch at once (its BatchNorm1d normalises over them in train mode)
        pose = pos_pose_vecs if pos_pose_vecs is not None else flatten_maps(maps.pose)[pos_b, pos_p]
        bbox_cs = xyxy_to_cs(pos_boxes, model.config.bbox_padding)
        kpt_cc, hms, dcc_sigmas = _dcc_forward_train(head.dcc, pose, bbox_cs, priors[pos_p])
        if cfg.mle_weight > 0:
            dcc = head.dcc
            tgt_hms = mle_target_heatmaps(kpt_t, bbox_cs, dcc_sigmas, area_t, dcc.x_bins, dcc.y_bins)
            losses["loss_mle"] = (cfg.mle_weight * mle_loss(hms, tgt_hms, vis_t)).mean()
            details.update(dcc_target_hms=tgt_hms)
        details.update(dcc_kpts=kpt_cc, dcc_hms=hms, dcc_sigmas=dcc_sigmas)

        if cfg.proxy_target_cc:
            with torch.no_grad():  # regress the proxy keypoints towards the DCC where the DCC is better
                better = (kpt_reg - kpt_t).norm(dim=-1) > (kpt_cc - kpt_t).norm(dim=-1)
                oks_w = vis_t * better.float()
                overlaps = pose_oks(kpt_cc, kpt_t, vis_t, area_t, sigmas)
            oks_t = kpt_cc.detach()
        else:
            oks_t, oks_w = kpt_t, vis_t
        losses["loss_oks"] = (cfg.oks_weight * oks_loss(kpt_reg, oks_t, oks_w, area_t, sigmas)).mean()
        details.update(oks_target=oks_t, oks_weight=oks_w)
        cls_target = cls_target.index_put((flat,), overlaps.detach().pow(cfg.overlaps_power))
    else:  # keep every output in the graph (DDP) with an exact zero
        zero = 0.0 * (bbox_raw.sum() + kpt_raw.sum() + vis.sum())
        for name in ("loss_bbox", "loss_vis", "loss_mle", "loss_oks"):
            losses[name] = zero
        if cfg.use_aux_loss:
            losses["loss_bbox_aux"] = zero

    losses["loss_cls"] = cfg.cls_weight * varifocal_loss(
        cls.reshape(-1), cls_target, obj_w, VFL_ALPHA, VFL_GAMMA) / num_total
    # mmpose's dict order, so that the float32 total is summed in the same order
    order = ("loss_bbox", "loss_bbox_aux", "loss_vis", "loss_mle", "loss_oks", "loss_cls")
    out: dict[str, Any] = {name: losses[name] for name in order if name in losses}
    out["loss"] = sum(out.values())
    out["num_pos"] = num_total.detach()
    out["overlaps"] = overlaps.detach()
    if return_details:
        details.update(cls_target=cls_target, cls_weight=obj_w)
        out["details"] = details
    return out


def _ignore_weight(mask: torch.Tensor | None, kpts: torch.Tensor, vis_prob: torch.Tensor) -> torch.Tensor:
    """Classification weight per prior: 1, or 1 - mask sampled at the mean confident proxy keypoint.

    mmpose normalises both coordinates by the mask *width* and uses align_corners=False (kept as is)."""
    n = kpts.shape[0]
    if mask is None or not bool((mask != 0).any()):
        return kpts.new_ones(n)
    conf = (vis_prob.unsqueeze(-1) > 0.3).float()
    mean = (kpts * conf).sum(dim=1) / conf.sum(dim=1).clamp(min=1e-8)
    grid = mean.reshape(1, -1, 1, 2) / (mask.shape[-1] - 1) * 2 - 1
    sample = F.grid_sample(mask.float()[None, None], grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    return 1.0 - sample.reshape(n)


def _dcc_forward_train(dcc: torch.nn.Module, pose: torch.Tensor, bbox_cs: torch.Tensor, grids: torch.Tensor
                       ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """`DCC.forward_train`; with a single positive, its train-mode BatchNorm1d cannot compute batch statistics
    (mmpose raises there), so that one call normalises with the running statistics instead."""
    bns = [m for m in dcc.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    if pose.shape[0] > 1 or not bns:
        return dcc.forward_train(pose, bbox_cs, grids)
    for m in bns:
        m.eval()
    try:
        return dcc.forward_train(pose, bbox_cs, grids)
    finally:
        for m in bns:
            m.train()
