"""Multi-person tracking for video: stable ids from per-frame `PoseResult`s (ByteTrack-style, numpy only).

Per frame: every track's box is moved forward by a constant-velocity Kalman filter, then detections are
associated in three stages (after ByteTrack, Zhang et al. 2022):
  1. confident detections (score >= `high_thresh`) vs. confirmed tracks, active and lost, on a cost of
     1 - similarity, similarity = IoU blended with the OKS of the keypoints;
  2. the weak detections (`low_thresh` <= score < `high_thresh`) vs. the active tracks still unmatched, on
     IoU alone — a partly occluded person scores low, and this keeps their track alive without letting
     weak boxes start new tracks;
  3. the remaining confident detections vs. tentative tracks (seen once, not confirmed yet).
Confident detections left over start tentative tracks; a tentative track is confirmed (and gets its id) after
`min_hits` consecutive matches, or at once on the first frame of a sequence. Unmatched confirmed tracks become
lost and are dropped `max_age` frames after their last match; unmatched tentative tracks are dropped at once.

Ids are positive and consecutive (1, 2, ...) because they are given on confirmation, not on birth. A detection
that is not matched to a confirmed track (tentative, below `low_thresh`, or an unmatched weak detection) gets
track id -1.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from ..ops.boxes_np import iou_matrix
from ..ops.oks_np import oks_matrix
from .results import PoseResult

try:  # exact and fast; optional because the tracker must work with numpy alone
    from scipy.optimize import linear_sum_assignment as _scipy_lsa
except ImportError:  # pragma: no cover - depends on the environment
    _scipy_lsa = None


@dataclass
class TrackerConfig:
    """Association thresholds and track life cycle. Defaults follow ByteTrack's, tuned for RTMO's scores."""

    high_thresh: float = 0.5  # detections at or above: stage-1 association and may start tracks
    low_thresh: float = 0.1  # detections between low and high: stage 2 only; below low: ignored
    new_track_thresh: float = 0.6  # a leftover confident detection starts a track only above this
    match_thresh: float = 0.8  # stage 1: largest accepted cost 1 - similarity (i.e. similarity >= 0.2)
    low_match_thresh: float = 0.5  # stage 2 (weak detections, IoU only): IoU >= 0.5
    tentative_match_thresh: float = 0.7  # stage 3 (tentative tracks): similarity >= 0.3
    oks_weight: float = 0.3  # similarity = (1 - w) * IoU + w * OKS; OKS separates people whose boxes overlap
    kpt_score_thresh: float = 0.3  # keypoints that count in OKS: score above this in track and detection
    min_hits: int = 2  # consecutive matches before a track is confirmed and gets an id
    max_age: int = 30  # frames a lost track is kept for re-identification (1 s at 30 fps)

    def __post_init__(self) -> None:
        if not 0 <= self.low_thresh <= self.high_thresh <= 1:
            raise ValueError("need 0 <= low_thresh <= high_thresh <= 1, "
                             f"got {self.low_thresh}, {self.high_thresh}")
        if not 0 <= self.oks_weight <= 1:
            raise ValueError(f"oks_weight must be in [0, 1], got {self.oks_weight}")
        if self.min_hits < 1 or self.max_age < 0:
            raise ValueError(f"need min_hits >= 1 and max_age >= 0, got {self.min_hits}, {self.max_age}")


# ---------------------------------------------------------------------------------------- assignment


def _hungarian(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of every row of an (n,m) matrix with n <= m: shortest augmenting paths with
    row/column potentials, O(n^2 m). Used when scipy is missing; exact, like scipy's."""
    n, m = cost.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j]: 1-based row matched to column j (0: free)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        way = np.zeros(m + 1, dtype=np.int64)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            cand = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            u[owner[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    cols = np.nonzero(owner[1:])[0]
    rows = owner[1:][cols] - 1
    order = np.argsort(rows)
    return rows[order], cols[order]


def linear_assignment(cost: np.ndarray, max_cost: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match rows to columns minimising total cost; pairs costing more than `max_cost` are never matched.
    Returns (matches (k,2) [row, col], unmatched rows, unmatched cols).

    Forbidden pairs get a cost larger than any sum of allowed ones, so the solver first maximises the number
    of allowed matches and then minimises their cost; forbidden pairs it still had to use are dropped."""
    cost = np.asarray(cost, np.float64)
    n, m = cost.shape
    if n == 0 or m == 0:
        return np.zeros((0, 2), np.int64), np.arange(n), np.arange(m)
    allowed = cost <= max_cost
    big = 1.0 + 2.0 * min(n, m) * (np.abs(cost[allowed]).max() if allowed.any() else 1.0)
    c = np.where(allowed, cost, big)
    if _scipy_lsa is not None:
        rows, cols = _scipy_lsa(c)
    elif n <= m:
        rows, cols = _hungarian(c)
    else:
        cols, rows = _hungarian(c.T)
        order = np.argsort(rows)
        rows, cols = rows[order], cols[order]
    keep = allowed[rows, cols]
    matches = np.stack([rows[keep], cols[keep]], axis=1).astype(np.int64)
    return (matches, np.setdiff1d(np.arange(n), matches[:, 0]), np.setdiff1d(np.arange(m), matches[:, 1]))


# -------------------------------------------------------------------------------------------- motion


class KalmanBox:
    """Constant-velocity Kalman filter on a box's (cx, cy, w, h), one frame per step.

    Noise is proportional to the box size (as in SORT/ByteTrack) so the same filter works for near and far
    people: position noise 1/20 of the size per frame, velocity noise 1/160."""

    std_pos = 1.0 / 20
    std_vel = 1.0 / 160

    def __init__(self, box: np.ndarray) -> None:
        z = _xyxy_to_cxcywh(box)
        self.x = np.concatenate([z, np.zeros(4)])
        size = np.array([z[2], z[3], z[2], z[3]])
        std = np.concatenate([2 * self.std_pos * size, 10 * self.std_vel * size])
        self.P = np.diag(std**2)

    _F = np.eye(8) + np.eye(8, k=4)
    _H = np.eye(4, 8)

    def _size(self) -> np.ndarray:
        w, h = max(self.x[2], 1.0), max(self.x[3], 1.0)
        return np.array([w, h, w, h])

    def predict(self, freeze_size: bool = False) -> None:
        if freeze_size:  # a lost track should not keep growing or shrinking while nothing observes it
            self.x[6:] = 0.0
        size = self._size()
        q = np.concatenate([self.std_pos * size, self.std_vel * size]) ** 2
        self.x = self._F @ self.x
        self.P = self._F @ self.P @ self._F.T + np.diag(q)
        self.x[2:4] = np.maximum(self.x[2:4], 1.0)

    def update(self, box: np.ndarray) -> None:
        z = _xyxy_to_cxcywh(box)
        r = (self.std_pos * self._size()) ** 2
        S = self._H @ self.P @ self._H.T + np.diag(r)
        K = np.linalg.solve(S, self._H @ self.P).T  # P H^T S^-1, S symmetric
        self.x = self.x + K @ (z - self._H @ self.x)
        self.P = (np.eye(8) - K @ self._H) @ self.P

    @property
    def box(self) -> np.ndarray:
        cx, cy, w, h = self.x[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _xyxy_to_cxcywh(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = np.asarray(box, np.float64)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, 1.0), max(y2 - y1, 1.0)])


# -------------------------------------------------------------------------------------------- tracks


class _Track:
    def __init__(self, box: np.ndarray, kpts: np.ndarray, kpt_scores: np.ndarray, frame: int) -> None:
        self.kf = KalmanBox(box)
        self.track_id = -1  # given on confirmation
        self.hits = 1
        self.last_frame = frame
        self.kpts, self.kpt_scores = kpts.astype(np.float64), kpt_scores
        self.obs_center = _xyxy_to_cxcywh(box)[:2]

    @property
    def confirmed(self) -> bool:
        return self.track_id >= 0

    def predicted_kpts(self) -> np.ndarray:
        """Last observed keypoints moved with the box's predicted centre (a pose changes little per frame)."""
        return self.kpts + (self.kf.x[:2] - self.obs_center)

    def update(self, box: np.ndarray, kpts: np.ndarray, kpt_scores: np.ndarray, frame: int) -> None:
        self.hits = self.hits + 1 if frame == self.last_frame + 1 else 1
        self.kf.update(box)
        self.last_frame = frame
        self.kpts, self.kpt_scores = kpts.astype(np.float64), kpt_scores
        self.obs_center = _xyxy_to_cxcywh(box)[:2]


class Tracker:
    """Gives each person a stable id across video frames. One tracker per video; `reset()` between videos.

    >>> tracker = Tracker()
    >>> for result in model.predict("video.mp4", stream=True):
    ...     result = tracker.update(result)   # result.track_ids: (n,) int64, -1 = not (yet) tracked
    """

    def __init__(self, config: TrackerConfig | None = None, **overrides: float) -> None:
        self.config = replace(config or TrackerConfig(), **overrides)
        self.reset()

    def reset(self) -> None:
        self.tracks: list[_Track] = []
        self.frame = 0
        self._ids = itertools.count(1)

    def _similarity(self, tracks: list[_Track], result: PoseResult, det_idx: np.ndarray, use_oks: bool
                    ) -> np.ndarray:
        boxes = np.stack([t.kf.box for t in tracks]) if tracks else np.zeros((0, 4))
        sim = iou_matrix(boxes, result.boxes[det_idx])
        w = self.config.oks_weight
        if not use_oks or w == 0 or len(tracks) == 0 or len(det_idx) == 0:
            return sim
        thr = self.config.kpt_score_thresh
        areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        oks, defined = oks_matrix(
            np.stack([t.predicted_kpts() for t in tracks]), np.stack([t.kpt_scores > thr for t in tracks]),
            areas, result.keypoints[det_idx].astype(np.float64), result.keypoint_scores[det_idx] > thr,
            np.asarray(result.keypoint_info.sigmas),
        )
        # Without shared visible keypoints the pair is judged on IoU alone rather than penalised.
        return np.where(defined, (1 - w) * sim + w * oks, sim)

    def _match(self, tracks: list[_Track], result: PoseResult, det_idx: np.ndarray, max_cost: float,
               use_oks: bool, ids: np.ndarray) -> tuple[list[_Track], np.ndarray]:
        """Associate, update matched tracks, write their ids; return unmatched tracks and detections."""
        cost = 1.0 - self._similarity(tracks, result, det_idx, use_oks)
        matches, free_t, free_d = linear_assignment(cost, max_cost)
        for ti, di in matches:
            t, d = tracks[ti], det_idx[di]
            t.update(result.boxes[d], result.keypoints[d], result.keypoint_scores[d], self.frame)
            if not t.confirmed and (t.hits >= self.config.min_hits or self.frame == 1):
                t.track_id = next(self._ids)
            ids[d] = t.track_id
        return [tracks[i] for i in free_t], det_idx[free_d]

    def update(self, result: PoseResult) -> PoseResult:
        """Associate this frame's detections with the tracks; returns a copy of `result` with `track_ids`."""
        if not isinstance(result, PoseResult):
            raise TypeError(f"Tracker.update expects a PoseResult, got {type(result).__name__}")
        n = len(result)
        if result.boxes.shape != (n, 4) or result.keypoints.shape[0] != n:
            raise ValueError(f"inconsistent PoseResult: {n} scores, boxes {result.boxes.shape}, "
                             f"keypoints {result.keypoints.shape}")
        cfg = self.config
        self.frame += 1
        ids = np.full(n, -1, dtype=np.int64)
        scores = np.asarray(result.scores, np.float64)
        high = np.nonzero(scores >= cfg.high_thresh)[0]
        low = np.nonzero((scores >= cfg.low_thresh) & (scores < cfg.high_thresh))[0]

        for t in self.tracks:
            t.kf.predict(freeze_size=t.last_frame < self.frame - 1)
        confirmed = [t for t in self.tracks if t.confirmed]
        tentative = [t for t in self.tracks if not t.confirmed]

        # 1. confident detections vs. all confirmed tracks (lost ones included: re-identification)
        left, high_left = self._match(confirmed, result, high, cfg.match_thresh, True, ids)
        # 2. weak detections vs. tracks that were visible last frame; their keypoints are too unreliable
        active = [t for t in left if t.last_frame == self.frame - 1]
        self._match(active, result, low, 1.0 - cfg.low_match_thresh, False, ids)
        # 3. remaining confident detections vs. tentative tracks; unmatched tentative tracks die
        dead_tentative, high_left = self._match(tentative, result, high_left, cfg.tentative_match_thresh,
                                                True, ids)
        for d in high_left:
            if scores[d] >= cfg.new_track_thresh:
                t = _Track(result.boxes[d], result.keypoints[d], result.keypoint_scores[d], self.frame)
                if self.frame == 1 or cfg.min_hits <= 1:  # nothing to confirm against on the first frame
                    t.track_id = next(self._ids)
                    ids[d] = t.track_id
                self.tracks.append(t)
        dead = {id(t) for t in dead_tentative}
        self.tracks = [t for t in self.tracks
                       if id(t) not in dead and self.frame - t.last_frame <= cfg.max_age]

        out = result.select(np.arange(n))
        out.track_ids = ids
        return out
