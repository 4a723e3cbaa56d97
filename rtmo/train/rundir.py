"""The files of a run folder: training checkpoints (written atomically, read safely for a resume, interval
ones pruned), the RNG states they carry, the metrics log, the folder checks of a new run, and the clean-up
a resumed run does (stale temporary files of a killed save, metrics records after the resume point)."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..infer.writers import check_output_dir
from ..utils.checkpoint import CheckpointError
from ..utils.checkpoint import load_checkpoint as read_checkpoint_file
from ..utils.fileio import atomic_path, atomic_write_text
from .recipes import TrainRecipe

log = logging.getLogger("rtmo.train")

RUN_FILES = ("last.pth", "best.pth", "metrics.jsonl")


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


def check_run_dir(out_dir: Path, resume: bool) -> None:
    """A run folder must be a folder, and a new run (not `resume`) must not mix with an old one: its
    `last.pth`, `best.pth` and `metrics.jsonl` would be overwritten or appended to."""
    out_dir = check_output_dir(out_dir, "output folder")  # a ValueError naming the file in the way
    if resume or not out_dir.is_dir():
        return
    found = [n for n in RUN_FILES if (out_dir / n).exists()]
    found += sorted(p.name for p in out_dir.glob("epoch_*.pth"))
    if found:
        raise ValueError(f"output folder {out_dir} already holds a training run ({', '.join(found[:4])}): "
                         "pass --resume (resume=True) to continue it, or choose another --output")


def save_checkpoint(ckpt: dict[str, Any], path: Path) -> None:
    """`torch.save` through `rtmo.utils.fileio.atomic_path`: a kill mid-write never leaves a torn file under
    `path`. The temporary name ends in `.tmp<pid>`, so that a later run can tell a dead writer's leftover
    from a live one's file (`remove_stale_temp_files`)."""
    with atomic_path(path, suffix=f".tmp{os.getpid()}") as tmp:
        torch.save(ckpt, tmp)


def remove_stale_temp_files(out_dir: Path) -> None:
    """Delete `.NAME.pth.*tmp<pid>` files left by a process that was killed while saving a checkpoint."""
    for tmp in Path(out_dir).glob(".*.pth*.tmp*"):
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
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        log.info("%s: dropped %d record(s) after the resume point (epoch %d)", path.name, dropped, epoch)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prune_interval_checkpoints(out_dir: Path, keep: int) -> None:
    """Keep the last `keep` `epoch_N.pth` files (mmengine's max_keep_ckpts; 0 keeps all)."""
    kept = sorted((p for p in Path(out_dir).glob("epoch_*.pth") if p.stem[6:].isdigit()),
                  key=lambda p: int(p.stem[6:]))
    for old in kept[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)


def changed_settings(ckpt: dict[str, Any], recipe: TrainRecipe, workers: int) -> list[str]:
    """Every setting of a resumed run that differs from the checkpoint's ('epochs 3 -> 4', ...): the
    schedule (epochs), the batch and the data order (workers) then differ from the interrupted run."""
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    old = meta.get("recipe") if isinstance(meta.get("recipe"), dict) else {}
    data = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    changes = []
    pairs = (("epochs", (old.get("schedule") or {}).get("epochs"), recipe.schedule.epochs),
             ("batch size", (old.get("data") or {}).get("batch_size"), recipe.data.batch_size),
             ("workers", data.get("workers"), workers),
             ("input size", old.get("input_size"), list(recipe.input_size)),
             ("learning rate", (old.get("optim") or {}).get("lr"), recipe.optim.lr))
    for name, was, now in pairs:
        if was is not None and (list(was) if isinstance(was, (list, tuple)) else was) != now:
            changes.append(f"{name} {was} -> {now}")
    return changes


class MetricsLog:
    """`metrics.jsonl` of a run folder (one JSON record a line, appended and flushed at once, so a kill
    loses nothing written) and, when installed, TensorBoard scalars under `tb/`; training records are
    also logged."""

    def __init__(self, out_dir: Path, tensorboard: bool = True) -> None:
        self._file = open(Path(out_dir) / "metrics.jsonl", "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tb"))
            except ImportError:
                log.info("tensorboard is not installed: metrics go to metrics.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            tag = record["type"]
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "iter", "type"):
                    self._tb.add_scalar(f"{tag}/{k}", v, record["iter"])
        if record["type"] == "train":
            log.info("epoch %d iter %d loss %.4f lr %.3e", record["epoch"], record["iter"],
                     record.get("loss", float("nan")), record["lr"])

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
