"""Where the bench scripts find the repository and the shared material: `$RTMO_SHARED`, else ../shared
beside the checkout (the same rule as tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RTMO_SHARED", ROOT.parent / "shared"))
