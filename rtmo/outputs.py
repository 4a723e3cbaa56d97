"""What the network returns: `model(images)` -> `RTMOModelOutput(outputs=KeypointOutput)` in eval,
`model(images, targets)` -> `RTMOModelOutput(loss=RTMOLoss)` in training.

Images in a batch have different numbers of detections, so `KeypointOutput` holds batched tensors padded to
the largest count N in the batch: rows `n >= num_detections[b]` of image `b` are zero (`valid` is the same
as a (B, N) mask). `per_image()` gives the unpadded views. Coordinates are network-input pixels (the
letterboxed canvas); `rtmo.PoseResult` is the user-facing form in image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# The per-detection fields, in the order of the documented output.
KEYPOINT_FIELDS = ("scores", "labels", "pred_bboxes", "bbox_scores", "pred_keypoints", "keypoint_scores",
                   "keypoints_visible")


@dataclass
class KeypointOutput:
    """Detections of a batch, padded to N = the largest per-image count.

    scores [B, N] person score; labels [B, N] class id; pred_bboxes [B, N, 4] x1, y1, x2, y2 (clamped to
    the input canvas); bbox_scores [B, N] (= scores: RTMO scores a person by its box); pred_keypoints
    [B, N, K, 2] x, y; keypoint_scores [B, N, K] visibility probability; keypoints_visible [B, N, K]
    (= keypoint_scores, the name mmpose's data samples use); num_detections [B].
    """

    scores: torch.Tensor
    labels: torch.Tensor
    pred_bboxes: torch.Tensor
    bbox_scores: torch.Tensor
    pred_keypoints: torch.Tensor
    keypoint_scores: torch.Tensor
    keypoints_visible: torch.Tensor
    num_detections: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        """(B, N) bool: True for real detections, False for padding."""
        n = self.scores.shape[1]
        return torch.arange(n, device=self.scores.device)[None, :] < self.num_detections[:, None]

    @classmethod
    def from_per_image(cls, per_image: dict[str, list[torch.Tensor]]) -> KeypointOutput:
        """Pad per-image tensors ({field: [tensor of image b, ...]}) into one batch."""
        counts = [len(t) for t in per_image["scores"]]
        n = max(counts, default=0)

        def pad(items: list[torch.Tensor]) -> torch.Tensor:
            out = items[0].new_zeros((len(items), n) + tuple(items[0].shape[1:]))
            for b, t in enumerate(items):
                out[b, :len(t)] = t
            return out

        device = per_image["scores"][0].device if per_image["scores"] else torch.device("cpu")
        return cls(**{k: pad(per_image[k]) for k in KEYPOINT_FIELDS},
                   num_detections=torch.tensor(counts, dtype=torch.long, device=device))

    def per_image(self) -> list[dict[str, torch.Tensor]]:
        """One {field: tensor without padding} per image."""
        return [{k: getattr(self, k)[b, :int(c)] for k in KEYPOINT_FIELDS}
                for b, c in enumerate(self.num_detections.tolist())]

    def per_image_lists(self) -> dict[str, list[torch.Tensor]]:
        """{field: [tensor of image b without padding, ...]} (the form `from_per_image` takes)."""
        views = self.per_image()
        return {k: [v[k] for v in views] for k in KEYPOINT_FIELDS}


@dataclass
class RTMOLoss:
    """The training loss terms (mmpose's names) and their weighted sum `loss`, the one to backpropagate.

    Stage 1 and 2 have the five terms; the last epochs add `loss_bbox_aux` (L1 on the raw box offsets,
    mmpose's `use_aux_loss`). Each term already carries its weight from the recipe.
    """

    loss: torch.Tensor
    loss_cls: torch.Tensor
    loss_bbox: torch.Tensor
    loss_vis: torch.Tensor
    loss_oks: torch.Tensor
    loss_mle: torch.Tensor
    loss_bbox_aux: torch.Tensor | None = None
    # diagnostics, not terms: positives over the batch, their SimOTA overlaps, assignment details (tests)
    num_pos: torch.Tensor | None = None
    overlaps: torch.Tensor | None = None
    details: dict | None = None

    @classmethod
    def from_dict(cls, terms: dict) -> RTMOLoss:
        names = {f.name for f in fields(cls)}
        unknown = set(terms) - names
        if unknown:
            raise ValueError(f"unknown loss entries {sorted(unknown)}")
        return cls(**terms)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The loss terms present, `loss` included, as mmpose logs them."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name.startswith("loss") and getattr(self, f.name) is not None}


@dataclass
class RTMOModelOutput:
    """`outputs` in eval (`model(images)`), `loss` in training (`model(images, targets)`)."""

    outputs: KeypointOutput | None = None
    loss: RTMOLoss | None = None
