"""The `rtmo` command. Thin: parses arguments and calls the library.

Each subcommand is one `add_*(subparsers)` function that builds its parser and sets `func` (taking the
parsed args, returning an exit code); `COMMANDS` lists them. Known failures (missing source, bad model name,
unreadable file, bad option) print one line on stderr and exit with 2 — never a traceback
(set RTMO_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

EXIT_USAGE = 2

# Optional dependencies and the extra that installs each (`pip install "rtmo[extra]"`).
EXTRAS = {"pycocotools": "eval", "onnx": "onnx", "onnxruntime": "onnx",
          "openvino": "openvino", "tensorboard": "train"}


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "bad input" rather than a bug; imported late to keep `rtmo --help` fast."""
    from .hub.zoo import CheckpointError, DownloadError
    from .infer.image import ImageError
    from .infer.sources import SourceError
    from .utils.device import DeviceError

    errors: list[type[BaseException]] = [CLIError, DeviceError, ImageError, SourceError, CheckpointError,
                                         DownloadError, FileNotFoundError, PermissionError, IsADirectoryError]
    try:
        from .eval.coco import EvaluationError

        errors.append(EvaluationError)
    except ImportError:  # pragma: no cover - evaluation extras missing
        pass
    return tuple(errors)


def missing_extra_message(e: ImportError) -> str | None:
    """One line naming the extra to install for a missing optional dependency, None for other imports."""
    name = (getattr(e, "name", None) or "").split(".")[0]
    if name == "tensorrt":
        return "this needs TensorRT (NVIDIA GPUs only): pip install tensorrt"
    if name in EXTRAS:
        return f'this needs the optional package {name}: pip install "rtmo[{EXTRAS[name]}]"'
    return None


def require(module: str) -> None:
    """Fail now, with the install line, when an optional dependency is missing (before any slow work)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        hint = missing_extra_message(ModuleNotFoundError(name=module))
        raise CLIError(hint or f"{module} is not installed")


# --------------------------------------------------------------------- options shared by every command
# One name per concept across subcommands: -m/--model, -o/--output (a run folder), --threshold,
# --nms-threshold, --draw-threshold, --device. `rtmo export` and `rtmo benchmark` build their parsers in
# rtmo/export and rtmo/benchmark.py with the same names.

MODEL_HELP = ("registry name (see `rtmo models`) or path to a checkpoint (.pth: mmpose's or ours) or an "
              "exported model (.onnx, OpenVINO .xml, TensorRT .engine)")


def add_model_option(p: argparse.ArgumentParser, default: str | None = "rtmo-s-coco", help: str = MODEL_HELP
                     ) -> None:
    p.add_argument("-m", "--model", default=default,
                   help=help + (" (default: %(default)s)" if default else ""))


def add_output_option(p: argparse.ArgumentParser, default: str | None, files: str) -> None:
    where = f" (default: {default})" if default else ""
    p.add_argument("-o", "--output", default=default, metavar="DIR", help=f"run folder{where}; {files}")


def add_threshold_options(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--threshold", type=float, default=None, help="person score threshold: people below it "
                   f"are dropped{what} (default: the model's, 0.1 = mmpose's test setting)")
    p.add_argument("--nms-threshold", type=float, default=None,
                   help="NMS IoU threshold (default: the model's, 0.65)")


def add_device_option(p: argparse.ArgumentParser, what: str = "torch models") -> None:
    p.add_argument("--device", default=None, help=f"device for {what}: cpu, cuda, cuda:1, 0, 0,1 "
                   "(default: CUDA when available, else cpu)")


def check_range(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None and not 0.0 <= v <= 1.0:
            raise CLIError(f"--{name.replace('_', '-')} must be between 0 and 1, got {v}")


def check_positive(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def resolve_device_arg(spec: str | None) -> str:
    """`--device` checked against this machine before any model loads (DeviceError: one line, exit 2).
    Without torch (a deployment install running exported models) the runtime checks it when it opens."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return spec
    from .utils.device import resolve_device

    return str(resolve_device(spec))


# ------------------------------------------------------------------------------------------ predict

