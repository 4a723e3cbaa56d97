"""Keypoint evaluation as mmpose's CocoMetric does it for RTMO: COCO AP and CrowdPose AP(E/M/H).

Both protocols run on pycocotools' `COCOeval(iouType='keypoints')`:

* COCO: `score_mode='bbox'` (instance score = box score), `nms_mode='none'`, GT `area` for OKS, the
  dataset's own keypoint sigmas (pycocotools would otherwise use the 17 COCO ones).
* CrowdPose: xtcocotools' `keypoints_crowd` with `use_area=False`. That protocol is standard COCOeval
  with three changes, reproduced here without depending on xtcocotools (whose PyPI wheel is built
  against numpy 1 and fails to import under numpy 2):
    1. the GT "area" (used by OKS and by area ranges) is `0.53 * bbox_w * bbox_h`;
    2. a GT is ignored when its `num_keypoints` field is 0 (CrowdPose counts only visible joints there);
    3. AP(E)/AP(M)/AP(H) re-run the evaluation on the images whose `crowdIndex` is < 0.2, < 0.8, >= 0.8
       (xtcocotools' `get_type_result(first=0.2, second=0.8)`), each reported as the plain mean of the
       whole precision array at area 'all' (-1 entries included), rounded to 4 decimals.
  `bench/eval_check.py` compares the numbers with xtcocotools itself.

Detections whose keypoint scores are all <= 0 are dropped before matching, as xtcocotools does.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import keypoint_info_for
from ..infer.results import PoseResult
from ..utils.fileio import atomic_write_text

COCO_METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
CROWDPOSE_METRICS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP(E)", "AP(M)", "AP(H)")
PROTOCOLS = ("coco", "crowdpose")
# crowdIndex thresholds of xtcocotools' keypoints_crowd summary: easy < 0.2 <= medium < 0.8 <= hard
CROWD_INDEX_SPLITS = (0.2, 0.8)
# use_area=False: xtcocotools replaces the GT segment area by this fraction of the GT box area
BOX_AREA_FACTOR = 0.53

AnnSource = str | os.PathLike | dict
ResultsSource = str | os.PathLike | Sequence[dict]


class EvaluationError(ValueError):
    """A bad annotation or results input; the message names the file/record and the problem."""


# ---------------------------------------------------------------------------------------------
# PoseResult -> COCO results records
# ---------------------------------------------------------------------------------------------


def pose_result_to_coco(result: PoseResult, image_id: int, category_id: int = 1) -> list[dict]:
    """COCO keypoint-results records for the people of one image (CocoMetric, score_mode='bbox');
    the format is defined once, in `PoseResult.to_coco`."""
    return result.to_coco(image_id, category_id)


def results_to_coco(results: Sequence[PoseResult], image_ids: Sequence[int], category_id: int = 1
                    ) -> list[dict]:
    """Records for a list of per-image results, `image_ids[i]` being the id of `results[i]`."""
    if len(results) != len(image_ids):
        raise EvaluationError(f"got {len(results)} results but {len(image_ids)} image ids")
    out: list[dict] = []
    for r, img_id in zip(results, image_ids):
        out.extend(pose_result_to_coco(r, img_id, category_id))
    return out


# ---------------------------------------------------------------------------------------------
# Loading and validating inputs
# ---------------------------------------------------------------------------------------------


def _read_json(path: str | os.PathLike, what: str) -> Any:
    p = Path(path)
    if p.is_dir():
        raise EvaluationError(f"{what} {p}: is a folder, not a JSON file")
    if not p.is_file():
        raise EvaluationError(f"{what} {p}: no such file")
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and ints over Python's digit limit
        raise EvaluationError(f"{what} {p}: not valid JSON ({' '.join(str(e).split())[:200]})") from None
    except RecursionError:
        raise EvaluationError(f"{what} {p}: JSON nested too deeply to be a COCO file") from None
    except OSError as e:
        raise EvaluationError(f"{what} {p}: cannot be read ({e.strerror or e})") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def load_annotations(ann: AnnSource) -> dict:
    """A COCO keypoint annotation file (or its dict), checked; returns a deep copy safe to modify."""
    name = "annotation file" + ("" if isinstance(ann, dict) else f" {ann}")
    data = copy.deepcopy(ann) if isinstance(ann, dict) else _read_json(ann, "annotation file")
    if not isinstance(data, dict):
        raise EvaluationError(f"{name}: expected a JSON object with 'images' and 'annotations'")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise EvaluationError(f"{name}: missing or malformed '{key}' list")
    if not data["images"]:
        raise EvaluationError(f"{name}: no images")
    img_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise EvaluationError(f"{name}: images[{i}] has no integer 'id'")
        if img["id"] in img_ids:
            raise EvaluationError(f"{name}: images[{i}] repeats image id {img['id']}")
        img_ids.add(img["id"])
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        # COCO's API needs categories; a keypoint file without them is still unambiguous (one class)
        cat_ids = sorted({a.get("category_id", 1) for a in data["annotations"] if isinstance(a, dict)}) or [1]
        data["categories"] = [{"id": c, "name": "person"} for c in cat_ids]
    num_kpts = None
    cat_ids = set()
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or not _is_int(c.get("id")):
            raise EvaluationError(f"{name}: categories[{i}] has no integer 'id'")
        cat_ids.add(c["id"])
        if isinstance(c.get("keypoints"), list):
            num_kpts = len(c["keypoints"])
    ann_ids: dict[Any, int] = {}
    for i, a in enumerate(data["annotations"]):
        where = f"{name}: annotations[{i}]"
        if not isinstance(a, dict):
            raise EvaluationError(f"{where} is not an object")
        for key in ("image_id", "keypoints", "bbox"):
            if key not in a:
                raise EvaluationError(f"{where} has no '{key}'")
        if a["image_id"] not in img_ids:
            raise EvaluationError(f"{where} refers to image id {a['image_id']} not in 'images'")
        kp = a["keypoints"]
        if not isinstance(kp, list) or len(kp) % 3 or not all(_is_number(v) for v in kp):
            raise EvaluationError(f"{where}: 'keypoints' must be a flat list of x, y, v triples")
        if num_kpts is None:
            num_kpts = len(kp) // 3
        if len(kp) != 3 * num_kpts:
            raise EvaluationError(f"{where}: {len(kp) // 3} keypoints, expected {num_kpts}")
        bb = a["bbox"]
        if not isinstance(bb, list) or len(bb) != 4 or not all(_is_number(v) for v in bb):
            raise EvaluationError(f"{where}: 'bbox' must be [x, y, w, h]")
        if bb[2] < 0 or bb[3] < 0:
            raise EvaluationError(f"{where}: 'bbox' has a negative width or height ({bb[2]:g} x {bb[3]:g})")
        if "area" in a and not (_is_number(a["area"]) and a["area"] >= 0):
            raise EvaluationError(f"{where}: 'area' must be a finite number >= 0, got {a['area']!r}")
        # pycocotools indexes by these: a wrong type or a repeat silently corrupts the matching
        if "id" in a:
            if not _is_int(a["id"]):
                raise EvaluationError(f"{where}: 'id' must be an integer, got {a['id']!r}")
            if a["id"] in ann_ids:
                raise EvaluationError(f"{where} repeats annotation id {a['id']} (also annotations"
                                      f"[{ann_ids[a['id']]}])")
            ann_ids[a["id"]] = i
        if "iscrowd" in a and (isinstance(a["iscrowd"], str) or a["iscrowd"] not in (0, 1)):
            raise EvaluationError(f"{where}: 'iscrowd' must be 0 or 1, got {a['iscrowd']!r}")
        if "category_id" in a and a["category_id"] not in cat_ids:
            raise EvaluationError(f"{where}: category_id {a['category_id']!r} is not in 'categories'")
        if "num_keypoints" in a and not (_is_int(a["num_keypoints"]) and a["num_keypoints"] >= 0):
            raise EvaluationError(f"{where}: 'num_keypoints' must be an integer >= 0, "
                                  f"got {a['num_keypoints']!r}")
        a.setdefault("category_id", 1)
        a.setdefault("iscrowd", 0)
    next_id = max((v for v in ann_ids), default=0) + 1
    for a in data["annotations"]:  # ids for annotations without one, never reusing a given id
        if "id" not in a:
            a["id"], next_id = next_id, next_id + 1
    if num_kpts is None:
        raise EvaluationError(f"{name}: cannot tell the number of keypoints (no categories[].keypoints "
                              "and no annotations)")
    data["_num_keypoints"] = num_kpts
    return data


def load_results(results: ResultsSource, gt: dict) -> list[dict]:
    """COCO keypoint-results records (file or list), checked against the annotations; a deep copy."""
    name = "results" + ("" if isinstance(results, (list, tuple)) else f" file {results}")
    if isinstance(results, (str, os.PathLike)):
        recs = _read_json(results, "results file")
    else:
        recs = copy.deepcopy(list(results))
    if not isinstance(recs, list):
        raise EvaluationError(f"{name}: expected a JSON list of result records")
    img_ids = {img["id"] for img in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    k = gt["_num_keypoints"]
    with_bbox = bool(recs) and isinstance(recs[0], dict) and "bbox" in recs[0]
    for i, r in enumerate(recs):
        where = f"{name}: record {i}"
        if not isinstance(r, dict):
            raise EvaluationError(f"{where} is not an object")
        for key in ("image_id", "keypoints", "score"):
            if key not in r:
                raise EvaluationError(f"{where} has no '{key}'")
        if r["image_id"] not in img_ids:
            raise EvaluationError(f"{where} refers to image id {r['image_id']!r}, which is not in the "
                                  "annotation file")
        r.setdefault("category_id", 1)
        if r["category_id"] not in cat_ids:
            raise EvaluationError(f"{where} has category_id {r['category_id']!r}, not in the annotation file")
        kp = r["keypoints"]
        if not isinstance(kp, list) or len(kp) != 3 * k or not all(_is_number(v) for v in kp):
            raise EvaluationError(f"{where}: 'keypoints' must be {3 * k} finite numbers (x, y, score) * {k}")
        if not _is_number(r["score"]):
            raise EvaluationError(f"{where}: 'score' must be a finite number")
        # loadRes picks the box branch from the first record, so all records must agree
        if with_bbox != ("bbox" in r):
            raise EvaluationError(f"{where}: either every record has a 'bbox' or none does")
        if with_bbox and (not isinstance(r["bbox"], list) or len(r["bbox"]) != 4
                          or not all(_is_number(v) for v in r["bbox"])):
            raise EvaluationError(f"{where}: 'bbox' must be [x, y, w, h]")
    return recs


# ---------------------------------------------------------------------------------------------
# COCOeval plumbing
# ---------------------------------------------------------------------------------------------


def _sigmas(gt: dict, sigmas: Sequence[float] | None) -> np.ndarray:
    k = gt["_num_keypoints"]
    s = np.asarray(keypoint_info_for(k).sigmas if sigmas is None else sigmas, dtype=np.float64)
    if s.shape != (k,):
        raise EvaluationError(f"{len(s)} keypoint sigmas given for a {k}-keypoint annotation file")
    return s


def _make_eval(gt: dict, dets: list[dict], sigmas: np.ndarray):
    """pycocotools COCOeval on already-prepared GT/detections, with its printing silenced."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {k: v for k, v in gt.items() if not k.startswith("_")}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # loadRes cannot take an empty list; an empty detection set is still a valid answer
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(gt["images"]), "categories": copy.deepcopy(gt["categories"]),
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
    ev.params.kpt_oks_sigmas = sigmas
    return ev


