"""The files of a run folder: training checkpoints (written atomically, read safely for a resume), the RNG
states they carry, the folder checks of a new run, and the clean-up a resumed run does (stale temporary
files of a killed save, metrics records after the resume point)."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.checkpoint import CheckpointError
from ..utils.checkpoint import load_checkpoint as read_checkpoint_file
from ..utils.fileio import atomic_path, atomic_write_text, blocking_file

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
