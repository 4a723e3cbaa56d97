"""Latency, throughput and memory of RTMO on a backend: torch, torch-compile, onnxruntime, openvino, tensorrt.

Per batch size it measures
  * model: the backend call on an already letterboxed batch (network + NMS + DCC: what the ONNX graph holds);
  * end2end: decode the image files -> letterbox -> model -> back to image pixels (`rtmo.infer.api.infer`);
  * throughput = batch / median end2end; spread as p10..p90 over `runs` after `warmup` untimed runs;
  * peak memory: CUDA max allocated on GPU; on CPU the process's peak RSS during the runs (VmHWM, reset
    before each measurement where the kernel allows) and tracemalloc's Python-heap peak.
`persons_mode` times single images holding 1, 5, 10, 20 people (crops of real annotated people tiled on a
canvas, see `crowd_images`), to show that the cost barely depends on the crowd: one forward, NMS over a
fixed grid and a DCC whose cost per person is small.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

BACKENDS = ("torch", "torch-compile", "onnxruntime", "openvino", "tensorrt")
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"


# ------------------------------------------------------------------------------------------ models
def load_backend(model_or_path: Any, backend: str, threads: int | None = None, device: str = "cpu",
                 workdir: str | Path | None = None) -> Any:
    """An object with the RTMO inference API (`input_size`, `predict_tensor`, `infer`) on `backend`.

    `model_or_path`: an RTMO, a checkpoint path / official name (torch backends, or exported on the fly),
    or an exported .onnx / .engine file. Exports go to `workdir` (a temporary folder by default).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if threads:
        torch.set_num_threads(threads)
    suffix = Path(str(model_or_path)).suffix.lower() if isinstance(model_or_path, (str, Path)) else ""
    if backend in ("torch", "torch-compile"):
        if suffix in (".onnx", ".engine", ".xml"):
            raise ValueError(f"backend {backend!r} needs a PyTorch model or checkpoint, got {model_or_path}")
        model = _torch_model(model_or_path, device)
        if backend == "torch-compile":
            import copy

            model = copy.deepcopy(model)
            model.forward_maps = torch.compile(model.forward_maps)  # NMS/DCC stay eager (dynamic sizes)
        return model
    from .export.runtime import OnnxRuntimeModel, OpenVINOModel, TensorRTModel, build_engine

    if suffix in (".engine", ".plan", ".trt"):
        if backend != "tensorrt":
            raise ValueError(f"{model_or_path} is a TensorRT engine; use backend='tensorrt'")
        return TensorRTModel(model_or_path)
    onnx_path = Path(model_or_path) if suffix == ".onnx" else _export(model_or_path, device, workdir)
    if backend == "onnxruntime":
        return OnnxRuntimeModel(onnx_path, num_threads=threads)
    if backend == "openvino":
        return OpenVINOModel(onnx_path, num_threads=threads)
    return TensorRTModel(build_engine(onnx_path, onnx_path.with_suffix(".engine"), half=True))


def _torch_model(model_or_path: Any, device: str) -> Any:
    if isinstance(model_or_path, torch.nn.Module):
        return model_or_path.eval().to(device)
    from .zoo import ModelManager

    return ModelManager.get(str(model_or_path), device=device)


def _export(model_or_path: Any, device: str, workdir: str | Path | None) -> Path:
    from .export.onnx import export_onnx

    model = _torch_model(model_or_path, "cpu")
    folder = Path(workdir or tempfile.mkdtemp(prefix="rtmo-bench-"))
    variant = getattr(model.config, "variant", None) or "custom"
    return export_onnx(model, folder / f"rtmo-{variant}.onnx", simplify=False, check=False)


# ------------------------------------------------------------------------------------------ images
def default_images(data_root: Path = DATA_ROOT) -> list[Path]:
    """The real COCO/CrowdPose images of the shared data folder (or noise images when it is absent)."""
    found = sorted(data_root.glob("coco/*.jpg")) + sorted(data_root.glob("crowdpose/*.jpg"))
    if found:
        return found
    folder = Path(tempfile.mkdtemp(prefix="rtmo-bench-img-"))
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(folder / f"noise{i}.jpg"), rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    return sorted(folder.glob("*.jpg"))


