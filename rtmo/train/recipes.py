"""Training recipes: every hyper-parameter of an official RTMO config as a typed dataclass, loaded from TOML.

The TOML files in `rtmo/recipes/` mirror mmpose's `configs/body_2d_keypoint/rtmo/**.py`. A recipe is the one
training configuration: the data pipeline, the criterion of each stage, the optimiser, schedule and trainer
are all built from it. Besides the dataclasses this module holds the recipe's arithmetic: which stage an
epoch is in (`data_stage`, `val_due`) and a schedule rescaled to fewer epochs (`scale_epochs`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the `tomli` backport
    import tomli as tomllib

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"


@dataclass
class DatasetSpec:
    """One annotation source. `ratio` is body7's per-dataset resampling factor; `mapping` names the
    keypoint conversion to the target set (identity when empty)."""

    name: str = "coco"
    ann_file: str = "coco/annotations/person_keypoints_train2017.json"
    img_prefix: str = "coco/train2017/"
    ratio: float = 1.0
    mapping: list[list[int]] = field(default_factory=list)  # (source index, target index) pairs
    # OKS sigmas / flip partners of a custom keypoint set (COCO-17 and CrowdPose-14 have built-in ones)
    sigmas: list[float] | None = None
    flip_indices: list[int] | None = None


@dataclass
class DataRecipe:
    root: str = "data/"
    train: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec()])
    stage2_train: list[DatasetSpec] | None = None  # None: keep `train` for the last epochs
    val_ann_file: str = "coco/annotations/person_keypoints_val2017.json"
    val_img_prefix: str = "coco/val2017/"
    batch_size: int = 32  # per GPU
    num_gpus: int = 8  # of the official run: total batch = batch_size * num_gpus
    workers: int = 8
    crowd_metric: bool = False  # CrowdPose: iou_type='keypoints_crowd', use_area=False


@dataclass
class AugmentRecipe:
    """Stage-1 (Mosaic/affine/MixUp) and stage-2 (letterbox affine) augmentation and the batch-level random
    resize (`rtmo.train.data.transforms`, `rtmo.train.data.batch`)."""

    pad_val: int = 114
    mosaic_prob: float = 1.0
    mosaic_center_range: tuple[float, float] = (0.5, 1.5)
    affine_shift: float = 0.1
    affine_rotate: float = 10.0  # degrees
    affine_scale: tuple[float, float] = (0.75, 1.0)
    affine_shear: float = 2.0  # degrees
    mixup_prob: float = 1.0  # 0 for RTMO-t
    mixup_ratio: tuple[float, float] = (0.8, 1.6)
    mixup_flip: float = 0.5
    hsv_gains: tuple[int, int, int] = (5, 30, 30)
    flip_prob: float = 0.5
    # stage 2: "none" = pure letterbox (all probabilities 0); "default" = the class defaults that the m/l
    # COCO/body7 configs leave active (shift 0.2, scale (0.75, 1.5), rotate 30, trunc-normal).
    stage2_affine: str = "none"
    stage2_affine_shift: float = 0.2
    stage2_affine_rotate: float = 30.0
    stage2_affine_scale: tuple[float, float] = (0.75, 1.5)
    # BatchSyncRandomResize: a new square size in [lo, hi] (multiples of `size_divisor`) per batch
    multiscale_range: tuple[int, int] = (480, 800)
    size_divisor: int = 32


@dataclass
class LossStage:
    """Loss weights and head switches of one head stage: `stage1` until `schedule.head_switch_epoch`, then
    `stage2` (what mmpose's RTMOModeSwitchHook sets). `rtmo.train.losses.Criterion` extends it."""

    cls_weight: float = 1.0
    overlaps_power: float = 0.5
    bbox_weight: float = 5.0
    vis_weight: float = 1.0
    oks_weight: float = 30.0
    mle_weight: float = 1.0
    proxy_target_cc: bool = False


@dataclass
class LossRecipe:
    stage1: LossStage = field(default_factory=LossStage)
    stage2: LossStage = field(default_factory=lambda: LossStage(oks_weight=10.0, mle_weight=5.0,
                                                               proxy_target_cc=True))
    bbox_aux_weight: float = 1.0  # on after the data switch
    use_keypoints_for_center: bool = True  # SimOTA centre prior (t/s COCO & body7)


@dataclass
class OptimRecipe:
    """AdamW with the official parameter groups and gradient clipping (`rtmo.train.optim`)."""

    lr: float = 0.004
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    encoder_lr_mult: float = 0.05  # parameters whose name contains `neck.encoder`
    clip_grad: float = 0.1  # global L2 norm; <= 0 disables
    base_batch_size: int = 256
    auto_scale_lr: bool = False  # lr *= total batch / base_batch_size when enabled


@dataclass
class ScheduleRecipe:
    """Warm-up, cosine, x2.5 bump, cosine, constant, in epochs (converted with the epoch length)."""

    epochs: int = 600
    warmup_epochs: int = 5
    eta_min: float = 2e-4  # absolute, for every group
    cosine1: tuple[int, int, int] = (5, 280, 280)  # begin, end, T_max
    bump_epoch: int = 280
    bump_factor: float = 2.5
    cosine2: tuple[int, int, int] = (281, 580, 300)
    head_switch_epoch: int = 280  # RTMOModeSwitchHook (0-based, acts before the epoch)
    num_last_epochs: int = 20  # YOLOXPoseModeSwitchHook: fires at epoch + 1 == epochs - num_last_epochs
    # never let a group's lr exceed its base lr (set by `scale_epochs` for short runs; the official
    # schedule decays far enough before the bump that it never needs it)
    cap_at_base: bool = False

    @property
    def data_switch_epoch(self) -> int:
        return self.epochs - self.num_last_epochs - 1


@dataclass
class EMARecipe:
    momentum: float = 0.0002
    gamma: float = 2000.0
    enabled: bool = True


@dataclass
class RuntimeRecipe:
    val_interval: int = 20
    val_every_epoch_from: int = 580  # dynamic_intervals
    checkpoint_interval: int = 40
    keep_checkpoints: int = 3
    amp: bool = True  # fp16 + GradScaler on CUDA; bf16 on CPU only when `cpu_amp`
    cpu_amp: bool = False
    sync_bn: bool = False  # per-GPU BN as in mmpose; running stats averaged before validation
    find_unused_parameters: bool = True  # the DCC gets no gradient on a rank without positives
    seed: int = 0
    log_interval: int = 50


@dataclass
class TrainRecipe:
    name: str = "rtmo-s_8xb32-600e_coco-640x640"
    variant: str = "s"
    num_keypoints: int = 17
    input_size: tuple[int, int] = (640, 640)  # (w, h)
    # "csp" (CSPDarknet, the official one) or "resnet18" / "resnet34" / "resnet50" (neck and head keep the
    # variant's widths); for a ResNet, `backbone_init` is a torchvision ImageNet file (or "")
    backbone: str = "csp"
    backbone_init: str = ""  # YOLOX detector checkpoint (URL or path) whose `backbone.*` weights init ours
    data: DataRecipe = field(default_factory=DataRecipe)
    augment: AugmentRecipe = field(default_factory=AugmentRecipe)
    loss: LossRecipe = field(default_factory=LossRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    schedule: ScheduleRecipe = field(default_factory=ScheduleRecipe)
    ema: EMARecipe = field(default_factory=EMARecipe)
    runtime: RuntimeRecipe = field(default_factory=RuntimeRecipe)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainRecipe:
        recipe = _build(cls, d, "recipe")
        recipe.validate()
        return recipe

    def validate(self) -> None:
        """Refuse values that would train nothing or fail later deep inside the trainer (a ZeroDivisionError
        in the multi-scale draw, a shape error in the network): ValueError naming the field."""
        def need(ok: bool, field: str, value: Any, rule: str) -> None:
            if not ok:
                raise ValueError(f"{field} = {value!r}: {rule}")

        s, a, d, rt, o = self.schedule, self.augment, self.data, self.runtime, self.optim
        need(s.epochs >= 1, "schedule.epochs", s.epochs, "must be >= 1")
        need(0 <= s.warmup_epochs <= s.epochs, "schedule.warmup_epochs", s.warmup_epochs,
             f"must be between 0 and schedule.epochs ({s.epochs})")
        for name, (b, e, t) in (("schedule.cosine1", s.cosine1), ("schedule.cosine2", s.cosine2)):
            need(0 <= b and 0 <= e and t >= 1, name, [b, e, t],
                 "must be [begin, end, T_max] with begin, end >= 0 and T_max >= 1")
        need(0 <= s.num_last_epochs <= s.epochs, "schedule.num_last_epochs", s.num_last_epochs,
             f"must be in [0, schedule.epochs] = [0, {s.epochs}]")
        need(math.isfinite(s.eta_min) and s.eta_min >= 0, "schedule.eta_min", s.eta_min, "must be >= 0")
        need(math.isfinite(s.bump_factor) and s.bump_factor > 0, "schedule.bump_factor", s.bump_factor,
             "must be > 0")
        for i, v in enumerate(self.input_size):
            need(v >= 32 and v % 32 == 0, f"input_size[{i}]", v,
                 "must be a positive multiple of 32 (the network's largest stride)")
        need(a.size_divisor >= 1, "augment.size_divisor", a.size_divisor, "must be >= 1")
        lo, hi = a.multiscale_range
        need(0 < lo <= hi, "augment.multiscale_range", [lo, hi], "must be [low, high] with 0 < low <= high")
        need(-(-lo // a.size_divisor) <= hi // a.size_divisor, "augment.multiscale_range", [lo, hi],
             f"holds no multiple of augment.size_divisor ({a.size_divisor})")
        sizes = range(-(-lo // a.size_divisor) * a.size_divisor, hi + 1, a.size_divisor)
        need(all(v % 32 == 0 for v in sizes[:2]), "augment.size_divisor", a.size_divisor,
             f"multi-scale sizes {list(sizes[:3])}... must be multiples of 32 (the network's largest stride)")
        need(a.stage2_affine in ("none", "default"), "augment.stage2_affine", a.stage2_affine,
             "must be 'none' or 'default'")
        for name in ("mosaic_prob", "mixup_prob", "mixup_flip", "flip_prob"):
            v = getattr(a, name)
            need(0.0 <= v <= 1.0, f"augment.{name}", v, "must be a probability in [0, 1]")
        for name in ("affine_scale", "mixup_ratio", "mosaic_center_range", "stage2_affine_scale"):
            v0, v1 = getattr(a, name)
            need(0 < v0 <= v1, f"augment.{name}", [v0, v1], "must be [low, high] with 0 < low <= high")
        need(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
        need(d.workers >= 0, "data.workers", d.workers, "must be >= 0")
        need(d.num_gpus >= 1, "data.num_gpus", d.num_gpus, "must be >= 1")
        need(bool(d.train), "data.train", d.train, "must name at least one dataset")
        for i, spec in enumerate(list(d.train) + list(d.stage2_train or [])):
            need(math.isfinite(spec.ratio) and spec.ratio >= 0, f"data.train[{i}].ratio", spec.ratio,
                 "must be >= 0")
        need(math.isfinite(o.lr) and o.lr > 0, "optim.lr", o.lr, "must be a positive number")
        need(math.isfinite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay,
             "must be >= 0")
        need(all(0 <= b < 1 for b in o.betas), "optim.betas", list(o.betas), "must be in [0, 1)")
        need(o.base_batch_size >= 1, "optim.base_batch_size", o.base_batch_size, "must be >= 1")
        need(0 <= self.ema.momentum <= 1, "ema.momentum", self.ema.momentum, "must be in [0, 1]")
        need(rt.val_interval >= 1, "runtime.val_interval", rt.val_interval, "must be >= 1")
        need(rt.checkpoint_interval >= 0, "runtime.checkpoint_interval", rt.checkpoint_interval,
             "must be >= 0 (0: no interval checkpoints)")
        need(rt.keep_checkpoints >= 0, "runtime.keep_checkpoints", rt.keep_checkpoints,
             "must be >= 0 (0: keep all)")
        need(rt.log_interval >= 1, "runtime.log_interval", rt.log_interval, "must be >= 1")
        need(self.num_keypoints >= 1, "num_keypoints", self.num_keypoints, "must be >= 1")

    @classmethod
    def load(cls, name_or_path: str | Path) -> TrainRecipe:
        """A recipe by official config name (`rtmo-s_8xb32-600e_coco-640x640`, see `list_recipes()`) or a
        path to a TOML file."""
        path = Path(name_or_path)
        if not path.is_file():
            stem = str(name_or_path).removesuffix(".toml")
            path = RECIPE_DIR / f"{stem}.toml"
            if not path.is_file():
                raise FileNotFoundError(f"no recipe {name_or_path!r}: not a file, and not one of "
                                        f"{', '.join(list_recipes())}")
        with open(path, "rb") as f:
            try:
                d = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path}: invalid TOML: {e}") from None
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    def with_overrides(self, **dotted: Any) -> TrainRecipe:
        """A copy with `section.field=value` overrides, e.g. `with_overrides(**{"schedule.epochs": 10})`."""
        d = self.to_dict()
        for key, value in dotted.items():
            node = d
            *parents, leaf = key.split(".")
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise ValueError(f"unknown recipe section {key!r}")
                node = node[p]
            if leaf not in node:
                raise ValueError(f"unknown recipe field {key!r}")
            node[leaf] = value
        return TrainRecipe.from_dict(d)


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


# ----------------------------------------------------------------------------------------- arithmetic
def data_stage(recipe: TrainRecipe, epoch: int) -> int:
    """The data pipeline of 0-based `epoch`: 1 (Mosaic/MixUp) or 2 (the last epochs, from the data switch:
    mmpose's YOLOXPoseModeSwitchHook, which acts before the epoch)."""
    return 2 if epoch >= recipe.schedule.data_switch_epoch else 1


def val_due(recipe: TrainRecipe, epoch: int) -> bool:
    """Whether validation runs after 0-based `epoch`: every `val_interval` epochs, the last epoch, and every
    epoch once mmengine's `dynamic_intervals` milestone is reached. mmengine picks the interval for the
    epoch count *plus one* (`bisect(milestones, epoch + 1)` with `epoch` already advanced), so with the
    milestone at 580 it validates after epoch 579 already (669 for the 700-epoch CrowdPose recipes)."""
    rt, done = recipe.runtime, epoch + 1
    return (done % rt.val_interval == 0 or done + 1 >= rt.val_every_epoch_from
            or done == recipe.schedule.epochs)


def scale_epochs(recipe: TrainRecipe, epochs: int) -> TrainRecipe:
    """The recipe with its epoch milestones rescaled to `epochs` total (short runs with the same shape).

    Milestones keep their order (warm-up, then the first cosine, the bump, the second cosine), each phase
    at least an epoch long where the run has room, and the learning rate is capped at its base value
    (`schedule.cap_at_base`): with few iterations the first cosine cannot decay before the x2.5 bump, which
    would otherwise lift the LR above base. Interval checkpoints are scaled too, but a short run never
    writes one per epoch: below 2 epochs the interval is 0 (only last.pth and best.pth are written).
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    s, rt = recipe.schedule, recipe.runtime
    f = epochs / s.epochs

    def e(v: int) -> int:
        return int(round(v * f))

    warm = max(e(s.warmup_epochs), 1 if epochs > 1 else 0)
    b1 = max(e(s.cosine1[0]), warm)  # the official first cosine starts where warm-up ends
    e1 = max(e(s.cosine1[1]), min(b1 + 1, epochs))
    t1 = max(e(s.cosine1[2]), e1 - b1, 1)
    bump = max(e(s.bump_epoch), e1)
    b2 = max(e(s.cosine2[0]), bump)
    e2 = max(e(s.cosine2[1]), b2)
    t2 = max(e(s.cosine2[2]), 1)
    interval = e(rt.checkpoint_interval) if rt.checkpoint_interval > 0 else 0
    return recipe.with_overrides(**{
        "schedule.epochs": epochs, "schedule.warmup_epochs": warm,
        "schedule.cosine1": [b1, e1, t1], "schedule.bump_epoch": bump, "schedule.cosine2": [b2, e2, t2],
        "schedule.head_switch_epoch": e(s.head_switch_epoch),
        "schedule.num_last_epochs": min(e(s.num_last_epochs), epochs - 1),
        "schedule.cap_at_base": True,
        "runtime.val_interval": max(e(rt.val_interval), 1),
        "runtime.val_every_epoch_from": e(rt.val_every_epoch_from),
        "runtime.checkpoint_interval": interval if interval >= 2 else 0,
    })


def _build(cls: type, d: Any, where: str) -> Any:
    """Dataclass `cls` from a nested dict, checking field names and converting lists to tuples."""
    if not isinstance(d, dict):
        raise TypeError(f"{where}: expected a table, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in d.items()}
    return cls(**kwargs)


def _convert(tp: Any, v: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, v, where)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if v is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], v, where)
    if origin is tuple:
        if not isinstance(v, (list, tuple)) or len(v) != len(args):
            raise ValueError(f"{where}: expected {len(args)} values, got {v!r}")
        return tuple(_convert(a, x, where) for a, x in zip(args, v))
    if origin is list:
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {v!r}")
        return [_convert(args[0], x, where) for x in v] if args else list(v)
    if tp is float and isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if tp in (int, str, bool) and not isinstance(v, tp) or (tp is int and isinstance(v, bool)):
        raise ValueError(f"{where}: expected {tp.__name__}, got {v!r}")
    return v
