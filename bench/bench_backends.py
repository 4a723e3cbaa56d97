"""PyTorch eager vs ONNX Runtime vs OpenVINO, end-to-end latency of RTMO on this CPU, side by side.

    python bench/bench_backends.py [--variants s] [--runs 20] [--warmup 3] [--threads 2] [--json out.json]

End-to-end = `infer(path)`: image decode, letterbox, network, NMS, DCC, mapping back (batch 1); "model" is
the backend call on the letterboxed tensor alone. All backends run with the same thread count
(torch.set_num_threads, ORT intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS) and are timed
interleaved (one run of each backend per round), so load from other processes hits them alike. RTMO-s/t
use the fixture weights when `../shared/fixtures` has them, m/l (or any variant without fixtures) fresh
random weights: speed does not depend on the values, except through the number of detections reaching the
DCC, which is printed. The bar from the issue: fastest backend end-to-end RTMO-s <= 0.6 x mmpose's 0.269 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from paths import SHARED  # noqa: E402

from rtmo import RTMO, RTMOConfig
from rtmo.export.onnx import export_onnx
from rtmo.export.runtime import OnnxRuntimeModel, OpenVINOModel
from rtmo.infer.api import infer, preprocess
from rtmo.infer.image import read_image

FIXTURES = {"s": "rtmo-s_8xb32-600e_coco-640x640_seed0", "t": "rtmo-t_8xb32-600e_body7-416x416_seed0"}
MMPOSE_S_SECONDS = 0.269  # mmpose RTMO-s end-to-end on this CPU class (from the issue)


def build(variant: str) -> tuple[RTMO, str]:
    model = RTMO(RTMOConfig.preset(variant))
    p = SHARED / "fixtures" / FIXTURES.get(variant, "-") / f"{FIXTURES.get(variant, '-')}.pth"
    if p.exists():
        model.load_state_dict(torch.load(p, weights_only=True)["state_dict"])
        return model.eval(), "fixture (random, mmpose-made)"
    torch.manual_seed(0)
    return RTMO(RTMOConfig.preset(variant)).eval(), "fresh random init"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="s", help="comma separated subset of t,s,m,l")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", default=str(SHARED / "data" / "coco" / "000000000785.jpg"))
    ap.add_argument("--json", default="bench_backends.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    image = Path(args.image)
    if not image.exists():
        raise SystemExit(f"{image}: no such image (pass --image)")
    workdir = Path(tempfile.mkdtemp(prefix="rtmo-bench-"))
    rows = []
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        model, weights = build(variant)
        t = time.perf_counter()
        onnx_path = export_onnx(model, workdir / f"rtmo-{variant}.onnx", simplify=False, check=False)
        export_s = time.perf_counter() - t
        backends = {"torch": model, "onnxruntime": OnnxRuntimeModel(onnx_path, num_threads=args.threads)}
        try:
            backends["openvino"] = OpenVINOModel(onnx_path, num_threads=args.threads)
        except ImportError as e:
            print(f"skipping OpenVINO: {e}")
        batch, _ = preprocess([read_image(image)], model.input_size)
        e2e: dict[str, list[float]] = {k: [] for k in backends}
        net: dict[str, list[float]] = {k: [] for k in backends}
        dets = {k: len(infer(m, str(image))) for k, m in backends.items()}
        for r in range(args.warmup + args.runs):
            for name, m in backends.items():
                t = time.perf_counter()
                infer(m, str(image))
                t1 = time.perf_counter()
                m.predict_batch(batch)
                t2 = time.perf_counter()
                if r >= args.warmup:
                    e2e[name].append(t1 - t)
                    net[name].append(t2 - t1)
        for name in backends:
            q = sorted(e2e[name])
            rows.append({
                "variant": variant, "backend": name, "weights": weights, "detections": dets[name],
                "end2end_median_s": statistics.median(e2e[name]), "end2end_min_s": q[0],
                "end2end_p90_s": q[int(0.9 * (len(q) - 1))], "model_median_s": statistics.median(net[name]),
                "export_s": export_s if name != "torch" else None})
    print(f"\nRTMO end-to-end on {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"batch 1, {image.name}, median of {args.runs} (interleaved)")
    print(f"{'variant':<8}{'backend':<13}{'end2end ms':>11}{'min':>8}{'p90':>8}{'model ms':>10}{'dets':>6}"
          f"{'vs torch':>10}")
    for r in rows:
        base = next(x for x in rows if x["variant"] == r["variant"] and x["backend"] == "torch")
        print(f"{r['variant']:<8}{r['backend']:<13}{r['end2end_median_s'] * 1e3:>11.1f}"
              f"{r['end2end_min_s'] * 1e3:>8.1f}{r['end2end_p90_s'] * 1e3:>8.1f}"
              f"{r['model_median_s'] * 1e3:>10.1f}"
              f"{r['detections']:>6}{base['end2end_median_s'] / r['end2end_median_s']:>9.2f}x")
    s_rows = [r for r in rows if r["variant"] == "s"]
    verdict = None
    if s_rows:
        best = min(s_rows, key=lambda r: r["end2end_median_s"])
        bar = 0.6 * MMPOSE_S_SECONDS
        verdict = {"fastest": best["backend"], "seconds": best["end2end_median_s"], "bar_s": bar,
                   "passes": best["end2end_median_s"] <= bar}
        print(f"\nRTMO-s fastest: {best['backend']} {best['end2end_median_s']:.3f} s vs bar 0.6 x "
              f"{MMPOSE_S_SECONDS} = {bar:.3f} s -> {'PASS' if verdict['passes'] else 'FAIL'}")
    out = {"threads": args.threads, "runs": args.runs, "warmup": args.warmup, "image": str(image),
           "torch": torch.__version__, "rows": rows, "rtmo_s_bar": verdict}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
