"""The GPU check behind bench/gpu_check.sh: TensorRT FP16 engine from the ONNX export, parity vs torch,
latency at batch 1 and throughput at batch 32 for torch fp32 / fp16, ONNX Runtime CUDA and TensorRT.

    python bench/gpu_check.py [--model CKPT_OR_NAME] [--out DIR] [--runs 30]

Every step that lacks its package or device says why and is skipped; the JSON and the table list what ran.
Parity: detections of each backend against torch fp32 at threshold 0.3 on the shared images, matched by
box IoU >= 0.5; reported as matched fraction, box median px and keypoint median px (fp16 moves keypoints
by a fraction of a pixel on trained weights; the random fixture weights amplify it, see test_precision).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from paths import ROOT, SHARED  # noqa: E402

FIX_S = SHARED / "fixtures" / "rtmo-s_8xb32-600e_coco-640x640_seed0"


def cuda_timed(fn, runs: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def parity(ref, got) -> dict[str, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_peers import matched_deviations

    from rtmo.ops.boxes import box_iou

    fracs, boxes, kpts = [], [], []
    for a, b in zip(ref, got):
        keep = a.scores >= 0.3
        if not keep.any():
            continue
        dev, matched = matched_deviations(a.boxes[keep], a.keypoints[keep], b.boxes, b.keypoints)
        fracs.append(matched / int(keep.sum()))
        kpts.append(dev)
        if len(b):
            iou = box_iou(torch.from_numpy(a.boxes[keep]), torch.from_numpy(b.boxes)).numpy()
            boxes.append(np.abs(a.boxes[keep] - b.boxes[iou.argmax(1)]).ravel())
    cat = lambda xs: np.concatenate(xs) if xs and sum(map(len, xs)) else np.array([np.nan])  # noqa: E731
    return {"matched": float(np.mean(fracs)) if fracs else float("nan"),
            "box_median_px": float(np.median(cat(boxes))), "kpt_median_px": float(np.median(cat(kpts)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = FIX_S / f"{FIX_S.name}.pth"
    ap.add_argument("--model", default=str(default) if default.is_file() else "rtmo-s-coco")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: skipped (torch sees no CUDA device)")
        return 0
    from rtmo import ModelManager
    from rtmo.export.onnx import export_onnx
    from rtmo.export.runtime import build_engine, load_exported
    from rtmo.infer.api import preprocess
    from rtmo.infer.image import read_image

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "model": args.model,
                    "rows": {}, "skipped": {}}
    images = sorted(SHARED.glob("data/coco/*.jpg")) + sorted(SHARED.glob("data/crowdpose/*.jpg"))
    images = images or [ROOT / "rtmo" / "assets" / "sample.jpg"]
    arrays = [read_image(p) for p in images]

    ref_model = ModelManager.get(args.model, device="cuda")
    size = tuple(ref_model.input_size)
    b1, _ = preprocess(arrays[:1], size)
    bn, _ = preprocess([arrays[i % len(arrays)] for i in range(args.batch)], size)
    ref = ref_model.infer([str(p) for p in images], threshold=0.3)

    onnx_path = export_onnx(ModelManager.get(args.model, device="cpu"), args.out / "model.onnx", check=False)
    backends: dict[str, object] = {"torch-fp32": ref_model}
    try:
        backends["torch-fp16"] = ModelManager.get(args.model, device="cuda", precision="fp16")
    except ValueError as e:
        report["skipped"]["torch-fp16"] = str(e)
    try:
        backends["ort-cuda"] = load_exported(onnx_path, "onnxruntime", device="cuda")
    except (ValueError, ImportError) as e:
        report["skipped"]["ort-cuda"] = str(e)
    try:
        t = time.perf_counter()
        engine = build_engine(onnx_path, args.out / "model-fp16.engine", half=True, max_batch=args.batch)
        report["trt_build_s"] = time.perf_counter() - t
        backends["tensorrt-fp16"] = load_exported(engine, "tensorrt")
    except (ImportError, RuntimeError, ValueError) as e:
        report["skipped"]["tensorrt-fp16"] = str(e).splitlines()[0]

    for name, m in backends.items():
        row: dict = {}
        try:
            row["parity_vs_torch_fp32"] = parity(ref, m.infer([str(p) for p in images], threshold=0.3))
            lat = cuda_timed(lambda m=m: m.predict_batch(b1), args.runs)
            e2e = cuda_timed(lambda m=m: m.infer(str(images[0])), args.runs)
            thr = cuda_timed(lambda m=m: m.predict_batch(bn), max(args.runs // 3, 3), warmup=2)
            row.update({"latency_b1_ms": statistics.median(lat) * 1e3,
                        "end2end_b1_ms": statistics.median(e2e) * 1e3,
                        f"throughput_b{args.batch}_img_s": args.batch / statistics.median(thr)})
        except Exception as e:  # report and go on: one failing backend must not hide the others
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        report["rows"][name] = row
    report["total_s"] = time.perf_counter() - t0

    print(f"\n{report['gpu']}, {Path(args.model).name}, {size[0]}x{size[1]}, {len(images)} parity images")
    print(f"{'backend':<15}{'b1 ms':>8}{'e2e ms':>8}{f'b{args.batch} img/s':>12}{'matched':>9}{'box px':>8}"
          f"{'kpt px':>8}")
    for name, r in report["rows"].items():
        if "error" in r:
            print(f"{name:<15}error: {r['error']}")
            continue
        p = r["parity_vs_torch_fp32"]
        print(f"{name:<15}{r['latency_b1_ms']:>8.2f}{r['end2end_b1_ms']:>8.2f}"
              f"{r[f'throughput_b{args.batch}_img_s']:>12.1f}{p['matched']:>9.3f}{p['box_median_px']:>8.3f}"
              f"{p['kpt_median_px']:>8.3f}")
    for name, why in report["skipped"].items():
        print(f"{name:<15}skipped: {why}")
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'gpu_check.json'} ({report['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
