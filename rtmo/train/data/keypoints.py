"""Keypoint sets of the training data: the body7 conversion tables (mmpose's KeypointConverter mappings),
flip partners from keypoint names, and the `KeypointInfo` of a COCO category (built-in sets recognised)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...config import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, KeypointInfo

# Fallback OKS sigma for a custom keypoint set without given sigmas (the mean of the COCO sigmas, rounded).
DEFAULT_SIGMA = 0.07


# ----------------------------------------------------------------------------------------- body7 tables
def _pairs(*p: int) -> tuple[tuple[int, int], ...]:
    return tuple(zip(p[0::2], p[1::2]))


_IDENTITY17 = tuple((i, i) for i in range(17))
_COCO_BODY_TO_CROWDPOSE = tuple((i, i - 5) for i in range(5, 17))

# (source index, target index) pairs of mmpose's KeypointConverter in the body7 configs.
BODY7_TO_COCO: dict[str, tuple[tuple[int, int], ...]] = {
    "coco": _IDENTITY17,
    "aic": _pairs(0, 6, 1, 8, 2, 10, 3, 5, 4, 7, 5, 9, 6, 12, 7, 14, 8, 16, 9, 11, 10, 13, 11, 15),
    "crowdpose": _pairs(0, 5, 1, 6, 2, 7, 3, 8, 4, 9, 5, 10, 6, 11, 7, 12, 8, 13, 9, 14, 10, 15, 11, 16),
    "mpii": _pairs(0, 16, 1, 14, 2, 12, 3, 11, 4, 13, 5, 15, 10, 10, 11, 8, 12, 6, 13, 5, 14, 7, 15, 9),
    "jhmdb": _pairs(3, 6, 4, 5, 5, 12, 6, 11, 7, 8, 8, 7, 9, 14, 10, 13, 11, 10, 12, 9, 13, 16, 14, 15),
    "halpe": _IDENTITY17,
    "posetrack": ((0, 0),) + tuple((i, i) for i in range(3, 17)),
}
BODY7_TO_CROWDPOSE: dict[str, tuple[tuple[int, int], ...]] = {
    "coco": _COCO_BODY_TO_CROWDPOSE,
    "aic": _pairs(3, 0, 0, 1, 4, 2, 1, 3, 5, 4, 2, 5, 9, 6, 6, 7, 10, 8, 7, 9, 11, 10, 8, 11, 12, 12, 13, 13),
    "crowdpose": tuple((i, i) for i in range(14)),
    "mpii": _pairs(13, 0, 12, 1, 14, 2, 11, 3, 15, 4, 10, 5, 3, 6, 2, 7, 4, 8, 1, 9, 5, 10, 0, 11,
                   9, 12, 7, 13),
    "jhmdb": _pairs(4, 0, 3, 1, 8, 2, 7, 3, 12, 4, 11, 5, 6, 6, 5, 7, 10, 8, 9, 9, 14, 10, 13, 11,
                    2, 12, 0, 13),
    "halpe": _COCO_BODY_TO_CROWDPOSE,
    "posetrack": _COCO_BODY_TO_CROWDPOSE + ((2, 12), (1, 13)),
}


@dataclass(frozen=True)
class KeypointConverter:
    """Maps a source keypoint set onto `num_keypoints` target keypoints through (source, target) index
    pairs; unmapped targets are (0, 0) with visibility 0. (mmpose also makes per-keypoint visibility
    weights, but as implemented they never reach the loss, so none are produced here.)"""

    num_keypoints: int
    mapping: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        tgt = [t for _, t in self.mapping]
        if any(not 0 <= t < self.num_keypoints for t in tgt) or len(set(tgt)) != len(tgt):
            raise ValueError(f"KeypointConverter: target indices {tgt} must be distinct and in "
                             f"[0, {self.num_keypoints})")

    @property
    def num_source(self) -> int:
        """The smallest source keypoint count the mapping accepts."""
        return max((s for s, _ in self.mapping), default=-1) + 1

    def __call__(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n, k = keypoints.shape[:2]
        if k < self.num_source:
            raise ValueError(f"KeypointConverter: the mapping reads source keypoint {self.num_source - 1} "
                             f"but the annotations have {k} keypoints")
        src = np.array([s for s, _ in self.mapping], dtype=np.int64)
        tgt = np.array([t for _, t in self.mapping], dtype=np.int64)
        kpts = np.zeros((n, self.num_keypoints, 2), dtype=np.float32)
        vis = np.zeros((n, self.num_keypoints), dtype=np.float32)
        kpts[:, tgt] = keypoints[:, src]
        vis[:, tgt] = visible[:, src]
        return kpts, vis


# ----------------------------------------------------------------------------------------- metadata
def flip_indices_from_names(names: Sequence[str]) -> tuple[int, ...]:
    """Flip partner of each keypoint: `left_x` <-> `right_x` (also `left`/`right` inside a name, e.g.
    `hand_left_1`), itself when it has no partner."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, n in enumerate(names):
        partner = None
        for a, b in (("left", "right"), ("right", "left"), ("Left", "Right"), ("Right", "Left")):
            if a in n:
                partner = index.get(n.replace(a, b, 1))
                if partner is not None:
                    break
        out.append(i if partner is None else partner)
    return tuple(out)


