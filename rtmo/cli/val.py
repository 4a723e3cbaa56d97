"""`rtmo val ANN (-m MODEL --images DIR | --results FILE)`: COCO / CrowdPose keypoint AP."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import (
    MODEL_HELP,
    CLIError,
    add_device_option,
    add_model_option,
    add_output_option,
    add_threshold_options,
    check_positive,
    check_range,
    require,
    resolve_device_arg,
)

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
    from ..utils.fileio import blocking_file

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
    from ..eval.coco import evaluate, evaluate_model, format_metrics, load_annotations, write_metrics

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
        from ..hub.zoo import ModelManager

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