PREDICT_FILES = ("with --save: drawn images <stem>.<ext> and videos <stem>.mp4; with --save-json: "
                 "predictions.json (COCO results of the images) and <stem>.jsonl (one JSON record per video "
                 "frame); existing files are never overwritten (name_1.ext, ...)")


def add_predict(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="poses in images, folders, globs, videos, cameras, streams",
                       description="Run RTMO on SOURCE: an image, a folder, a glob ('imgs/*.jpg'), a video, "
                                   "a camera index (0), an RTSP/HTTP URL, or a .txt file listing paths.")
    p.add_argument("source", help="image / folder / glob / video / camera index / URL / .txt list")
    add_model_option(p)
    add_output_option(p, "runs/predict", PREDICT_FILES)
    p.add_argument("--save", action="store_true", help="write drawn images / videos")
    p.add_argument("--save-json", action="store_true", help="write COCO results JSON for images, "
                   "JSON lines (one record per frame) for videos")
    p.add_argument("--ann", default=None, help="COCO annotation file giving image ids for --save-json")
    p.add_argument("--track", action="store_true", help="give people stable ids across video frames")
    p.add_argument("--smooth", action="store_true", help="One-Euro smoothing of tracked keypoints (implies "
                   "--track)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: %(default)s)")
    add_threshold_options(p, " (from the results and the JSON)")
    add_draw_threshold_option(p)
    add_device_option(p)
    p.add_argument("--vid-stride", type=int, default=1, help="use every n-th video frame")
    p.add_argument("--max-frames", type=int, default=None, help="stop each video / stream after n frames")
    p.add_argument("--show", action="store_true", help="show results in a window (needs a display)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run_predict)
    return p


def add_draw_threshold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--draw-threshold", type=float, default=0.3,
                   help="score a person and a keypoint need to be drawn (default: %(default)s, what mmpose's "
                        "inferencer draws); results and JSON keep everyone above --threshold")
    # The earlier name of the same setting; kept working, not advertised.
    p.add_argument("--kpt-threshold", dest="draw_threshold", type=float, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)


def _check_predict_args(args: argparse.Namespace) -> None:
    check_positive(args, ("batch_size", "vid_stride", "max_frames"))
    check_range(args, ("threshold", "nms_threshold", "draw_threshold"))
    if args.ann is not None and not Path(args.ann).is_file():
        raise CLIError(f"--ann {args.ann}: no such file")
    args.device = resolve_device_arg(args.device)


class _Window:
    """`--show`: an OpenCV window, or one clear message when no display (or no GUI support) exists."""

    def __init__(self) -> None:
        self.ok = True
        has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        if sys.platform.startswith("linux") and not has_display:
            self._disable("no display found (DISPLAY / WAYLAND_DISPLAY are not set)")

    def _disable(self, why: str) -> None:
        self.ok = False
        print(f"rtmo: --show: {why}; not showing results (use --save to write them)", file=sys.stderr)

    def show(self, name: str, frame: Any) -> bool:
        """False when the user asked to stop (q or Esc)."""
        if not self.ok:
            return True
        import cv2

        try:
            cv2.imshow("rtmo", frame)
            cv2.setWindowTitle("rtmo", f"rtmo - {name}")
            key = cv2.waitKey(1) & 0xFF
        except cv2.error:
            self._disable("this OpenCV build has no GUI support (opencv-python-headless?)")
            return True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self.ok:
            import cv2

            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass


