"""`rtmo benchmark -m MODEL [--backend ...]`: latency, throughput and memory (rtmo.benchmark measures)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_benchmark(sub: Any) -> argparse.ArgumentParser:
    from ..benchmark import BACKENDS

    p = sub.add_parser("benchmark", help="latency / throughput / memory of a model on a backend")
    p.add_argument("model_pos", nargs="?", default=None, metavar="model", help="the same as --model")
    p.add_argument("--model", "-m", default=None, help="registry name, checkpoint path, or exported .onnx / "
                   ".xml / .engine file (default: rtmo-s-coco)")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="default: from the file suffix (.onnx onnxruntime, .xml openvino, .engine tensorrt), "
                        "torch for checkpoints")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--fast", action="store_true",
                   help="checkpoints: fused BatchNorm/RepVGG, channels-last float32, reassociated DCC "
                        "(float rounding instead of bit-exact); exported graphs already run this way")
    p.add_argument("--batch-sizes", default="1,4", help="comma separated, e.g. 1,4")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="default: torch's / the physical cores")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    p.add_argument("--threshold", type=float, default=None, help="person score threshold (default: model's)")
    p.add_argument("--persons", action="store_true",
                   help="time single images with more and more people instead (cost per detection count)")
    p.add_argument("--data", default=None, help="with --persons: folder with COCO-format test_*.json and "
                   "images to crop real people from (default: tile the image 1x1 .. 4x4)")
    p.add_argument("--images", nargs="*", default=None, help="images to use (default: the packaged sample)")
    p.add_argument("--nms-threshold", type=float, default=None,
                   help="NMS IoU threshold (default: the model's; fixed inside exported graphs)")
    p.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="run folder: benchmark.json (the table's numbers) is written inside it")
    p.set_defaults(func=run_benchmark)
    return p


def run_benchmark(args: argparse.Namespace) -> int:
    if args.model and args.model_pos and args.model != args.model_pos:
        raise ValueError("give the model once: `rtmo benchmark --model M`")
    model = args.model or args.model_pos or "rtmo-s-coco"
    try:
        sizes = tuple(int(s) for s in str(args.batch_sizes).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--batch-sizes takes comma separated integers, not {args.batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--batch-sizes takes positive integers, not {args.batch_sizes!r}")
    for name in ("runs", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name} must be >= 1, got {v}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    for img in args.images or []:
        if not Path(img).is_file():
            raise FileNotFoundError(f"--images: {img}: no such file")
    out_dir = Path(args.output) if args.output is not None else None
    if out_dir is not None:  # checked before the benchmark runs, not after minutes of timing
        from ..utils.fileio import blocking_file

        blocker = blocking_file(out_dir)
        if blocker is not None or out_dir.suffix.lower() == ".json":
            raise ValueError(f"--output {out_dir}: give a folder (benchmark.json is written inside it)"
                             + (f"; {blocker} is a file" if blocker is not None else ""))
    from ..benchmark import benchmark, format_table

    res = benchmark(model, args.backend, sizes, args.runs, args.warmup, args.persons, args.images,
                    args.threads, args.device, threshold=args.threshold, precision=args.precision,
                    data_root=args.data, nms_threshold=args.nms_threshold, fast=args.fast)
    print(format_table(res))
    if out_dir is not None:
        from ..utils.fileio import atomic_write_text

        out_dir.mkdir(parents=True, exist_ok=True)
        path = atomic_write_text(out_dir / "benchmark.json", json.dumps(res, indent=2))
        print(f"wrote {path}")
    return 0
