"""Hostile inputs and faults against the `rtmo` CLI and Python API; prints the count per outcome class.

    python bench/hostile.py [--fixtures /work/shared] [--jobs 2] [--only WORD] [-v]

Every case expects either a clear error (CLI: exit 2 and ONE `rtmo: error:` line naming the input, no
traceback, no internal exception name; API: a ValueError / FileNotFoundError family exception with a
message naming the input) or the right result (exit 0 / a return value that passes the case's check).
Outcomes: `clear error`, `right result` (both good), `traceback`, `hang` (over the time limit),
`wrong exit` (exit 0 where an error was due, or another exit code), `wrong result` (ran, but the check
failed). Inputs are tiny and the model is the RTMO-t fixture (random weights), so each case is quick.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOOD = ("clear error", "right result")
INTERNAL = re.compile(r"\b(Traceback|[A-Z][A-Za-z]*(Error|Exception)\b:|AssertionError|KeyError|IndexError|"
                      r"inline_container)")


@dataclass
class Case:
    name: str
    kind: str  # images, videos, streams, checkpoints, onnx, annotations, results, recipes, cli, kills
    cli: list[str] | None = None  # arguments after `rtmo`
    api: Callable[[], Any] | None = None
    expect: str = "error"  # "error" | "ok"
    check: Callable[[Any], bool] | None = None  # on the CompletedProcess / the API's return value
    timeout: float = 90.0
    run: Callable[[Case], tuple[str, str]] | None = None  # custom runner (kills): (outcome, detail)
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def env() -> dict:
    e = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    e.pop("RTMO_DEBUG", None)
    return e


def rtmo_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "rtmo", *map(str, args)]


def classify_cli(c: Case, r: subprocess.CompletedProcess) -> tuple[str, str]:
    err = r.stderr.strip()
    last = err.splitlines()[-1] if err else ""
    if "Traceback" in err or r.returncode == 1:
        return "traceback", last
    if c.expect == "error":
        errors = [ln for ln in err.splitlines() if ln.startswith("rtmo: error:")]
        if r.returncode == 2 and len(errors) == 1 and not INTERNAL.search(errors[0]):
            return "clear error", errors[0]
        if r.returncode == 0:
            return "wrong exit", f"exit 0; {last}"
        return ("wrong exit" if r.returncode != 2 else "traceback"), f"exit {r.returncode}: {last}"
    if r.returncode != 0:
        return "wrong exit", f"exit {r.returncode}: {last}"
    ok = c.check(r) if c.check else True
    return ("right result" if ok else "wrong result"), (r.stdout.strip().splitlines() or [""])[-1]


def run_case(c: Case) -> None:
    t0 = time.monotonic()
    try:
        if c.run is not None:
            c.outcome, c.detail = c.run(c)
        elif c.cli is not None:
            try:
                r = subprocess.run(rtmo_cmd(c.cli), capture_output=True, text=True, env=env(), cwd=REPO,
                                   timeout=c.timeout, stdin=subprocess.DEVNULL)
                c.outcome, c.detail = classify_cli(c, r)
            except subprocess.TimeoutExpired:
                c.outcome, c.detail = "hang", f"over {c.timeout:g} s"
        else:
            c.outcome, c.detail = run_api(c)
    except Exception as e:  # noqa: BLE001 - a broken case must not stop the bench
        c.outcome, c.detail = "traceback", f"bench: {type(e).__name__}: {e}"
    c.seconds = time.monotonic() - t0


def run_api(c: Case) -> tuple[str, str]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = c.api()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(c.timeout)
    if th.is_alive():
        return "hang", f"over {c.timeout:g} s"
    if "error" in box:
        e = box["error"]
        msg = " ".join(str(e).split())
        known = isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                               PermissionError))
        if c.expect == "error" and known and msg and not INTERNAL.search(msg):
            return "clear error", f"{type(e).__name__}: {msg[:150]}"
        return "traceback", f"{type(e).__name__}: {msg[:150]}"
    if c.expect == "error":
        return "wrong exit", f"returned {str(box.get('value'))[:100]}"
    ok = c.check(box.get("value")) if c.check else True
    value = box.get("value")
    shown = f"array {value.shape}" if isinstance(value, np.ndarray) else str(value)[:100]
    return ("right result" if ok else "wrong result"), shown


# ------------------------------------------------------------------------------------------ inputs
class Files:
    """Every hostile file, made once in a temporary folder."""

    def __init__(self, root: Path, shared: Path) -> None:
        self.root, self.shared = root, shared
        self.data = shared / "data"
        fx = shared / "fixtures" / "rtmo-t_8xb32-600e_body7-416x416_seed0"
        self.model = fx / "rtmo-t_8xb32-600e_body7-416x416_seed0.pth"
        self.official = next((fx / "official_like").glob("*.pth"))
        self.onnx = fx / "mmdeploy" / "end2end.onnx"
        self.coco_ann = self.data / "coco" / "test_coco.json"
        self.photo = self.data / "coco" / "000000000785.jpg"
        self.video = self.data / "video" / "demo.mp4"
        small = cv2.resize(cv2.imread(str(self.photo)), (160, 107))
        self.small = self.put("small.jpg", cv2.imencode(".jpg", small)[1].tobytes())

    def put(self, name: str, data: bytes | str) -> Path:
        p = self.root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            p.write_text(data)
        else:
            p.write_bytes(data)
        return p

    def json(self, name: str, obj: Any) -> Path:
        return self.put(name, json.dumps(obj))


def build_cases(f: Files, model: Any) -> list[Case]:
    import torch

    m = str(f.model)
    out = f.root / "out"
    cases: list[Case] = []

    def predict(name: str, kind: str, src: Any, *extra: str, expect: str = "error", check=None,
                timeout: float = 90.0) -> None:
        cases.append(Case(name, kind, cli=["predict", str(src), "-m", m, "-q", "-o",
                                           str(out / name.replace(" ", "_")), *extra],
                          expect=expect, check=check, timeout=timeout))

    def api(name: str, kind: str, fn: Callable[[], Any], expect: str = "error", check=None,
            timeout: float = 60.0) -> None:
        cases.append(Case(name, kind, api=fn, expect=expect, check=check, timeout=timeout))

    photo = f.photo.read_bytes()
    png = cv2.imencode(".png", cv2.imread(str(f.small)))[1].tobytes()

    # ---------------------------------------------------------------- images (CLI and API)
    imgs = {
        "empty jpg": f.put("img/empty.jpg", b""),
        "text as jpg": f.put("img/text.jpg", "hello, not an image"),
        "truncated jpg": f.put("img/trunc.jpg", photo[:4000]),
        "truncated png": f.put("img/trunc.png", png[: len(png) // 2]),
        "png header only": f.put("img/header.png", png[:33]),
        "html as png": f.put("img/page.png", "<html><body>404</body></html>"),
        "random bytes bmp": f.put("img/noise.bmp", os.urandom(3000)),
        "folder named .jpg": None,
    }
    d = f.root / "img" / "dir.jpg"
    d.mkdir(parents=True, exist_ok=True)
    imgs["folder named .jpg"] = d
    for name, p in imgs.items():
        predict(f"predict {name}", "images", p)
        api(f"infer {name}", "images", lambda p=p: model.infer(str(p)))
    ok_imgs = {
        "1x1 png": cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes(),
        "gray png": cv2.imencode(".png", np.full((64, 80), 128, np.uint8))[1].tobytes(),
        "16-bit png": cv2.imencode(".png", np.full((64, 80, 3), 40000, np.uint16))[1].tobytes(),
        "rgba png": cv2.imencode(".png", np.full((64, 80, 4), 200, np.uint8))[1].tobytes(),
        "jpg with trailing bytes": f.small.read_bytes() + b"\0" * 64,
        "tall 8x2000 png": cv2.imencode(".png", np.full((2000, 8, 3), 90, np.uint8))[1].tobytes(),
    }
    for name, data in ok_imgs.items():
        ext = ".jpg" if "jpg" in name else ".png"
        p = f.put(f"okimg/{name.replace(' ', '_')}{ext}", data)
        predict(f"predict {name}", "images", p, "--save-json", expect="ok")
    p = f.put("okimg/ünïcode näme.jpg", f.small.read_bytes())
    predict("predict non-ascii file name", "images", p, expect="ok")
    api("infer NaN float array", "images", lambda: model.infer(np.full((20, 20, 3), np.nan, np.float32)))
    api("infer 5-channel array", "images", lambda: model.infer(np.zeros((20, 20, 5), np.uint8)))
    api("infer empty array", "images", lambda: model.infer(np.zeros((0, 20, 3), np.uint8)))
    api("infer complex array", "images", lambda: model.infer(np.zeros((20, 20, 3), np.complex64)))
    api("infer a dict", "images", lambda: model.infer({"not": "an image"}))
    api("infer int8 array", "images", lambda: model.infer(np.zeros((20, 20, 3), np.int8)))
    api("infer bool array", "images", lambda: model.infer(np.zeros((20, 20), bool)), expect="ok")
    broken_dir = f.root / "allbroken"
    for i in range(3):
        f.put(f"allbroken/b{i}.jpg", b"junk")
    predict("predict folder of only broken images", "images", broken_dir, "--save-json")
    mixed = f.root / "mixed"
    f.put("mixed/1.jpg", f.small.read_bytes())
    f.put("mixed/a.jpg", f.small.read_bytes())
    f.put("mixed/broken.jpg", b"junk")

    def ids_distinct(r: subprocess.CompletedProcess, d=out / "predict_ids_without_--ann") -> bool:
        recs = json.loads((d / "predictions.json").read_text())
        by = {}
        for x in recs:
            by.setdefault(x["file_name"], set()).add(x["image_id"])
        return len(by) == 2 and len({min(v) for v in by.values()}) == 2
    predict("predict ids without --ann", "images", mixed, "--save-json", "--threshold", "0", expect="ok",
            check=ids_distinct)

    # ---------------------------------------------------------------- videos
    vid = f.video.read_bytes() if f.video.exists() else b""
    for name, data in {"empty mp4": b"", "text as mp4": "not a video", "truncated mp4": vid[:20000],
                       "random bytes avi": os.urandom(5000)}.items():
        predict(f"predict {name}", "videos", f.put(f"vid/{name.replace(' ', '_')}.{name[-3:]}", data))
    vd = f.root / "vid" / "dir.mp4"
    vd.mkdir(parents=True, exist_ok=True)
    predict("predict folder named .mp4", "videos", vd)
    if vid:
        predict("predict video, 2 frames, drawn", "videos", f.video, "--save", "--save-json", "--max-frames",
                "2", expect="ok")
        predict("predict video --vid-stride 0", "videos", f.video, "--vid-stride", "0")
        predict("predict video --max-frames -1", "videos", f.video, "--max-frames", "-1")

    # ---------------------------------------------------------------- streams
    predict("predict camera -1", "streams", "-1")
    predict("predict camera 97 (absent)", "streams", "97", timeout=60)
    predict("predict http refused", "streams", "http://127.0.0.1:9/x.jpg")
    predict("predict rtsp refused", "streams", "rtsp://127.0.0.1:9/live", timeout=60)
    predict("predict bad scheme-like", "streams", "htp:/nowhere.jpg")
    api("resolve negative camera int", "streams", lambda: _resolve(-3))
    api("resolve camera True", "streams", lambda: _resolve(True))
    api("resolve empty list", "streams", lambda: _resolve([]))
    api("resolve None", "streams", lambda: _resolve(None))
    srv = start_servers()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    api("url image trickle (bound 2 s)", "streams", lambda: _url_image(f"{base}/trickle.jpg", 2.0),
        timeout=20)
    api("url image 404", "streams", lambda: _url_image(f"{base}/missing.jpg"))
    api("url image html body", "streams", lambda: _url_image(f"{base}/html.jpg"))
    api("url image too large (cap 1 kB)", "streams", lambda: _url_image(f"{base}/big.jpg", max_bytes=1024))
    api("url image served", "streams", lambda: _url_image(f"{base}/photo.jpg"), expect="ok",
        check=lambda a: a.shape[2] == 3)
    predict("predict url image trickle", "streams", f"{base}/trickle.jpg", timeout=60)
    predict("predict url video 404", "streams", f"{base}/missing.mp4", timeout=60)
    SERVED.update({"/photo.jpg": f.small.read_bytes(), "/html.jpg": b"<html>hello</html>",
                   "/big.jpg": os.urandom(200_000)})

    # ---------------------------------------------------------------- checkpoints
    real = f.model.read_bytes()
    ckpts = {
        "empty pth": b"",
        "text pth": "not a checkpoint",
        "truncated pth": real[: len(real) // 3],
        "zip missing tail": real[:-2000],
        "random bytes pth": os.urandom(4096),
    }
    for name, data in ckpts.items():
        p = f.put(f"ckpt/{name.replace(' ', '_')}.pth", data)
        predict(f"predict -m {name}", "checkpoints", f.small, timeout=90)
        cases[-1].cli[3] = str(p)
    evil = f.root / "ckpt" / "evil.pth"
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {f.root / 'PWNED'}",))
    evil.write_bytes(pickle.dumps({"state_dict": Evil()}))
    evil_zip = f.root / "ckpt" / "evil_zip.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "meta": Evil()}, evil_zip)
    torch.save(torch.zeros(3), f.root / "ckpt" / "tensor.pth")
    torch.save({"state_dict": {"a": 1}}, f.root / "ckpt" / "no_tensors.pth")
    torch.save({"state_dict": {"conv.weight": torch.zeros(4, 3, 3, 3)}}, f.root / "ckpt" / "foreign.pth")
    sd = torch.load(f.model, map_location="cpu", weights_only=True)["state_dict"]
    torch.save({"state_dict": {k: v for k, v in list(sd.items())[: len(sd) // 2]}},
               f.root / "ckpt" / "half_keys.pth")
    bad_shape = dict(sd)
    k0 = "head.head_module.out_kpt_vis.0.weight"
    bad_shape[k0] = torch.zeros(5, *sd[k0].shape[1:])
    torch.save({"state_dict": bad_shape}, f.root / "ckpt" / "wrong_kpt_count.pth")
    meta_bad = {"state_dict": sd, "meta": {"input_size": [0, 0]}}
    torch.save(meta_bad, f.root / "ckpt" / "meta_input_size_0.pth")
    for name in ("evil.pth", "evil_zip.pth", "tensor.pth", "no_tensors.pth", "foreign.pth", "half_keys.pth",
                 "wrong_kpt_count.pth", "meta_input_size_0.pth"):
        cases.append(Case(f"predict -m {name}", "checkpoints",
                          cli=["predict", str(f.small), "-m", str(f.root / "ckpt" / name), "-q"]))
    cases.append(Case("predict -m folder", "checkpoints", cli=["predict", str(f.small), "-m", str(f.root)]))
    cases.append(Case("predict -m official_like", "checkpoints", expect="ok",
                      cli=["predict", str(f.small), "-m", str(f.official), "-q"]))
    cases.append(Case("evil pickle never ran", "checkpoints", expect="ok", api=lambda: None,
                      check=lambda _: not (f.root / "PWNED").exists()))

    # ---------------------------------------------------------------- onnx
    onnx_real = f.onnx.read_bytes() if f.onnx.exists() else b""
    for name, data in {"empty onnx": b"", "text onnx": "not onnx", "truncated onnx": onnx_real[:50000],
                       "random onnx": os.urandom(3000)}.items():
        p = f.put(f"onnx/{name.replace(' ', '_')}.onnx", data)
        cases.append(Case(f"predict -m {name}", "onnx", cli=["predict", str(f.small), "-m", str(p), "-q"]))
    tiny = f.root / "onnx" / "tiny_other_model.onnx"
    _tiny_onnx(tiny)
    cases.append(Case("predict -m other-model onnx", "onnx", cli=["predict", str(f.small), "-m", str(tiny)]))
    if onnx_real:
        cases.append(Case("predict -m mmdeploy end2end.onnx", "onnx", expect="ok",
                          cli=["predict", str(f.small), "-m", str(f.onnx), "-q"]))

    # ---------------------------------------------------------------- annotations (val)
    gt = json.loads(f.coco_ann.read_text())
    perfect = [{"image_id": a["image_id"], "category_id": 1, "score": 1.0, "bbox": a["bbox"],
                "keypoints": [v if i % 3 != 2 else 1.0 for i, v in enumerate(a["keypoints"])]}
               for a in gt["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]
    res = f.json("val/perfect.json", perfect)

    def gt_with(name: str, change: Callable[[dict], None]) -> Path:
        g = json.loads(json.dumps(gt))
        change(g)
        return f.json(f"val/{name}.json", g)

    bad_gts = {
        "negative area": lambda g: g["annotations"][0].update(area=-1.0),
        "negative box width": lambda g: g["annotations"][0]["bbox"].__setitem__(2, -5.0),
        "duplicate annotation ids": lambda g: g["annotations"][1].update(id=g["annotations"][0]["id"]),
        "iscrowd no": lambda g: g["annotations"][0].update(iscrowd="no"),
        "duplicate image ids": lambda g: g["images"].append(dict(g["images"][0])),
        "image id string": lambda g: g["images"][0].update(id="785"),
        "keypoints too short": lambda g: g["annotations"][0].update(keypoints=[1, 2, 2]),
        "bbox strings": lambda g: g["annotations"][0].update(bbox=["a", "b", "c", "d"]),
        "unknown category": lambda g: g["annotations"][0].update(category_id=9),
        "annotations not a list": lambda g: g.update(annotations={"a": 1}),
        "no images": lambda g: g.update(images=[]),
        "annotation for unknown image": lambda g: g["annotations"][0].update(image_id=123456789),
        "num_keypoints string": lambda g: g["annotations"][0].update(num_keypoints="3"),
    }
    for name, change in bad_gts.items():
        cases.append(Case(f"val gt {name}", "annotations", cli=["val", str(gt_with(name, change)),
                                                                 "--results", str(res)]))
    raw = {"deep nesting": "[" * 200000 + "]" * 200000, "empty file": "", "not json": "{oops",
           "huge integer": '{"images": [{"id": ' + "9" * 5000 + "}]}", "a JSON string": '"hello"'}
    for name, text in raw.items():
        cases.append(Case(f"val gt {name}", "annotations",
                          cli=["val", str(f.put(f"val/{name.replace(' ', '_')}.json", text)), "--results",
                               str(res)]))
    cases.append(Case("val gt latin-1 bytes", "annotations",
                      cli=["val", str(f.put("val/latin1.json", b'{"images": "\xe9\xe9"}')), "--results",
                           str(res)]))
    cases.append(Case("val gt is a folder", "annotations", cli=["val", str(f.root), "--results", str(res)]))
    valout = f.root / "valout"  # -o: a metrics file (before issue 10) or a folder with metrics.json (after)
    cases.append(Case("val perfect results = AP 1", "annotations", expect="ok",
                      cli=["val", str(f.coco_ann), "--results", str(res), "-o", str(valout)],
                      check=lambda r: json.loads(((valout / "metrics.json") if valout.is_dir() else valout)
                                                 .read_text())["AP"] == 1.0))

    # ---------------------------------------------------------------- results (val)
    bad_res = {
        "not a list": {"a": 1},
        "missing score": [{k: v for k, v in perfect[0].items() if k != "score"}],
        "unknown image id": [{**perfect[0], "image_id": 42}],
        "wrong keypoint count": [{**perfect[0], "keypoints": [1.0, 2.0, 0.5]}],
        "bbox on some records only": [perfect[0], {k: v for k, v in perfect[1].items() if k != "bbox"}],
        "score string": [{**perfect[0], "score": "high"}],
        "category 3": [{**perfect[0], "category_id": 3}],
    }
    for name, obj in bad_res.items():
        cases.append(Case(f"val results {name}", "results",
                          cli=["val", str(f.coco_ann), "--results", str(f.json(f"res/{name}.json", obj))]))
    nan_res = f.put("res/nan.json", json.dumps(perfect).replace(str(perfect[0]["score"]), "NaN", 1))
    cases.append(Case("val results NaN", "results", cli=["val", str(f.coco_ann), "--results", str(nan_res)]))
    cases.append(Case("val results empty list = AP 0", "results", expect="ok",
                      cli=["val", str(f.coco_ann), "--results", str(f.json("res/empty.json", []))]))
    cases.append(Case("val -o below a file", "results",
                      cli=["val", str(f.coco_ann), "--results", str(res), "-o", str(res / "sub")]))

    # ---------------------------------------------------------------- recipes
    recipes = {
        "epochs -5": "[schedule]\nepochs = -5\n",
        "input size 100": "input_size = [100, 100]\n",
        "input size 0": "input_size = [0, 0]\n",
        "input size negative": "input_size = [-64, -64]\n",
        "reversed multiscale": "[augment]\nmultiscale_range = [800, 480]\n",
        "size_divisor 0": "[augment]\nsize_divisor = 0\n",
        "size_divisor 16": "[augment]\nsize_divisor = 16\n",
        "multiscale without multiple": "[augment]\nmultiscale_range = [481, 490]\n",
        "unknown field": "[schedule]\nepochz = 3\n",
        "string for int": "[schedule]\nepochs = \"ten\"\n",
        "invalid toml": "[schedule\nepochs = 3\n",
        "batch 0": "[data]\nbatch_size = 0\n",
        "lr nan": "[optim]\nlr = nan\n",
        "mixup prob 2": "[augment]\nmixup_prob = 2.0\n",
        "workers -1": "[data]\nworkers = -1\n",
        "no datasets": "[data]\ntrain = []\n",
    }
    for name, text in recipes.items():
        p = f.put(f"recipes/{name.replace(' ', '_')}.toml", text)
        cases.append(Case(f"train recipe {name}", "recipes", cli=["train", str(p), "-o", str(f.root / "tr")]))
    cases.append(Case("train recipe name typo", "recipes", cli=["train", "rtmo-q_8xb32-600e_coco"]))
    cases.append(Case("train recipe is a folder", "recipes", cli=["train", str(f.root)]))

    # ---------------------------------------------------------------- CLI arguments
    for name, extra in {"--batch-size 0": ["--batch-size", "0"], "--threshold 2": ["--threshold", "2"],
                        "--threshold nan": ["--threshold", "nan"],
                        "--nms-threshold -1": ["--nms-threshold", "-1"],
                        "--threshold inf": ["--threshold", "inf"],
                        "--device cuda:5": ["--device", "cuda:5"], "--device banana": ["--device", "banana"],
                        "--ann missing": ["--save-json", "--ann", str(f.root / "nope.json")],
                        "--ann deep json": ["--save-json", "--ann", str(f.put("deep.json", "[" * 100000))],
                        "--ann not listing the image": ["--save-json", "--ann",
                                                        str(f.json("ann1.json", {"images": [
                                                            {"id": 1, "file_name": "zzz.jpg"}]}))],
                        }.items():
        predict(f"predict {name}", "cli", f.small, *extra)
    afile = f.put("afile", "x")
    cases.append(Case("predict -o is a file", "cli", cli=["predict", str(f.small), "-m", m, "--save", "-o",
                                                          str(afile)]))
    cases.append(Case("predict -o below a file", "cli", cli=["predict", str(f.small), "-m", m, "--save-json",
                                                             "-o", str(afile / "sub")]))
    cases.append(Case("predict missing source", "cli", cli=["predict", str(f.root / "nope.jpg"), "-m", m]))
    cases.append(Case("predict empty folder", "cli",
                      cli=["predict", str(_mk(f.root / "emptydir")), "-m", m]))
    cases.append(Case("predict glob matching nothing", "cli",
                      cli=["predict", str(f.root / "*.xyz"), "-m", m]))
    cases.append(Case("predict list file of missing paths", "cli",
                      cli=["predict", str(f.put("list.txt", "a.jpg\nb.jpg\n")), "-m", m]))
    cases.append(Case("predict unknown model name", "cli", cli=["predict", str(f.small), "-m", "rtmo-z"]))
    cases.append(Case("val without annotation", "cli", cli=["val", "--results", str(res)]))
    cases.append(Case("train --epochs 0", "cli", cli=["train", "rtmo-t_8xb32-600e_body7-416x416", "--epochs",
                                                       "0", "-o", str(f.root / "tr0")]))
    cases.append(Case("train --workers -1", "cli", cli=["train", "rtmo-t_8xb32-600e_body7-416x416",
                                                         "--workers", "-1", "-o", str(f.root / "tr1")]))
    cases.append(Case("train --resume corrupt", "cli", cli=["train", "rtmo-t_8xb32-600e_body7-416x416",
                                                             "--resume",
                                                             str(f.root / "ckpt/truncated_pth.pth"),
                                                             "-o", str(f.root / "tr2")]))
    cases.append(Case("train --resume official weights", "cli",
                      cli=["train", "rtmo-t_8xb32-600e_body7-416x416", "--resume", str(f.official),
                           "--train-ann", str(f.coco_ann), "--train-images", str(f.data / "coco"),
                           "-o", str(f.root / "tr3")], timeout=120))
    cases.append(Case("train -o is a file", "cli", cli=["train", "rtmo-t_8xb32-600e_body7-416x416", "-o",
                                                         str(afile)]))
    used = _mk(f.root / "used_run")
    (used / "last.pth").write_bytes(b"x")
    cases.append(Case("train reusing a run folder", "cli",
                      cli=["train", "rtmo-t_8xb32-600e_body7-416x416", "--train-ann", str(f.coco_ann),
                           "--train-images", str(f.data / "coco"), "-o", str(used)], timeout=120))
    cases.append(Case("train --train-ann without images", "cli",
                      cli=["train", "rtmo-t_8xb32-600e_body7-416x416", "--train-ann", str(f.coco_ann)]))
    cases.append(Case("benchmark -o is a file", "cli",
                      cli=["benchmark", m, "-o", str(f.coco_ann), "--runs", "1", "--warmup", "0",
                           "--batch-sizes", "1"], timeout=120))

    # ---------------------------------------------------------------- kills
    many = _mk(f.root / "many")
    for i in range(60):
        (many / f"k{i:02d}.jpg").write_bytes(f.small.read_bytes())
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        cases.append(Case(f"predict killed by {sig.name}", "kills", run=_kill_runner(many, m, f.root, sig),
                          timeout=120))
    return cases


def _default_sigint() -> None:
    # a shell starts background jobs with SIGINT ignored, which the child would inherit: Ctrl-C is the case
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _resolve(src: Any) -> Any:
    from rtmo.infer.sources import resolve_source

    return resolve_source(src)


def _url_image(url: str, timeout: float | None = None, max_bytes: int | None = None) -> Any:
    from rtmo.infer import sources

    return sources._read_url_image(url, timeout=timeout, max_bytes=max_bytes)


def _tiny_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


SERVED: dict[str, bytes] = {}


def start_servers() -> Any:
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path == "/trickle.jpg":
                self.send_response(200)
                self.send_header("Content-Length", "10000000")
                self.end_headers()
                try:
                    for _ in range(1200):  # at most 60 s, one byte per 50 ms
                        self.wfile.write(b"\xff")
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    pass
                return
            body = SERVED.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _kill_runner(src: Path, model: str, root: Path, sig: signal.Signals) -> Callable[[Case], tuple[str, str]]:
    def run(c: Case) -> tuple[str, str]:
        out = root / f"kill_{sig.name}"
        p = subprocess.Popen(rtmo_cmd(["predict", str(src), "-m", model, "--save-json", "--threshold", "0",
                                       "-q", "-o", str(out)]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env(), cwd=REPO, preexec_fn=_default_sigint)
        lines = out / "predictions.jsonl"
        t0 = time.monotonic()
        while not (lines.exists() and lines.read_text().count("\n") >= 3):
            if p.poll() is not None or time.monotonic() - t0 > 90:
                p.kill()
                return "wrong exit", "ended or stalled before writing records"
            time.sleep(0.05)
        p.send_signal(sig)
        try:
            _, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            return "hang", "did not stop after the signal"
        if "Traceback" in err:
            return "traceback", err.strip().splitlines()[-1]
        if sig == signal.SIGKILL:
            text = lines.read_text().splitlines()
            recs = [json.loads(x) for x in text[:-1]]  # whole lines; only the one being written may be torn
            ok = len(recs) >= 3 and not (out / "predictions.json").exists()
            return ("right result" if ok else "wrong result"), f"{len(recs)} records kept in the lines file"
        try:
            recs = json.loads((out / "predictions.json").read_text())
        except (OSError, ValueError) as e:
            return "wrong result", f"no valid predictions.json: {e}"
        ok = p.returncode == 130 and len(recs) > 0 and not lines.exists()
        return ("right result" if ok else "wrong exit"), f"exit {p.returncode}, {len(recs)} records"
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path,
                    default=Path(os.environ.get("RTMO_SHARED", REPO.parent / "shared")))
    ap.add_argument("--jobs", type=int, default=2, help="CLI cases run in parallel")
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    from rtmo import ModelManager

    with tempfile.TemporaryDirectory(prefix="rtmo-hostile-") as tmp:
        files = Files(Path(tmp), args.shared)
        model = ModelManager.get(files.model)
        cases = build_cases(files, model)
        if args.only:
            cases = [c for c in cases if args.only in c.name]
        t0 = time.monotonic()
        api_cases = [c for c in cases if c.api is not None]
        for c in api_cases:  # in this process, one at a time (they share the model)
            run_case(c)
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            list(pool.map(run_case, [c for c in cases if c.api is None]))
        total = time.monotonic() - t0
    kinds = sorted({c.kind for c in cases})
    classes = ["clear error", "right result", "traceback", "hang", "wrong exit", "wrong result"]
    print(f"{len(cases)} hostile cases in {total:.0f} s")
    width = max(len(k) for k in kinds + ["total"])
    print(f"{'':{width}}  " + "  ".join(f"{c:>12}" for c in classes))
    for k in kinds + ["total"]:
        counts = Counter(c.outcome for c in cases if k in ("total", c.kind))
        print(f"{k:{width}}  " + "  ".join(f"{counts.get(c, 0):>12}" for c in classes))
    bad = [c for c in cases if c.outcome not in GOOD]
    for c in (cases if args.verbose else bad):
        print(f"  [{c.outcome}] {c.kind}: {c.name} ({c.seconds:.1f} s): {c.detail}")
    return 0 if not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
