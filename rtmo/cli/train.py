"""`rtmo train RECIPE`: train following an official recipe (by model or recipe name) or a TOML file."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .common import CLIError, add_device_option, add_model_option, add_output_option, check_positive
from .models import recipe_for_model

TRAIN_FILES = ("last.pth (every epoch), best.pth (best validation AP), epoch_N.pth (every checkpoint "
               "interval), metrics.jsonl (losses and metrics), TensorBoard events when installed")


def add_train(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model following an official recipe or a TOML recipe file",
                       description="Train RTMO. What is trained is a recipe: an official model name "
                                   "(rtmo-s-coco -> its recipe), an official recipe name "
                                   "(rtmo-s_8xb32-600e_coco-640x640) or a TOML file; `rtmo train --list` "
                                   "shows them.")
    p.add_argument("recipe", nargs="?", default=None, help="model name, recipe name or .toml path "
                   "(the same as -m/--model)")
    add_model_option(p, default=None, help="what to train: model name (rtmo-s-coco), recipe name or .toml")
    p.add_argument("--list", action="store_true", help="list the official recipes and model names, then exit")
    p.add_argument("--init-from", default=None, help="weights to start from (registry name or .pth), e.g. "
                   "fine-tuning an official checkpoint; unlike -m/--model it sets the starting weights, not "
                   "the architecture or recipe")
    add_output_option(p, "runs/train", TRAIN_FILES)
    p.add_argument("--data-root", default=None, help="dataset root (overrides the recipe's)")
    p.add_argument("--train-ann", default=None, help="train on this COCO-format keypoint file instead of the "
                   "recipe's datasets (any keypoint set; needs --train-images)")
    p.add_argument("--train-images", default=None, help="image folder of --train-ann")
    p.add_argument("--val-ann", default=None, help="validate on this COCO-format file (needs --val-images)")
    p.add_argument("--val-images", default=None, help="image folder of --val-ann")
    p.add_argument("--backbone", default=None, choices=["csp", "resnet18", "resnet34", "resnet50"],
                   help="backbone (default: the recipe's, CSPDarknet)")
    p.add_argument("--backbone-init", default=None, help="backbone weights: YOLOX checkpoint (name such as "
                   "yolox-s, URL or file) for CSPDarknet, torchvision file for ResNet; '' for none")
    p.add_argument("--epochs", type=int, default=None, help="rescale the schedule to this many epochs")
    p.add_argument("--iters", type=int, default=None, help="iterations per epoch (default: the whole "
                   "training set); with --epochs E a short run of E x N iterations")
    p.add_argument("--val-interval", type=int, default=None, help="validate every N epochs (and after the "
                   "last); default: the recipe's, rescaled with --epochs")
    p.add_argument("--batch-size", type=int, default=None, help="per-device batch size")
    add_device_option(p, "training (several GPUs: start with torchrun --nproc_per_node N -m rtmo train)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue from OUTPUT/last.pth, or from the given checkpoint")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def _list_recipes() -> int:
    from ..hub.zoo import REGISTRY
    from ..train.recipes import list_recipes

    by_recipe = {recipe_for_model(n): n for n in REGISTRY}
    rows = [(r, by_recipe.get(r, "")) for r in list_recipes()]
    width = max(len(r) for r, _ in rows)
    print(f"{'recipe'.ljust(width)}  model name")
    for r, n in rows:
        print(f"{r.ljust(width)}  {n}".rstrip())
    return 0


def _training_logs_above_the_bar() -> None:
    """Log lines go through tqdm.write, so they print above the progress bar instead of onto it.

    Installed only when nothing configured logging (train() then keeps it); rank 0 logs, others warn."""
    import logging

    root = logging.getLogger()
    if root.handlers:
        return
    from tqdm import tqdm

    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                tqdm.write(self.format(record), file=sys.stderr)
            except Exception:  # noqa: BLE001 - logging must never break training
                self.handleError(record)

    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)


def run_train(args: argparse.Namespace) -> int:
    if args.list:
        return _list_recipes()
    if args.recipe is not None and args.model is not None and args.recipe != args.model:
        raise CLIError(f"give what to train once: {args.recipe!r} or -m {args.model!r}")
    name = args.recipe or args.model
    if name is None:
        raise CLIError("name what to train: `rtmo train rtmo-s-coco` (see `rtmo train --list`)")
    check_positive(args, ("epochs", "iters", "val_interval", "batch_size"))
    from ..utils.device import resolve_devices

    devices = resolve_devices(args.device) if args.device is not None else None
    if devices is not None and len(devices) > 1 and "WORLD_SIZE" not in os.environ:
        raise CLIError(f"--device {args.device} names {len(devices)} devices: start one process per device "
                       f"with torchrun --nproc_per_node {len(devices)} -m rtmo train ...")
    from ..hub.zoo import REGISTRY, fetch
    from ..train.recipes import TrainRecipe, scale_epochs
    from ..train.run import train

    recipe = TrainRecipe.load(recipe_for_model(name) or name)
    epochs = args.epochs
    if args.val_interval is not None:
        # Rescale here so the interval given is the one used (train() would rescale it with the schedule).
        if epochs is not None:
            recipe, epochs = scale_epochs(recipe, epochs), None
        recipe = recipe.with_overrides(**{"runtime.val_interval": args.val_interval,
                                          "runtime.val_every_epoch_from": recipe.schedule.epochs})
    init_from = args.init_from
    if init_from in REGISTRY:
        init_from = fetch(init_from, progress=not args.quiet)
    # One process: the device named. Under torchrun every rank takes cuda:LOCAL_RANK of the type named.
    device = None
    if devices is not None:
        device = devices[0].type if "WORLD_SIZE" in os.environ else str(devices[0])
    _training_logs_above_the_bar()
    summary = train(recipe, data_root=args.data_root, out_dir=args.output, epochs=epochs,
                    batch_size=args.batch_size, device=device, workers=args.workers, resume=args.resume,
                    init_from=init_from, amp=args.amp, seed=args.seed, backbone=args.backbone,
                    backbone_init=args.backbone_init, train_ann=args.train_ann,
                    train_images=args.train_images,
                    val_ann=args.val_ann, val_images=args.val_images, max_iters_per_epoch=args.iters,
                    progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(train_summary(summary, Path(args.output)))
    return 0


def train_summary(summary: dict[str, Any], out: Path) -> str:
    """The closing lines of `rtmo train`: epochs and iterations done, the best metric, the files."""
    best = summary.get("best") or {}
    lines = [f"trained {summary.get('epoch')} epoch(s), {summary.get('iter')} iterations"]
    if best.get("metric") is not None and best.get("epoch", -1) >= 0:
        lines.append(f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch'] + 1}")
    else:
        lines.append("no validation ran (no validation set): best.pth not written")
    files = [p.name for p in (out / "best.pth", out / "last.pth", out / "metrics.jsonl") if p.exists()]
    lines.append(f"files in {out}: {', '.join(files) or 'none'}")
    return "\n".join(lines)

