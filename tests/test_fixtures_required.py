"""Where fixtures are required (CI), their absence fails the run instead of skipping the tests that need
them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pytest(tmp_path: Path, shared: Path, required: bool) -> subprocess.CompletedProcess:
    """pytest on a one-test folder that uses this suite's locator (its conftest re-exports the hooks)."""
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_runtest_makereport, pytest_sessionstart  # noqa: F401\n")
    (tmp_path / "test_needs_fixture.py").write_text(
        "from tests.conftest import FIXTURES, require\n\n\n"
        "def test_needs_a_checkpoint():\n    require(FIXTURES / 'no-such-model.pth')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "RTMO_REQUIRE_FIXTURES")}
    env.update(RTMO_SHARED=str(shared), PYTHONPATH=str(REPO))
    if required:
        env["RTMO_REQUIRE_FIXTURES"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_missing_shared_folder_fails_the_run_where_required(tmp_path: Path) -> None:
    run = _pytest(tmp_path, tmp_path / "nowhere", required=True)
    assert run.returncode == 1
    assert "shared fixtures are required here and missing" in run.stdout + run.stderr
    assert "passed" not in run.stdout and "skipped" not in run.stdout  # stopped before any test ran


def test_a_skip_for_a_missing_fixture_fails_where_required(tmp_path: Path) -> None:
    """The folders exist but one checkpoint is missing: locally the test skips, where required it fails."""
    shared = tmp_path / "shared"
    (shared / "fixtures").mkdir(parents=True)
    (shared / "data").mkdir()
    local = _pytest(tmp_path, shared, required=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    ci = _pytest(tmp_path, shared, required=True)
    assert ci.returncode == 1 and "1 failed" in ci.stdout, ci.stdout
    assert "required shared file missing" in ci.stdout