def keypoint_info_from_category(cat: dict, sigmas: Sequence[float] | None = None,
                                flip_indices: Sequence[int] | None = None, name: str = "custom"
                                ) -> KeypointInfo:
    """KeypointInfo of a COCO category. The built-in COCO-17 / CrowdPose-14 sets are recognised by their
    keypoint names and get their official sigmas, flip pairs and skeleton; a custom set needs `sigmas`
    (a warning names the fallback otherwise)."""
    names = tuple(str(n) for n in cat.get("keypoints") or ())
    if not names:
        raise ValueError(f"category {cat.get('id')!r} ({cat.get('name')!r}) lists no keypoint names")
    k = len(names)
    builtin = None
    if names == COCO_KEYPOINTS.names:
        builtin = COCO_KEYPOINTS
    elif k == 14 and names[:12] == CROWDPOSE_KEYPOINTS.names[:12]:  # 'head'/'top_head' differ by file
        builtin = CROWDPOSE_KEYPOINTS
    if sigmas is not None and len(sigmas) != k:
        raise ValueError(f"{len(sigmas)} OKS sigmas given for {k} keypoints")
    if flip_indices is not None:
        fi = list(flip_indices)
        if sorted(fi) != list(range(k)) or any(fi[j] != i for i, j in enumerate(fi)):
            raise ValueError(f"flip_indices must be a self-inverse permutation of 0..{k - 1}, got "
                             f"{list(flip_indices)}")
    if builtin is not None:
        return KeypointInfo(builtin.name, builtin.names, builtin.skeleton,
                            tuple(flip_indices) if flip_indices is not None else builtin.flip_indices,
                            tuple(float(s) for s in sigmas) if sigmas is not None else builtin.sigmas)
    if sigmas is None:
        warnings.warn(f"custom keypoint set of {k} keypoints without OKS sigmas: using {DEFAULT_SIGMA} for "
                      f"every keypoint; pass `sigmas=` for meaningful OKS losses and AP", stacklevel=3)
        sigmas = (DEFAULT_SIGMA,) * k
    skeleton = []
    for edge in cat.get("skeleton") or ():  # COCO skeletons are 1-based
        if (len(edge) == 2 and all(isinstance(v, int) and 1 <= v <= k for v in edge)):
            skeleton.append((edge[0] - 1, edge[1] - 1))
    return KeypointInfo(name, names, tuple(skeleton),
                        tuple(flip_indices) if flip_indices is not None else flip_indices_from_names(names),
                        tuple(float(s) for s in sigmas))

