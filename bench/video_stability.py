"""Video stability: do track ids stay put, and does One-Euro smoothing calm keypoints without lagging?

Two parts:
  video      RTMO on a video (default /work/shared/data/video/demo.mp4), frames via OpenCV, then
             (a) ids: per-frame detection rank (no tracking) vs. `Tracker`: distinct ids, average track
                 length, estimated id switches (an id whose box jumps: IoU with its own previous box < 0.3);
             (b) jitter: mean per-joint frame-to-frame displacement of tracked people, raw vs. smoothed, and
                 the mean distance smoothed-raw (a large one would mean the filter lags).
             Which weights were used is printed and saved: the repo's fixtures are RANDOM weights whose
             "poses" are noise, so with them the numbers only show that the pipeline runs.
  synthetic  people with known ground truth (walking, crossing, occluded for a few frames, keypoint jitter,
             false positives), so the same measures have a meaning: id switches counted as in MOT against
             the true identities, and keypoint error against the true positions.

    python bench/video_stability.py --model PATH_OR_NAME [--video FILE] [--json out.json]
        [--synthetic-only] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from paths import SHARED  # noqa: E402

from rtmo.config import COCO_KEYPOINTS
from rtmo.infer.results import PoseResult
from rtmo.infer.smooth import OneEuroConfig, PoseSmoother
from rtmo.infer.track import Tracker, TrackerConfig
from rtmo.ops.boxes_np import iou_matrix

FIXTURE = "rtmo-s_8xb32-600e_coco-640x640_seed0"
DEFAULT_MODEL = SHARED / "fixtures" / FIXTURE / f"{FIXTURE}.pth"


# ------------------------------------------------------------------------------------------ measures


def id_stats(results: list[PoseResult], jump_iou: float = 0.3) -> dict:
    """Distinct ids, mean frames per id, and switches estimated from box jumps between an id's sightings."""
    last_box: dict[int, np.ndarray] = {}
    frames: dict[int, int] = {}
    switches = 0
    for r in results:
        for tid, box in zip(r.track_ids.tolist(), r.boxes):
            if tid < 0:
                continue
            if tid in last_box and iou_matrix(last_box[tid], box)[0, 0] < jump_iou:
                switches += 1
            last_box[tid] = box
            frames[tid] = frames.get(tid, 0) + 1
    return {"distinct_ids": len(frames), "id_switches_est": switches,
            "mean_track_length": float(np.mean(list(frames.values()))) if frames else 0.0}


def jitter_stats(raw: list[PoseResult], smooth: list[PoseResult]) -> dict:
    """Per-joint frame-to-frame displacement of ids present in consecutive frames, raw vs smoothed (pixels and
    fraction of box height), and the mean smoothed-raw distance."""
    d_raw, d_smooth, d_raw_rel, d_smooth_rel, lag = [], [], [], [], []
    for r, s in zip(raw, smooth):
        lag.extend(np.linalg.norm(s.keypoints - r.keypoints, axis=-1)[s.track_ids >= 0].ravel())
    for (r0, s0), (r1, s1) in zip(zip(raw, smooth), zip(raw[1:], smooth[1:])):
        i0 = {t: i for i, t in enumerate(r0.track_ids.tolist()) if t >= 0}
        for j, t in enumerate(r1.track_ids.tolist()):
            if t < 0 or t not in i0:
                continue
            i = i0[t]
            h = max(float(r1.boxes[j, 3] - r1.boxes[j, 1]), 1.0)
            a = np.linalg.norm(r1.keypoints[j] - r0.keypoints[i], axis=-1)
            b = np.linalg.norm(s1.keypoints[j] - s0.keypoints[i], axis=-1)
            d_raw.extend(a), d_smooth.extend(b), d_raw_rel.extend(a / h), d_smooth_rel.extend(b / h)
    def mean(v: list) -> float:
        return float(np.mean(v)) if len(v) else float("nan")

    return {"pairs": len(d_raw) // max(raw[0].keypoints.shape[1], 1) if raw else 0,
            "disp_raw_px": mean(d_raw), "disp_smooth_px": mean(d_smooth),
            "disp_raw_rel": mean(d_raw_rel), "disp_smooth_rel": mean(d_smooth_rel),
            "smooth_minus_raw_px": mean(lag)}


