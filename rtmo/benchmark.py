"""Latency, throughput and memory of RTMO on a backend: torch, torch-compile, onnxruntime, openvino, tensorrt.

Per batch size it measures
  * model: the backend call on an already letterboxed batch (network + NMS + DCC: what the ONNX graph holds);
  * end2end: decode the image files -> letterbox -> model -> back to image pixels (`rtmo.infer.api.infer`);
  * throughput = batch / median end2end; spread as p10..p90 over `runs` after `warmup` untimed runs, the
    cases interleaved round by round (`_interleaved`) so that a change in machine load biases none;
  * peak memory: CUDA max allocated on GPU; on CPU the process's peak RSS during the runs (VmHWM, reset
    before each measurement where the kernel allows) and tracemalloc's Python-heap peak.
`persons_mode` times single images holding 1, 5, 10, 20 people (crops of real annotated people tiled on a
canvas, see `crowd_images`): one forward, NMS over the candidates and a DCC whose cost grows with the
detections; each row reports its detection count and its time relative to the first, and
`persons_summary` the fitted cost per extra detection.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

BACKENDS = ("torch", "torch-compile", "onnxruntime", "openvino", "tensorrt")
EXPORTED = {".onnx": "onnxruntime", ".xml": "openvino", ".engine": "tensorrt", ".plan": "tensorrt",
            ".trt": "tensorrt"}
SAMPLE_IMAGE = Path(__file__).resolve().parent / "assets" / "sample.jpg"


# ------------------------------------------------------------------------------------------ models
def default_backend(model_or_path: Any) -> str:
    """The backend a model runs on when none is named: by file suffix, torch for checkpoints."""
    suffix = Path(str(model_or_path)).suffix.lower() if isinstance(model_or_path, (str, Path)) else ""
    return EXPORTED.get(suffix, "torch")


def load_backend(model_or_path: Any, backend: str | None = None, threads: int | None = None,
                 device: str | None = None, workdir: str | Path | None = None, precision: str = "fp32",
                 fast: bool = False) -> Any:
    """An object with the RTMO inference API (`input_size`, `predict_batch`, `infer`) on `backend`
    (default: `default_backend`).

    `model_or_path`: an RTMO, a checkpoint path / official name (torch backends, or exported on the fly),
    or an exported .onnx / .xml / .engine file. Exports go to `workdir` (a temporary folder by default).
    `fast`: `RTMO.set_precision(fast=True)` on the torch backends; exported graphs run that way already
    (their runtime folds BatchNorm, rtmo rewrites the DCC when opening them), as `ModelManager.get` has it.
    """
    backend = backend or default_backend(model_or_path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    suffix = Path(str(model_or_path)).suffix.lower() if isinstance(model_or_path, (str, Path)) else ""
    if backend in ("torch", "torch-compile"):
        if suffix in EXPORTED:
            raise ValueError(f"backend {backend!r} needs a PyTorch model or checkpoint, got {model_or_path}")
        import torch

        if threads:
            torch.set_num_threads(threads)
        model = _torch_model(model_or_path, device, precision, fast)
        if backend == "torch-compile":
            import copy

            model = copy.deepcopy(model)
            model.forward_maps = torch.compile(model.forward_maps)  # NMS/DCC stay eager (dynamic sizes)
        return model
    from .export.runtime import build_engine, load_exported

    if suffix in EXPORTED:
        if suffix in (".engine", ".plan", ".trt") and backend != "tensorrt":
            raise ValueError(f"{model_or_path} is a TensorRT engine; use backend='tensorrt'")
        return load_exported(model_or_path, backend, num_threads=threads, device=device, precision=precision)
    onnx_path = _export(model_or_path, workdir)
    if backend == "tensorrt":
        onnx_path = build_engine(onnx_path, onnx_path.with_suffix(".engine"), half=precision != "fp32")
    return load_exported(onnx_path, backend, num_threads=threads, device=device,
                         precision="fp32" if backend == "tensorrt" else precision)


def _torch_model(model_or_path: Any, device: str | None, precision: str = "fp32", fast: bool = False) -> Any:
    if hasattr(model_or_path, "predict_batch") and hasattr(model_or_path, "parameters"):
        from .utils.device import resolve_device

        return model_or_path.eval().to(resolve_device(device)).set_precision(precision, fast=fast)
    from .hub.zoo import ModelManager

    return ModelManager.get(str(model_or_path), device=device, precision=precision, fast=fast)


def _export(model_or_path: Any, workdir: str | Path | None) -> Path:
    from .export.onnx import export_onnx

    model = _torch_model(model_or_path, "cpu")
    folder = Path(workdir or tempfile.mkdtemp(prefix="rtmo-bench-"))
    variant = getattr(model.config, "variant", None) or "custom"
    return export_onnx(model, folder / f"rtmo-{variant}.onnx", simplify=False, check=False)


# ------------------------------------------------------------------------------------------ images
def default_images() -> list[Path]:
    """The photo shipped with the package (people in a real scene)."""
    return [SAMPLE_IMAGE]


def crowd_images(data_root: str | Path, counts: tuple[int, ...] = (1, 5, 10, 20),
                 out_dir: str | Path | None = None, canvas: tuple[int, int] = (960, 720)) -> dict[int, Path]:
    """One JPEG per count with that many real people: person boxes (annotations with >= 5 keypoints) of
    the COCO and CrowdPose test images, cropped with a 10% margin, cycled if there are too few, each resized
    to fit its cell of a ceil(sqrt(n)) grid on a grey (114) canvas of `canvas` (w, h) pixels."""
    from .infer.image import read_image  # decoded as inference decodes (EXIF orientation)

    crops = []
    data_root = Path(data_root)
    for ann_file in sorted(data_root.glob("*/test_*.json")) + sorted(data_root.glob("test_*.json")):
        data = json.loads(ann_file.read_text())
        files = {im["id"]: ann_file.parent / im["file_name"] for im in data["images"]}
        for ann in data["annotations"]:
            src = files[ann["image_id"]]
            if ann.get("num_keypoints", 0) < 5 or ann.get("iscrowd", 0) or not src.exists():
                continue
            img = read_image(src)
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
def _interleaved(calls: list[tuple[Callable[[], Any], ...]], runs: int, warmup: int
                 ) -> list[list[list[float]]]:
    """Seconds per call of every case, rounds interleaved (every case once per round, the order reversed
    every other round) so that load from other processes, or a CPU warming up, hits every case alike
    instead of biasing the later ones: per case, one list of times per call."""
    times = [[[] for _ in fns] for fns in calls]
    order = list(range(len(calls)))
    for r in range(warmup + runs):
        for c in (order if r % 2 == 0 else order[::-1]):
            for k, fn in enumerate(calls[c]):
                t = time.perf_counter()
                fn()
                if r >= warmup:
                    times[c][k].append(time.perf_counter() - t)
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
    if on_cuda and _torch_cuda():
        import torch

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


def tiled_images(image: str | Path, grids: tuple[int, ...] = (1, 2, 3, 4), out_dir: str | Path | None = None
                 ) -> dict[int, Path]:
    """`image` repeated on a g x g grid (same canvas size), one JPEG per g: more people at the same input
    size, for `persons_mode` without annotations."""
    from .infer.image import read_image

    img = read_image(image)
    h, w = img.shape[:2]
    folder = Path(out_dir or tempfile.mkdtemp(prefix="rtmo-crowd-"))
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for g in grids:
        tile = cv2.resize(img, (max(w // g, 1), max(h // g, 1)), interpolation=cv2.INTER_AREA)
        canvas = np.full((h, w, 3), 114, np.uint8)
        for r in range(g):
            for c in range(g):
                th, tw = tile.shape[:2]
                canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
        out[g * g] = folder / f"tiled_{g}x{g}.jpg"
        cv2.imwrite(str(out[g * g]), canvas, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return out


def benchmark(model_or_path: Any, backend: str | None = None, batch_sizes: tuple[int, ...] = (1, 4),
              runs: int = 20, warmup: int = 3, persons_mode: bool = False,
              images: list[str | Path] | None = None,
              threads: int | None = None, device: str | None = None, workdir: str | Path | None = None,
              model: Any = None, threshold: float | None = None, precision: str = "fp32",
              data_root: str | Path | None = None, nms_threshold: float | None = None,
              fast: bool = False) -> dict[str, Any]:
    """Benchmark one backend; returns a JSON-ready dict (see `format_table`). Pass `model` to reuse an
    already loaded backend object (then `model_or_path` is only used as its label).

    `persons_mode`: single images with more and more people: crops of annotated people from
    `data_root` (COCO-format `test_*.json` + images, see `crowd_images`), else the first image tiled
    1x1 .. 4x4 (`tiled_images`); each row reports its detection count and time per detection."""
    from .infer.api import infer, preprocess
    from .infer.image import read_image
    from .ops.checks import check_fraction

    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    threshold = check_fraction(threshold, "threshold")
    nms_threshold = check_fraction(nms_threshold, "nms_threshold")
    backend = backend or default_backend(model if model is not None else model_or_path)
    t0 = time.perf_counter()
    if model is None:
        model = load_backend(model_or_path, backend, threads, device, workdir, precision, fast)
    load_s = time.perf_counter() - t0
    dev = str(getattr(model, "device", "cpu"))
    on_cuda = dev.startswith("cuda") or backend == "tensorrt"
    sync = _cuda_sync if on_cuda else (lambda: None)
    paths = [Path(p) for p in (images or default_images())]
    input_size = tuple(model.input_size)
    result: dict[str, Any] = {
        "backend": backend, "model": str(getattr(model, "path", None) or _label(model_or_path)),
        "input_size": list(input_size), "threads": threads or getattr(model, "num_threads", None) or
        _torch_threads(backend), "device": dev, "precision": getattr(model, "precision", precision),
        "fast": getattr(model, "fast", None),  # None: an exported graph (see load_backend)
        "threshold": threshold, "nms_threshold": nms_threshold, "runs": runs, "warmup": warmup,
        "load_s": load_s, "rows": []}

    cases: list[tuple[str, list[Path]]]
    if persons_mode:
        crowd = (crowd_images(data_root, out_dir=workdir) if data_root
                 else tiled_images(paths[0], out_dir=workdir))
        unit = "people" if data_root else "copies"
        cases = [(f"{n} {unit}", [p]) for n, p in crowd.items()]
    else:
        cases = [(f"batch {b}", [paths[i % len(paths)] for i in range(b)]) for b in batch_sizes]

    calls = []  # per case: (model-only call, end-to-end call)
    for _, files in cases:
        batch, _ = preprocess([read_image(p) for p in files], input_size)

        def model_only(batch: np.ndarray = batch) -> None:
            model.predict_batch(batch, threshold, nms_threshold)
            sync()

        def end2end(files: list[Path] = files) -> None:
            infer(model, [str(p) for p in files], threshold, nms_threshold)
            sync()

        calls.append((model_only, end2end))
    times = _interleaved(calls, runs, warmup)
    for (label, files), (_, end2end), (t_model, t_e2e) in zip(cases, calls, times):
        t_model, t_e2e = _summary(t_model), _summary(t_e2e)
        n_det = sum(len(r) for r in infer(model, [str(p) for p in files], threshold, nms_threshold))
        result["rows"].append({
            "case": label, "batch": len(files), "model": t_model, "end2end": t_e2e,
            "throughput_img_s": len(files) / t_e2e["median_s"], "detections": n_det,
            "ms_per_detection": t_e2e["median_s"] * 1e3 / n_det if n_det else None,
            "memory": _memory(end2end, on_cuda)})
    if persons_mode and result["rows"]:
        base = result["rows"][0]["end2end"]["median_s"]
        for r in result["rows"]:
            r["end2end_vs_first"] = r["end2end"]["median_s"] / base
        result["persons"] = persons_summary(result["rows"])
    return result


def persons_summary(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """How end-to-end time grows with the detection count: the least-squares slope (ms per extra
    detection), the fixed part (ms at 0 detections) and the spread max/min - 1 over the rows."""
    n = np.array([r["detections"] for r in rows], dtype=np.float64)
    t = np.array([r["end2end"]["median_s"] * 1e3 for r in rows])
    slope, intercept = np.polyfit(n, t, 1) if len(rows) > 1 and np.ptp(n) > 0 else (None, None)
    return {"ms_per_extra_detection": None if slope is None else float(slope),
            "ms_fixed": None if intercept is None else float(intercept),
            "spread": float(t.max() / t.min() - 1)}


def _cuda_sync() -> None:
    try:  # exported models on CUDA return host arrays (already synchronised); torch may be absent
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _torch_threads(backend: str) -> int | None:
    if backend.startswith("torch"):
        import torch

        return torch.get_num_threads()
    return None


def _label(x: Any) -> str:
    if hasattr(x, "config") and hasattr(x, "parameters"):
        v = getattr(getattr(x, "config", None), "variant", None)
        return f"RTMO-{v}" if v else type(x).__name__
    return str(x)


def format_table(results: dict[str, Any] | list[dict[str, Any]]) -> str:
    """A plain-text table: one line per backend and case, times in milliseconds (median [p10..p90])."""
    results = [results] if isinstance(results, dict) else results
    head = (f"{'backend':<14}{'case':<11}{'model ms':>22}{'end2end ms':>24}{'img/s':>8}{'dets':>6}"
            f"{'ms/det':>8}{'vs 1st':>8}{'peak MiB':>10}")
    lines = [head, "-" * len(head)]
    for res in results:
        for r in res["rows"]:
            mem = r["memory"].get("cuda_max_allocated_mib", r["memory"].get("rss_peak_mib"))
            m, e = r["model"], r["end2end"]
            per_det = f"{r['ms_per_detection']:.2f}" if r.get("ms_per_detection") else "-"
            vs_first = f"{r['end2end_vs_first']:.2f}x" if "end2end_vs_first" in r else "-"
            lines.append(
                f"{res['backend']:<14}{r['case']:<11}"
                f"{m['median_s'] * 1e3:>8.1f} [{m['p10_s'] * 1e3:5.1f}..{m['p90_s'] * 1e3:5.1f}]"
                f"{e['median_s'] * 1e3:>10.1f} [{e['p10_s'] * 1e3:5.1f}..{e['p90_s'] * 1e3:5.1f}]"
                f"{r['throughput_img_s']:>8.2f}{r['detections']:>6}"
                f"{per_det:>8}{vs_first:>8}"
                f"{'-' if mem is None else f'{mem:.0f}':>10}")
        p = res.get("persons")
        if p and p["ms_per_extra_detection"] is not None:
            lines.append(f"{res['backend']}: {p['ms_per_extra_detection']:+.2f} ms per extra detection over "
                         f"{p['ms_fixed']:.1f} ms; slowest/fastest case {p['spread']:+.1%}")
    return "\n".join(lines)
