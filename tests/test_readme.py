"""README.md is a tested contract: every `rtmo` / `python -m rtmo` / `torchrun -m rtmo` line of its shell
blocks and every ```python block runs here.

Names that cannot exist on a test machine are replaced through the explicit table in `substitutions`
(official model names -> the fixture checkpoints, photos / videos / annotation files -> the shared data).
Training lines are only parsed (`rtmo train` with the real arguments, recipe and --init-from resolved, no
training: a real run takes hours); every other line runs as a subprocess in a temporary folder with
RTMO_CACHE_DIR pointing into it, and must exit 0. Two speed settings are added where the README does not
give them (`--max-frames 2` for videos, `--runs 2 --warmup 1` for benchmarks).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import DATA, fixture_checkpoint

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
COCO = DATA / "coco"
COCO_ANN = COCO / "test_coco.json"
VIDEO = DATA / "video" / "demo.mp4"
PHOTO = COCO / "000000197388.jpg"
OTHER = COCO / "000000000785.jpg"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def rtmo_lines() -> list[list[str]]:
    """argv of every shell line that runs rtmo (continuations joined, comments dropped)."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv[:1] == ["rtmo"]:
                out.append(argv[1:])
            elif argv[:3] == ["python", "-m", "rtmo"]:
                out.append(argv[3:])
            elif argv[:1] == ["torchrun"] and "rtmo" in argv:
                out.append(argv[argv.index("rtmo") + 1:])
    return out


LINES = rtmo_lines()


def substitutions(tmp: Path) -> dict[str, str]:
    """README name -> what stands for it here."""
    imgs = tmp / "imgs"
    if not imgs.exists():
        imgs.mkdir()
        for p in sorted(COCO.glob("*.jpg")):
            shutil.copy(p, imgs / p.name)
    return {
        "rtmo-s-coco": str(fixture_checkpoint("s")),  # the same architecture, mmpose's format, random weights
        "rtmo-t-body7": str(fixture_checkpoint("t")),
        "runs/s/best.pth": str(fixture_checkpoint("t")),
        "people.jpg": str(PHOTO), "a.jpg": str(PHOTO), "b.jpg": str(OTHER),
        "video.mp4": str(VIDEO),
        "imgs/": str(imgs),
        "person_keypoints_val2017.json": str(COCO_ANN), "val.json": str(COCO_ANN),
        "train.json": str(COCO_ANN),
        "val2017/": str(COCO), "val_imgs/": str(COCO),
    }


DEFAULT_MODEL_COMMANDS = ("predict",)  # subcommands whose -m defaults to rtmo-s-coco
# The fixture weights are random: many candidates tie near score 1, so the ONNX-vs-PyTorch check at the end
# of an export compares differently ordered detections. tests/test_export.py checks exports properly.
# Speed, as for the shell lines: two video frames, no graph simplification.
CODE_SUBSTITUTIONS = {'path="rtmo-s.onnx")': 'path="rtmo-s.onnx", check=False, simplify=False)',
                      'stream=True)': 'stream=True, max_frames=2)'}


def _env(tmp: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RTMO_CACHE_DIR": str(tmp / "cache"),
           "OMP_NUM_THREADS": "2"}
    env.pop("RTMO_DEBUG", None)
    return env


def test_readme_has_what_the_tests_read():
    assert README.read_text().startswith("# rtmo\n\n```bash\nmake demo") and "make test" in blocks("bash")[0]
    subs = {argv[0] for argv in LINES}
    assert {"predict", "models", "val", "train", "export", "benchmark"} <= subs, subs
    assert len(blocks("python")) >= 3


@pytest.mark.parametrize("argv", [pytest.param(a, id=" ".join(a)[:60])
                                  for a in LINES if a[0] == "train"])
def test_training_lines_parse(argv, tmp_path):
    """Parsed, not run: the options exist, the recipe / model name and --init-from resolve."""
    from rtmo.cli import build_parser
    from rtmo.cli.models import recipe_for_model
    from rtmo.cli.train import run_train
    from rtmo.hub.zoo import REGISTRY
    from rtmo.train.recipes import TrainRecipe

    args = build_parser().parse_args(argv)  # a usage error exits 2 here
    assert args.func is run_train
    name = args.recipe or args.model
    if args.list:
        return
    if not name.endswith(".toml"):  # a .toml in the README is the reader's own file
        TrainRecipe.load(recipe_for_model(name) or name)
    assert args.init_from is None or args.init_from in REGISTRY


@pytest.mark.parametrize("argv", [pytest.param(a, id=" ".join(a)[:60])
                                  for a in LINES if a[0] != "train"])
def test_command_lines_run(argv, tmp_path):
    subs = substitutions(tmp_path)
    # `rtmo models -m NAME` takes registry names only: nothing to substitute there.
    run = list(argv) if argv[0] == "models" else [subs.get(a, a) for a in argv]
    if argv[0] in DEFAULT_MODEL_COMMANDS and not {"-m", "--model"} & set(argv):
        run += ["-m", subs["rtmo-s-coco"]]  # the default model, rtmo-s-coco, is not downloadable here
    if argv[0] == "predict" and "video.mp4" in argv and "--max-frames" not in argv:
        run += ["--max-frames", "2"]
    if argv[0] == "benchmark":
        run += ["--runs", "2", "--warmup", "1"]
    if argv[0] == "serve":
        _serve_answers(run, tmp_path)
        return
    r = subprocess.run([sys.executable, "-m", "rtmo", *run], capture_output=True, text=True, cwd=tmp_path,
                       env=_env(tmp_path), timeout=300)
    usage = r.returncode == 2 and ("usage:" in r.stderr or "unrecognized" in r.stderr)
    assert not usage, f"usage error for `rtmo {' '.join(argv)}`:\n{r.stderr[-2000:]}"
    assert r.returncode == 0, f"`rtmo {' '.join(argv)}` failed:\n{r.stderr[-2000:]}"


def _serve_answers(run: list[str], tmp: Path) -> None:
    """`rtmo serve` runs until stopped: start it on a free port, ask /health, stop it with SIGTERM."""
    import json
    import signal
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "rtmo", *run, "--port", "0", "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp,
                            env=_env(tmp))
    try:
        line = proc.stdout.readline()  # printed once the model is loaded and the port is bound
        url = re.search(r"http://[\d.]+:\d+", line)
        assert url, f"`rtmo {' '.join(run)}` printed {line!r}"
        with urllib.request.urlopen(url.group(0) + "/health", timeout=60) as r:
            assert json.loads(r.read())["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_python_blocks_run(tmp_path):
    """All ```python blocks in order, in one interpreter, as a reader pastes them into one session."""
    subs = substitutions(tmp_path)
    code = []
    for i, block in enumerate(blocks("python")):
        for name, value in subs.items():
            block = block.replace(f'"{name}"', repr(value))
        for old, new in CODE_SUBSTITUTIONS.items():
            block = block.replace(old, new)
        code.append(f"{block}\nprint('block {i} ok', flush=True)\n")
    script = tmp_path / "readme_blocks.py"
    script.write_text("import torch\ntorch.set_num_threads(2)\n" + "\n".join(code))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                       env=_env(tmp_path), timeout=300)
    assert r.returncode == 0, f"{r.stdout[-1000:]}\n{r.stderr[-3000:]}"
    assert r.stdout.count(" ok\n") == len(blocks("python"))
    assert (tmp_path / "people_pose.jpg").is_file() and (tmp_path / "rtmo-s.onnx").is_file()