def run_predict(args: argparse.Namespace) -> int:
    _check_predict_args(args)
    from .infer.sources import resolve_source
    from .infer.writers import PredictionWriter

    items = resolve_source(args.source)  # before loading the model: a typo fails in a second, not ten
    # The writer checks -o and --ann before the model loads; it creates nothing until a result exists.
    writer = PredictionWriter(args.output, args.save, args.save_json, args.draw_threshold, args.ann,
                              inputs=[it.target for it in items if isinstance(it.target, str)],
                              image_names=[it.name for it in items if it.kind == "image"])

    from .hub.zoo import ModelManager
    from .infer.sources import stream_results

    model = ModelManager.get(args.model, device=args.device, progress=not args.quiet)
    model_name = getattr(model, "checkpoint_info", {}).get("name", args.model)

    def warn(msg: str) -> None:
        from tqdm import tqdm

        tqdm.write(f"rtmo: warning: {msg}", file=sys.stderr)  # keeps the progress bar intact

    window = _Window() if args.show else None
    n_results = n_people = 0
    t0 = time.perf_counter()
    with _sigterm_as_interrupt():
        try:
            for r in stream_results(model, items, batch_size=args.batch_size, threshold=args.threshold,
                                    nms_threshold=args.nms_threshold, vid_stride=args.vid_stride,
                                    max_frames=args.max_frames, track=args.track, smooth=args.smooth,
                                    keep_images=args.save or bool(window and window.ok),
                                    progress=not args.quiet, on_warning=warn):
                drawn = writer.add(r)
                n_results += 1
                n_people += len(r)
                if window is not None and drawn is not None and not window.show(r.extra["source"].name,
                                                                                 drawn):
                    break
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM) or failed: still finish what was written, so partial results are
            # valid files; the original error is the one reported.
            try:
                writer.close()
            except Exception as e:  # noqa: BLE001
                warn(f"while finishing the outputs: {' '.join(str(e).split())}")
            raise
        finally:
            if window is not None:
                window.close()
        written = writer.close()
    seconds = time.perf_counter() - t0
    if not args.quiet:
        rate = n_results / seconds if seconds > 0 else 0.0
        print(f"{model_name}: {n_results} image(s)/frame(s), {n_people} people, {seconds:.1f} s "
              f"({rate:.2f} per second)")
        if written:
            print(f"wrote {len(written)} file(s) to {writer.out_dir}: "
                  + ", ".join(p.name for p in written[:5]) + (" ..." if len(written) > 5 else ""))
        elif not (args.save or args.save_json):
            print("nothing written: add --save and/or --save-json to keep the results")
    if n_results == 0:
        raise CLIError(f"{args.source}: no image or frame could be processed")
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, a container stop) ends a run as Ctrl-C does: the outputs are finished, not torn."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (run_predict called from a worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------ models

def add_models(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="list the official checkpoints (name, input, keypoints, AP, cached)",
                       description="The registry of official checkpoints; with -m, one model's details "
                                   "(file, download address, cache path, training recipe).")
    add_model_option(p, default=None, help="show this registry model only")
    p.set_defaults(func=run_models)
    return p


def recipe_for_model(name: str) -> str | None:
    """The official training recipe of a registry model (`rtmo-s-coco` -> rtmo-s_8xb32-600e_coco-640x640):
    the published checkpoint's file name without its `-<sha256 prefix>_<date>.pth` tail."""
    import re

    from .hub.zoo import REGISTRY

    entry = REGISTRY.get(name)
    return None if entry is None else re.sub(r"-[0-9a-f]{8}_\d{8}\.pth$", "", entry.filename)