def _run(ev) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats, dtype=np.float64)


def _keep_scored(dets: list[dict]) -> list[dict]:
    # xtcocotools skips detections without a single positive keypoint score
    return [d for d in dets if any(v > 0 for v in d["keypoints"][2::3])]


def evaluate_coco(ann_file: AnnSource, results: ResultsSource, sigmas: Sequence[float] | None = None
                  ) -> dict[str, float]:
    """COCO keypoint AP/AR (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl).

    `results`: a results JSON file or a list of records (see `results_to_coco`). `sigmas` default to
    the built-in ones for the annotation file's keypoint count (17 -> COCO, 14 -> CrowdPose).
    Metrics with no ground truth in their range are -1, as in pycocotools.
    """
    gt = load_annotations(ann_file)
    dets = _keep_scored(load_results(results, gt))
    for i, a in enumerate(gt["annotations"]):
        if not _is_number(a.get("area")):
            raise EvaluationError(f"annotation file: annotations[{i}] has no 'area'; the COCO protocol "
                                  "needs it (use protocol='crowdpose' for files without areas)")
        # xtcocotools counts labelled keypoints itself instead of trusting `num_keypoints`
        a["num_keypoints"] = int(np.count_nonzero(np.asarray(a["keypoints"][2::3]) > 0))
    stats = _run(_make_eval(gt, dets, _sigmas(gt, sigmas)))
    return dict(zip(COCO_METRICS, (float(v) for v in stats)))