def rank_ids(results: list[PoseResult]) -> list[PoseResult]:
    """'No tracking': a person's id is their rank in the frame's detections (what indexing gives you)."""
    out = []
    for r in results:
        r = r.select(np.arange(len(r)))
        r.track_ids = np.arange(len(r), dtype=np.int64)
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------ video


def load_model(name_or_path: str):
    try:
        from rtmo import ModelManager

        return ModelManager.get(name_or_path)
    except ImportError:  # before rtmo.hub.zoo existed

        from rtmo.config import RTMOConfig
        from rtmo.hub.zoo import read_checkpoint
        from rtmo.model import RTMO

        preset = "t" if "rtmo-t" in Path(name_or_path).name else "s"
        m = RTMO(RTMOConfig.preset(preset))
        m.load_state_dict(read_checkpoint(name_or_path)[0])
        m.checkpoint_info = {"name": Path(name_or_path).stem, "path": str(name_or_path)}
        return m.eval()


def run_video(args: argparse.Namespace) -> dict:
    import cv2
    import torch

    from rtmo.infer.api import infer_arrays

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    info = dict(getattr(model, "checkpoint_info", {"name": str(args.model)}))
    random_weights = str(SHARED / "fixtures") in str(Path(info.get("path", args.model)).resolve())
    cap = cv2.VideoCapture(str(args.video))
    if not cap.isOpened():
        raise SystemExit(f"cannot open video {args.video}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    raw, t0 = [], time.perf_counter()
    while len(raw) < args.max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        r = infer_arrays(model, [frame], threshold=args.threshold)[0]
        r.frame_index, r.timestamp = len(raw), len(raw) / fps
        raw.append(r)
    infer_s = time.perf_counter() - t0
    tracker, smoother = Tracker(TrackerConfig()), PoseSmoother(OneEuroConfig(), fps=fps)
    tracked = [tracker.update(r) for r in raw]
    smoothed = [smoother.update(r) for r in tracked]
    return {
        "video": str(args.video), "frames": len(raw), "fps": fps, "infer_s": round(infer_s, 2),
        "weights": info, "random_weights": random_weights,
        "detections_per_frame": float(np.mean([len(r) for r in raw])) if raw else 0.0,
        "ids_no_tracking": id_stats(rank_ids(raw)), "ids_tracker": id_stats(tracked),
        "jitter": jitter_stats(tracked, smoothed),
    }


# ------------------------------------------------------------------------------------------ synthetic

# A standing person in box-relative coordinates (x, y in [0, 1]), COCO order.
TEMPLATE = np.array([
    [.50, .06], [.46, .04], [.54, .04], [.42, .06], [.58, .06], [.30, .20], [.70, .20], [.22, .36],
    [.78, .36], [.18, .50], [.82, .50], [.38, .52], [.62, .52], [.38, .74], [.62, .74], [.38, .96],
    [.62, .96]])
LIMBS = np.array([7, 8, 9, 10, 13, 14, 15, 16])  # elbows, wrists, knees, ankles swing


def synthetic_scene(seed: int = 0, frames: int = 150, fps: float = 30.0, people: int = 5,
                    jitter: float = 0.015, miss_prob: float = 0.02, fp_prob: float = 0.1):
    """Returns (results without ids, true identity per detection (-1 false positive), true keypoints)."""
    rng = np.random.default_rng(seed)
    w, h = 1280, 720
    start = np.stack([rng.uniform(100, w - 100, people), rng.uniform(250, h - 250, people)], 1)
    height = rng.uniform(120, 260, people)
    speed = rng.uniform(0.2, 1.0, (people, 1)) * height[:, None] * rng.choice([-1, 1], (people, 1))  # px/s
    vel = np.concatenate([speed, rng.uniform(-0.1, 0.1, (people, 1)) * height[:, None]], 1)
    phase, freq = rng.uniform(0, 2 * np.pi, people), rng.uniform(0.8, 1.5, people)  # limb swing
    gap_start = rng.integers(10, frames - 10, people)
    gaps = {p: set(range(s, s + rng.integers(3, 8))) for p, s in enumerate(gap_start)}  # occlusions
    results, truth_ids, truth_kpts = [], [], []
    for f in range(frames):
        t = f / fps
        boxes, kpts, true_k, ids = [], [], [], []
        for p in range(people):
            c = start[p] + vel[p] * t
            span = w - 200  # bounce between x=100 and x=w-100 so people keep crossing each other
            c[0] = 100 + span - abs((c[0] - 100) % (2 * span) - span)
            bw, bh = 0.45 * height[p], height[p]
            k = c + (TEMPLATE - 0.5) * [bw, bh]
            swing = 0.12 * bh * np.sin(2 * np.pi * freq[p] * t + phase[p] + np.arange(len(LIMBS)) * np.pi)
            k[LIMBS, 0] += swing
            if f in gaps[p] or rng.random() < miss_prob:
                continue  # occluded / missed this frame
            true_k.append(k)
            kpts.append(k + rng.normal(0, jitter * bh, k.shape))
            box = np.r_[c - [bw / 2, bh / 2], c + [bw / 2, bh / 2]] + rng.normal(0, jitter * bh, 4)
            boxes.append(box)
            ids.append(p)
        if rng.random() < fp_prob:  # a spurious detection somewhere
            c = rng.uniform([100, 100], [w - 100, h - 100])
            boxes.append(np.r_[c - 40, c + 40])
            kpts.append(c + (TEMPLATE - 0.5) * 80 + rng.normal(0, 20, TEMPLATE.shape))
            true_k.append(np.full(TEMPLATE.shape, np.nan))
            ids.append(-1)
        n = len(boxes)
        scores = np.where(np.array(ids) >= 0, rng.uniform(0.55, 0.95, n), rng.uniform(0.3, 0.65, n))
        results.append(PoseResult(
            np.array(boxes, np.float32).reshape(n, 4), scores.astype(np.float32), np.zeros(n, np.int64),
            np.array(kpts, np.float32).reshape(n, 17, 2), np.full((n, 17), 0.9, np.float32), (h, w),
            COCO_KEYPOINTS, frame_index=f, timestamp=t))
        truth_ids.append(np.array(ids, np.int64))
        truth_kpts.append(np.array(true_k).reshape(n, 17, 2))
    return results, truth_ids, truth_kpts


def mot_id_switches(results: list[PoseResult], truth_ids: list[np.ndarray]) -> dict:
    """As in MOT (CLEAR metrics): a switch is a true person whose assigned track id differs from the id it
    had the last time it was tracked. Also: true people vs distinct ids, share of true detections tracked."""
    last: dict[int, int] = {}
    switches = tracked = total = 0
    ids = set()
    for r, gt in zip(results, truth_ids):
        for tid, g in zip(r.track_ids.tolist(), gt.tolist()):
            if tid >= 0:
                ids.add(tid)
            if g < 0:
                continue
            total += 1
            if tid < 0:
                continue
            tracked += 1
            if g in last and last[g] != tid:
                switches += 1
            last[g] = tid
    people = {g for gt in truth_ids for g in gt.tolist() if g >= 0}
    return {"true_people": len(people), "distinct_ids": len(ids), "id_switches": switches,
            "tracked_fraction": tracked / max(total, 1)}


def keypoint_error(results: list[PoseResult], truth_ids, truth_kpts) -> float:
    """Mean distance to the true keypoints, over tracked true detections, as a fraction of the box height."""
    e = []
    for r, gt, tk in zip(results, truth_ids, truth_kpts):
        ok = (r.track_ids >= 0) & (gt >= 0)
        hgt = (r.boxes[ok, 3] - r.boxes[ok, 1])[:, None]
        e.extend((np.linalg.norm(r.keypoints[ok] - tk[ok], axis=-1) / hgt).ravel())
    return float(np.mean(e))


def true_disp(results, truth_ids, truth_kpts) -> float:
    """Mean frame-to-frame displacement of the true keypoints (x height): what smoothing should approach."""
    d = []
    for (g0, k0), (r1, g1, k1) in zip(zip(truth_ids, truth_kpts),
                                      zip(results[1:], truth_ids[1:], truth_kpts[1:])):
        i0 = {g: i for i, g in enumerate(g0.tolist()) if g >= 0}
        for j, g in enumerate(g1.tolist()):
            if g >= 0 and g in i0:
                h = r1.boxes[j, 3] - r1.boxes[j, 1]
                d.extend(np.linalg.norm(k1[j] - k0[i0[g]], axis=-1) / h)
    return float(np.mean(d))


def run_synthetic(seeds: int = 5, smooth_cfg: OneEuroConfig | None = None, fps: float = 30.0) -> dict:
    agg: dict[str, list[float]] = {}
    for seed in range(seeds):
        raw, gt, tk = synthetic_scene(seed, fps=fps)
        tracker, smoother = Tracker(), PoseSmoother(smooth_cfg, fps=fps)
        tracked = [tracker.update(r) for r in raw]
        smoothed = [smoother.update(r) for r in tracked]
        row = {}
        for k, v in mot_id_switches(rank_ids(raw), gt).items():
            row["no_tracking_" + k] = v
        for k, v in mot_id_switches(tracked, gt).items():
            row["tracker_" + k] = v
        j = jitter_stats(tracked, smoothed)
        row.update({"disp_true_rel": true_disp(raw, gt, tk), "disp_raw_rel": j["disp_raw_rel"],
                    "disp_smooth_rel": j["disp_smooth_rel"], "err_raw_rel": keypoint_error(tracked, gt, tk),
                    "err_smooth_rel": keypoint_error(smoothed, gt, tk)})
        for k, v in row.items():
            agg.setdefault(k, []).append(v)
    return {"seeds": seeds, "fps": fps, **{k: float(np.mean(v)) for k, v in agg.items()}}


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="registry name or checkpoint path")
    ap.add_argument("--video", default=str(SHARED / "data/video/demo.mp4"))
    ap.add_argument("--threshold", type=float, default=None, help="score threshold (model default if unset)")
    ap.add_argument("--max-frames", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=5, help="synthetic scenes to average")
    ap.add_argument("--synthetic-only", action="store_true")
    ap.add_argument("--json", default="outputs/video_stability.json")
    args = ap.parse_args(argv)

    report = {"tracker_config": vars(TrackerConfig()), "one_euro_config": vars(OneEuroConfig())}
    if not args.synthetic_only:
        v = run_video(args)
        report["video"] = v
        print(f"video {v['video']}: {v['frames']} frames at {v['fps']:.1f} fps, "
              f"{v['detections_per_frame']:.1f} detections/frame, inference {v['infer_s']} s")
        print(f"weights: {v['weights'].get('name')} ({v['weights'].get('path', '')})")
        if v["random_weights"]:
            print("  !! RANDOM fixture weights: poses are noise; these numbers only show the pipeline runs")
        print(f"{'ids':<28}{'distinct':>10}{'switches(est)':>15}{'mean length':>13}")
        for name, key in (("no tracking (rank)", "ids_no_tracking"), ("Tracker", "ids_tracker")):
            s = v[key]
            print(f"{name:<28}{s['distinct_ids']:>10}{s['id_switches_est']:>15}{s['mean_track_length']:>13.2f}")
        j = v["jitter"]
        print(f"{'jitter (tracked pairs)':<28}{'raw':>10}{'smoothed':>15}{'|smooth-raw|':>13}")
        print(f"{'  px / joint / frame':<28}{j['disp_raw_px']:>10.2f}{j['disp_smooth_px']:>15.2f}"
              f"{j['smooth_minus_raw_px']:>13.2f}")
        print(f"{'  fraction of box height':<28}{j['disp_raw_rel']:>10.4f}{j['disp_smooth_rel']:>15.4f}")
    s = run_synthetic(args.seeds)
    report["synthetic"] = s
    print(f"\nsynthetic ground truth ({s['seeds']} scenes x 150 frames, 5 people, {s['fps']:.0f} fps, "
          "1.5% jitter, occlusion gaps, false positives)")
    print(f"{'ids':<28}{'true people':>12}{'distinct':>10}{'switches':>10}{'tracked':>9}")
    for name, p in (("no tracking (rank)", "no_tracking_"), ("Tracker", "tracker_")):
        print(f"{name:<28}{s[p + 'true_people']:>12.1f}{s[p + 'distinct_ids']:>10.1f}"
              f"{s[p + 'id_switches']:>10.1f}{s[p + 'tracked_fraction']:>9.3f}")
    print(f"{'keypoints (x box height)':<28}{'true':>12}{'raw':>10}{'smoothed':>10}")
    print(f"{'  frame-to-frame motion':<28}{s['disp_true_rel']:>12.4f}{s['disp_raw_rel']:>10.4f}"
          f"{s['disp_smooth_rel']:>10.4f}")
    print(f"{'  error vs truth':<28}{0:>12.4f}{s['err_raw_rel']:>10.4f}{s['err_smooth_rel']:>10.4f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
