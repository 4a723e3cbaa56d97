"""Shared test helpers: where the ground-truth fixtures live, and models built from them.

The fixtures (mmpose's outputs, published-format checkpoints, real photos) live outside the repository, in
`$RTMO_SHARED` (default: `../shared` beside the checkout); this file is the only place that looks for them.
Locally a missing fixture skips the tests that need it. In CI (`.ci/run` sets `RTMO_REQUIRE_FIXTURES=1`; a
`CI` variable does the same) a missing fixture fails the run: tests that silently skip prove nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SHARED = Path(os.environ.get("RTMO_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
FIXTURES = SHARED / "fixtures"
DATA = SHARED / "data"
REQUIRED = os.environ.get("RTMO_REQUIRE_FIXTURES") == "1" or os.environ.get("CI", "").lower() in ("1", "true")


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [str(p) for p in (FIXTURES, DATA) if not p.is_dir()]
    if REQUIRED and missing:
        pytest.exit(f"the shared fixtures are required here and missing: {', '.join(missing)} "
                    "(set RTMO_SHARED to the folder holding fixtures/ and data/)", returncode=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Where fixtures are required, a test skipped for want of a file under SHARED fails instead."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRED and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if str(SHARED) in reason or "fixture" in reason.lower():
            report.outcome = "failed"
            report.longrepr = f"required shared file missing: {reason}"


@pytest.fixture(autouse=True)
def no_leftover_processes():
    """A test leaves no multiprocessing child behind (DataLoader workers, say): left to the garbage
    collector, they are torn down later, inside whatever test then runs."""
    import multiprocessing

    yield
    left = multiprocessing.active_children()
    assert not left, f"child processes outlived the test: {left}"


def require(path: Path) -> Path:
    """`path` (a file or folder under SHARED), or skip the test when it is missing (fail where required)."""
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path

FIXTURE_MODELS = {
    "s": "rtmo-s_8xb32-600e_coco-640x640_seed0",
    "t": "rtmo-t_8xb32-600e_body7-416x416_seed0",
}


def fixture_dir(variant: str) -> Path:
    return require(FIXTURES / FIXTURE_MODELS[variant])


def fixture_checkpoint(variant: str) -> Path:
    return fixture_dir(variant) / f"{FIXTURE_MODELS[variant]}.pth"


_MODELS: dict[str, torch.nn.Module] = {}


def fixture_model(variant: str):
    """RTMO with the mmpose fixture weights (random, deterministic), loaded once per session."""
    if variant not in _MODELS:
        from rtmo import ModelManager

        _MODELS[variant] = ModelManager.get(fixture_checkpoint(variant))
    return _MODELS[variant]


def data_images() -> list[Path]:
    require(DATA)
    return sorted(DATA.glob("coco/*.jpg")) + sorted(DATA.glob("crowdpose/*.jpg"))
