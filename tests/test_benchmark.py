"""`rtmo benchmark` as typed: --model (or positional), backend from the file suffix, --persons, bad options
answered in one line (exit 2) before any work. Uses mmdeploy's RTMO-t end2end.onnx: quick, torch-free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import DATA, fixture_dir

ROOT = Path(__file__).resolve().parents[1]


def _onnx() -> str:
    p = fixture_dir("t") / "mmdeploy" / "end2end.onnx"
    if not p.is_file():
        pytest.skip(f"missing {p}")
    return str(p)


def _rtmo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtmo", "benchmark", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_persons_reports_cost_per_detection_count(tmp_path):
    img = str(DATA / "crowdpose" / "103319.jpg")
    res = _rtmo(_onnx(), "--persons", "--images", img, "--runs", "1", "--warmup", "0", "--threshold", "0.3",
                "-o", str(tmp_path / "p"))
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "p" / "benchmark.json").read_text())
    assert out["backend"] == "onnxruntime" and out["threshold"] == 0.3
    rows = out["rows"]
    assert [r["case"] for r in rows] == ["1 copies", "4 copies", "9 copies", "16 copies"]
    assert rows[0]["end2end_vs_first"] == 1.0 and all(r["ms_per_detection"] > 0 for r in rows)
    assert rows[1]["detections"] > rows[0]["detections"]  # more (smaller) people found in the tiled image
    assert "ms/det" in res.stdout and not list(tmp_path.glob(".*part"))


@pytest.mark.parametrize("args, words", [
    (["--runs", "0"], "--runs must be >= 1"),
    (["--batch-sizes", "1,x"], "--batch-sizes takes comma separated integers"),
    (["--images", "nope.jpg"], "nope.jpg: no such file"),
    (["--threshold", "2"], "threshold must be in [0, 1]"),
    (["--backend", "openvino", "--precision", "int4"], "invalid choice"),
])
def test_bad_options_get_one_line(args, words):
    res = _rtmo("--model", _onnx(), *args)
    assert res.returncode == 2 and words in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


def test_cases_interleaved_and_persons_summary():
    from rtmo.benchmark import _interleaved, persons_summary

    log = []
    times = _interleaved([(lambda: log.append("a"),), (lambda: log.append("b"),)], runs=2, warmup=1)
    assert log == ["a", "b", "b", "a", "a", "b"]  # every case each round, the order flipped every other
    assert [len(t[0]) for t in times] == [2, 2]  # warm-up rounds untimed
    rows = [{"detections": n, "end2end": {"median_s": (100 + 0.5 * n) / 1e3}} for n in (1, 5, 10, 20)]
    s = persons_summary(rows)
    assert abs(s["ms_per_extra_detection"] - 0.5) < 1e-9 and abs(s["ms_fixed"] - 100) < 1e-9
    assert abs(s["spread"] - (110 / 100.5 - 1)) < 1e-9
    assert persons_summary(rows[:1])["ms_per_extra_detection"] is None