def crowd_splits(gt: dict) -> tuple[list[int], list[int], list[int]]:
    """Image ids of the easy / medium / hard CrowdPose subsets (by the images' `crowdIndex`)."""
    easy, medium, hard = [], [], []
    lo, hi = CROWD_INDEX_SPLITS
    for img in gt["images"]:
        ci = img.get("crowdIndex")
        if not _is_number(ci):
            raise EvaluationError(f"annotation file: image {img['id']} has no numeric 'crowdIndex' "
                                  "(needed by the CrowdPose protocol)")
        (easy if ci < lo else medium if ci < hi else hard).append(img["id"])
    return easy, medium, hard


def evaluate_crowdpose(ann_file: AnnSource, results: ResultsSource, sigmas: Sequence[float] | None = None
                       ) -> dict[str, float]:
    """CrowdPose AP/AR (AP, AP50, AP75, AR, AR50, AR75, AP(E), AP(M), AP(H)), xtcocotools' protocol."""
    gt = load_annotations(ann_file)
    dets = _keep_scored(load_results(results, gt))
    splits = crowd_splits(gt)
    for a in gt["annotations"]:
        w, h = a["bbox"][2], a["bbox"][3]
        a["area"] = w * h * BOX_AREA_FACTOR
        if not isinstance(a.get("num_keypoints"), int):
            # CrowdPose files carry it (visible joints only); fall back to the labelled-joint count
            a["num_keypoints"] = int(np.count_nonzero(np.asarray(a["keypoints"][2::3]) > 0))
    ev = _make_eval(gt, dets, _sigmas(gt, sigmas))
    stats = _run(ev)
    out = dict(zip(CROWDPOSE_METRICS[:6], (float(stats[i]) for i in (0, 1, 2, 5, 6, 7))))
    for name, ids in zip(CROWDPOSE_METRICS[6:], splits):
        if not ids:
            out[name] = -1.0  # xtcocotools: an empty subset leaves the precision array at -1
            continue
        ev.params.imgIds = ids
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
        out[name] = float(round(float(np.mean(ev.eval["precision"][:, :, :, 0, :])), 4))
    return out


