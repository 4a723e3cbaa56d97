"""`rtmo.utils.memory.keep_freed_memory`: freed blocks stay with the process for the next call (checked on
the resident size, in fresh interpreters), and `ModelManager.get` turns it on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import fixture_dir, require

ROOT = Path(__file__).resolve().parents[1]

# Touch 100 MiB, free it, and print how much the resident size fell (KiB).
PROBE = """
import sys
import numpy as np
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
{setup}
a = np.ones(100 << 20, np.uint8)
before = rss()
del a
print(before - rss())
"""


def _drop_kib(setup: str, env: dict | None = None) -> int:
    res = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    assert res.returncode == 0, res.stderr
    return int(res.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator, read from /proc")
def test_freed_memory_is_kept_for_reuse():
    # glibc's default: a 100 MiB block is mapped on its own and returned on free
    assert _drop_kib("") > 90 * 1024
    kept = "from rtmo.utils.memory import keep_freed_memory\nassert keep_freed_memory()"
    assert _drop_kib(kept) < 10 * 1024
    # ModelManager.get sets it (an exported model: no torch needed)
    path = require(fixture_dir("t") / "mmdeploy" / "end2end.onnx")
    assert _drop_kib(f"import rtmo\nrtmo.ModelManager.get({str(path)!r})") < 10 * 1024
    # opting out leaves glibc's behaviour
    off = "from rtmo.utils.memory import keep_freed_memory\nassert not keep_freed_memory()"
    assert _drop_kib(off, {"RTMO_KEEP_FREED_MEMORY": "0"}) > 90 * 1024