def run_models(args: argparse.Namespace) -> int:
    from .hub.zoo import REGISTRY, cache_dir, cached_path

    if args.model is not None:
        e = REGISTRY.get(args.model)
        if e is None:
            raise CLIError(f"{args.model!r} is not a registry name; choose from {', '.join(REGISTRY)}")
        cached = cached_path(e.name)
        for key, value in (("name", e.name), ("input", "x".join(map(str, e.input_size))),
                           ("keypoints", e.num_keypoints), ("AP", f"{e.ap:.3f} ({e.eval_data})"),
                           ("file", e.filename), ("url", e.url),
                           ("cached", cached or f"no (would go to {cache_dir() / e.filename})"),
                           ("recipe", recipe_for_model(e.name))):
            print(f"{key + ':':11} {value}")
        return 0
    rows = [("name", "input", "kpts", "AP", "measured on", "cached")]
    for name, e in REGISTRY.items():
        w, h = e.input_size
        rows.append((name, f"{w}x{h}", str(e.num_keypoints), f"{e.ap * 100:.1f}", e.eval_data,
                     "yes" if cached_path(name) else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print(f"cache: {cache_dir()}  (set RTMO_CACHE_DIR to move it)")
    return 0


# ------------------------------------------------------------------------------------------ val

VAL_FILES = "metrics.json (the metrics) and, when a model is evaluated, predictions.json (its COCO results)"


def add_val(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("val", help="COCO / CrowdPose keypoint AP of a model or of a results file",
                       description="Keypoint AP (pycocotools): run a model (-m) on the annotated images "
                                   "(--images), or score an existing COCO results file (--results).")
    p.add_argument("ann_pos", nargs="?", default=None, metavar="ann", help="COCO-format annotation file")
    p.add_argument("--ann", default=None, help="the same, as an option")
    add_model_option(p, default=None, help="model to evaluate: " + MODEL_HELP)
    p.add_argument("--images", default=None, help="image folder of the annotation file (with --model)")
    p.add_argument("--results", default=None, help="COCO results JSON to score instead of a model")
    p.add_argument("--protocol", default="coco", choices=("coco", "crowdpose"))
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: %(default)s)")
    add_output_option(p, None, VAL_FILES + " (default: print only)")
    add_threshold_options(p, " before scoring")
    add_device_option(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run_val)
    return p


class _CountingModel:
    """The model as `evaluate_model` sees it: `infer` runs with the command's thresholds and advances the
    progress bar by the number of images; everything else is the model's."""

    def __init__(self, model: Any, bar: Any, threshold: float | None, nms_threshold: float | None) -> None:
        self._model, self._bar = model, bar
        self._thresholds = (threshold, nms_threshold)

    def infer(self, images: Any) -> Any:
        out = self._model.infer(images, *self._thresholds)
        if self._bar is not None:
            self._bar.update(len(images) if isinstance(images, (list, tuple)) else 1)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def run_val(args: argparse.Namespace) -> int:
    from .utils.fileio import blocking_file

    if (args.ann is None) == (args.ann_pos is None):
        raise CLIError("give the annotation file once: `rtmo val FILE ...` or `rtmo val --ann FILE ...`")
    ann = args.ann or args.ann_pos
    if (args.results is None) == (args.model is None):
        raise CLIError("give a model to evaluate (-m/--model with --images) or a results file (--results)")
    check_positive(args, ("batch_size",))
    check_range(args, ("threshold", "nms_threshold"))
    out = Path(args.output) if args.output is not None else None
    if out is not None and out.suffix.lower() == ".json":
        raise CLIError(f"--output {out}: give a folder; metrics.json is written inside it")
    blocker = blocking_file(out) if out is not None else None
    if blocker is not None:
        raise CLIError(f"--output {out}: {blocker} is a file, not a folder")
    require("pycocotools")
    from .eval.coco import evaluate, evaluate_model, format_metrics, load_annotations, write_metrics

    gt = load_annotations(ann)  # a bad file fails here, before a model loads
    if args.results is not None:
        if args.threshold is not None or args.nms_threshold is not None:
            raise CLIError("--threshold / --nms-threshold apply when evaluating a model, not --results")
        metrics = evaluate(gt, args.results, args.protocol)
    else:
        if args.images is None:
            raise CLIError("evaluating a model needs --images (the annotation file's image folder)")
        if not Path(args.images).is_dir():
            raise CLIError(f"--images {args.images}: no such folder")
        device = resolve_device_arg(args.device)
        from .hub.zoo import ModelManager

        model = ModelManager.get(args.model, device=device, progress=not args.quiet)
        bar = None
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=len(gt["images"]), unit="img", desc="val", dynamic_ncols=True)
        try:
            metrics = evaluate_model(_CountingModel(model, bar, args.threshold, args.nms_threshold),
                                     args.images, gt, args.protocol, args.batch_size,
                                     results_file=None if out is None else out / "predictions.json")
        finally:
            if bar is not None:
                bar.close()
    print(format_metrics(metrics, title=f"{args.protocol} keypoint evaluation: {ann}"))
    if out is not None:
        write_metrics(out / "metrics.json", metrics)
        print(f"wrote {out / 'metrics.json'}" + (f" and {out / 'predictions.json'}" if args.model else ""))
    return 0


# ------------------------------------------------------------------------------------------ train

TRAIN_FILES = ("last.pth (every epoch), best.pth (best validation AP), epoch_N.pth (every checkpoint "
               "interval), metrics.jsonl (losses and metrics), TensorBoard events when installed")


def add_train(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model following an official recipe or a TOML recipe file",
                       description="Train RTMO. What is trained is a recipe: an official model name "
                                   "(rtmo-s-coco -> its recipe), an official recipe name "
                                   "(rtmo-s_8xb32-600e_coco-640x640) or a TOML file; `rtmo train --list` "
                                   "shows them.")
    p.add_argument("recipe", nargs="?", default=None, help="model name, recipe name or .toml path "
                   "(the same as -m/--model)")
    add_model_option(p, default=None, help="what to train: model name (rtmo-s-coco), recipe name or .toml")
    p.add_argument("--list", action="store_true", help="list the official recipes and model names, then exit")
    p.add_argument("--init-from", default=None, help="weights to start from (registry name or .pth), e.g. "
                   "fine-tuning an official checkpoint; unlike -m/--model it sets the starting weights, not "
                   "the architecture or recipe")
    add_output_option(p, "runs/train", TRAIN_FILES)
    p.add_argument("--data-root", default=None, help="dataset root (overrides the recipe's)")
    p.add_argument("--train-ann", default=None, help="train on this COCO-format keypoint file instead of the "
                   "recipe's datasets (any keypoint set; needs --train-images)")
    p.add_argument("--train-images", default=None, help="image folder of --train-ann")
    p.add_argument("--val-ann", default=None, help="validate on this COCO-format file (needs --val-images)")
    p.add_argument("--val-images", default=None, help="image folder of --val-ann")
    p.add_argument("--backbone", default=None, choices=["csp", "resnet18", "resnet34", "resnet50"],
                   help="backbone (default: the recipe's, CSPDarknet)")
    p.add_argument("--backbone-init", default=None, help="backbone weights: YOLOX checkpoint (name such as "
                   "yolox-s, URL or file) for CSPDarknet, torchvision file for ResNet; '' for none")
    p.add_argument("--epochs", type=int, default=None, help="rescale the schedule to this many epochs")
    p.add_argument("--iters", type=int, default=None, help="iterations per epoch (default: the whole "
                   "training set); with --epochs E a short run of E x N iterations")
    p.add_argument("--val-interval", type=int, default=None, help="validate every N epochs (and after the "
                   "last); default: the recipe's, rescaled with --epochs")
    p.add_argument("--batch-size", type=int, default=None, help="per-device batch size")
    add_device_option(p, "training (several GPUs: start with torchrun --nproc_per_node N -m rtmo train)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--resume", nargs="?", const=True, default=None,
                   help="continue from OUTPUT/last.pth, or from the given checkpoint")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def _list_recipes() -> int:
    from .hub.zoo import REGISTRY
    from .train.recipes import list_recipes

    by_recipe = {recipe_for_model(n): n for n in REGISTRY}
    rows = [(r, by_recipe.get(r, "")) for r in list_recipes()]
    width = max(len(r) for r, _ in rows)
    print(f"{'recipe'.ljust(width)}  model name")
    for r, n in rows:
        print(f"{r.ljust(width)}  {n}".rstrip())
    return 0


def _training_logs_above_the_bar() -> None:
    """Log lines go through tqdm.write, so they print above the progress bar instead of onto it.

    Installed only when nothing configured logging (train() then keeps it); rank 0 logs, others warn."""
    import logging

    root = logging.getLogger()
    if root.handlers:
        return
    from tqdm import tqdm

    class TqdmHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                tqdm.write(self.format(record), file=sys.stderr)
            except Exception:  # noqa: BLE001 - logging must never break training
                self.handleError(record)

    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING)


