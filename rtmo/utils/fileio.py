"""Writing files so that a kill, a full disk or a failed check never leaves a torn file under the final
name: data goes to a temporary file in the same folder (same file system, so the rename is atomic), which
replaces the final name only once complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on a clean exit it is renamed to `final`, on any exception
    it is removed and `final` keeps what it held before (or stays absent)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or f".tmp{final.suffix}",
                                dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes it private; give it the mode a plain open() would have
            os.chmod(tmp, final.stat().st_mode & 0o777 if final.exists() else 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def blocking_file(path: str | os.PathLike) -> Path | None:
    """The existing non-folder that stops `path` from being (or lying inside) a folder: `path` itself or
    its nearest existing parent; None when there is none."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            return None if q.is_dir() else q
    return None


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(final)


def atomic_write_text(final: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(final, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
