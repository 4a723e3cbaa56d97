"""Accuracy and speed of every reduced-precision path against fp32, on a trained checkpoint.

    python bench/overfit.py --variant t --size 256 --iters 1500 --run-dir runs/overfit   # ~25 min, 1 core
    python bench/precision_accuracy.py --checkpoint runs/overfit/last.pth [--json precision.json]

Paths: torch fp32 (the reference), torch fp32 fast (`ModelManager.get(..., fast=True)`: fused,
channels-last), torch bf16 (autocast + channels_last + fuse; CPUs with AVX512-BF16/AMX),
ONNX Runtime fp32 and INT8 (static QDQ, `rtmo.export.quantize.quantize_onnx`), OpenVINO fp32, bf16
(INFERENCE_PRECISION_HINT) and INT8 (NNCF, `quantize_openvino`). Per path, on the 4 annotated COCO images:
  * keypoint deviation from torch fp32 in image pixels (median / p95), per fp32 person with score >= 0.3
    matched to the path's detection of highest box IoU (>= 0.5); `unmatched` counts fp32 people lost;
  * COCO keypoint AP (pycocotools) of the path vs that of fp32;
  * end-to-end latency on one image, median of alternating rounds (all paths in every round).
Random fixture weights are no measure here (their near one-hot DCC heatmaps turn rounding into pixel
jumps), hence the trained checkpoint. INT8 is calibrated on the same 4 images (a deployment would use a
few hundred of its own). The machine may be shared: compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import matched_deviations  # noqa: E402
from paths import SHARED  # noqa: E402

from rtmo import ModelManager  # noqa: E402
from rtmo.eval.coco import evaluate_model  # noqa: E402
from rtmo.export.onnx import export_onnx  # noqa: E402
from rtmo.export.quantize import quantize_onnx, quantize_openvino  # noqa: E402

COCO = SHARED / "data" / "coco"


def build_paths(ckpt: Path, work: Path, threads: int, calibration: Path = COCO) -> dict[str, object]:
    """Every rtmo path on this machine for `ckpt`: torch fp32 (bit-exact), fp32 fast (fused,
    channels-last), bf16 where the CPU has the units; the ONNX export (`work/model.onnx`) on ONNX Runtime
    fp32 and INT8 and on OpenVINO fp32, bf16 and INT8 (INT8 calibrated on `calibration`'s images)."""
    fp32 = ModelManager.get(ckpt, device="cpu", num_threads=threads)
    paths: dict[str, object] = {"torch-fp32": fp32}
    paths["torch-fp32-fast"] = ModelManager.get(ckpt, device="cpu", fast=True)
    try:
        paths["torch-bf16"] = ModelManager.get(ckpt, device="cpu", precision="bf16")
    except ValueError as e:
        print(f"skipping torch bf16: {e}")
    onnx_path = export_onnx(fp32, work / "model.onnx", check=False)
    paths["ort-fp32"] = ModelManager.get(onnx_path, num_threads=threads)
    paths["ort-int8"] = ModelManager.get(quantize_onnx(onnx_path, work / "model-int8.onnx", calibration),
                                         num_threads=threads)
    try:
        paths["ov-fp32"] = ModelManager.get(onnx_path, backend="openvino", num_threads=threads)
        try:
            paths["ov-bf16"] = ModelManager.get(onnx_path, backend="openvino", num_threads=threads,
                                                precision="bf16")
        except ValueError as e:
            print(f"skipping OpenVINO bf16: {e}")
        xml = quantize_openvino(onnx_path, work / "model-int8.xml", calibration)
        paths["ov-int8"] = ModelManager.get(xml, num_threads=threads)
    except ImportError as e:
        print(f"skipping OpenVINO: {e}")
    return paths


def accuracy_rows(paths: dict[str, object], images: list[Path], ann: Path | None = None,
                  ref: str = "torch-fp32") -> dict[str, dict]:
    """Per path: keypoint deviation from `ref` (median / p95 px, people with score >= 0.3 matched by box
    IoU), the `ref` people it lost and, with `ann`, its COCO AP / AP50 on `images`."""
    base = {p: paths[ref].infer(str(p)) for p in images}
    rows = {}
    for name, model in paths.items():
        devs, lost = [], 0
        for p in images:
            r, f = model.infer(str(p)), base[p]
            keep = f.scores >= 0.3
            dev, matched = matched_deviations(f.boxes[keep], f.keypoints[keep], r.boxes, r.keypoints)
            lost += int(keep.sum()) - matched
            devs.append(dev)
        dev = np.concatenate(devs) if sum(map(len, devs)) else np.array([np.nan])
        rows[name] = {"kpt_dev_median_px": float(np.median(dev)), "unmatched": lost,
                      "kpt_dev_p95_px": float(np.percentile(dev, 95))}
        if ann is not None:
            metrics = evaluate_model(model, ann.parent, ann)
            rows[name].update(AP=metrics["AP"], AP50=metrics.get("AP50"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, type=Path, help="a trained checkpoint (.pth)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", default="precision_accuracy.json")
    args = ap.parse_args()
    if not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint}: no such checkpoint (train one with bench/overfit.py)")
    torch.set_num_threads(args.threads)
    ann = COCO / "test_coco.json"
    images = sorted(COCO.glob("*.jpg"))
    work = Path(tempfile.mkdtemp(prefix="rtmo-precision-"))
    paths = build_paths(args.checkpoint, work, args.threads)
    rows = accuracy_rows(paths, images, ann)
    times: dict[str, list[float]] = {k: [] for k in paths}
    img = str(images[0])
    for m in paths.values():
        m.infer(img)  # warm-up
    for r in range(args.runs):
        for k in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
            t = time.perf_counter()
            paths[k].infer(img)
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["torch-fp32"])
    print(f"\n{args.checkpoint} ({paths['torch-fp32'].input_size[0]}px), {args.threads} threads, "
          f"{len(images)} COCO images, latency on {Path(img).name}, {args.runs} alternating rounds")
    print(f"{'path':<16}{'kpt dev med':>12}{'p95':>8}{'lost':>6}{'AP':>7}{'AP50':>7}{'ms':>8}{'vs fp32':>9}")
    for k, r in rows.items():
        ms = statistics.median(times[k]) * 1e3
        r["end2end_ms"], r["vs_torch_fp32"] = ms, ms / 1e3 / base
        print(f"{k:<16}{r['kpt_dev_median_px']:>12.3f}{r['kpt_dev_p95_px']:>8.2f}{r['unmatched']:>6}"
              f"{r['AP']:>7.3f}{r['AP50'] or float('nan'):>7.3f}{ms:>8.1f}{r['vs_torch_fp32']:>8.2f}x")
    Path(args.json).write_text(json.dumps({"checkpoint": str(args.checkpoint), "threads": args.threads,
                                           "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
