"""Box utilities: IoU, greedy NMS, centre/scale conversion, decoding."""

from __future__ import annotations

import numpy as np
import torch


def box_iou_aligned(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """IoU of xyxy boxes paired element-wise: (..., 4) and (..., 4) -> (...), broadcasting the leading
    dimensions; areas without +1, union floored at eps (mmpose's rules)."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.max(a[..., :2], b[..., :2])
    rb = torch.min(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area_a + area_b - overlap).clamp(min=eps)
    return overlap / union


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes (n,4) x (m,4) -> (n,m) (element-wise arithmetic: the same bits as
    `box_iou_aligned` on each pair)."""
    return box_iou_aligned(a[:, None, :], b[None, :, :], eps)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thr: float) -> torch.Tensor:
    """Greedy NMS: keep the best remaining box, drop every box with IoU > iou_thr (strict) with it.

    Returns indices into `boxes`, in descending score order.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    over = (box_iou(boxes[order], boxes[order]) > iou_thr).cpu().numpy()
    # Greedy in score order; each kept box suppresses its whole row at once (a vectorised OR), so the
    # Python loop runs once per candidate, not once per pair: crowds give thousands of candidates.
    # Marking rows j < i too is harmless: those were decided already.
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def xyxy_to_cs(boxes: torch.Tensor, padding: float = 1.0) -> torch.Tensor:
    """xyxy -> (cx, cy, w*padding, h*padding)."""
    center = (boxes[..., 2:] + boxes[..., :2]) * 0.5
    scale = (boxes[..., 2:] - boxes[..., :2]) * padding
    return torch.cat([center, scale], dim=-1)


def decode_boxes(raw: torch.Tensor, priors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """YOLOX decoding of (..., N, 4) raw (dx, dy, log w, log h) in stride units -> xyxy pixels."""
    s = strides[:, None]
    xy = raw[..., :2] * s + priors
    wh = raw[..., 2:].exp() * s
    return torch.stack([xy[..., 0] - wh[..., 0] / 2, xy[..., 1] - wh[..., 1] / 2,
                        xy[..., 0] + wh[..., 0] / 2, xy[..., 1] + wh[..., 1] / 2], dim=-1)


def grid_priors(featmap_sizes: list[tuple[int, int]], strides: tuple[int, ...],
                device: torch.device | str = "cpu", centralize: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid points `stride*j + (stride-1)/2` (`centralize`, mmpose's MlvlPointGenerator with
    centralize_points) or `stride*j`, level-major then row-major: (N,2) xy and (N,) strides."""
    points, point_strides = [], []
    for (h, w), s in zip(featmap_sizes, strides):
        offset = (s - 1) / 2 if centralize else 0.0
        xs = torch.arange(w, dtype=torch.float32, device=device) * s + offset
        ys = torch.arange(h, dtype=torch.float32, device=device) * s + offset
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1))
        point_strides.append(torch.full((h * w,), float(s), device=device))
    return torch.cat(points), torch.cat(point_strides)
