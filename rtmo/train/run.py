"""`train(recipe, ...)`: everything a run needs, built from one recipe: the data (`build_train_data`), the
model (`model_config`, initialised from scratch plus a pretrained backbone, or from a checkpoint), the
validation (`default_evaluator`) and the `Trainer`, which owns the criterion of each stage."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..config import ResNetConfig, RTMOConfig
from ..eval.coco import evaluate_model
from ..hub.zoo import load_state_dict_checked, read_checkpoint
from ..model import RTMO, load_pretrained_backbone
from ..nn.init import init_weights
from ..utils import dist as du
from ..utils.device import resolve_device
from .data import TrainData, build_train_data
from .recipes import TrainRecipe, scale_epochs
from .rundir import check_run_dir, load_checkpoint, seed_everything
from .trainer import Evaluator, Trainer

log = logging.getLogger("rtmo.train")


def train(recipe: TrainRecipe | str | Path, *, data_root: str | Path | None = None,
          out_dir: str | Path = "runs/train", epochs: int | None = None, batch_size: int | None = None,
          device: str | None = None, workers: int | None = None, resume: str | Path | bool | None = None,
          init_from: str | Path | None = None, backbone: str | None = None,
          backbone_init: str | None = None, amp: bool | None = None,
          seed: int | None = None, max_iters_per_epoch: int | None = None, data: TrainData | None = None,
          evaluate: Evaluator | None | bool = True, progress: bool = True,
          train_ann: str | Path | None = None, train_images: str | Path | None = None,
          val_ann: str | Path | None = None, val_images: str | Path | None = None) -> dict[str, Any]:
    """Train an RTMO model following `recipe` (a `TrainRecipe`, an official config name or a TOML path).

    `epochs` rescales the schedule: every epoch milestone (warm-up, cosines, bump, switches, validation
    from) is multiplied by `epochs / recipe epochs`, keeping the shape of the official schedule.
    `resume=True` continues from `out_dir/last.pth`; `init_from` loads weights (e.g. an official
    checkpoint) before training; `backbone` picks 'csp' or 'resnet18/34/50'; `backbone_init` overrides
    the recipe's YOLOX checkpoint ('' for none; a torchvision file for a ResNet).

    `train_ann`/`train_images` replace the recipe's training sets by one COCO-format file and its image
    folder (used for both stages), `val_ann`/`val_images` its validation set. The keypoint set (count,
    names, flip pairs, OKS sigmas) comes from the training annotations: a custom set trains a model with
    that many keypoints, and its checkpoints carry the set.
    """
    if workers is not None and workers < 0:
        raise ValueError(f"workers (--workers) must be >= 0, got {workers}")
    if device is not None:
        resolve_device(device)  # a device this machine lacks fails now, not after the data is read
    if not isinstance(recipe, TrainRecipe):
        recipe = TrainRecipe.load(recipe)
    over: dict[str, Any] = {}
    if data_root is not None:
        over["data.root"] = str(data_root)
    if batch_size is not None:
        over["data.batch_size"] = int(batch_size)
    if amp is not None:
        over["runtime.amp"] = over["runtime.cpu_amp"] = bool(amp)
    if seed is not None:
        over["runtime.seed"] = int(seed)
    if backbone is not None:
        over["backbone"] = backbone
        if backbone != "csp" and backbone_init is None:
            over["backbone_init"] = ""  # the recipe's YOLOX file does not fit a ResNet
    if backbone_init is not None:
        over["backbone_init"] = backbone_init
    if (train_ann is None) != (train_images is None) or (val_ann is None) != (val_images is None):
        raise ValueError("give annotation files together with their image folders (train_ann with "
                         "train_images, val_ann with val_images)")
    for path, what in ((train_ann, "training annotations"), (val_ann, "validation annotations")):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{what} not found: {path}")
    for path, what in ((train_images, "training images"), (val_images, "validation images")):
        if path is not None and not Path(path).is_dir():
            raise FileNotFoundError(f"{what} folder not found: {path}")
    if train_ann is not None:
        over["data.train"] = [{"name": Path(train_ann).stem, "ann_file": str(Path(train_ann).resolve()),
                               "img_prefix": str(Path(train_images).resolve())}]
        over["data.stage2_train"] = None
    if val_ann is not None:
        over["data.val_ann_file"] = str(Path(val_ann).resolve())
        over["data.val_img_prefix"] = str(Path(val_images).resolve())
    recipe = recipe.with_overrides(**over)
    if epochs is not None:
        recipe = scale_epochs(recipe, epochs)

    if not logging.getLogger().handlers:  # rank 0 logs; the other ranks only warn
        rank0 = int(os.environ.get("RANK", "0")) == 0
        logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING,
                            format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    out_dir = Path(out_dir)
    if resume is True:
        resume = out_dir / "last.pth"
    # Checked before any data is read or weights are downloaded: a wrong folder or file fails at once.
    if int(os.environ.get("RANK", "0")) == 0:
        check_run_dir(out_dir, resume=bool(resume))
    if resume:
        load_checkpoint(resume)
    if data is None:
        data = build_train_data(recipe)
    kinfo = getattr(data.build_dataset(1), "keypoint_info", None)
    if kinfo is not None and kinfo.num_keypoints != recipe.num_keypoints:
        log.info("the training set has %d keypoints (%s): training a %d-keypoint model", kinfo.num_keypoints,
                 kinfo.name, kinfo.num_keypoints)
        recipe = recipe.with_overrides(num_keypoints=kinfo.num_keypoints)
    cfg = model_config(recipe)
    seed_everything(recipe.runtime.seed)  # the same initial weights on every rank and every run
    model = RTMO(cfg, keypoint_info=kinfo)
    if init_from:
        load_state_dict_checked(model, read_checkpoint(init_from)[0])
    elif not resume:
        init_weights(model)
        if recipe.backbone_init:
            load_backbone(model, recipe.backbone_init)
    if evaluate is True:
        evaluate = default_evaluator(recipe)
    trainer = Trainer(model, recipe, data, out_dir, device=device, evaluate=evaluate or None,
                      resume=resume or None, workers=workers, max_iters_per_epoch=max_iters_per_epoch,
                      progress=progress)
    try:
        return trainer.fit()
    finally:
        trainer.close()
        du.cleanup()


def model_config(recipe: TrainRecipe) -> RTMOConfig:
    """The RTMOConfig a recipe trains: its variant, keypoint count, input size and backbone."""
    cfg = RTMOConfig.preset(recipe.variant, recipe.num_keypoints)
    cfg.input_size = tuple(recipe.input_size)
    if recipe.backbone != "csp":
        depths = {"resnet18": 18, "resnet34": 34, "resnet50": 50}
        if recipe.backbone not in depths:
            raise ValueError(f"backbone must be 'csp' or one of {', '.join(depths)}, got {recipe.backbone!r}")
        cfg.backbone_config = ResNetConfig(depth=depths[recipe.backbone], widen_factor=cfg.widen_factor,
                                           deepen_factor=cfg.deepen_factor)
    return cfg


def load_backbone(model: RTMO, checkpoint: str | Path) -> None:
    """Pretrained weights for `model.backbone`: the `backbone.*` entries of a YOLOX detector checkpoint
    (CSPDarknet) or a torchvision ImageNet file (ResNet); `checkpoint` is a local file, a
    `rtmo.hub.zoo.BACKBONES` name (e.g. 'yolox-s') or a URL, downloads checksum-verified."""
    load_pretrained_backbone(model.backbone, model.config.backbone_config, str(checkpoint))


def default_evaluator(recipe: TrainRecipe) -> Evaluator | None:
    """COCO / CrowdPose keypoint AP on the recipe's validation set (EMA weights; the images sharded over
    ranks); None when the validation annotations are missing."""
    ann = Path(recipe.data.root) / recipe.data.val_ann_file
    if not ann.is_file():
        log.warning("validation annotations %s not found: training without validation", ann)
        return None
    img_dir = Path(recipe.data.root) / recipe.data.val_img_prefix
    protocol = "crowdpose" if recipe.data.crowd_metric else "coco"

    def run(model: nn.Module) -> dict[str, float]:
        metrics = evaluate_model(model, img_dir, ann, protocol=protocol)
        # AP first: it decides best.pth
        return {"AP": metrics["AP"], **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}

    return run
