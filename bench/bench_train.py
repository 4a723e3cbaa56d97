"""Seconds per training iteration, ours vs mmpose's own RTMO, side by side in one run (issue: training).

    python bench/bench_train.py [--variant s] [--size 640] [--batch 4] [--iters 5] [--warmup 2] [--threads 2]

Both sides train from their own initialisation (no pretrained backbone) on one batch of the 4 annotated
COCO images of ../shared/data/coco, made by each library's stage-2 pipeline at the fixed size (mmpose's
`BatchSyncRandomResize` removed), and time one optimiser step: forward, SimOTA, the losses, backward,
gradient clipping, AdamW. mmpose's timing is `model.train_step` (its data preprocessor included; no EMA
or hooks), so ours leaves EMA out too. The stage-1 data pipeline (Mosaic, affine, MixUp, HSV, flip) is
timed separately per batch: in a real run it is spread over dataloader workers.

mmpose runs in the mmpose-ref venv (`bash ../shared/tools/mmpose-ref/setup.sh`), in a subprocess, before
ours; the two are run alternately `--rounds` times so that a change of machine load hits both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from paths import ROOT, SHARED  # noqa: E402

from rtmo import RTMO, RTMOConfig
from rtmo.nn.init import init_weights
from rtmo.train.data import build_train_data
from rtmo.train.losses import Criterion
from rtmo.train.optim import build_optimizer
from rtmo.train.recipes import DatasetSpec, TrainRecipe

TOOL = SHARED / "tools" / "mmpose-ref"
RECIPES = {"s": "rtmo-s_8xb32-600e_coco-640x640", "m": "rtmo-m_16xb16-600e_coco-640x640",
           "l": "rtmo-l_16xb16-600e_coco-640x640"}


def ours(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    recipe = TrainRecipe.load(RECIPES[args.variant]).with_overrides(
        **{"input_size": [args.size, args.size], "data.batch_size": args.batch})
    recipe.data.root = str(SHARED / "data")
    recipe.data.train = recipe.data.stage2_train = [
        DatasetSpec(name="coco", ann_file="coco/test_coco.json", img_prefix="coco/")]
    data = build_train_data(recipe)
    stage1, stage2 = data.build_dataset(1), data.build_dataset(2)
    stage1.seed = stage2.seed = 0
    images, targets = data.collate_fn([stage2[i % len(stage2)] for i in range(args.batch)])

    cfg = RTMOConfig.preset(args.variant)
    model = init_weights(RTMO(cfg)).train()
    model.criterion = Criterion.from_recipe(recipe, 0)  # stage-1 losses, as mmpose's fresh head has
    opt = build_optimizer(model, recipe.optim, args.batch)
    params = [p for p in model.parameters() if p.requires_grad]
    step_s = []
    for it in range(args.warmup + args.iters):
        t = time.perf_counter()
        loss = model(images, targets).loss.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.optim.clip_grad)
        opt.step()
        if it >= args.warmup:
            step_s.append(time.perf_counter() - t)
    if not math.isfinite(loss.item()):
        raise SystemExit(f"our loss is {loss.item()}")
    data_s = []
    for it in range(args.iters):
        t = time.perf_counter()
        data.collate_fn([stage1[(it * args.batch + i) % len(stage1)] for i in range(args.batch)])
        data_s.append(time.perf_counter() - t)
    return {"impl": "rtmo", "train_step_s": step_s, "step_median_s": statistics.median(step_s),
            "data_median_s": statistics.median(data_s), "input_shape": list(images.shape[1:]),
            "instances": [len(t.bboxes) for t in targets], "threads": torch.get_num_threads()}


def mmpose(args: argparse.Namespace) -> dict:
    cmd = [str(args.mmpose_python), str(ROOT / "bench" / "mmpose_train_step.py"), "--tool", str(TOOL),
           "--variant", args.variant, "--size", str(args.size), "--batch", str(args.batch),
           "--iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"mmpose side failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="s", choices=sorted(RECIPES))
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mmpose-python", type=Path,
                    default=Path(os.environ.get("MMPOSE_REF_ROOT", Path.home() / ".cache" / "mmpose-ref"))
                    / "venv" / "bin" / "python")
    ap.add_argument("--no-mmpose", action="store_true", help="time ours only")
    ap.add_argument("--out", type=Path, default=None, help="write all timings as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (SHARED / "data" / "coco" / "test_coco.json").is_file():
        print(f"reference data not found under {SHARED / 'data'}", file=sys.stderr)
        return 2
    run_mm = not args.no_mmpose
    if run_mm and not args.mmpose_python.is_file():
        print(f"mmpose-ref venv not found ({args.mmpose_python}); run `bash {TOOL}/setup.sh` or pass "
              "--no-mmpose", file=sys.stderr)
        return 2

    results: dict[str, list[dict]] = {"rtmo": [], "mmpose": []}
    for r in range(args.rounds):
        if run_mm:
            results["mmpose"].append(mmpose(args))
        results["rtmo"].append(ours(args))
        done = ", ".join(f"{k} {v[-1]['step_median_s']:.3f} s/iter" for k, v in results.items() if v)
        print(f"round {r + 1}: {done}", flush=True)

    def summary(name: str) -> dict:
        runs = results[name]
        return {"step_s": statistics.median(s for r in runs for s in r["train_step_s"]),
                "data_s": statistics.median(r["data_median_s"] for r in runs),
                "input_shape": runs[0]["input_shape"], "instances": runs[0]["instances"]}

    print(f"\nRTMO-{args.variant}, batch {args.batch} at {args.size}x{args.size}, {args.threads} threads, "
          f"{platform.processor() or platform.machine()}; median of {args.rounds}x{args.iters} iterations")
    print(f"{'':8} {'train step (s/iter)':>20} {'stage-1 data (s/batch)':>24}  instances")
    table = {n: summary(n) for n, v in results.items() if v}
    for name, s in table.items():
        print(f"{name:8} {s['step_s']:20.3f} {s['data_s']:24.3f}  {s['instances']}")
    if run_mm:
        ratio = table["mmpose"]["step_s"] / table["rtmo"]["step_s"]
        print(f"train step: mmpose / ours = {ratio:.2f}x")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": table,
                                        "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
