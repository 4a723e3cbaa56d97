"""The training loop: AdamW + schedule, AMP, gradient clipping, EMA, stage switches, validation with the EMA
weights, atomic checkpoints with exact resume, metrics logging, and DDP through `torchrun` (reference §10)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..config import ResNetConfig, RTMOConfig
from ..eval.coco import EvaluationError
from ..outputs import RTMOModelOutput
from ..utils import dist as du
from ..utils.checkpoint import CheckpointError
from ..utils.checkpoint import load_checkpoint as read_checkpoint_file
from ..utils.device import resolve_device
from ..utils.fileio import blocking_file
from .dataset import TrainData, build_train_data
from .ema import ModelEMA
from .optim import LRSchedule, build_optimizer
from .recipes import LossStage, TrainRecipe

log = logging.getLogger("rtmo.train")

# consecutive non-finite losses after which a run counts as diverged and stops
MAX_NONFINITE_STEPS = 20

LossFn = Callable[[nn.Module, torch.Tensor, Any], dict[str, torch.Tensor]]
Evaluator = Callable[[nn.Module], dict[str, float]]


# ----------------------------------------------------------------------------------------- stage switches
def loss_settings(recipe: TrainRecipe, epoch: int) -> dict[str, Any]:
    """Loss weights and head switches in force during `epoch` (0-based; both hooks act before the epoch):
    the head switch at `head_switch_epoch` (§10.7) and the auxiliary L1 box loss from the data switch on."""
    head_stage2 = epoch >= recipe.schedule.head_switch_epoch
    stage: LossStage = recipe.loss.stage2 if head_stage2 else recipe.loss.stage1
    s = dataclasses.asdict(stage)
    s["use_aux_loss"] = epoch >= recipe.schedule.data_switch_epoch
    s["bbox_aux_weight"] = recipe.loss.bbox_aux_weight
    s["use_keypoints_for_center"] = recipe.loss.use_keypoints_for_center
    return s


def data_stage(recipe: TrainRecipe, epoch: int) -> int:
    return 2 if epoch >= recipe.schedule.data_switch_epoch else 1


def apply_loss_settings(model: nn.Module, settings: dict[str, Any]) -> None:
    """The stage's loss settings as the model's criterion (recipe and LossConfig share field names)."""
    from .losses import Criterion, LossConfig

    model.criterion = Criterion(LossConfig(**settings))


# ----------------------------------------------------------------------------------------- batch helpers
def resize_batch(images: torch.Tensor, targets: Any, size: tuple[int, int]) -> tuple[torch.Tensor, Any]:
    """BatchSyncRandomResize (§10.3): bilinear resize of the batch to `size` (w, h); boxes and keypoints
    scaled by (sx, sy), areas by sx*sy, heatmap masks bilinearly (becoming float)."""
    h, w = images.shape[-2:]
    if (w, h) == tuple(size):
        return images, targets
    sx, sy = size[0] / w, size[1] / h
    images = F.interpolate(images.float(), size=(size[1], size[0]), mode="bilinear", align_corners=False)
    return images, _scale_targets(targets, sx, sy, (size[1], size[0]))


_SCALE2 = ("bboxes", "boxes", "keypoints")
_AREA = ("areas", "area")
_MASK = ("heatmap_mask", "heatmap_masks", "masks")


def _scale_targets(t: Any, sx: float, sy: float, hw: tuple[int, int]) -> Any:
    if hasattr(t, "rescale"):
        return t.rescale(sx, sy, hw)
    if isinstance(t, (list, tuple)):
        return type(t)(_scale_targets(x, sx, sy, hw) for x in t)
    if dataclasses.is_dataclass(t):
        return dataclasses.replace(t, **{k: _scale_field(k, v, sx, sy, hw) for k, v in vars(t).items()})
    if isinstance(t, dict):
        return {k: _scale_field(k, v, sx, sy, hw) for k, v in t.items()}
    raise TypeError(f"cannot rescale targets of type {type(t).__name__}")


def _scale_field(name: str, v: Any, sx: float, sy: float, hw: tuple[int, int]) -> Any:
    if isinstance(v, (list, tuple)):
        return type(v)(_scale_field(name, x, sx, sy, hw) for x in v)
    if not isinstance(v, torch.Tensor) or v is None:
        return v
    if name in _SCALE2:
        scale = torch.tensor([sx, sy], dtype=v.dtype, device=v.device)
        return (v.reshape(*v.shape[:-1], -1, 2) * scale).reshape(v.shape)
    if name in _AREA:
        return v * (sx * sy)
    if name in _MASK and v.dim() >= 2:
        lead = v.shape[:-2]
        m = F.interpolate(v.float().reshape(-1, 1, *v.shape[-2:]), size=hw, mode="bilinear",
                          align_corners=False)
        return m.reshape(*lead, *hw)
    return v


def to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if hasattr(obj, "to") and not isinstance(obj, nn.Module) and dataclasses.is_dataclass(obj):
        return obj.to(device)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{k: to_device(v, device) for k, v in vars(obj).items()})
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def _rtmo_losses(model: nn.Module, images: torch.Tensor, targets: Any) -> dict[str, torch.Tensor]:
    """The model's training forward as the trainer's loss function: RTMO's `RTMOLoss` terms and their sum
    (another model may return its dict of 'loss*' terms itself)."""
    out = model(images, targets)
    return out.loss.as_dict() if isinstance(out, RTMOModelOutput) else out


def total_loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """`out['loss']`, or mmengine's rule: the sum of the means of every entry whose name contains 'loss'."""
    if "loss" in out:
        return out["loss"]
    terms = [v.mean() for k, v in out.items() if "loss" in k and isinstance(v, torch.Tensor)]
    if not terms:
        raise RuntimeError(f"the loss function returned no 'loss*' entry (keys: {sorted(out)})")
    return sum(terms)


