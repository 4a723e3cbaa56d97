"""End-to-end `infer` and forward time of RTMO on this CPU (issue: model/checkpoint, performance section).

    python bench/bench_infer.py [--model PATH_OR_NAME] [--variant s] [--runs 15] [--warmup 5] [--threads 2]

Without --model it builds the variant with the deterministic fixture weights when they are there
(`../shared/fixtures`), else random weights: speed does not depend on the values, except through the
number of detections that reach the DCC, which is printed. Load time is excluded; `infer` includes image
decode, letterbox, forward, NMS, DCC and mapping back. Median of --runs after --warmup.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from paths import ROOT, SHARED  # noqa: E402

import rtmo
from rtmo.infer.api import preprocess
from rtmo.infer.image import read_image

FIXTURES = {"s": "rtmo-s_8xb32-600e_coco-640x640_seed0", "t": "rtmo-t_8xb32-600e_body7-416x416_seed0"}


def timed(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--variant", default="s", choices=list("tsml"))
    ap.add_argument("--image", default=str(SHARED / "data/coco/000000197388.jpg"))
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.model:
        model = rtmo.ModelManager.get(args.model)
        weights = args.model
    else:
        stem = FIXTURES.get(args.variant, "-")
        ckpt = SHARED / "fixtures" / stem / f"{stem}.pth"
        if ckpt.is_file():
            model, weights = rtmo.ModelManager.get(ckpt), f"fixture {ckpt.name}"
        else:
            model, weights = rtmo.RTMO(rtmo.RTMOConfig.preset(args.variant)).eval(), "random init"
    image = args.image if Path(args.image).is_file() else str(ROOT / "rtmo/assets/sample.jpg")
    batch = torch.from_numpy(preprocess([read_image(image)], model.input_size)[0])

    with torch.inference_mode():
        fwd = timed(lambda: model.forward_maps(batch), args.runs, args.warmup)
        e2e = timed(lambda: model.infer(image), args.runs, args.warmup)
    n = len(model.infer(image))
    row = {
        "variant": model.config.variant, "input": list(model.input_size), "weights": weights,
        "image": Path(image).name, "detections": n, "threads": args.threads,
        "forward_s": {"median": statistics.median(fwd), "min": min(fwd), "max": max(fwd)},
        "infer_s": {"median": statistics.median(e2e), "min": min(e2e), "max": max(e2e)},
        "runs": args.runs, "warmup": args.warmup, "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    print(f"RTMO-{row['variant']} {model.input_size[0]}x{model.input_size[1]} ({weights}), "
          f"{args.threads} threads, {n} detections on {row['image']}")
    print(f"  forward            median {row['forward_s']['median']:.4f} s "
          f"(min {row['forward_s']['min']:.4f}, max {row['forward_s']['max']:.4f})")
    print(f"  infer (end to end) median {row['infer_s']['median']:.4f} s "
          f"(min {row['infer_s']['min']:.4f}, max {row['infer_s']['max']:.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