def crowd_images(counts: tuple[int, ...] = (1, 5, 10, 20), data_root: Path = DATA_ROOT,
                 out_dir: str | Path | None = None, canvas: tuple[int, int] = (960, 720)) -> dict[int, Path]:
    """One JPEG per count with that many real people: person boxes (annotations with >= 5 keypoints) of
    the COCO and CrowdPose test images, cropped with a 10% margin, cycled if there are too few, each resized
    to fit its cell of a ceil(sqrt(n)) grid on a grey (114) canvas of `canvas` (w, h) pixels."""
    crops = []
    for ann_file in sorted(data_root.glob("*/test_*.json")):
        data = json.loads(ann_file.read_text())
        files = {im["id"]: ann_file.parent / im["file_name"] for im in data["images"]}
        for ann in data["annotations"]:
            src = files[ann["image_id"]]
            if ann.get("num_keypoints", 0) < 5 or ann.get("iscrowd", 0) or not src.exists():
                continue
            img = cv2.imread(str(src))
            x, y, w, h = ann["bbox"]
            mx, my = 0.1 * w, 0.1 * h
            x0, y0 = max(int(x - mx), 0), max(int(y - my), 0)
            x1, y1 = min(int(x + w + mx), img.shape[1]), min(int(y + h + my), img.shape[0])
            if x1 - x0 >= 16 and y1 - y0 >= 32:
                crops.append(img[y0:y1, x0:x1])
    if not crops:
        raise FileNotFoundError(f"no annotated person images under {data_root} to compose crowd images from")
    folder = Path(out_dir or tempfile.mkdtemp(prefix="rtmo-crowd-"))
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    cw, ch = canvas
    for n in counts:
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        cell_w, cell_h = cw // cols, ch // rows
        img = np.full((ch, cw, 3), 114, np.uint8)
        for i in range(n):
            crop = crops[i % len(crops)]
            s = min(cell_w / crop.shape[1], cell_h / crop.shape[0])
            rz = cv2.resize(crop, (max(int(crop.shape[1] * s), 1), max(int(crop.shape[0] * s), 1)))
            r, c = divmod(i, cols)
            y0, x0 = r * cell_h + (cell_h - rz.shape[0]) // 2, c * cell_w + (cell_w - rz.shape[1]) // 2
            img[y0:y0 + rz.shape[0], x0:x0 + rz.shape[1]] = rz
        out[n] = folder / f"crowd_{n:02d}.jpg"
        cv2.imwrite(str(out[n]), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return out


# ------------------------------------------------------------------------------------------ timing
def _timed(fn: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _summary(times: list[float]) -> dict[str, float]:
    q = np.quantile(times, [0.1, 0.9])
    return {"median_s": statistics.median(times), "p10_s": float(q[0]), "p90_s": float(q[1]),
            "min_s": min(times)}


def _rss_peak_reset() -> None:
    try:  # Linux: writing 5 resets the peak-RSS watermark (VmHWM) of this process
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_mib(field: str = "VmHWM") -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _memory(fn: Callable[[], Any], on_cuda: bool) -> dict[str, float | None]:
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return {"cuda_max_allocated_mib": torch.cuda.max_memory_allocated() / 2**20}
    _rss_peak_reset()
    base = _rss_mib("VmRSS")
    tracemalloc.start()
    fn()
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _rss_mib("VmHWM")
    return {"rss_peak_mib": peak, "rss_growth_mib": None if peak is None or base is None else peak - base,
            "python_heap_peak_mib": py_peak / 2**20}


def benchmark(model_or_path: Any, backend: str = "torch", batch_sizes: tuple[int, ...] = (1, 4),
              runs: int = 20, warmup: int = 3, persons_mode: bool = False,
              images: list[str | Path] | None = None,
              threads: int | None = None, device: str = "cpu", workdir: str | Path | None = None,
              model: Any = None) -> dict[str, Any]:
    """Benchmark one backend; returns a JSON-ready dict (see `format_table`). Pass `model` to reuse an
    already loaded backend object (then `model_or_path` is only used as its label)."""
    from .infer.api import infer, preprocess
    from .infer.image import read_image

    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    t0 = time.perf_counter()
    model = model if model is not None else load_backend(model_or_path, backend, threads, device, workdir)
    load_s = time.perf_counter() - t0
    on_cuda = torch.device(device).type == "cuda" or backend == "tensorrt"
    sync = torch.cuda.synchronize if on_cuda and torch.cuda.is_available() else (lambda: None)
    paths = [Path(p) for p in (images or default_images())]
    input_size = tuple(model.input_size)
    result: dict[str, Any] = {
        "backend": backend, "model": str(getattr(model, "path", None) or _label(model_or_path)),
        "input_size": list(input_size), "threads": threads or torch.get_num_threads(), "device": device,
        "runs": runs, "warmup": warmup, "load_s": load_s, "rows": []}

    cases: list[tuple[str, list[Path]]]
    if persons_mode:
        crowd = crowd_images(out_dir=workdir)
        cases = [(f"{n} people", [p]) for n, p in crowd.items()]
    else:
        cases = [(f"batch {b}", [paths[i % len(paths)] for i in range(b)]) for b in batch_sizes]

    for label, files in cases:
        arrays = [read_image(p) for p in files]
        batch, _ = preprocess(arrays, input_size)
        batch = batch.to(getattr(model, "device", "cpu"))

        def model_only(batch: torch.Tensor = batch) -> None:
            model.predict_tensor(batch)
            sync()

        def end2end(files: list[Path] = files) -> None:
            infer(model, [str(p) for p in files])
            sync()

        t_model = _summary(_timed(model_only, runs, warmup))
        t_e2e = _summary(_timed(end2end, runs, warmup))
        n_det = sum(len(r) for r in infer(model, [str(p) for p in files]))
        result["rows"].append({
            "case": label, "batch": len(files), "model": t_model, "end2end": t_e2e,
            "throughput_img_s": len(files) / t_e2e["median_s"], "detections": n_det,
            "memory": _memory(end2end, on_cuda)})
    return result


def _label(x: Any) -> str:
    if isinstance(x, torch.nn.Module):
        v = getattr(getattr(x, "config", None), "variant", None)
        return f"RTMO-{v}" if v else type(x).__name__
    return str(x)


def format_table(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """A plain-text table: one line per backend and case, times in milliseconds (median [p10..p90])."""
    results = [results] if isinstance(results, dict) else results
    head = (f"{'backend':<14}{'case':<11}{'model ms':>22}{'end2end ms':>24}{'img/s':>8}{'dets':>6}"
            f"{'peak MiB':>10}")
    lines = [head, "-" * len(head)]
    for res in results:
        for r in res["rows"]:
            mem = r["memory"].get("cuda_max_allocated_mib", r["memory"].get("rss_peak_mib"))
            m, e = r["model"], r["end2end"]
            lines.append(
                f"{res['backend']:<14}{r['case']:<11}"
                f"{m['median_s'] * 1e3:>8.1f} [{m['p10_s'] * 1e3:5.1f}..{m['p90_s'] * 1e3:5.1f}]"
                f"{e['median_s'] * 1e3:>10.1f} [{e['p10_s'] * 1e3:5.1f}..{e['p90_s'] * 1e3:5.1f}]"
                f"{r['throughput_img_s']:>8.2f}{r['detections']:>6}"
                f"{'-' if mem is None else f'{mem:.0f}':>10}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ CLI
def add_benchmark_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`rtmo benchmark MODEL [--backend ...]`; sets `func` to `run_benchmark_cli`."""
    p = subparsers.add_parser("benchmark", help="latency / throughput / memory of a model on a backend")
    p.add_argument("model", help="checkpoint path, official name, or exported .onnx / .engine file")
    p.add_argument("--backend", default="torch", choices=BACKENDS)
    p.add_argument("--batch-sizes", default="1,4", help="comma separated, e.g. 1,4")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--persons", action="store_true", help="time images with 1, 5, 10, 20 people instead")
    p.add_argument("--images", nargs="*", default=None, help="images to use (default: the shared data set)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=run_benchmark_cli)
    return p


def run_benchmark_cli(args: argparse.Namespace) -> int:
    try:
        sizes = tuple(int(s) for s in str(args.batch_sizes).split(",") if s.strip())
    except ValueError:
        raise SystemExit(f"--batch-sizes takes comma separated integers, not {args.batch_sizes!r}") from None
    res = benchmark(args.model, args.backend, sizes, args.runs, args.warmup, args.persons, args.images,
                    args.threads, args.device)
    print(format_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtmo.benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    add_benchmark_parser(sub)
    args = parser.parse_args(["benchmark", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
