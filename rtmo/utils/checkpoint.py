"""The one reader for checkpoint files: every path that opens a `.pth` goes through `load_checkpoint`.

A checkpoint is a pickle, and unpickling can run any function the file names. rtmo never lets it: files are
read with torch's weights-only unpickler, which resolves a global only if it is on an allow-list, and the
list here adds exactly what the published RTMO files hold besides tensors. Those were written by mmengine
and re-saved by mmpose's `publish_model.py` with the legacy (non-zip) serialization; their `meta` carries
`dataset_meta` with numpy arrays pickled by numpy 1.x (`numpy.core.multiarray._reconstruct`), a name
numpy 2 moved to `numpy._core`. Both names map to the same reconstruction function, so such files load
under numpy 1 and 2 alike. Anything else a file references (a class, `os.system`, ...) is refused and
named.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, unsafe, or not an RTMO state dict."""


def _numpy_module(name: str) -> Any:
    """numpy's `core.multiarray` under numpy 1.x or its numpy-2 home `_core.multiarray`."""
    import importlib

    for mod in (f"numpy._core.{name}", f"numpy.core.{name}"):
        try:
            return importlib.import_module(mod)
        except ImportError:
            continue
    raise ImportError(f"numpy has no core.{name}")  # pragma: no cover - every numpy has one of the two


def _array_globals() -> list[Any]:
    """numpy array and scalar reconstruction and every dtype class, under numpy-1 and numpy-2 names."""
    multiarray = _numpy_module("multiarray")
    out: list[Any] = [np.ndarray, np.dtype]
    for func in ("_reconstruct", "scalar"):
        obj = getattr(multiarray, func)
        out += [(obj, f"numpy.core.multiarray.{func}"), (obj, f"numpy._core.multiarray.{func}")]
    # numpy >= 1.25 gives each dtype its own class (numpy.dtypes.Float64DType, ...); unpickling a dtype
    # sets its state on an instance of that class, so the classes themselves must be allowed.
    dtype_classes = {type(np.dtype(c)) for c in np.typecodes["All"] if c not in "Mm"}
    dtype_classes |= {type(np.dtype("M8[s]")), type(np.dtype("m8[s]"))}
    out += sorted((c for c in dtype_classes if c is not np.dtype), key=lambda c: c.__name__)
    return out


# torch words the refusal in several ways across versions ("Unsupported global: GLOBAL x.y", "Trying to load
# unsupported GLOBAL x.y whose module x is blocked"); the global's name is what the user needs.
_REFUSED = re.compile(r"unsupported (?:global|GLOBAL)\W*(?:GLOBAL\s+)?([A-Za-z_][\w.]*)", re.IGNORECASE)


def load_checkpoint(path: str | os.PathLike) -> Any:
    """The object stored in a checkpoint file (zip or legacy torch serialization), on the CPU.

    Raises `CheckpointError` naming the file and the problem: missing, not a checkpoint, truncated, or
    referencing something that is not tensor or array data (which is never executed).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory; pass the .pth file inside it")
    try:
        with open(p, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"{p}: cannot be read ({e.strerror or e})") from None
    if not head:
        raise CheckpointError(f"{p}: not a PyTorch checkpoint (the file is empty)")
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # zip (torch >= 1.6) or a pickle
        raise CheckpointError(f"{p}: not a PyTorch checkpoint (unrecognised file format)")
    if head.startswith(b"PK") and not _zip_complete(p):
        raise CheckpointError(f"{p}: corrupt or truncated checkpoint (its zip archive is incomplete)")
    import torch  # here, not at the top: exported models are opened through modules that import this one

    try:
        with torch.serialization.safe_globals(_array_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; each becomes one line here
        raise _explain(p, e) from None


def _explain(p: Path, e: Exception) -> CheckpointError:
    text = str(e)
    found = _REFUSED.search(text)
    if found:
        return CheckpointError(
            f"{p}: refused: the file references {found.group(1)}, which is not tensor or array data; "
            "rtmo never runs code from a checkpoint")
    low = text.lower()
    if isinstance(e, (EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError)) \
            or any(w in low for w in ("truncated", "corrupt", "unexpected eof", "inline_container",
                                      "pytorchstreamreader")):
        return CheckpointError(f"{p}: corrupt or truncated checkpoint (the file ends early or its "
                               "archive is damaged)")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return CheckpointError(f"{p}: not a readable checkpoint ({first[:200]})")


def _zip_complete(p: Path) -> bool:
    """True when the zip's central directory is there and every member's CRC checks out (a download cut
    short or a disk that filled up loses the directory at the end first)."""
    try:
        with zipfile.ZipFile(p) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False