def run_train(args: argparse.Namespace) -> int:
    if args.list:
        return _list_recipes()
    if args.recipe is not None and args.model is not None and args.recipe != args.model:
        raise CLIError(f"give what to train once: {args.recipe!r} or -m {args.model!r}")
    name = args.recipe or args.model
    if name is None:
        raise CLIError("name what to train: `rtmo train rtmo-s-coco` (see `rtmo train --list`)")
    check_positive(args, ("epochs", "iters", "val_interval", "batch_size"))
    from .utils.device import resolve_devices

    devices = resolve_devices(args.device) if args.device is not None else None
    if devices is not None and len(devices) > 1 and "WORLD_SIZE" not in os.environ:
        raise CLIError(f"--device {args.device} names {len(devices)} devices: start one process per device "
                       f"with torchrun --nproc_per_node {len(devices)} -m rtmo train ...")
    from .hub.zoo import REGISTRY, fetch
    from .train.recipes import TrainRecipe, scale_epochs
    from .train.run import train

    recipe = TrainRecipe.load(recipe_for_model(name) or name)
    epochs = args.epochs
    if args.val_interval is not None:
        # Rescale here so the interval given is the one used (train() would rescale it with the schedule).
        if epochs is not None:
            recipe, epochs = scale_epochs(recipe, epochs), None
        recipe = recipe.with_overrides(**{"runtime.val_interval": args.val_interval,
                                          "runtime.val_every_epoch_from": recipe.schedule.epochs})
    init_from = args.init_from
    if init_from in REGISTRY:
        init_from = fetch(init_from, progress=not args.quiet)
    # One process: the device named. Under torchrun every rank takes cuda:LOCAL_RANK of the type named.
    device = None
    if devices is not None:
        device = devices[0].type if "WORLD_SIZE" in os.environ else str(devices[0])
    _training_logs_above_the_bar()
    summary = train(recipe, data_root=args.data_root, out_dir=args.output, epochs=epochs,
                    batch_size=args.batch_size, device=device, workers=args.workers, resume=args.resume,
                    init_from=init_from, amp=args.amp, seed=args.seed, backbone=args.backbone,
                    backbone_init=args.backbone_init, train_ann=args.train_ann,
                    train_images=args.train_images,
                    val_ann=args.val_ann, val_images=args.val_images, max_iters_per_epoch=args.iters,
                    progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        print(train_summary(summary, Path(args.output)))
    return 0


def train_summary(summary: dict[str, Any], out: Path) -> str:
    """The closing lines of `rtmo train`: epochs and iterations done, the best metric, the files."""
    best = summary.get("best") or {}
    lines = [f"trained {summary.get('epoch')} epoch(s), {summary.get('iter')} iterations"]
    if best.get("metric") is not None and best.get("epoch", -1) >= 0:
        lines.append(f"best {best['metric']} {best['value']:.4f} at epoch {best['epoch'] + 1}")
    else:
        lines.append("no validation ran (no validation set): best.pth not written")
    files = [p.name for p in (out / "best.pth", out / "last.pth", out / "metrics.jsonl") if p.exists()]
    lines.append(f"files in {out}: {', '.join(files) or 'none'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ others

# ------------------------------------------------------------------------------------------ export

def add_export(sub: Any) -> argparse.ArgumentParser:
    """`rtmo export -m MODEL [-o OUT] [--format onnx|openvino|tensorrt]`; sets `func`."""
    from .export import FORMATS

    p = sub.add_parser(
        "export", help="export a model to ONNX / OpenVINO / TensorRT (NMS and DCC inside the graph)",
        description="Export MODEL with selection (threshold, NMS) and the DCC inside the graph. The file is "
                    "verified (ONNX Runtime against PyTorch on a test image) before it gets its name.")
    p.add_argument("-m", "--model", default="rtmo-s-coco",
                   help="registry name or checkpoint path (default: %(default)s)")
    p.add_argument("-o", "--output", default=None,
                   help="output file (.onnx / .xml / .engine for the format) or a folder, where "
                        "<model name>.<ext> is written (default: the current folder)")
    p.add_argument("--format", default="onnx", choices=FORMATS,
                   help="onnx (ONNX Runtime, OpenVINO, TensorRT read it), openvino (IR .xml + .bin), "
                        "tensorrt (.engine, needs a GPU)")
    p.add_argument("--threshold", type=float, default=None,
                   help="person score threshold baked into the graph (default: the model's, 0.1)")
    p.add_argument("--nms-threshold", type=float, default=None,
                   help="NMS IoU threshold baked into the graph (default: the model's, 0.65)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--static-batch", action="store_true", help="fixed batch 1 instead of a dynamic batch")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim even when installed")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--check-images", nargs="*", default=None, help="images for the check")
    p.add_argument("--fp32", action="store_true", help="TensorRT: no FP16")
    p.add_argument("--int8", action="store_true", help="onnx / openvino: INT8 by post-training static "
                   "quantization (needs --calibration; openvino needs rtmo[quantize]); selection, NMS and "
                   "DCC stay in float")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="with --int8: a folder of images like the ones the model will see (100-300)")
    p.add_argument("--device", default="cpu", help="device the PyTorch model runs on for the check "
                   "(default: %(default)s)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but the written path")
    p.set_defaults(func=run_export_cli)
    return p


