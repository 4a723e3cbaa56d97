"""Overfit check: train RTMO from scratch on the 4 annotated COCO images of ../shared/data/coco and watch the
COCO keypoint AP (pycocotools, on the same 4 images) rise. A training-path smoke test, not a benchmark of
accuracy: the numbers only say that assignment, losses, optimiser and schedule work together.

    python bench/overfit.py --variant t --size 256 --iters 3000 --eval-every 250 --out curve.json
    python bench/overfit.py --backbone resnet18 ...   # ResNet-18 backbone (no pretrained weights here)

Prints the loss/AP curve and seconds per iteration; writes the curve as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from rtmo import RTMO, RTMOConfig
from rtmo.nn.init import init_weights
from rtmo.ops.letterbox import get_warp_matrix, letterbox_params
from rtmo.train.data import TrainData
from rtmo.train.recipes import TrainRecipe, scale_epochs
from rtmo.train.trainer import Trainer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco"


def load_samples(ann_file: Path, size: int) -> list[tuple[torch.Tensor, dict]]:
    """The annotated images, letterboxed to size x size with their people warped alike (the stage-2
    geometry without augmentation), filtered as FilterAnnotations does (box > 1 px, >= 1 visible keypoint)."""
    coco = json.loads(ann_file.read_text())
    by_img: dict[int, list] = {}
    for a in coco["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    samples = []
    for info in sorted(coco["images"], key=lambda i: i["file_name"]):
        img = cv2.imread(str(ann_file.parent / info["file_name"]))
        if img is None:
            raise FileNotFoundError(ann_file.parent / info["file_name"])
        h, w = img.shape[:2]
        center, scale = letterbox_params(w, h, (size, size))
        mat = get_warp_matrix(center, scale, (size, size))
        canvas = cv2.warpAffine(img, mat, (size, size), flags=cv2.INTER_LINEAR, borderValue=(114, 114, 114))
        boxes, kpts, vis, areas = [], [], [], []
        for a in by_img.get(info["id"], []):
            if a.get("iscrowd", 0):
                continue
            x, y, bw, bh = a["bbox"]
            corners = np.array([[np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)],
                                [np.clip(x + bw, 0, w - 1), np.clip(y + bh, 0, h - 1)]], np.float32)
            k = np.asarray(a["keypoints"], np.float32).reshape(-1, 3)
            pts = np.concatenate([corners, k[:, :2]]) @ mat[:, :2].T + mat[:, 2]
            box = np.clip(pts[:2].reshape(4), 0, size)
            v = np.minimum(k[:, 2], 1)
            v[(pts[2:] < 0).any(1) | (pts[2:] > size).any(1)] = 0
            if box[2] - box[0] <= 1 or box[3] - box[1] <= 1 or v.sum() < 1:
                continue
            boxes.append(box)
            kpts.append(pts[2:])
            vis.append(v)
            areas.append(a["area"] * abs(np.linalg.det(mat[:, :2])))
        target = {"bboxes": torch.tensor(np.array(boxes), dtype=torch.float32).reshape(-1, 4),
                  "keypoints": torch.tensor(np.array(kpts), dtype=torch.float32).reshape(len(kpts), -1, 2),
                  "keypoints_visible": torch.tensor(np.array(vis), dtype=torch.float32).reshape(len(vis), -1),
                  "areas": torch.tensor(areas, dtype=torch.float32),
                  "labels": torch.zeros(len(boxes), dtype=torch.long)}
        image = torch.from_numpy(np.ascontiguousarray(canvas.transpose(2, 0, 1)))
        samples.append((image, target))
    return samples


def collate(samples: list) -> tuple[torch.Tensor, list]:
    from rtmo.train.losses import Targets

    images = torch.stack([s[0] for s in samples]).float()
    return images, [Targets(**s[1]) for s in samples]


class Fixed(torch.utils.data.Dataset):
    """The samples, `repeat` times per epoch (fewer epoch-end checkpoint writes on long runs). Items come
    out in turn whatever index the sampler asks for, so that every batch of 4 holds each image once
    (read in the main process: the overfit runs with workers=0)."""

    def __init__(self, samples: list, repeat: int = 1):
        self.samples, self.repeat, self.calls = samples, repeat, 0

    def __len__(self) -> int:
        return len(self.samples) * self.repeat

    def __getitem__(self, i: int):
        self.calls += 1
        return self.samples[(self.calls - 1) % len(self.samples)]


def coco_ap(model: RTMO, ann_file: Path) -> dict[str, float]:
    """Keypoint AP of `model` on the annotated images (rtmo.eval.coco: pycocotools, score_mode='bbox')."""
    from rtmo.eval.coco import evaluate_model

    m = evaluate_model(model, ann_file.parent, ann_file, protocol="coco", batch_size=4)
    return {"AP": float(m["AP"]), "AP50": float(m["AP50"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="t", choices=["t", "s"])
    ap.add_argument("--backbone", default="csp", choices=["csp", "resnet18"])
    ap.add_argument("--size", type=int, default=256, help="input size (multiple of 32)")
    ap.add_argument("--iters", type=int, default=3000, help="training iterations (batch of the 4 images)")
    ap.add_argument("--iters-per-epoch", type=int, default=10, help="the 4 images repeated this many times "
                    "per epoch; schedule milestones, validation and checkpoints are per epoch")
    ap.add_argument("--eval-every", type=int, default=250,
                    help="iterations (a multiple of --iters-per-epoch)")
    ap.add_argument("--lr", type=float, default=0.0002, help="base LR (the recipe's 0.004 is for batch 256; "
                    "at batch 4 it stalls, see the README)")
    ap.add_argument("--head-switch", type=float, default=None, help="fraction of the iterations after "
                    "which the head's stage-2 losses start (default: the recipe's 280/600)")
    ap.add_argument("--ema", action="store_true", help="validate the EMA weights (the recipe's default; with "
                    "momentum 2e-4 they trail the model for the first ~2000 iterations)")
    ap.add_argument("--ann", type=Path, default=DATA / "test_coco.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the curve as JSON here")
    ap.add_argument("--run-dir", type=Path, default=Path("runs/overfit"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.ann.is_file():
        print(f"annotations not found: {args.ann}", file=sys.stderr)
        return 2
    if args.size % 32:
        print("--size must be a multiple of 32", file=sys.stderr)
        return 2
    ipe = args.iters_per_epoch
    if args.iters % ipe or args.eval_every % ipe:
        print("--iters and --eval-every must be multiples of --iters-per-epoch", file=sys.stderr)
        return 2
    epochs = args.iters // ipe

    name = "rtmo-t_8xb32-600e_body7-416x416" if args.variant == "t" else "rtmo-s_8xb32-600e_coco-640x640"
    recipe = TrainRecipe.load(name).with_overrides(**{
        "input_size": [args.size, args.size], "augment.multiscale_range": [args.size, args.size],
        "data.batch_size": 4, "data.workers": 0, "optim.lr": args.lr, "ema.enabled": args.ema,
        # the recipe's floor (and its stage-2 bump) is 5 % of its base LR: keep that ratio for another LR
        "schedule.eta_min": args.lr * 0.05,
        "runtime.log_interval": 1, "runtime.checkpoint_interval": 10**9})
    recipe = scale_epochs(recipe, epochs)
    if args.head_switch is not None:
        switch = int(round(args.head_switch * epochs))
        recipe = recipe.with_overrides(**{"schedule.head_switch_epoch": switch})
    # validate every --eval-every iterations only (not every epoch of the last 20/600 of the schedule)
    recipe = recipe.with_overrides(**{"runtime.val_interval": args.eval_every // ipe,
                                      "runtime.val_every_epoch_from": epochs})
    cfg = RTMOConfig.preset(args.variant)
    if args.backbone == "resnet18":
        from rtmo.config import ResNetConfig

        cfg.backbone_config = ResNetConfig(depth=18, widen_factor=cfg.widen_factor,
                                           deepen_factor=cfg.deepen_factor)
    cfg.input_size = (args.size, args.size)
    torch.manual_seed(0)
    model = init_weights(RTMO(cfg))  # from scratch: no YOLOX backbone (no network here)
    samples = load_samples(args.ann, args.size)
    print(f"{args.variant} ({args.backbone}) at {args.size}x{args.size}: {len(samples)} images, "
          f"{sum(len(t['bboxes']) for _, t in samples)} people, {args.iters} iterations, lr {args.lr}")

    curve: list[dict] = []
    t_start = time.perf_counter()

    def evaluate(net: RTMO) -> dict[str, float]:
        m = coco_ap(net, args.ann)
        m["seconds"] = time.perf_counter() - t_start
        curve.append({"iter": trainer.iter, **m})
        return m

    shutil.rmtree(args.run_dir, ignore_errors=True)  # a fresh run each time (the trainer refuses to mix runs)
    trainer = Trainer(model, recipe, TrainData(lambda stage: Fixed(samples, ipe), collate), args.run_dir,
                      device=args.device, evaluate=evaluate, progress=False, tensorboard=False)
    trainer.fit()
    losses = [json.loads(line) for line in open(args.run_dir / "metrics.jsonl")]
    train_recs = [r for r in losses if r["type"] == "train"][-args.iters:]
    sec_it = float(np.median([r["sec_per_iter"] for r in train_recs]))
    print(f"{'iter':>6} {'loss':>9} {'AP':>7} {'AP50':>7}")
    by_iter = {r["iter"]: r for r in train_recs}
    for c in curve:
        loss = by_iter.get(c["iter"], {}).get("loss", float("nan"))
        print(f"{c['iter']:6d} {loss:9.3f} {c['AP']:7.3f} {c['AP50']:7.3f}")
    print(f"seconds/iteration (batch 4, {args.device}, {args.threads} threads): {sec_it:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "curve": curve,
                                        "sec_per_iter": sec_it}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