# ----------------------------------------------------------------------------------------- checkpoints
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in types `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": np_state[0], "key": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then `os.replace`: a crash never leaves a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint to resume from, read by `rtmo.utils.checkpoint.load_checkpoint` (which never runs
    code and names a corrupt or foreign file); `CheckpointError` when it is not an rtmo training
    checkpoint."""
    path = Path(path)
    ckpt = read_checkpoint_file(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a resumable rtmo training checkpoint (it holds a "
                              f"{type(ckpt).__name__}, not a dict)")
    for key in ("state_dict", "model", "optimizer", "epoch", "iter"):
        if key not in ckpt:
            raise CheckpointError(f"{path} is not a resumable rtmo training checkpoint (no {key!r}); to "
                                  "start from its weights use `init_from` (--init-from), not `resume`")
    return ckpt


RUN_FILES = ("last.pth", "best.pth", "metrics.jsonl")


def check_run_dir(out_dir: Path, resume: bool) -> None:
    """A run folder must be a folder, and a new run (not `resume`) must not mix with an old one: its
    `last.pth`, `best.pth` and `metrics.jsonl` would be overwritten or appended to."""
    out_dir = Path(out_dir)
    blocker = blocking_file(out_dir)
    if blocker == out_dir:
        raise ValueError(f"output folder {out_dir}: is a file, not a folder")
    if blocker is not None:
        raise ValueError(f"output folder {out_dir}: {blocker} is a file, not a folder")
    if resume or not out_dir.is_dir():
        return
    found = [n for n in RUN_FILES if (out_dir / n).exists()]
    found += sorted(p.name for p in out_dir.glob("epoch_*.pth"))
    if found:
        raise ValueError(f"output folder {out_dir} already holds a training run ({', '.join(found[:4])}): "
                         "pass --resume (resume=True) to continue it, or choose another --output")


def remove_stale_temp_files(out_dir: Path) -> None:
    """Delete `.NAME.pth.tmp<pid>` files left by a process that was killed while saving (`save_atomic`)."""
    for tmp in Path(out_dir).glob(".*.pth.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
            continue  # a live process (another rank on this machine) is writing it now
        try:
            tmp.unlink()
            log.info("removed %s, left by an interrupted save", tmp.name)
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def truncate_metrics(path: Path, epoch: int, it: int) -> None:
    """Keep only the records of `metrics.jsonl` a run resumed at (`epoch`, `it`) has already made: the
    interrupted epoch's records are made again. Rewritten atomically; a torn last line is dropped."""
    path = Path(path)
    if not path.is_file():
        return
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            keep = isinstance(rec, dict) and (rec.get("iter", 0) <= it and rec.get("epoch", 0) < epoch)
        except ValueError:
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, path)
        log.info("%s: dropped %d record(s) after the resume point (epoch %d)", path.name, dropped, epoch)


def val_due(recipe: TrainRecipe, epoch: int) -> bool:
    """Whether validation runs after 0-based `epoch`: every `val_interval` epochs, the last epoch, and every
    epoch once mmengine's `dynamic_intervals` milestone is reached. mmengine picks the interval for the
    epoch count *plus one* (`bisect(milestones, epoch + 1)` with `epoch` already advanced), so with the
    milestone at 580 it validates after epoch 579 already (669 for the 700-epoch CrowdPose recipes)."""
    rt, done = recipe.runtime, epoch + 1
    return (done % rt.val_interval == 0 or done + 1 >= rt.val_every_epoch_from
            or done == recipe.schedule.epochs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains `model` with `recipe` on `data`. `loss_fn(model, images, targets)` returns a dict of loss
    terms; it defaults to RTMO's training forward `model(images, targets).loss` (`rtmo.outputs.RTMOLoss`,
    computed by `rtmo.train.losses.compute_losses`).

    `evaluate(ema_model) -> {'AP': ...}` runs with the EMA weights in eval mode on every rank (it may shard
    the work, as `rtmo.eval.coco.evaluate_model` does); rank 0's result is logged and its first key decides
    `best.pth`. Set `max_iters_per_epoch` to cut epochs short (smoke runs, tests).
    """

    def __init__(self, model: nn.Module, recipe: TrainRecipe, data: TrainData, out_dir: str | Path,
                 device: str | torch.device | None = None, evaluate: Evaluator | None = None,
                 loss_fn: LossFn | None = None, resume: str | Path | None = None, workers: int | None = None,
                 max_iters_per_epoch: int | None = None, progress: bool = True, tensorboard: bool = True):
        self.recipe, self.data, self.evaluate = recipe, data, evaluate
        self.loss_fn = loss_fn or _rtmo_losses
        self.dist = du.init_distributed(device)
        self.device = self.dist.device
        self.out_dir = Path(out_dir)
        if self.dist.is_main:  # before any data is read: a wrong folder fails in a second
            check_run_dir(self.out_dir, resume=bool(resume))
        self.workers = recipe.data.workers if workers is None else workers
        self.max_iters_per_epoch = max_iters_per_epoch
        self.progress = progress and self.dist.is_main
        rt = recipe.runtime
        seed_everything(rt.seed)

        if rt.sync_bn and self.dist.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device).train()
        self.ema = ModelEMA(self.model, recipe.ema.momentum, recipe.ema.gamma) if recipe.ema.enabled else None
        self.ddp: nn.Module = self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # mmengine wraps with broadcast_buffers=False: each GPU keeps its own BatchNorm statistics
            # (averaged before validation by `average_bn_stats`, mmpose's SyncNormHook)
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=rt.find_unused_parameters,
                broadcast_buffers=False)

        total_batch = recipe.data.batch_size * self.dist.world_size
        self.optimizer = build_optimizer(self.model, recipe.optim, total_batch)
        cuda = self.device.type == "cuda"
        self.amp_dtype = (torch.float16 if cuda and rt.amp else
                          torch.bfloat16 if not cuda and rt.amp and rt.cpu_amp else None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)

        self.epoch, self.iter = 0, 0
        self._nonfinite = 0  # consecutive iterations with a non-finite loss
        self.best: dict[str, Any] = {"metric": None, "value": -math.inf, "epoch": -1}
        self.next_size: tuple[int, int] = tuple(recipe.input_size)
        self._loader: DataLoader | None = None
        self._loader_stage = 0
        # mmengine converts the epoch-based schedule once, with the length of the first (stage-1) loader
        self.epoch_len = len(self._build_loader(1))
        if max_iters_per_epoch is not None:
            self.epoch_len = max(1, min(self.epoch_len, max_iters_per_epoch))
        self.schedule = LRSchedule(self.optimizer, recipe.schedule, self.epoch_len)
        if resume:
            self._resume(resume)

        self._tb = None
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.out_dir)
            if resume:  # records of the interrupted epoch would be duplicated by the resumed run
                truncate_metrics(self.out_dir / "metrics.jsonl", self.epoch, self.iter)
            self._metrics = open(self.out_dir / "metrics.jsonl", "a")
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(self.out_dir / "tb"))
                except ImportError:
                    log.info("tensorboard is not installed: metrics go to metrics.jsonl only")

    # ------------------------------------------------------------------ data
    def _build_loader(self, stage: int) -> DataLoader:
        if self._loader is not None and self._loader_stage == stage:
            return self._loader
        dataset = self.data.build_dataset(stage)
        if len(dataset) == 0:
            raise ValueError(f"the stage-{stage} training set is empty")
        # A DistributedSampler also on one process: its order depends only on (seed, epoch), which makes
        # the data order of a resumed run identical to an uninterrupted one.
        sampler = DistributedSampler(dataset, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                     shuffle=True, seed=self.recipe.runtime.seed)
        self._loader = DataLoader(dataset, batch_size=self.recipe.data.batch_size, sampler=sampler,
                                  num_workers=self.workers, collate_fn=self.data.collate_fn,
                                  pin_memory=self.device.type == "cuda", drop_last=False,
                                  generator=torch.Generator(), persistent_workers=False)
        self._loader_stage = stage
        return self._loader

    def _epoch_seed(self, epoch: int) -> int:
        return (self.recipe.runtime.seed * 1_000_003 + epoch) * 64 + self.dist.rank

    def _draw_size(self) -> tuple[int, int]:
        """Next batch's square size, drawn on rank 0 and broadcast (§10.3)."""
        lo, hi = self.recipe.augment.multiscale_range
        d = self.recipe.augment.size_divisor
        k = random.randint(math.ceil(lo / d), hi // d)
        k = du.broadcast_object(k)
        return (k * d, k * d)

    # ------------------------------------------------------------------ loop
    def fit(self, stop_after_epoch: int | None = None) -> dict[str, Any]:
        """Train to the recipe's last epoch (or stop once `stop_after_epoch` epochs are done, as an
        interruption would; `last.pth` then resumes the same run)."""
        rec = self.recipe
        epochs = rec.schedule.epochs
        if stop_after_epoch is not None:
            epochs = min(stop_after_epoch, epochs)
        for epoch in range(self.epoch, epochs):
            self.epoch = epoch
            settings = loss_settings(rec, epoch)
            apply_loss_settings(self.model, settings)
            loader = self._build_loader(data_stage(rec, epoch))
            loader.sampler.set_epoch(epoch)
            seed = self._epoch_seed(epoch)
            seed_everything(seed)  # augmentation and multi-scale draws depend on (seed, epoch, rank) only
            loader.generator.manual_seed(seed)  # worker seeds for this epoch
            try:
                self._train_epoch(loader, epoch)
            except Exception as e:
                raise _unwrap_worker_error(e) from None
            self.epoch = epoch + 1
            metrics = self._maybe_validate(epoch)
            self._save(epoch, metrics)
        self.close()
        return {"epoch": self.epoch, "iter": self.iter, "best": self.best}

    def _train_epoch(self, loader: DataLoader, epoch: int) -> None:
        rec, model = self.recipe, self.ddp
        model.train()
        n = len(loader) if self.max_iters_per_epoch is None else min(len(loader), self.max_iters_per_epoch)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=f"epoch {epoch + 1}/{rec.schedule.epochs}", dynamic_ncols=True,
                       leave=False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        t0 = time.perf_counter()
        for i, batch in enumerate(_take(loader, n)):
            images, targets = batch
            images = images.to(self.device, non_blocking=True).float()
            targets = to_device(targets, self.device)
            resize = self.data.batch_resize or resize_batch
            images, targets = resize(images, targets, self.next_size)
            self.next_size = self._draw_size()

            self.schedule.step(self.iter, epoch)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                out = self.loss_fn(model, images, targets)
                loss = total_loss(out)
            if not torch.isfinite(loss):
                # One bad batch (an fp16 overflow, a degenerate target) must not end a long run: skip its
                # update, say so, and stop only when the loss stays non-finite.
                self._nonfinite += 1
                parts = {k: round(float(v.detach().float().mean()), 4) for k, v in out.items()
                         if isinstance(v, torch.Tensor)}
                log.warning("loss is %s at epoch %d iteration %d (%s): update skipped", loss.item(),
                            epoch + 1, self.iter, parts)
                if self._nonfinite >= MAX_NONFINITE_STEPS:
                    raise FloatingPointError(
                        f"the loss was not finite for {self._nonfinite} iterations in a row (last: epoch "
                        f"{epoch + 1} iteration {self.iter}, {parts}): the run has diverged; lower optim.lr "
                        "or resume from an earlier checkpoint")
                self.optimizer.zero_grad(set_to_none=True)
                self.iter += 1
                if bar is not None:
                    bar.update()
                continue
            self._nonfinite = 0
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            clip = rec.optim.clip_grad
            grad_norm = nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
            self.iter += 1

            if bar is not None:
                sec = (time.perf_counter() - t0) / (i + 1)
                left = (rec.schedule.epochs - epoch - 1) * n + n - i - 1
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{self._base_lr():.2e}",
                                eta=_hms(sec * left))
                bar.update()
            if self.dist.is_main and (i % rec.runtime.log_interval == 0 or i == n - 1):
                rec_ = {"type": "train", "epoch": epoch, "iter": self.iter, "lr": self._base_lr(),
                        "grad_norm": float(grad_norm), "size": int(images.shape[-1]),
                        "sec_per_iter": (time.perf_counter() - t0) / (i + 1)}
                rec_.update({k: float(v.detach().float().mean()) for k, v in out.items()
                             if isinstance(v, torch.Tensor)})
                self._log(rec_)
        if bar is not None:
            bar.close()

    def _base_lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups)

    # ------------------------------------------------------------------ validation
    def _val_due(self, epoch: int) -> bool:
        return val_due(self.recipe, epoch)

    def _maybe_validate(self, epoch: int) -> dict[str, float] | None:
        if self.evaluate is None or not self._val_due(epoch):
            return None
        du.average_bn_stats(self.model)  # SyncNormHook
        if self.ema is not None:
            du.average_bn_stats(self.ema.module)
        # Every rank evaluates: the default evaluator (rtmo.eval.coco.evaluate_model) predicts this rank's
        # shard of the images and rank 0 scores the gathered predictions.
        net = self.ema.module if self.ema is not None else self.model
        was_training = net.training
        net.eval()
        error = None
        try:
            with torch.no_grad():
                metrics = {k: float(v) for k, v in self.evaluate(net).items()}
        except Exception as e:  # noqa: BLE001 - a failed validation must not lose the epoch's training
            if self.dist.distributed and not isinstance(e, EvaluationError):
                raise  # raised on one rank only: the others would wait forever in the collectives
            error = " ".join(str(e).split())[:300] or type(e).__name__
            metrics = {"AP": math.nan}
        finally:
            net.train(was_training)
            if self.ema is not None:
                self.ema.module.eval()
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad and error is None:
            error = f"non-finite {', '.join(bad)} (NaN/inf in the predictions: the weights have diverged?)"
        if self.dist.is_main:
            if error:
                log.warning("validation after epoch %d: %s; AP recorded as not computable, the checkpoint "
                            "is saved and training continues", epoch + 1, error)
            record = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
            self._log({"type": "val", "epoch": epoch, "iter": self.iter, **record,
                       **({"error": error} if error else {})})
            if self.progress:
                print(f"epoch {epoch + 1}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        du.barrier()
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict[str, Any]:
        """Everything a resumed run needs. `state_dict` holds the EMA weights (like the official files, so
        `ModelManager.get(path)` gives the model that was validated); `model` holds the raw weights."""
        raw = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        ema = {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()} if self.ema else raw
        rec = self.recipe
        meta: dict[str, Any] = {"input_size": list(rec.input_size), "variant": rec.variant,
                                "num_keypoints": rec.num_keypoints, "recipe": rec.to_dict(),
                                "epoch": self.epoch, "iter": self.iter, "trainer": "rtmo"}
        kinfo = getattr(self.model, "keypoint_info", None)
        if kinfo is not None:  # names, skeleton, flip pairs and sigmas travel with the weights
            meta["keypoint_info"] = kinfo.to_dict()
        return {
            "meta": meta,
            "state_dict": ema,
            "model": raw,
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "epoch": self.epoch,
            "iter": self.iter,
            "best": dict(self.best),
            "rng": rng_state(),
            "data": {"seed": rec.runtime.seed, "epoch": self.epoch, "stage": self._loader_stage,
                     "next_size": list(self.next_size), "world_size": self.dist.world_size,
                     "workers": self.workers},
        }

    def _save(self, epoch: int, metrics: dict[str, float] | None) -> None:
        if not self.dist.is_main:
            du.barrier()
            return
        rt = self.recipe.runtime
        improved = False
        if metrics:
            key = self.best["metric"] or next(iter(metrics))
            if metrics.get(key, -math.inf) > self.best["value"]:
                self.best = {"metric": key, "value": metrics[key], "epoch": epoch}
                improved = True
        ckpt = self.checkpoint()
        save_atomic(ckpt, self.out_dir / "last.pth")
        if improved:
            save_atomic(ckpt, self.out_dir / "best.pth")
        if rt.checkpoint_interval > 0 and (epoch + 1) % rt.checkpoint_interval == 0:
            save_atomic(ckpt, self.out_dir / f"epoch_{epoch + 1}.pth")
            # the last `keep_checkpoints` interval checkpoints stay (mmengine's max_keep_ckpts)
            kept = sorted((p for p in self.out_dir.glob("epoch_*.pth") if p.stem[6:].isdigit()),
                          key=lambda p: int(p.stem[6:]))
            for old in kept[:-rt.keep_checkpoints] if rt.keep_checkpoints > 0 else []:
                old.unlink(missing_ok=True)
        du.barrier()

    def _resume(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path)
        data = ckpt.get("data", {}) if isinstance(ckpt.get("data"), dict) else {}
        if data.get("world_size", self.dist.world_size) != self.dist.world_size:
            log.warning("resuming a %s-process run on %s processes: the data order will differ",
                        data.get("world_size"), self.dist.world_size)
        self._warn_changed(ckpt, data)
        try:
            self.model.load_state_dict(ckpt["model"])
            if self.ema is not None:
                self.ema.load_state_dict(ckpt["ema"] or {"steps": 0}, ckpt["state_dict"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.schedule.load_state_dict(ckpt["scheduler"])
            self.epoch, self.iter = int(ckpt["epoch"]), int(ckpt["iter"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            first = " ".join(str(e).split())[:300]
            raise CheckpointError(f"{path}: cannot resume this run from it: it was saved by another model or "
                                  f"recipe (architecture, keypoints or optimizer groups differ): {first}"
                                  ) from None
        if self.epoch >= self.recipe.schedule.epochs:
            log.warning("%s: the run already finished its %d epochs; nothing left to train", path,
                        self.recipe.schedule.epochs)
        log.info("resumed from epoch %d (iteration %d) of %s", self.epoch, self.iter, path)
        self.best = dict(ckpt.get("best") or self.best)
        if "next_size" in data:
            self.next_size = tuple(data["next_size"])
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])

    def _warn_changed(self, ckpt: dict[str, Any], data: dict[str, Any]) -> None:
        """Name every setting of the resumed run that differs from the checkpoint's: the schedule (epochs),
        the batch and the data order (workers) then differ from the interrupted run."""
        meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
        old = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
        changes = []
        pairs = (("epochs", (old.get("schedule") or {}).get("epochs"), self.recipe.schedule.epochs),
                 ("batch size", (old.get("data") or {}).get("batch_size"), self.recipe.data.batch_size),
                 ("workers", data.get("workers"), self.workers),
                 ("input size", old.get("input_size"), list(self.recipe.input_size)),
                 ("learning rate", (old.get("optim") or {}).get("lr"), self.recipe.optim.lr))
        for name, was, now in pairs:
            if was is not None and (list(was) if isinstance(was, (list, tuple)) else was) != now:
                changes.append(f"{name} {was} -> {now}")
        if changes:
            log.warning("resuming with settings that differ from the checkpoint's (%s): the rest of the run "
                        "will not match the interrupted one", ", ".join(changes))

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            tag = record["type"]
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "iter", "type"):
                    self._tb.add_scalar(f"{tag}/{k}", v, record["iter"])
        if record["type"] == "train":
            log.info("epoch %d iter %d loss %.4f lr %.3e", record["epoch"], record["iter"],
                     record.get("loss", float("nan")), record["lr"])

    def close(self) -> None:
        if self.dist.is_main:
            if not self._metrics.closed:
                self._metrics.close()
            if self._tb is not None:
                self._tb.close()


def _unwrap_worker_error(e: Exception) -> Exception:
    """A DataLoader worker's exception re-raised in the main process carries the worker's whole traceback
    in its message; give back the original one-line message (same type) so the user sees the problem."""
    msg = str(e)
    if not (msg.startswith("Caught ") and "Original Traceback" in msg):
        return e
    last = msg.strip().splitlines()[-1]
    name = type(e).__name__
    if ": " in last and last.split(": ", 1)[0].rsplit(".", 1)[-1] == name:
        last = last.split(": ", 1)[1]
    try:
        return type(e)(last)
    except Exception:  # noqa: BLE001 - an exception type with another signature: keep it as it is
        return e


def _hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _take(it: Iterable, n: int) -> Iterable:
    for i, x in enumerate(it):
        if i >= n:
            break
        yield x


# ----------------------------------------------------------------------------------------- initialisation
@torch.no_grad()
def init_weights(model: nn.Module, backbone_checkpoint: str | Path | None = None) -> nn.Module:
    """Training-from-scratch initialisation of §10.12 (irrelevant when loading a checkpoint).

    Every Conv2d: Kaiming-uniform (a = sqrt(5), fan_in, leaky_relu), bias 0; the neck's ConvModules in
    `input_proj`, `lateral_convs`, `downsample_convs` and the CSPRep `conv1/2/3`: Kaiming-normal (fan_out,
    relu) with BN 1/0 (RepVGG blocks keep the model-level init); the projector: Xavier-uniform; `out_cls`
    bias -4.59512 (prior 0.01); GAU `uv` Xavier-uniform. Then the backbone's `backbone.*` weights (BN
    statistics included) come from the YOLOX detector checkpoint, when given.
    """
    from ..nn.layers import ConvModule

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), mode="fan_in", nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    neck = getattr(model, "neck", None)
    if neck is not None:
        reinit = [getattr(neck, n, None) for n in ("input_proj", "lateral_convs", "downsample_convs")]
        for blocks in (getattr(neck, "fpn_blocks", []), getattr(neck, "pan_blocks", [])):
            reinit += [getattr(b, n, None) for b in blocks for n in ("conv1", "conv2", "conv3")]
        for container in reinit:
            for m in (container.modules() if isinstance(container, nn.Module) else []):
                if isinstance(m, ConvModule):
                    nn.init.kaiming_normal_(m.conv.weight, mode="fan_out", nonlinearity="relu")
                    if isinstance(m.bn, nn.BatchNorm2d):
                        nn.init.ones_(m.bn.weight)
                        nn.init.zeros_(m.bn.bias)
        for m in getattr(neck, "projector", nn.Module()).modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    head = getattr(model, "head", None)
    if head is not None:
        for conv in head.head_module.out_cls:
            nn.init.constant_(conv.bias, -4.59512)
        nn.init.xavier_uniform_(head.dcc.gau.uv.weight)
    if backbone_checkpoint:
        load_backbone(model, backbone_checkpoint)
    return model


def load_backbone(model: nn.Module, checkpoint: str | Path) -> None:
    """Copy the `backbone.*` entries of a detector checkpoint into `model.backbone`. `checkpoint` is a
    local file, a `rtmo.hub.zoo.BACKBONES` name (e.g. 'yolox-s') or a URL; downloads are checksum-verified."""
    from ..hub.zoo import backbone_checkpoint, read_checkpoint

    path = backbone_checkpoint(checkpoint)
    state, _ = read_checkpoint(path)
    sub = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not sub:
        raise ValueError(f"{checkpoint} has no 'backbone.*' weights")
    missing, unexpected = model.backbone.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint} does not fit this backbone: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


# ----------------------------------------------------------------------------------------- entry point
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
    from ..model import RTMO, load_pretrained_backbone

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
        data = default_train_data(recipe)
    kinfo = getattr(data.build_dataset(1), "keypoint_info", None)
    if kinfo is not None and kinfo.num_keypoints != recipe.num_keypoints:
        log.info("the training set has %d keypoints (%s): training a %d-keypoint model", kinfo.num_keypoints,
                 kinfo.name, kinfo.num_keypoints)
        recipe = recipe.with_overrides(num_keypoints=kinfo.num_keypoints)
    cfg = model_config(recipe)
    seed_everything(recipe.runtime.seed)  # the same initial weights on every rank and every run
    model = RTMO(cfg, keypoint_info=kinfo)
    if init_from:
        from ..hub.zoo import load_state_dict_checked, read_checkpoint

        load_state_dict_checked(model, read_checkpoint(init_from)[0])
    elif not resume:
        resnet = isinstance(cfg.backbone_config, ResNetConfig)
        init_weights(model, None if resnet else recipe.backbone_init or None)
        if resnet and recipe.backbone_init:
            load_pretrained_backbone(model.backbone, cfg.backbone_config, recipe.backbone_init)
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


def default_train_data(recipe: TrainRecipe) -> TrainData:
    """The COCO/CrowdPose/body7 pipeline for this recipe: `rtmo.train.dataset.build_train_data(recipe)`,
    which returns a `TrainData` (stage-1/stage-2 datasets, collate, batch resize)."""
    return build_train_data(recipe)


def default_evaluator(recipe: TrainRecipe) -> Evaluator | None:
    """COCO / CrowdPose keypoint AP on the recipe's validation set (EMA weights; the images sharded over
    ranks); None when the evaluation module or the validation annotations are missing."""
    ann = Path(recipe.data.root) / recipe.data.val_ann_file
    if not ann.is_file():
        log.warning("validation annotations %s not found: training without validation", ann)
        return None
    try:
        from ..eval import coco as ev
    except ImportError:
        log.warning("rtmo.eval.coco is not available: training without validation")
        return None
    img_dir = Path(recipe.data.root) / recipe.data.val_img_prefix
    protocol = "crowdpose" if recipe.data.crowd_metric else "coco"

    def run(model: nn.Module) -> dict[str, float]:
        metrics = ev.evaluate_model(model, img_dir, ann, protocol=protocol)
        # AP first: it decides best.pth
        return {"AP": metrics["AP"], **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}

    return run