def run_export_cli(args: argparse.Namespace) -> int:
    from .export import export, output_path
    from .export.onnx import check_export_options
    from .hub.zoo import ModelManager

    # Every option is checked before the model is loaded or anything is written.
    check_export_options(args.threshold, args.nms_threshold, args.opset)
    if args.output is not None:
        output_path(args.output, args.format, "model")
    if args.int8 and args.calibration is None:
        raise ValueError("--int8 needs --calibration DIR (images to calibrate the INT8 ranges on)")
    if args.calibration is not None and not args.int8:
        raise ValueError("--calibration is used with --int8")
    if args.int8:
        if args.format == "tensorrt":
            raise ValueError("--int8 is offered for --format onnx and openvino")
        from .export.quantize import calibration_files

        calibration_files(args.calibration)
    model = ModelManager.get(args.model, device=args.device, progress=not args.quiet)
    if not args.quiet:
        print(f"exporting {args.model} to {args.format}" + ("" if args.no_check else " (then verifying)"),
              file=sys.stderr)
    out = export(model, args.output, args.format, threshold=args.threshold, nms_threshold=args.nms_threshold,
                 opset=args.opset, dynamic_batch=not args.static_batch, simplify=not args.no_simplify,
                 check=not args.no_check, check_images=args.check_images, half=not args.fp32,
                 int8=args.int8, calibration=args.calibration)
    print(out)
    return 0


