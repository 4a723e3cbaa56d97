"""What the network returns: `model(images)` -> `RTMOModelOutput(outputs=KeypointOutput)` in eval,
`model(images, targets)` -> `RTMOModelOutput(loss=RTMOLoss)` in training.

Images in a batch have different numbers of detections, so `KeypointOutput` holds batched tensors padded to
the largest count N in the batch: rows `n >= num_detections[b]` of image `b` are zero (`valid` is the same
as a (B, N) mask). `per_image()` gives the unpadded views. Coordinates are network-input pixels (the
letterboxed canvas); `rtmo.PoseResult` is the user-facing form in image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is optional here: exported runtimes build these from numpy arrays without it
    import torch

# The per-detection fields, in the order of the documented output.
KEYPOINT_FIELDS = ("scores", "labels", "pred_bboxes", "bbox_scores", "pred_keypoints", "keypoint_scores",
                   "keypoints_visible")
# Documented second names of the same arrays: RTMO scores a person by its box, and mmpose's data samples
# call the keypoint visibility probabilities `keypoints_visible`.
ALIASES = {"bbox_scores": "scores", "keypoints_visible": "keypoint_scores"}
_STORED = tuple(f for f in KEYPOINT_FIELDS if f not in ALIASES)


def _is_numpy(x: Any) -> bool:
    return isinstance(x, np.ndarray)


@dataclass
class KeypointOutput:
    """Detections of a batch, padded to N = the largest per-image count: the output of the decode step,
    torch tensors from the PyTorch model, numpy arrays from the exported runtimes.

    scores [B, N] person score; labels [B, N] class id; pred_bboxes [B, N, 4] x1, y1, x2, y2 (clamped to
    the input canvas); bbox_scores [B, N] (= scores: RTMO scores a person by its box); pred_keypoints
    [B, N, K, 2] x, y; keypoint_scores [B, N, K] visibility probability; keypoints_visible [B, N, K]
    (= keypoint_scores, the name mmpose's data samples use); num_detections [B].
    """

    scores: torch.Tensor | np.ndarray
    labels: torch.Tensor | np.ndarray
    pred_bboxes: torch.Tensor | np.ndarray
    pred_keypoints: torch.Tensor | np.ndarray
    keypoint_scores: torch.Tensor | np.ndarray
    num_detections: torch.Tensor | np.ndarray

    @property
    def bbox_scores(self) -> torch.Tensor | np.ndarray:
        return self.scores

    @property
    def keypoints_visible(self) -> torch.Tensor | np.ndarray:
        return self.keypoint_scores

    @property
    def valid(self) -> torch.Tensor | np.ndarray:
        """(B, N) bool: True for real detections, False for padding."""
        n = self.scores.shape[1]
        if _is_numpy(self.scores):
            return np.arange(n)[None, :] < np.asarray(self.num_detections)[:, None]
        import torch

        return torch.arange(n, device=self.scores.device)[None, :] < self.num_detections[:, None]

    @classmethod
    def from_per_image(cls, per_image: dict[str, list[Any]]) -> KeypointOutput:
        """Pad per-image arrays ({field: [array of image b, ...]}, all torch or all numpy) into one batch.
        The alias fields may be given; they are the same arrays as the ones they name."""
        counts = [len(t) for t in per_image["scores"]]
        n = max(counts, default=0)
        first = per_image["scores"][0] if per_image["scores"] else None
        if first is None or _is_numpy(first):
            def pad(items: list[np.ndarray]) -> np.ndarray:
                out = np.zeros((len(items), n) + items[0].shape[1:], items[0].dtype) if items else \
                    np.zeros((0, 0))
                for b, t in enumerate(items):
                    out[b, :len(t)] = t
                return out

            return cls(**{k: pad(per_image[k]) for k in _STORED}, num_detections=np.array(counts, np.int64))
        import torch

        def pad_t(items: list[torch.Tensor]) -> torch.Tensor:
            out = items[0].new_zeros((len(items), n) + tuple(items[0].shape[1:]))
            for b, t in enumerate(items):
                out[b, :len(t)] = t
            return out

        return cls(**{k: pad_t(per_image[k]) for k in _STORED},
                   num_detections=torch.tensor(counts, dtype=torch.long, device=first.device))

    def numpy(self) -> KeypointOutput:
        """The same output as numpy arrays (on the CPU); itself when it already is."""
        if _is_numpy(self.scores):
            return self
        return KeypointOutput(**{f.name: getattr(self, f.name).detach().cpu().numpy() for f in fields(self)})

    def per_image(self) -> list[dict[str, Any]]:
        """One {field: array without padding} per image (all of KEYPOINT_FIELDS; views, not copies)."""
        views = []
        for b, c in enumerate(self.num_detections.tolist()):
            view = {k: getattr(self, k)[b, :int(c)] for k in _STORED}
            views.append({k: view[ALIASES.get(k, k)] for k in KEYPOINT_FIELDS})
        return views

    def per_image_lists(self) -> dict[str, list[Any]]:
        """{field: [array of image b without padding, ...]} (the form `from_per_image` takes)."""
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
