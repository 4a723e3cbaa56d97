"""The one reader for checkpoint files: every path that opens a `.pth` goes through `load_checkpoint`.

It never runs code from a file (see `_SafeUnpickler`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe, or not an RTMO state dict."""


def load_checkpoint(path: str | os.PathLike) -> Any:
    """The object stored in a checkpoint file (zip or legacy torch serialization), on the CPU."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory; pass the .pth file inside it")
    return torch.load(p, map_location="cpu", weights_only=True)
