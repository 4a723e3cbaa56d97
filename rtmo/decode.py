"""Head maps -> detections: RTMO's one post-processing, run eagerly by `RTMO.predict_batch` and traced
into the exported ONNX graph (`rtmo.export.onnx.End2End`), so both give the same detections by
construction.

Steps, in mmpose's order and with its rules:
  1. scores = sigmoid of the class map (best class), keypoint visibilities = sigmoid of the vis map;
     boxes decoded from the grid priors (unclamped).
  2. candidates: score > score_thr (strict), then greedy NMS (suppress IoU > nms_thr, strict, areas without
     +1, descending score, ties by lower index). In a graph this is the standard ONNX NonMaxSuppression op.
  3. the kept detections of each image sorted by score and gathered into N = the largest kept count of the
     batch (at least `min_rows`); rows past an image's own count are padding.
  4. the DCC turns each kept pose vector and its (unclamped, padded) box into K keypoints.
  5. boxes clamped to the input canvas; padding rows zeroed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .ops.boxes import decode_boxes, nms, xyxy_to_cs
from .outputs import KeypointOutput

# No cap on the boxes NMS keeps (the ONNX op needs a number).
MAX_KEPT = 100_000


class NonMaxSuppression(torch.autograd.Function):
    """Greedy NMS over (B, P, 4) boxes and (B, 1, P) scores -> (M, 3) [batch, class, box] int64.

    Runs `rtmo.ops.boxes.nms` eagerly (so the model and a tracer both see real data) and exports as the
    ONNX `NonMaxSuppression` op, which ONNX Runtime, OpenVINO and TensorRT implement with the same rules.
    """

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, scores: torch.Tensor, max_out: int, iou_thr: float,
                score_thr: float) -> torch.Tensor:
        rows = []
        for b in range(boxes.shape[0]):
            s = scores[b, 0]
            keep = torch.nonzero(s > score_thr).squeeze(1)
            if keep.numel() and iou_thr < 1.0:  # IoU never exceeds 1: nothing to suppress
                keep = keep[nms(boxes[b, keep], s[keep], iou_thr)]
            keep = keep[:max_out]
            rows.append(torch.stack([torch.full_like(keep, b), torch.zeros_like(keep), keep], dim=1))
        return torch.cat(rows) if rows else boxes.new_zeros((0, 3), dtype=torch.long)

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, max_out: int, iou_thr: float, score_thr: float) -> Any:
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.long)),
                    g.op("Constant", value_t=torch.tensor([iou_thr], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([score_thr], dtype=torch.float32)),
                    center_point_box_i=0)


def decode(dcc: nn.Module, cls: torch.Tensor, bbox: torch.Tensor, vis: torch.Tensor, pose: torch.Tensor,
           priors: torch.Tensor, strides: torch.Tensor, canvas_hw: tuple[Any, Any], score_thr: float,
           nms_thr: float, bbox_padding: float, min_rows: int = 0, max_out: int = MAX_KEPT
           ) -> KeypointOutput:
    """Flattened head maps of a batch -> its detections, padded to the largest count (see module doc).

    cls (B, P, C) logits, bbox (B, P, 4) raw offsets, vis (B, P, K) logits, pose (B, P, D) pose vectors;
    priors (P, 2) / strides (P,) of the grid; `canvas_hw` the network input's (height, width). `min_rows`
    1 in exported graphs: an all-padding row keeps zero-size tensors out of the DCC, which some backends
    cannot reshape (ONNX Runtime fails on a (0, K) Reshape with -1).
    """
    h, w = canvas_hw
    scores, labels = cls.sigmoid().max(dim=-1)  # (B, P)
    boxes = decode_boxes(bbox, priors, strides)  # (B, P, 4) unclamped
    vis = vis.sigmoid()  # (B, P, K)
    # NonMaxSuppression takes float32 only (the float64 graph of the tests casts here).
    sel = NonMaxSuppression.apply(boxes.float(), scores[:, None].float(), max_out, nms_thr, score_thr)
    kept = torch.zeros_like(scores)
    kept[sel[:, 0], sel[:, 2]] = 1.0
    # Kept scores are > score_thr >= 0; everything else sorts below them at -1. The order does not come
    # from the NMS output: backends differ there.
    ranked = torch.where(kept > 0, scores, torch.full_like(scores, -1.0))
    ranked, order = ranked.sort(dim=1, descending=True)
    counts = (kept > 0).sum(dim=1)  # (B,)
    n_max = counts.max().clamp(min=min_rows)
    # The first n_max slots, as an index tensor of data-dependent length (NonZero keeps a graph dynamic).
    slots = torch.nonzero(torch.arange(scores.shape[1], device=scores.device) < n_max).squeeze(1)
    order = order.index_select(1, slots)  # (B, N)
    valid = ranked.index_select(1, slots) >= 0  # (B, N)

    b_idx = torch.arange(scores.shape[0], device=scores.device)[:, None].expand_as(order)
    det_boxes = boxes[b_idx, order]  # (B, N, 4)
    det_vis, det_pose = vis[b_idx, order], pose[b_idx, order]
    # The DCC runs on the kept rows only, image after image: the rows mmpose feeds it, so the same bits (a
    # matmul over another number of rows may round differently). A graph (min_rows 1) keeps one row when
    # nothing is kept, so that no backend sees a zero-size tensor.
    take = valid.reshape(-1)
    take = take | ((torch.arange(take.shape[0], device=take.device) == 0) & (counts.sum() < min_rows))
    rows = torch.nonzero(take).squeeze(1)
    row_boxes = det_boxes.reshape(-1, 4).index_select(0, rows)
    row_kpts = dcc(det_pose.reshape(-1, det_pose.shape[-1]).index_select(0, rows),
                   xyxy_to_cs(row_boxes, bbox_padding), priors[order].reshape(-1, 2).index_select(0, rows))
    # Back to the (B, N) slots: slot j takes DCC row (number of taken slots up to j) - 1.
    back = (take.long().cumsum(0) - 1).clamp(min=0)
    kpts = row_kpts.index_select(0, back).reshape(det_boxes.shape[0], -1, det_vis.shape[-1], 2)
    det_boxes = torch.stack([det_boxes[..., 0].clamp(0, w), det_boxes[..., 1].clamp(0, h),
                             det_boxes[..., 2].clamp(0, w), det_boxes[..., 3].clamp(0, h)], dim=-1)

    def real(x: torch.Tensor) -> torch.Tensor:  # padding rows -> 0
        mask = valid.reshape(valid.shape + (1,) * (x.dim() - 2))
        return torch.where(mask, x, torch.zeros_like(x))

    return KeypointOutput(scores=real(scores[b_idx, order]), labels=real(labels[b_idx, order]),
                          pred_bboxes=real(det_boxes), pred_keypoints=real(kpts),
                          keypoint_scores=real(det_vis), num_detections=counts)


class Decoder(nn.Module):
    """`decode` with its settings bound, as a module to trace: (cls, bbox, vis, pose, priors, strides, h, w)
    -> KeypointOutput. Holds the model's DCC (shared, not copied)."""

    def __init__(self, dcc: nn.Module, score_thr: float, nms_thr: float, bbox_padding: float,
                 min_rows: int = 1, max_out: int = MAX_KEPT):
        super().__init__()
        self.dcc = dcc
        self.score_thr, self.nms_thr = float(score_thr), float(nms_thr)
        self.bbox_padding, self.min_rows, self.max_out = float(bbox_padding), int(min_rows), int(max_out)

    def forward(self, cls: torch.Tensor, bbox: torch.Tensor, vis: torch.Tensor, pose: torch.Tensor,
                priors: torch.Tensor, strides: torch.Tensor, h: Any, w: Any) -> KeypointOutput:
        return decode(self.dcc, cls, bbox, vis, pose, priors, strides, (h, w), self.score_thr, self.nms_thr,
                      self.bbox_padding, self.min_rows, self.max_out)
