"""Every contender side by side: mmpose 1.3.2's own pipeline, rtmlib 0.0.16, every rtmo backend x precision.

    python bench/bench_all.py [--checkpoint CKPT] [--image IMG] [--rounds 20] [--warmup 3] [--threads 2]
                              [--out-dir .] [--trained CKPT] [--no-mmpose] [--no-rtmlib]

One checkpoint (default: the RTMO-s 640 mmpose fixture, `$RTMO_SHARED` or ../shared), one image, the same
thread count everywhere. Contenders, each timed end to end (image path -> poses in image pixels) and
model only (the letterboxed tensor -> detections: network, selection, NMS, DCC):
  * mmpose: `inference_bottomup` / `model.predict` in mmpose's venv (`~/.cache/mmpose-ref/venv`, made by
    shared/tools/mmpose-ref/setup.sh), a worker process (bench/mmpose_worker.py) timing itself;
  * rtmlib: its `RTMO` class on rtmo's own ONNX export (`pip install --no-deps rtmlib==0.0.16`);
  * rtmo: torch fp32 (bit-exact with mmpose, the default), torch fp32 fast (`fast=True`), torch bf16
    (CPUs with AVX512-BF16/AMX), ONNX Runtime fp32 / INT8, OpenVINO fp32 / bf16 / INT8 (INT8 calibrated
    on the shared COCO images), built by bench/precision_accuracy.py's `build_paths`.
Rounds alternate (all contenders in every round, the order reversed every other round, a short pause
between calls so that one runtime's spinning threads do not tax the next), figures are medians.
Also: keypoint deviation of every path from mmpose and from torch fp32 on this image (fixture weights
are random and amplify rounding, so reduced-precision figures here are upper bounds; `--trained CKPT`
adds bench/precision_accuracy.py's deviations and AP on a trained checkpoint, bench/overfit.py).
Writes bench_all.md (the table) and bench_all.json (with every round's times) into --out-dir. About 2-3
minutes on a quiet 2-core machine (exports and INT8 calibration included; 7 minutes on a shared one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import matched_deviations, rtmlib_model  # noqa: E402
from paths import ROOT, SHARED  # noqa: E402
from precision_accuracy import accuracy_rows, build_paths  # noqa: E402

from rtmo.infer.api import preprocess  # noqa: E402
from rtmo.infer.image import read_image  # noqa: E402
from rtmo.utils.fileio import atomic_write_text  # noqa: E402

FIX_S = SHARED / "fixtures" / "rtmo-s_8xb32-600e_coco-640x640_seed0"
MMPOSE_PY = Path.home() / ".cache" / "mmpose-ref" / "venv" / "bin" / "python"
PAUSE_S = 0.02
# what each rtmo path is, for the table
LABELS = {"torch-fp32": ("torch", "fp32 (bit-exact)"), "torch-fp32-fast": ("torch", "fp32 fast"),
          "torch-bf16": ("torch", "bf16"), "ort-fp32": ("onnxruntime", "fp32"),
          "ort-int8": ("onnxruntime", "int8"), "ov-fp32": ("openvino", "fp32"),
          "ov-bf16": ("openvino", "bf16"), "ov-int8": ("openvino", "int8"),
          "mmpose": ("mmpose 1.3.2", "fp32"), "rtmlib": ("rtmlib 0.0.16 (ORT)", "fp32")}


def log(msg: str, t0: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)


def machine() -> dict:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from rtmo.export.runtime import physical_cores
    from rtmo.model import cpu_has_bf16

    return {"cpu": name, "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
            "bf16_units": cpu_has_bf16(), "load_avg_start": list(os.getloadavg()),
            "python": platform.python_version(), "torch": torch.__version__}


class MmposeWorker:
    """bench/mmpose_worker.py in mmpose's venv: one JSON line per command, timed inside the worker."""

    def __init__(self, python: Path, tool: Path, ckpt: Path, image: str, x: np.ndarray,
                 meta: tuple[np.ndarray, np.ndarray], threads: int, work: Path):
        np.save(work / "mmpose_input.npy", x)
        cmd = [str(python), str(ROOT / "bench" / "mmpose_worker.py"), "--tool", str(tool), "--checkpoint",
               str(ckpt), "--image", image, "--input", str(work / "mmpose_input.npy"),
               "--center", *map(str, meta[0]), "--scale", *map(str, meta[1]), "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read("ready")

    def _read(self, key: str) -> dict:
        for line in self.proc.stdout:  # mmengine prints a line or two of its own first
            try:
                out = json.loads(line)
            except json.JSONDecodeError:
                continue
            if key in out:
                return out
            raise RuntimeError(f"mmpose worker: {out}")
        raise RuntimeError(f"mmpose worker exited (code {self.proc.wait()})")

    def ask(self, cmd: str, key: str = "s") -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read(key)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def contenders(paths: dict, image: str, x: np.ndarray, worker: MmposeWorker | None, rtmlib) -> dict:
    """name -> (end-to-end call, model-only call); each returns (seconds, detections)."""

    def timed(fn: Callable[[], int]) -> Callable[[], tuple[float, int]]:
        def run() -> tuple[float, int]:
            t = time.perf_counter()
            n = fn()
            return time.perf_counter() - t, n
        return run

    out: dict[str, tuple[Callable, Callable]] = {}
    if worker is not None:
        def ask(cmd: str) -> Callable[[], tuple[float, int]]:
            return lambda: (lambda r: (r["s"], r["detections"]))(worker.ask(cmd))
        out["mmpose"] = (ask("e2e"), ask("model"))
    if rtmlib is not None:
        xr = rtmlib.preprocess(cv2.imread(image))[0]  # rtmlib's own (top-left) letterbox
        out["rtmlib"] = (timed(lambda: len(rtmlib(cv2.imread(image))[0])),
                         timed(lambda: int(rtmlib.inference(xr)[0].shape[1])))
    for name, m in paths.items():
        out[name] = (timed(lambda m=m: len(m.infer(image))),
                     timed(lambda m=m: int(m.predict_batch(x).num_detections[0])))
    return out


def run_rounds(calls: dict, rounds: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    times = {k: {"end2end": [], "model": [], "detections": []} for k in calls}
    names = list(calls)
    for r in range(warmup + rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            for kind, fn in zip(("end2end", "model"), calls[name]):
                time.sleep(PAUSE_S)
                s, n = fn()
                if r >= warmup:
                    times[name][kind].append(s)
                    if kind == "end2end":
                        times[name]["detections"].append(n)
        if r < warmup:
            log(f"warm-up round {r + 1}/{warmup}")
        elif (r - warmup + 1) % 5 == 0 or r == warmup + rounds - 1:
            e2e = {k: statistics.median(v["end2end"]) * 1e3 for k, v in times.items()}
            log(f"round {r - warmup + 1}/{rounds}: " + ", ".join(f"{k} {v:.0f}" for k, v in e2e.items())
                + " ms e2e")
    return times


def deviations(paths: dict, image: str, worker: MmposeWorker | None, rtmlib) -> dict[str, dict]:
    """Keypoint deviation (median / p95 / max px, people matched by box IoU) of every path from mmpose's
    poses and from torch fp32's, on the bench image."""
    from bench_peers import rtmlib_boxes

    poses = {k: (r.boxes, r.keypoints) for k, r in ((k, m.infer(image)) for k, m in paths.items())}
    if rtmlib is not None:
        boxes, kpts, _, _ = rtmlib_boxes(rtmlib, cv2.imread(image))
        poses["rtmlib"] = (boxes, kpts)
    refs = {"torch-fp32": poses["torch-fp32"]}
    if worker is not None:
        p = worker.ask("poses", "boxes")
        poses["mmpose"] = refs["mmpose"] = (np.asarray(p["boxes"], np.float32).reshape(-1, 4),
                                            np.asarray(p["keypoints"], np.float32))
    out: dict[str, dict] = {}
    for name, (boxes, kpts) in poses.items():
        out[name] = {}
        for ref_name, (rb, rk) in refs.items():
            dev, matched = matched_deviations(rb, rk, boxes, kpts)
            stats = ({"median_px": float(np.median(dev)), "p95_px": float(np.percentile(dev, 95)),
                      "max_px": float(dev.max())} if matched else {})
            out[name][f"vs_{ref_name}"] = {"matched": matched, "of": len(rb), **stats}
    return out


def fast_parity(paths: dict, images: list[Path]) -> dict[str, float]:
    """Max deviation of fp32 fast from the bit-exact fp32 over `images` (same detections, same order)."""
    a, b = paths["torch-fp32"], paths["torch-fp32-fast"]
    worst = {"keypoints_px": 0.0, "boxes_px": 0.0, "scores": 0.0, "keypoint_scores": 0.0, "count_diff": 0}
    for p in images:
        ra, rb = a.infer(str(p)), b.infer(str(p))
        if len(ra) != len(rb):
            worst["count_diff"] += abs(len(ra) - len(rb))
            continue
        if len(ra):
            for key, x, y in (("keypoints_px", ra.keypoints, rb.keypoints), ("boxes_px", ra.boxes, rb.boxes),
                              ("scores", ra.scores, rb.scores),
                              ("keypoint_scores", ra.keypoint_scores, rb.keypoint_scores)):
                worst[key] = max(worst[key], float(np.abs(x - y).max()))
    return worst


def table(rows: list[dict], mm: dict | None) -> str:
    head = ("| contender | runtime | precision | end to end ms | × mmpose | model only ms | × mmpose | dets "
            "| kpt dev vs torch fp32, median / p95 px | vs mmpose, max px |")
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        ratio_e = f"{r['end2end_ms'] / mm['end2end_ms']:.2f}×" if mm else "-"
        ratio_m = f"{r['model_ms'] / mm['model_ms']:.2f}×" if mm else "-"
        dev = r.get("deviation", {}).get("vs_torch-fp32", {})
        dev_s = f"{dev['median_px']:.3f} / {dev['p95_px']:.2f}" if "median_px" in dev else "-"
        mm_dev = r.get("deviation", {}).get("vs_mmpose", {})
        mm_s = f"{mm_dev['max_px']:.3g}" if "max_px" in mm_dev else "-"
        lines.append(f"| {r['name']} | {r['runtime']} | {r['precision']} | {r['end2end_ms']:.1f} | "
                     f"{ratio_e} | {r['model_ms']:.1f} | {ratio_m} | {r['detections']} | {dev_s} | {mm_s} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=FIX_S / f"{FIX_S.name}.pth",
                    help="an mmpose-format RTMO-s checkpoint (default: the shared fixture)")
    ap.add_argument("--image", default=str(SHARED / "data" / "coco" / "000000000785.jpg"))
    ap.add_argument("--calibration", type=Path, default=SHARED / "data" / "coco",
                    help="images for INT8 calibration")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds (mmpose needs >= 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mmpose-python", type=Path, default=MMPOSE_PY)
    ap.add_argument("--mmpose-tool", type=Path, default=SHARED / "tools" / "mmpose-ref")
    ap.add_argument("--no-mmpose", action="store_true")
    ap.add_argument("--no-rtmlib", action="store_true")
    ap.add_argument("--trained", type=Path, default=None, help="a trained checkpoint (bench/overfit.py): "
                    "add bench/precision_accuracy.py's keypoint deviation and AP per precision (~2 min)")
    ap.add_argument("--out-dir", type=Path, default=Path("."))
    args = ap.parse_args()
    for p, what in ((args.checkpoint, "--checkpoint"), (Path(args.image), "--image")):
        if not p.is_file():
            raise SystemExit(f"{what} {p}: no such file")
    torch.set_num_threads(args.threads)
    info = machine()
    log(f"{info['cpu']}, {info['physical_cores']} cores, load {info['load_avg_start'][0]:.1f}; "
        f"building the rtmo paths (export, INT8 calibration)")
    work = Path(tempfile.mkdtemp(prefix="rtmo-bench-all-"))
    paths = build_paths(args.checkpoint, work, args.threads, args.calibration)
    image = str(Path(args.image).resolve())
    size = tuple(paths["torch-fp32"].input_size)
    x, metas = preprocess([read_image(image)], size)
    rtmlib = None
    if not args.no_rtmlib:
        try:
            rtmlib = rtmlib_model(work / "model.onnx", size, args.threads)
        except ImportError:
            log("skipping rtmlib: not installed (pip install --no-deps rtmlib==0.0.16)")
    worker = None
    if not args.no_mmpose:
        if args.mmpose_python.is_file() and args.mmpose_tool.is_dir():
            log("starting the mmpose worker")
            try:
                worker = MmposeWorker(args.mmpose_python, args.mmpose_tool, args.checkpoint, image, x,
                                      metas[0], args.threads, work)
            except (RuntimeError, OSError) as e:
                log(f"skipping mmpose: its worker did not start ({e})")
        else:
            log(f"skipping mmpose: no {args.mmpose_python} (bash {args.mmpose_tool}/setup.sh makes it)")
    try:
        calls = contenders(paths, image, x, worker, rtmlib)
        log(f"{len(calls)} contenders: {', '.join(calls)}; {args.warmup} + {args.rounds} rounds")
        times = run_rounds(calls, args.rounds, args.warmup)
        log("keypoint deviations")
        dev = deviations(paths, image, worker, rtmlib)
    finally:
        if worker is not None:
            worker.close()
    parity = fast_parity(paths, sorted(args.calibration.glob("*.jpg")))
    rows = []
    for name, t in times.items():
        runtime, precision = LABELS.get(name, (name, "?"))
        rows.append({"name": name, "runtime": runtime, "precision": precision,
                     "end2end_ms": statistics.median(t["end2end"]) * 1e3,
                     "end2end_p10_p90_ms": [float(v) * 1e3 for v in np.quantile(t["end2end"], [0.1, 0.9])],
                     "model_ms": statistics.median(t["model"]) * 1e3,
                     "model_p10_p90_ms": [float(v) * 1e3 for v in np.quantile(t["model"], [0.1, 0.9])],
                     "detections": t["detections"][0], "deviation": dev.get(name, {}),
                     "end2end_s": t["end2end"], "model_s": t["model"]})
    mm = next((r for r in rows if r["name"] == "mmpose"), None)
    by = {r["name"]: r for r in rows}
    bars = {}  # name -> (ratio, bar): the bars
    if mm:
        bars["torch fp32 fast, end to end vs mmpose"] = (
            by["torch-fp32-fast"]["end2end_ms"] / mm["end2end_ms"], 0.7)
        fastest = min((r for r in rows if r["name"] not in ("mmpose", "rtmlib")),
                      key=lambda r: r["end2end_ms"])
        bars[f"fastest rtmo path ({fastest['name']}), end to end vs mmpose"] = (
            fastest["end2end_ms"] / mm["end2end_ms"], 0.3)
    if "rtmlib" in by:
        bars["rtmo ONNX Runtime vs rtmlib, end to end"] = (by["ort-fp32"]["end2end_ms"] /
                                                           by["rtmlib"]["end2end_ms"], 0.9)
    info["load_avg_end"] = list(os.getloadavg())
    trained = {}
    if args.trained:
        log(f"accuracy per precision on {args.trained} (bench/precision_accuracy.py)")
        coco = SHARED / "data" / "coco"
        tpaths = build_paths(args.trained, work / "trained", args.threads, args.calibration)
        trained = accuracy_rows(tpaths, sorted(coco.glob("*.jpg")), coco / "test_coco.json")
    md = [f"RTMO-s {size[0]}x{size[1]} ({args.checkpoint.name}), {Path(image).name}, {args.threads} threads, "
          f"median of {args.rounds} alternating rounds; {info['cpu']}, {info['physical_cores']} physical "
          f"cores; load average {info['load_avg_start'][0]:.1f} -> {info['load_avg_end'][0]:.1f}; "
          f"torch {torch.__version__}.", "", table(rows, mm), ""]
    md += [f"- {k}: {v:.2f}x (bar <= {b}x: {'PASS' if v <= b else 'FAIL'})" for k, (v, b) in bars.items()]
    n_img = len(sorted(args.calibration.glob("*.jpg")))
    md.append(f"- fp32 fast vs bit-exact fp32, max over {n_img} images: "
              f"keypoints {parity['keypoints_px']:.3g} px, boxes {parity['boxes_px']:.3g} px, scores "
              f"{parity['scores']:.2g}, keypoint scores {parity['keypoint_scores']:.2g}, detection count "
              f"difference {parity['count_diff']}")
    if trained:
        md += ["", f"Trained {args.trained.name}: keypoint deviation from torch fp32 (median / p95 px), AP",
               ""] + [f"- {k}: {r['kpt_dev_median_px']:.3g} / {r['kpt_dev_p95_px']:.3g} px, lost "
                      f"{r['unmatched']}, AP {r['AP']:.3f}" for k, r in trained.items()]
    text = "\n".join(md) + "\n"
    print("\n" + text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "bench_all.md", text)
    result = {"machine": info, "checkpoint": str(args.checkpoint), "image": image, "threads": args.threads,
              "rounds": args.rounds, "warmup": args.warmup, "rows": rows, "bars": bars,
              "fast_parity": parity, "mmpose_worker": worker.info if worker else None, "trained": trained}
    atomic_write_text(args.out_dir / "bench_all.json", json.dumps(result, indent=2))
    log(f"wrote {args.out_dir / 'bench_all.md'} and bench_all.json")


if __name__ == "__main__":
    main()
