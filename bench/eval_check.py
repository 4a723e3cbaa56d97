"""Check rtmo.eval.coco against xtcocotools (what mmpose's CocoMetric runs) on many perturbed cases.

xtcocotools is not a dependency of rtmo: its PyPI wheel is built against numpy 1 and fails to import
under numpy 2. Build it from source in a separate environment and point --xt-python at it:

    python3 -m venv /tmp/xtvenv && /tmp/xtvenv/bin/pip install numpy==2.* cython setuptools matplotlib
    /tmp/xtvenv/bin/pip install --no-binary xtcocotools --no-build-isolation xtcocotools

    python bench/eval_check.py --xt-python /tmp/xtvenv/bin/python [--cases 40] [--model]

Every metric of every case must agree exactly (|diff| <= 1e-12); the script exits 1 otherwise.
`--model` also scores the RTMO-s fixture model (random weights) on the COCO test images end to end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from paths import SHARED  # noqa: E402

from rtmo.config import keypoint_info_for
from rtmo.eval.coco import (
    COCO_METRICS,
    CROWDPOSE_METRICS,
    evaluate,
    evaluate_model,
    format_metrics,
    predict_dataset,
)

COCO_ANN = SHARED / "data" / "coco" / "test_coco.json"
CROWD_ANN = SHARED / "data" / "crowdpose" / "test_crowdpose.json"

XT_WORKER = r"""
import json, sys
import numpy as np
from xtcocotools.coco import COCO
from xtcocotools.cocoeval import COCOeval
gt, res, iou_type, use_area, sigmas = sys.argv[1:6]
coco = COCO(gt)
dt = coco.loadRes(res)
ev = COCOeval(coco, dt, iou_type, np.array(json.loads(sigmas)), use_area == "1")
ev.params.useSegm = None
ev.evaluate(); ev.accumulate(); ev.summarize()
print("STATS " + json.dumps([float(v) for v in ev.stats]))
"""


def run_xtcocotools(xt_python: str, gt: dict, records: list[dict], protocol: str) -> dict[str, float]:
    k = len(gt["categories"][0]["keypoints"])
    sigmas = list(keypoint_info_for(k).sigmas)
    with tempfile.TemporaryDirectory() as d:
        gt_path, res_path = Path(d) / "gt.json", Path(d) / "res.json"
        gt_path.write_text(json.dumps(gt))
        res_path.write_text(json.dumps(records))
        iou, area = ("keypoints_crowd", "0") if protocol == "crowdpose" else ("keypoints", "1")
        out = subprocess.run([xt_python, "-c", XT_WORKER, str(gt_path), str(res_path), iou, area,
                              json.dumps(sigmas)], capture_output=True, text=True, check=True).stdout
    stats = json.loads(next(line for line in out.splitlines() if line.startswith("STATS "))[6:])
    names = CROWDPOSE_METRICS if protocol == "crowdpose" else COCO_METRICS
    return dict(zip(names, stats))


def perturbed(gt: dict, rng: np.random.Generator, noise_px: float) -> list[dict]:
    """Noisy copies of the GT people, dropped ones, false positives and some all-zero-score detections."""
    recs = []
    imgs = {im["id"]: im for im in gt["images"]}
    for a in gt["annotations"]:
        if rng.random() < 0.15:
            continue  # missed person
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        x, y, w, h = a["bbox"]
        lab = kp[:, 2] > 0
        xy = np.where(lab[:, None], kp[:, :2], rng.uniform([x, y], [x + w, y + h], size=(len(kp), 2)))
        xy = xy + rng.normal(0, noise_px * rng.uniform(0.2, 2.0), size=xy.shape)
        s = rng.uniform(0, 1, size=len(kp))
        if rng.random() < 0.05:
            s[:] = 0.0  # xtcocotools drops these
        box = np.array([x, y, w, h]) + rng.normal(0, 3, 4)
        recs.append({"image_id": a["image_id"], "category_id": 1,
                     "keypoints": np.concatenate([xy, s[:, None]], 1).ravel().round(3).tolist(),
                     "score": round(float(rng.uniform(0.1, 1)), 4), "bbox": box.round(2).tolist()})
    for _ in range(int(rng.integers(0, 6))):  # false positives
        im = imgs[int(rng.choice(list(imgs)))]
        k = len(gt["annotations"][0]["keypoints"]) // 3
        c = rng.uniform([0, 0], [im["width"], im["height"]])
        xy = c + rng.normal(0, 30, size=(k, 2))
        s = rng.uniform(0, 1, size=k)
        lo, hi = xy.min(0), xy.max(0)
        recs.append({"image_id": im["id"], "category_id": 1,
                     "keypoints": np.concatenate([xy, s[:, None]], 1).ravel().round(3).tolist(),
                     "score": round(float(rng.uniform(0.1, 1)), 4),
                     "bbox": [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]})
    rng.shuffle(recs)
    return recs


def crowd_with_splits(gt: dict) -> dict:
    """The CrowdPose file repeated with crowdIndex values in every subset (and on the 0.2/0.8 edges)."""
    out = {"categories": gt["categories"], "images": [], "annotations": []}
    for copy_i, ci in enumerate((0.05, 0.2, 0.5, 0.8, 0.95)):
        for im in gt["images"]:
            new_id = im["id"] * 10 + copy_i
            out["images"].append({**im, "id": new_id, "crowdIndex": ci})
            for a in gt["annotations"]:
                if a["image_id"] == im["id"]:
                    out["annotations"].append({**a, "image_id": new_id, "id": a["id"] * 10 + copy_i})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xt-python", default="/tmp/xtvenv/bin/python")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--model", action="store_true")
    args = ap.parse_args()

    datasets = [("coco", json.loads(COCO_ANN.read_text())),
                ("crowdpose", json.loads(CROWD_ANN.read_text())),
                ("crowdpose", crowd_with_splits(json.loads(CROWD_ANN.read_text())))]
    worst, n, t_ours = 0.0, 0, 0.0
    for di, (protocol, gt) in enumerate(datasets):
        for case in range(args.cases):
            rng = np.random.default_rng(1000 * di + case)
            recs = [] if case == 0 else perturbed(gt, rng, noise_px=float(rng.choice([0.5, 2, 5, 10, 20])))
            t0 = time.perf_counter()
            ours = evaluate(gt, recs, protocol)
            t_ours += time.perf_counter() - t0
            ref = run_xtcocotools(args.xt_python, gt, recs, protocol)
            diff = max(abs(ours[k] - ref[k]) for k in ref)
            worst, n = max(worst, diff), n + 1
            if diff > 1e-12:
                print(f"MISMATCH dataset {di} case {case}:\n ours {ours}\n xtco {ref}")
        print(f"dataset {di} ({protocol}, {len(gt['images'])} images): last case\n"
              + format_metrics(ours) + "\n" + format_metrics(ref, "xtcocotools:"))
    print(f"{n} cases, max |ours - xtcocotools| = {worst:.3g}, ours {1000 * t_ours / n:.1f} ms/case")

    if args.model:
        import torch

        from rtmo import RTMO, RTMOConfig
        from rtmo.hub.zoo import read_checkpoint

        torch.set_num_threads(2)
        name = "rtmo-s_8xb32-600e_coco-640x640_seed0"
        m = RTMO(RTMOConfig.preset("s"))
        ckpt = SHARED / "fixtures" / name / f"{name}.pth"
        m.load_state_dict(read_checkpoint(ckpt)[0])
        m.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            metrics = evaluate_model(m, COCO_ANN.parent, COCO_ANN, "coco", batch_size=2)
            recs = predict_dataset(m, COCO_ANN.parent, COCO_ANN, batch_size=2)
        print(f"fixture RTMO-s (RANDOM weights) on {COCO_ANN.name}: {len(recs)} detections, "
              f"{time.perf_counter() - t0:.1f} s")
        ref = run_xtcocotools(args.xt_python, json.loads(COCO_ANN.read_text()), recs, "coco")
        diff = max(abs(metrics[k] - ref[k]) for k in ref)
        worst = max(worst, diff)
        print(format_metrics(metrics) + f"\nmax |ours - xtcocotools| = {diff:.3g}")
    return 0 if worst <= 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
