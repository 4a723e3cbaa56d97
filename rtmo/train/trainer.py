"""The training loop: AdamW + schedule, AMP, gradient clipping, EMA, stage switches (the criterion and the
data pipeline of each epoch), validation with the EMA weights, atomic checkpoints with exact resume,
metrics logging, and DDP through `torchrun`. `rtmo.train.run.train` builds a `Trainer` from a recipe."""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..eval.coco import EvaluationError
from ..outputs import RTMOModelOutput
from ..utils import dist as du
from ..utils.checkpoint import CheckpointError
from .data import TrainData, draw_batch_size, to_device
from .ema import ModelEMA
from .losses import Criterion
from .optim import LRSchedule, build_optimizer
from .recipes import TrainRecipe, data_stage, val_due
from .rundir import (
    MetricsLog,
    changed_settings,
    check_run_dir,
    load_checkpoint,
    prune_interval_checkpoints,
    remove_stale_temp_files,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    truncate_metrics,
)

log = logging.getLogger("rtmo.train")

# consecutive non-finite losses after which a run counts as diverged and stops
MAX_NONFINITE_STEPS = 20

LossFn = Callable[[nn.Module, torch.Tensor, Any], dict[str, torch.Tensor]]
Evaluator = Callable[[nn.Module], dict[str, float]]


# ----------------------------------------------------------------------------------------- loss helpers
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


# ----------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains `model` with `recipe` on `data`. `loss_fn(model, images, targets)` returns a dict of loss
    terms; it defaults to RTMO's training forward `model(images, targets).loss` (`rtmo.outputs.RTMOLoss`).
    The trainer owns the criterion: at the start of every epoch it builds the one of the epoch's stage
    (`Criterion.from_recipe`) and sets it as `model.criterion` when the model has that attribute.

    `evaluate(ema_model) -> {'AP': ...}` runs with the EMA weights in eval mode on every rank (it may shard
    the work, as `rtmo.eval.coco.evaluate_model` does); rank 0's result is logged and its first key decides
    `best.pth`. Set `max_iters_per_epoch` to cut epochs short (smoke runs, tests).
    """

    def __init__(self, model: nn.Module, recipe: TrainRecipe, data: TrainData, out_dir: str | Path,
                 device: str | torch.device | None = None, evaluate: Evaluator | None = None,
                 loss_fn: LossFn | None = None, resume: str | Path | None = None, workers: int | None = None,
                 max_iters_per_epoch: int | None = None, progress: bool = True, tensorboard: bool = True):
        self.recipe, self.data, self.evaluate = recipe, data, evaluate
        self.criterion: Criterion | None = None  # the losses of the current stage (`_enter_stage`)
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

        self._metrics: MetricsLog | None = None  # rank 0 writes the run folder
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(self.out_dir)
            if resume:  # records of the interrupted epoch would be duplicated by the resumed run
                truncate_metrics(self.out_dir / "metrics.jsonl", self.epoch, self.iter)
            self._metrics = MetricsLog(self.out_dir, tensorboard)

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
        """Next batch's square size, drawn on rank 0 (from `random`, seeded per epoch) and broadcast."""
        return tuple(du.broadcast_object(draw_batch_size(random, self.recipe.augment)))

    def _enter_stage(self, epoch: int) -> DataLoader:
        """The criterion and the loader of `epoch`: the head switch changes the loss weights, the data
        switch the pipeline (and adds the auxiliary box loss). A model that computes its own losses with
        a `criterion` attribute (RTMO) gets the trainer's."""
        self.criterion = Criterion.from_recipe(self.recipe, epoch)
        if hasattr(self.model, "criterion"):
            self.model.criterion = self.criterion
        return self._build_loader(data_stage(self.recipe, epoch))

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
            loader = self._enter_stage(epoch)
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
        batches = iter(loader)
        try:
            self._train_steps(itertools.islice(batches, n), n, epoch, bar)
        finally:
            _end_workers(batches)
            if bar is not None:
                bar.close()

    def _train_steps(self, batches: Iterable, n: int, epoch: int, bar: Any) -> None:
        rec, model = self.recipe, self.ddp
        params = [p for p in self.model.parameters() if p.requires_grad]
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            images, targets = batch
            images = images.to(self.device, non_blocking=True).float()
            targets = to_device(targets, self.device)
            images, targets = self.data.batch_resize(images, targets, self.next_size)
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
        save_checkpoint(ckpt, self.out_dir / "last.pth")
        if improved:
            save_checkpoint(ckpt, self.out_dir / "best.pth")
        if rt.checkpoint_interval > 0 and (epoch + 1) % rt.checkpoint_interval == 0:
            save_checkpoint(ckpt, self.out_dir / f"epoch_{epoch + 1}.pth")
            prune_interval_checkpoints(self.out_dir, rt.keep_checkpoints)
        du.barrier()

    def _resume(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path)
        data = ckpt.get("data", {}) if isinstance(ckpt.get("data"), dict) else {}
        if data.get("world_size", self.dist.world_size) != self.dist.world_size:
            log.warning("resuming a %s-process run on %s processes: the data order will differ",
                        data.get("world_size"), self.dist.world_size)
        changes = changed_settings(ckpt, self.recipe, self.workers)
        if changes:
            log.warning("resuming with settings that differ from the checkpoint's (%s): the rest of the run "
                        "will not match the interrupted one", ", ".join(changes))
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

    # ------------------------------------------------------------------ logging
    def _log(self, record: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.write(record)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()


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


def _end_workers(batches: Iterable) -> None:
    """End the epoch's worker processes now, also when it stops early (an error, `max_iters_per_epoch`).
    Left to the iterator's finaliser they outlive a failed epoch: its traceback keeps the iterator alive,
    and the workers are torn down at some later garbage collection, in whatever code runs then."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator only
    if shutdown is not None:
        shutdown()
