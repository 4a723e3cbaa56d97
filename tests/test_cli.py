"""The `rtmo` command, driven as a subprocess on real images and video with the fixture checkpoint.

The fixture weights are random: these tests check the plumbing (files, formats, batching, errors), not the
quality of the poses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from rtmo.infer.writers import ImageIds, unique_path

from .conftest import DATA, fixture_checkpoint

REPO = Path(__file__).resolve().parents[1]
COCO_ANN = DATA / "coco" / "test_coco.json"
VIDEO = DATA / "video" / "demo.mp4"
T_SIDE = 416  # RTMO-t input size: the fixture used here, the fastest


def rtmo(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO), **(env or {})}
    e.pop("RTMO_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "rtmo.cli", *map(str, args)], capture_output=True,
                          text=True, env=e, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def model_path() -> Path:
    return fixture_checkpoint("t")


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory) -> Path:
    """The COCO test images plus a truncated JPEG, in a folder of their own."""
    src = sorted((DATA / "coco").glob("*.jpg"))
    if not src:
        pytest.skip(f"data not found at {DATA}")
    d = tmp_path_factory.mktemp("coco")
    for p in src:
        shutil.copy(p, d / p.name)
    (d / "broken.jpg").write_bytes(src[0].read_bytes()[:3000])  # cut-off JPEG: no end-of-image marker
    return d


def _dets(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def test_folder_batched_equals_single_and_skips_corrupt_image(coco_dir, model_path, tmp_path):
    out4, out1 = tmp_path / "b4", tmp_path / "b1"
    r4 = rtmo("predict", coco_dir, "--model", model_path, "--batch-size", "4", "--save", "--save-json",
              "--ann", COCO_ANN, "--output", out4)
    assert r4.returncode == 0, r4.stderr
    r1 = rtmo("predict", coco_dir, "--model", model_path, "--batch-size", "1", "--save-json", "--quiet",
              "--output", out1)  # no --ann: ids come from the numeric COCO file stems
    assert r1.returncode == 0, r1.stderr
    for r in (r4, r1):  # the broken file is named in one warning line, the others still have results
        warnings = [line for line in r.stderr.splitlines() if "warning" in line]
        assert len(warnings) == 1 and "broken.jpg" in warnings[0]

    # Drawn images: one per readable input, decodable, same size as the input, inputs untouched.
    good = sorted(p for p in coco_dir.glob("*.jpg") if p.name != "broken.jpg")
    for p in good:
        drawn = cv2.imread(str(out4 / p.name))
        assert drawn is not None and drawn.shape == cv2.imread(str(p)).shape
        assert p.read_bytes() == (DATA / "coco" / p.name).read_bytes()
    assert not (out4 / "broken.jpg").exists()

    # COCO results: loadable by pycocotools against the annotation file, ids from --ann == numeric stems.
    from pycocotools.coco import COCO

    gt = COCO(str(COCO_ANN))
    a, b = _dets(out4 / "predictions.json"), _dets(out1 / "predictions.json")
    res = gt.loadRes(str(out4 / "predictions.json"))
    assert len(res.getAnnIds()) == len(a) > 0
    assert {d["image_id"] for d in a} == set(gt.getImgIds())
    assert all(d["category_id"] == 1 and len(d["keypoints"]) == 17 * 3 and len(d["bbox"]) == 4 for d in a)

    # Batch 4 vs batch 1: same detections in the same order.
    assert [d["image_id"] for d in a] == [d["image_id"] for d in b]
    sizes = {im["id"]: max(im["width"], im["height"]) for im in gt.dataset["images"]}
    scale = np.array([sizes[d["image_id"]] / T_SIDE for d in a])[:, None]  # image px per network px
    box_a, box_b = np.array([d["bbox"] for d in a]), np.array([d["bbox"] for d in b])
    # Batched convolutions sum in another order: boxes agree to float32 rounding, ~1e-4 of their ~500 px
    # size; 1e-3 network-input px (1.5e-3 image px here) is the bound.
    np.testing.assert_array_less(np.abs(box_a - box_b) / scale, 1e-3)
    np.testing.assert_allclose([d["score"] for d in a], [d["score"] for d in b], atol=1e-5)
    ka = np.array([d["keypoints"] for d in a]).reshape(len(a), 17, 3)
    kb = np.array([d["keypoints"] for d in b]).reshape(len(b), 17, 3)
    err = np.hypot(*(ka - kb)[..., :2].transpose(2, 0, 1))
    # Keypoints: the DCC's bin softmax with these RANDOM weights amplifies the rounding difference for a
    # few keypoints (measured max 1.8 px, median 1e-4 px): the median must be tiny, the maximum loosely
    # bounded. With trained weights the distributions are peaked and the effect vanishes.
    assert np.median(err) < 1e-2
    assert err.max() < 5.0
    np.testing.assert_allclose(ka[..., 2], kb[..., 2], atol=1e-4)


def test_video_drawn_and_json_lines_with_tracks(model_path, tmp_path):
    if not VIDEO.exists():
        pytest.skip(f"{VIDEO} not found")
    cap = cv2.VideoCapture(str(VIDEO))
    fps, w, h = cap.get(cv2.CAP_PROP_FPS), int(cap.get(3)), int(cap.get(4))
    cap.release()
    r = rtmo("predict", VIDEO, "--model", model_path, "--save", "--save-json", "--track", "--max-frames", "4",
             "--batch-size", "2", "--threshold", "0.5", "--output", tmp_path)
    assert r.returncode == 0, r.stderr
    out = cv2.VideoCapture(str(tmp_path / "demo.mp4"))
    assert out.isOpened()
    assert out.get(cv2.CAP_PROP_FPS) == pytest.approx(fps) and (int(out.get(3)), int(out.get(4))) == (w, h)
    frames = 0
    while out.read()[0]:
        frames += 1
    assert frames == 4

    recs = [json.loads(line) for line in (tmp_path / "demo.jsonl").read_text().splitlines()]
    assert [x["frame_index"] for x in recs] == [0, 1, 2, 3]
    assert [x["timestamp"] for x in recs] == pytest.approx([i / fps for i in range(4)])
    assert all(x["image_shape"] == [h, w] for x in recs)
    ids = [[d["track_id"] for d in x["detections"]] for x in recs]
    assert all(len(x["detections"]) > 0 for x in recs)
    assert all(isinstance(i, int) for frame in ids for i in frame)
    confirmed = [[i for i in frame if i >= 0] for frame in ids]
    assert all(len(c) == len(set(c)) for c in confirmed)  # an id is used once per frame
    assert set(confirmed[0]) & set(confirmed[1])  # and ids carry over between frames


@pytest.mark.parametrize("case", ["missing_source", "bad_model", "unreadable_image", "bad_option"])
def test_errors_are_one_line_exit_2(case, model_path, tmp_path):
    if case == "missing_source":
        r = rtmo("predict", tmp_path / "nope.jpg", "--model", model_path)
        expect = "nope.jpg"
    elif case == "bad_model":
        r = rtmo("predict", DATA / "coco", "--model", "rtmo-x-nonsense")
        expect = "rtmo-x-nonsense"
    elif case == "unreadable_image":
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not a png at all")
        r = rtmo("predict", bad, "--model", model_path)
        expect = "bad.png"
    else:
        r = rtmo("predict", DATA / "coco", "--model", model_path, "--batch-size", "0")
        expect = "--batch-size"
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rtmo: error:") and expect in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_models_table():
    from rtmo.hub.zoo import REGISTRY

    r = rtmo("models", env={"RTMO_CACHE_DIR": "/nonexistent-rtmo-cache"})
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines()[2:] if ln.split()[0] in REGISTRY}
    assert set(rows) == set(REGISTRY)
    s = rows["rtmo-s-coco"]
    assert s[1:4] == ["640x640", "17", "67.7"] and s[-1] == "no"
    assert rows["rtmo-l-crowdpose"][2] == "14"


def test_glob_show_without_display_and_no_overwrite(model_path, tmp_path):
    """Output into the input folder: the drawn file gets a new name, the input stays as it was."""
    src = DATA / "crowdpose" / "103319.jpg"
    if not src.exists():
        pytest.skip(f"{src} not found")
    shutil.copy(src, tmp_path / src.name)
    env = {k: "" for k in ("DISPLAY", "WAYLAND_DISPLAY")}
    r = rtmo("predict", tmp_path / "*.jpg", "--model", model_path, "--save", "--show", "--quiet",
             "--output", tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "--show: no display" in r.stderr
    assert (tmp_path / src.name).read_bytes() == src.read_bytes()
    drawn = cv2.imread(str(tmp_path / "103319_1.jpg"))
    assert drawn is not None and drawn.shape == cv2.imread(str(src)).shape


# --------------------------------------------------------------------------- writer helpers (in process)

def test_unique_path_never_reuses(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x")
    taken: set[Path] = set()
    assert unique_path(tmp_path / "a.jpg", taken) == tmp_path / "a_1.jpg"
    assert unique_path(tmp_path / "a.jpg", taken) == tmp_path / "a_2.jpg"  # taken in this run
    assert unique_path(tmp_path / "b.jpg", taken) == tmp_path / "b.jpg"


def test_image_ids(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 7, "file_name": "sub/cat.jpg"}]}))
    assert ImageIds(ann)("/x/cat.jpg", 3) == 7
    with pytest.raises(ValueError, match="dog.jpg"):
        ImageIds(ann)("dog.jpg", 0)
    ids = ImageIds()
    assert ids("/x/000000000785.jpg", 5) == 785 and ids("/x/cat.jpg", 5) == 5 and ids(None, 2) == 2


def test_every_subcommand_registered():
    from rtmo.cli import build_parser
    from rtmo.cli.models import run_models
    from rtmo.cli.predict import run_predict
    from rtmo.cli.train import run_train
    from rtmo.cli.val import run_val

    p = build_parser()
    assert p.parse_args(["predict", "x.jpg"]).func is run_predict
    assert p.parse_args(["models"]).func is run_models
    assert p.parse_args(["val", "a.json", "--results", "r.json"]).func is run_val
    assert p.parse_args(["val", "--ann", "a.json", "--results", "r.json"]).ann == "a.json"
    assert p.parse_args(["train", "rtmo-s_8xb32-600e_coco-640x640", "--resume"]).resume is True
    assert p.parse_args(["train", "r"]).func is run_train
    assert p.parse_args(["train", "-m", "rtmo-s-coco"]).model == "rtmo-s-coco"
    assert {"export", "benchmark"} <= set(p._subparsers._group_actions[0].choices)


# --------------------------------------------------------------------------- one convention (issue 10)

def _options(sub: str) -> set[str]:
    from rtmo.cli import build_parser

    p = build_parser()._subparsers._group_actions[0].choices[sub]
    return {s for a in p._actions if a.help != "==SUPPRESS==" for s in a.option_strings}


CONVENTION = {  # the same names for the same things in every subcommand that has the thing
    "predict": {"-m", "--model", "-o", "--output", "--threshold", "--nms-threshold", "--draw-threshold",
                "--device"},
    "val": {"-m", "--model", "-o", "--output", "--threshold", "--nms-threshold", "--device"},
    "train": {"-m", "--model", "-o", "--output", "--device", "--init-from", "--list", "--iters",
              "--val-interval"},
    "models": {"-m", "--model"},
    "export": {"-m", "--model", "-o", "--output", "--threshold", "--nms-threshold", "--device"},
    "benchmark": {"-m", "--model", "-o", "--output", "--threshold", "--nms-threshold", "--device"},
}


@pytest.mark.parametrize("sub", sorted(CONVENTION))
def test_every_subcommand_uses_the_same_names(sub):
    missing = CONVENTION[sub] - _options(sub)
    assert not missing, f"rtmo {sub} lacks {sorted(missing)}"
    # none of the old spellings of the same things
    assert not _options(sub) & {"--score-thr", "--nms-thr", "--kpt-threshold", "--json", "--out"}


def test_help_of_every_subcommand(capsys):
    from rtmo.cli import main

    for sub in CONVENTION:
        with pytest.raises(SystemExit) as e:
            main([sub, "--help"])
        text = capsys.readouterr().out
        assert e.value.code == 0 and text.startswith(f"usage: rtmo {sub}")
        if sub in ("export", "benchmark"):
            continue  # their -m help says what each takes (the names: test above)
        assert "-m MODEL, --model MODEL" in text, text
        if sub != "models":  # the run folder's file names are listed where the option is
            assert "-o DIR, --output DIR" in text and ".json" in text, text


def test_old_spelling_of_draw_threshold_still_parses():
    from rtmo.cli import build_parser

    p = build_parser()
    assert p.parse_args(["predict", "x.jpg"]).draw_threshold == 0.3  # mmpose's inferencer draws with 0.3
    assert p.parse_args(["predict", "x.jpg", "--kpt-threshold", "0.5"]).draw_threshold == 0.5
    assert p.parse_args(["predict", "x.jpg", "--draw-threshold", "0.2"]).draw_threshold == 0.2


@pytest.mark.parametrize("cmd", ["predict", "val", "train"])
def test_bad_device_is_one_line_before_the_model_loads(cmd, tmp_path, capsys):
    import torch

    from rtmo.cli import main

    spec = f"cuda:{torch.cuda.device_count() + 3}"  # a GPU this machine does not have
    if cmd == "predict":  # as typed, in a subprocess; the others in process (faster, same main())
        r = rtmo("predict", DATA / "coco", "-m", "no-such-model", "--device", spec)
        code, err = r.returncode, r.stderr
    else:
        args = (["val", str(COCO_ANN), "-m", "no-such-model", "--images", str(DATA / "coco")] if cmd == "val"
                else ["train", "rtmo-t-body7", "-o", str(tmp_path / "run")])
        code, err = main([*args, "--device", spec]), capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"device '{spec}'" in lines[0] and "Traceback" not in err, err
    assert "no-such-model" not in err  # the device was checked first
    assert not (tmp_path / "run").exists()


def test_device_specs_resolve_like_ultralytics():
    from rtmo.cli.common import resolve_device_arg
    from rtmo.utils.device import DeviceError

    assert resolve_device_arg("cpu") == "cpu"
    with pytest.raises(DeviceError, match="not a device name"):
        resolve_device_arg("gpu-please")


def test_val_model_writes_run_folder_with_progress(model_path, tmp_path):
    out = tmp_path / "val"
    r = rtmo("val", COCO_ANN, "-m", model_path, "--images", DATA / "coco", "-o", out, "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert "4/4" in r.stderr and "img" in r.stderr  # per-image progress bar over the 4 images
    metrics = json.loads((out / "metrics.json").read_text())
    preds = json.loads((out / "predictions.json").read_text())
    # Independent truth: pycocotools' own COCOeval on the written predictions.
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(COCO_ANN))
        ev = COCOeval(gt, gt.loadRes(preds), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert metrics["AP"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert metrics["AR"] == pytest.approx(ev.stats[5], abs=1e-6)
    assert min(p["score"] for p in preds) >= 0.1  # the model's evaluation threshold

    from rtmo.cli import main

    assert main(["val", str(COCO_ANN), "-m", str(model_path), "--images", str(DATA / "coco"), "-o",
                 str(tmp_path / "v2"), "--threshold", "0.6", "--quiet"]) == 0
    strict = json.loads((tmp_path / "v2" / "predictions.json").read_text())
    assert strict and min(p["score"] for p in strict) >= 0.6 and len(strict) < len(preds)


def test_val_output_is_a_folder_and_thresholds_need_a_model(tmp_path, capsys):
    r = rtmo("val", COCO_ANN, "--results", tmp_path / "r.json", "-o", tmp_path / "m.json")
    assert r.returncode == 2 and "give a folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    from rtmo.cli import main

    assert main(["val", str(COCO_ANN), "--results", str(tmp_path / "r.json"), "--threshold", "0.5"]) == 2
    assert "apply when evaluating a model" in capsys.readouterr().err


def test_missing_optional_dependency_names_the_extra(tmp_path):
    fake = tmp_path / "fake" / "pycocotools"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'pycocotools'\", "
                                      "name='pycocotools')\n")
    preds = tmp_path / "r.json"
    preds.write_text("[]")
    r = rtmo("val", COCO_ANN, "--results", preds,
             env={"PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{REPO}"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "rtmo[eval]"' in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_models_details_and_train_list(capsys, monkeypatch):
    from rtmo.cli import main
    from rtmo.cli.models import recipe_for_model
    from rtmo.hub.zoo import REGISTRY
    from rtmo.train.recipes import list_recipes

    assert {recipe_for_model(n) for n in REGISTRY} <= set(list_recipes())  # every model has its recipe
    assert recipe_for_model("rtmo-s-coco") == "rtmo-s_8xb32-600e_coco-640x640"
    monkeypatch.setenv("RTMO_CACHE_DIR", "/nonexistent-rtmo-cache")
    assert main(["models", "-m", "rtmo-s-coco"]) == 0
    out = capsys.readouterr().out
    assert REGISTRY["rtmo-s-coco"].url in out
    assert "rtmo-s_8xb32-600e_coco-640x640" in out and "/nonexistent-rtmo-cache" in out
    assert main(["train", "--list"]) == 0
    rows = {ln.split()[0]: ln.split()[1:] for ln in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == set(list_recipes())
    assert rows["rtmo-t_8xb32-600e_body7-416x416"] == ["rtmo-t-body7"]
    assert main(["train", "rtmo-x-bogus"]) == 2
    err = capsys.readouterr().err
    assert "rtmo-x-bogus" in err and len(err.strip().splitlines()) == 1


TINY_RECIPE = """
variant = "t"
input_size = [128, 128]
[data]
batch_size = 2
workers = 0
[augment]
multiscale_range = [128, 128]
mixup_prob = 0.0
[schedule]
epochs = 3
warmup_epochs = 1
cosine1 = [1, 2, 1]
bump_epoch = 2
cosine2 = [2, 3, 1]
head_switch_epoch = 2
num_last_epochs = 1
[runtime]
val_interval = 1
checkpoint_interval = 1
log_interval = 1
amp = false
[ema]
enabled = false
"""


def test_train_short_run_iters_val_interval_logs_and_summary(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "run"
    r = rtmo("train", "-m", recipe, "-o", out, "--train-ann", COCO_ANN, "--train-images", DATA / "coco",
             "--val-ann", COCO_ANN, "--val-images", DATA / "coco", "--backbone-init", "", "--iters", "1",
             "--val-interval", "2", "--device", "cpu", timeout=300)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["iter"] for x in recs if x["type"] == "train"] == [1, 2, 3]  # --iters 1: one per epoch
    # --val-interval 2 over 3 epochs: after epoch 2 and after the last (the recipe alone says every epoch)
    assert [x["epoch"] for x in recs if x["type"] == "val"] == [1, 2]
    # Log lines start lines of their own (tqdm.write), never glued after a progress bar.
    for line in r.stderr.replace("\r", "\n").splitlines():
        if " INFO: " in line:
            assert line[:4].isdigit(), line
    assert "trained 3 epoch(s), 3 iterations" in r.stdout
    assert "best AP" in r.stdout and f"files in {out}: best.pth, last.pth, metrics.jsonl" in r.stdout


def test_predict_precision_options(model_path, tmp_path):
    """`--fast` finds the same people as the bit-exact default (float rounding apart); a precision the CPU
    cannot run is one line and exit 2, before anything is written."""
    image = DATA / "coco" / "000000000785.jpg"
    exact = rtmo("predict", image, "-m", model_path, "--save-json", "-q", "-o", tmp_path / "exact")
    fast = rtmo("predict", image, "-m", model_path, "--save-json", "-q", "--fast", "-o", tmp_path / "fast")
    assert exact.returncode == fast.returncode == 0, exact.stderr + fast.stderr
    a, b = (json.loads((tmp_path / d / "predictions.json").read_text()) for d in ("exact", "fast"))
    assert len(a) == len(b) > 0
    assert max(abs(x["score"] - y["score"]) for x, y in zip(a, b)) < 1e-4
    bad = rtmo("predict", image, "-m", model_path, "--precision", "fp16", "--device", "cpu", "-o",
               tmp_path / "bad")
    assert bad.returncode == 2 and "fp16" in bad.stderr and "CUDA" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    ov = rtmo("predict", image, "-m", model_path, "--backend", "openvino", "-o", tmp_path / "ov")
    assert ov.returncode == 2 and "--backend torch" in ov.stderr and "rtmo export" in ov.stderr
