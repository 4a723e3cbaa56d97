"""The one atomic writer and the output-path check every command uses."""

from __future__ import annotations

import os

import pytest

from rtmo.utils.fileio import atomic_path, atomic_write_bytes, blocking_file


def test_written_files_get_the_mode_open_would_give(tmp_path):
    """mkstemp makes private (0600) files; a user's outputs must be readable as plain writes are."""
    old = os.umask(0o022)
    try:
        p = atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert p.stat().st_mode & 0o777 == 0o644
        os.chmod(p, 0o640)
        atomic_write_bytes(p, b"[]")  # replacing keeps the file's own mode
        assert p.stat().st_mode & 0o777 == 0o640 and p.read_bytes() == b"[]"
    finally:
        os.umask(old)


def test_failure_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(b"previous")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("check failed")
    assert p.read_bytes() == b"previous" and [q.name for q in tmp_path.iterdir()] == ["m.onnx"]


def test_blocking_file(tmp_path):
    (tmp_path / "f").write_text("x")
    assert blocking_file(tmp_path / "new" / "deeper") is None
    assert blocking_file(tmp_path) is None
    assert blocking_file(tmp_path / "f") == tmp_path / "f"
    assert blocking_file(tmp_path / "f" / "sub" / "x") == tmp_path / "f"