def evaluate(ann_file: AnnSource, results: ResultsSource, protocol: str = "coco",
             sigmas: Sequence[float] | None = None) -> dict[str, float]:
    """`evaluate_coco` or `evaluate_crowdpose` by name."""
    if protocol == "coco":
        return evaluate_coco(ann_file, results, sigmas)
    if protocol == "crowdpose":
        return evaluate_crowdpose(ann_file, results, sigmas)
    raise EvaluationError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


# ---------------------------------------------------------------------------------------------
# Model evaluation
# ---------------------------------------------------------------------------------------------


def predict_dataset(model: Any, images_dir: str | os.PathLike, ann_file: AnnSource, batch_size: int = 8,
                    category_id: int = 1, shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """Run `model.infer` on every image of the annotation file; returns COCO results records.

    Uses the model's configured thresholds (score 0.1, NMS 0.65: mmpose's test_step settings).
    `shard=(rank, world)` predicts only every world-th image from rank (distributed evaluation).
    """
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")
    gt = load_annotations(ann_file)
    root = Path(images_dir)
    if not root.is_dir():
        raise EvaluationError(f"images directory {root}: no such directory")
    items = []
    for img in gt["images"]:
        if "file_name" not in img:
            raise EvaluationError(f"annotation file: image {img['id']} has no 'file_name'")
        p = root / img["file_name"]
        if not p.is_file():
            raise EvaluationError(f"image {img['id']}: {p} not found")
        items.append((img["id"], str(p)))
    rank, world = shard
    items = items[rank::world]
    records: list[dict] = []
    # validation may be called from a training loop: predict in eval mode, then restore the mode
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            results = model.infer([p for _, p in chunk])
            records.extend(results_to_coco(results, [i for i, _ in chunk], category_id))
    finally:
        if was_training:
            model.train()
    return records


def evaluate_model(model: Any, images_dir: str | os.PathLike, ann_file: AnnSource, protocol: str = "coco",
                   batch_size: int = 8, results_file: str | os.PathLike | None = None) -> dict[str, float]:
    """Predict every annotated image with `model` and score the predictions with `protocol`.

    Under torch.distributed (e.g. torchrun) every rank must call it: each predicts its shard of the
    images, rank 0 gathers the records and scores them, and every rank returns rank 0's metrics.
    `results_file`, when given, receives the COCO results JSON (written atomically, by rank 0).
    """
    from ..utils import dist as du

    if protocol not in PROTOCOLS:
        raise EvaluationError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    gt = load_annotations(ann_file)
    sigmas = getattr(getattr(model, "keypoint_info", None), "sigmas", None)
    if sigmas is not None and len(sigmas) != gt["_num_keypoints"]:
        raise EvaluationError(f"model predicts {len(sigmas)} keypoints, the annotation file has "
                              f"{gt['_num_keypoints']}")
    records = predict_dataset(model, images_dir, gt, batch_size, shard=(du.get_rank(), du.world_size()))
    parts = du.gather_objects(records)
    metrics: Any = None
    if parts is not None:
        records = [r for part in parts for r in part]
        if results_file is not None:
            _write_json_atomic(results_file, records)
        # Rank 0 scores; a failure there is handed to every rank, so all raise the same error together
        # instead of the others waiting forever for the metrics.
        try:
            bad = sum(not all(math.isfinite(v) for v in (*r["keypoints"], r["score"], *r.get("bbox", ())))
                      for r in records)
            if bad:
                raise EvaluationError(f"{bad} of {len(records)} predictions hold NaN or infinite values (the "
                                      "weights have diverged?): AP is not computable")
            metrics = evaluate(gt, records, protocol, sigmas)
        except EvaluationError as e:
            metrics = {"__error__": str(e)}
    metrics = du.broadcast_object(metrics)
    if "__error__" in metrics:
        raise EvaluationError(metrics["__error__"])
    return metrics


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def format_metrics(metrics: dict[str, float], title: str | None = None) -> str:
    """A two-row text table: metric names, then values (3 decimals; -1 = no ground truth)."""
    names = list(metrics)
    cells = [f"{metrics[n]:.3f}" for n in names]
    widths = [max(len(n), len(c)) for n, c in zip(names, cells)]
    head = " | ".join(n.rjust(w) for n, w in zip(names, widths))
    row = " | ".join(c.rjust(w) for c, w in zip(cells, widths))
    lines = ([title] if title else []) + [head, "-" * len(head), row]
    return "\n".join(lines)


def _write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    p = Path(path)
    try:  # readers never see a half-written file; a full or read-only disk is one line
        atomic_write_text(p, json.dumps(obj, indent=2) + "\n")
    except OSError as e:
        raise EvaluationError(f"{p}: cannot write ({e.strerror or e})") from None


def write_metrics(path: str | os.PathLike, metrics: dict[str, float]) -> None:
    """Write metrics as JSON, atomically (temp file + rename)."""
    _write_json_atomic(path, {k: float(v) for k, v in metrics.items()})


def run_val(ann: str | os.PathLike, results: str | os.PathLike | None = None, model: Any = None,
            images: str | os.PathLike | None = None, protocol: str = "coco",
            output: str | os.PathLike | None = None, batch_size: int = 8) -> dict[str, float]:
    """Entry point for `rtmo val`: score a results file, or a model (an RTMO, a zoo name or a path)
    on `images`; prints the table, writes `output` (JSON) when given, returns the metrics."""
    if (results is None) == (model is None):
        raise EvaluationError("give exactly one of a results file or a model")
    if output is not None:  # before a long evaluation, not after it
        from ..infer.writers import check_output_file

        check_output_file(output, "metrics file")
    if results is not None:
        metrics = evaluate(ann, results, protocol)
    else:
        if images is None:
            raise EvaluationError("evaluating a model needs the images directory")
        if isinstance(model, (str, os.PathLike)):
            from ..hub.zoo import ModelManager

            model = ModelManager.get(model)
        metrics = evaluate_model(model, images, ann, protocol, batch_size)
    print(format_metrics(metrics, title=f"{protocol} keypoint evaluation: {ann}"))
    if output is not None:
        write_metrics(output, metrics)
    return metrics