def add_benchmark(sub: Any) -> argparse.ArgumentParser:
    from .benchmark import add_benchmark_parser

    return add_benchmark_parser(sub)


def add_serve(sub: Any) -> argparse.ArgumentParser:
    from .serve.cli import add_serve as _add_serve

    return _add_serve(sub)


COMMANDS: list[Callable[[Any], argparse.ArgumentParser]] = [add_predict, add_models, add_val, add_train,
                                                            add_export, add_benchmark]
COMMANDS.append(add_serve)  # issue 14


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="rtmo", description="RTMO real-time multi-person pose estimation.")
    parser.add_argument("--version", action="version", version=f"rtmo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        try:
            add(sub)
        except ImportError as e:  # an optional part (e.g. export without onnx) must not break the rest
            print(f"rtmo: note: command from {add.__name__} unavailable ({e})", file=sys.stderr)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("rtmo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into messages
        if os.environ.get("RTMO_DEBUG"):
            raise
        hint = missing_extra_message(e) if isinstance(e, ImportError) else None
        if hint is not None:  # an optional dependency: say which extra installs it
            print(f"rtmo: error: {args.command}: {hint}", file=sys.stderr)
            return EXIT_USAGE
        # ValueError covers bad values handed down to the library (CheckpointError, ImageError, ... derive
        # from it); anything else is a bug and says its type.
        known = isinstance(e, (ValueError, *_user_errors()))
        msg = " ".join(str(e).split()) or type(e).__name__  # one line, however the message was built
        if known:
            print(f"rtmo: error: {msg}", file=sys.stderr)
            return EXIT_USAGE
        print(f"rtmo: error: {type(e).__name__}: {msg} (set RTMO_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
