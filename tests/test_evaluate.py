"""Evaluation: COCO keypoint AP against pycocotools run directly, CrowdPose AP(E/M/H) against
xtcocotools' numbers and a hand-computed case, input errors, reporting helpers."""

from __future__ import annotations

import copy
import io
import json
import math
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from rtmo.config import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS
from rtmo.eval.coco import (
    COCO_METRICS,
    CROWDPOSE_METRICS,
    EvaluationError,
    evaluate,
    evaluate_coco,
    evaluate_crowdpose,
    evaluate_model,
    format_metrics,
    pose_result_to_coco,
    results_to_coco,
    run_val,
    write_metrics,
)
from rtmo.infer.results import PoseResult

from .conftest import DATA

COCO_ANN = DATA / "coco" / "test_coco.json"
CROWD_ANN = DATA / "crowdpose" / "test_crowdpose.json"


def _load(path: Path) -> dict:
    if not path.is_file():
        pytest.skip(f"test data not found at {path}")
    return json.loads(path.read_text())


def gt_as_predictions(gt: dict) -> list[dict]:
    """One perfect detection per GT person that the protocols score (labelled, not crowd)."""
    recs = []
    for a in gt["annotations"]:
        if a["num_keypoints"] == 0 or a["iscrowd"]:
            continue
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        kp[:, 2] = 1.0
        recs.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.ravel().tolist(),
                     "score": 1.0, "bbox": list(a["bbox"])})
    return recs


def perturbed_predictions(gt: dict) -> list[dict]:
    """Deterministic (RNG-free, so the same on every numpy) noisy predictions: each person shifted by
    a different amount, one person missed, one false positive, ranked by a non-monotonic score."""
    recs = []
    for i, a in enumerate(gt["annotations"]):
        if i % 5 == 3:
            continue  # missed person
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        j = np.arange(len(kp))
        amp = 1.0 + 4.0 * (i % 4)  # 1..13 px
        kp[:, 0] += amp * np.sin(1.7 * i + 0.9 * j)
        kp[:, 1] += amp * np.cos(0.7 * i + 1.3 * j)
        kp[:, 2] = 0.5 + 0.4 * np.sin(i + j)
        x, y, w, h = a["bbox"]
        recs.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.round(3).ravel().tolist(),
                     "score": round(0.3 + 0.6 * abs(math.sin(2.3 * i)), 4), "bbox": [x + 2, y - 1, w, h]})
    first = gt["annotations"][0]
    fp = np.asarray(first["keypoints"], dtype=np.float64).reshape(-1, 3)
    fp[:, :2] += 60.0
    fp[:, 2] = 0.9
    recs.append({"image_id": first["image_id"], "category_id": 1, "keypoints": fp.ravel().tolist(),
                 "score": 0.95, "bbox": [0.0, 0.0, 50.0, 80.0]})
    return recs


def crowd_with_splits(gt: dict) -> dict:
    """The two CrowdPose test images (both 'medium') repeated with crowdIndex in every subset."""
    out = {"categories": gt["categories"], "images": [], "annotations": []}
    for c, ci in enumerate((0.05, 0.5, 0.9)):
        for im in gt["images"]:
            new_id = im["id"] * 10 + c
            out["images"].append({**im, "id": new_id, "crowdIndex": ci})
            out["annotations"] += [{**a, "image_id": new_id, "id": a["id"] * 10 + c}
                                   for a in gt["annotations"] if a["image_id"] == im["id"]]
    return out


# ---------------------------------------------------------------------------------------------
# COCO protocol
# ---------------------------------------------------------------------------------------------


def test_coco_gt_as_predictions_is_perfect():
    gt = _load(COCO_ANN)
    m = evaluate_coco(COCO_ANN, gt_as_predictions(gt))
    assert list(m) == list(COCO_METRICS)
    assert m == {k: 1.0 for k in COCO_METRICS}


def test_coco_perturbed_equals_direct_pycocotools():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _load(COCO_ANN)
    recs = perturbed_predictions(gt)
    ours = evaluate_coco(COCO_ANN, recs)
    with redirect_stdout(io.StringIO()):
        coco = COCO(str(COCO_ANN))
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(recs)), "keypoints")
        ev.params.kpt_oks_sigmas = np.array(COCO_KEYPOINTS.sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # same library, same inputs: the numbers must be identical, not merely close
    assert [ours[k] for k in COCO_METRICS] == [float(v) for v in ev.stats]
    assert 0.2 < ours["AP"] < 0.9  # a non-trivial case: some matches at some thresholds only
    assert evaluate(COCO_ANN, recs, protocol="coco") == ours


def test_coco_empty_results_give_zero_not_crash():
    m = evaluate_coco(COCO_ANN if COCO_ANN.is_file() else _load(COCO_ANN), [])
    assert m == {k: 0.0 for k in COCO_METRICS}


# ---------------------------------------------------------------------------------------------
# CrowdPose protocol
# ---------------------------------------------------------------------------------------------


def test_crowdpose_gt_as_predictions_is_perfect():
    gt = _load(CROWD_ANN)
    m = evaluate_crowdpose(CROWD_ANN, gt_as_predictions(gt))
    # both test images have crowdIndex 0.33/0.39 -> 'medium'; empty subsets are -1 as in xtcocotools
    assert m == {**{k: 1.0 for k in CROWDPOSE_METRICS}, "AP(E)": -1.0, "AP(H)": -1.0}
    split = crowd_with_splits(gt)
    assert evaluate_crowdpose(split, gt_as_predictions(split)) == {k: 1.0 for k in CROWDPOSE_METRICS}


# xtcocotools 1.14.3 (built from source against numpy 2; mmpose's CocoMetric with iou_type=
# 'keypoints_crowd', use_area=False, CrowdPose sigmas) on crowd_with_splits + perturbed_predictions.
# Produced with the worker in bench/eval_check.py; bench/eval_check.py repeats the comparison on 120
# random cases (all identical to the last bit).
XTCOCOTOOLS_CROWD = {"AP": 0.5143475886050144, "AP50": 0.5441390292875442, "AP75": 0.5441390292875442,
                     "AR": 0.725, "AR50": 0.75, "AR75": 0.75,
                     "AP(E)": 0.4515, "AP(M)": 0.6081, "AP(H)": 0.6865}


def test_crowdpose_perturbed_equals_xtcocotools():
    split = crowd_with_splits(_load(CROWD_ANN))
    ours = evaluate_crowdpose(split, perturbed_predictions(split))
    assert list(ours) == list(CROWDPOSE_METRICS)
    for k, v in XTCOCOTOOLS_CROWD.items():
        assert ours[k] == pytest.approx(v, abs=1e-12), k  # 1e-12: float summation order only


def _hand_case() -> tuple[dict, list[dict], float]:
    """Three images (easy / medium / hard), one person each with a single labelled keypoint 0."""
    cat = {"id": 1, "name": "person", "keypoints": list(CROWDPOSE_KEYPOINTS.names)}
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480, "crowdIndex": ci}
              for i, ci in ((1, 0.1), (2, 0.5), (3, 0.9))]
    anns = []
    for i in (1, 2, 3):
        kp = [0.0] * 42
        kp[0:3] = [100.0, 100.0, 2]
        anns.append({"id": 10 + i, "image_id": i, "category_id": 1, "iscrowd": 0, "num_keypoints": 1,
                     "keypoints": kp, "bbox": [50.0, 50.0, 100.0, 200.0]})
    gt = {"images": images, "annotations": anns, "categories": [cat]}
    # use_area=False: area = 0.53 * w * h; OKS of one keypoint = exp(-d^2 / (2 * area * (2 sigma)^2))
    area, sigma = 0.53 * 100.0 * 200.0, CROWDPOSE_KEYPOINTS.sigmas[0]
    d = math.sqrt(-math.log(0.72) * 2 * area * (2 * sigma) ** 2)  # medium detection: OKS 0.72

    def det(img: int, dx: float, score: float) -> dict:
        kp = [120.0, 300.0, 0.5] * 14  # unlabelled GT joints: never looked at
        kp[0:3] = [100.0 + dx, 100.0, 0.9]
        return {"image_id": img, "category_id": 1, "keypoints": kp, "score": score,
                "bbox": [50.0, 50.0, 100.0, 200.0]}

    return gt, [det(1, 0.0, 0.9), det(2, d, 0.8)], sigma  # hard image: person missed


def test_crowdpose_hand_computed_case():
    gt, dets, _ = _hand_case()
    m = evaluate_crowdpose(gt, dets)
    # Easy: OKS 1 -> matched at every threshold -> AP(E) = 1. Medium: OKS 0.72 matches at thresholds
    # 0.50..0.70 (5 of 10), precision 1 at every recall level -> AP(M) = 0.5. Hard: no detection -> 0.
    # Pooled (3 GT): at t <= 0.70 both detections are TPs -> recall 2/3, precision 1 on recall
    # thresholds 0.00..0.66 (67 of 101); at t > 0.70 the easy one (score 0.9, ranked first) is a TP,
    # the medium one an FP -> precision 1 on 0.00..0.33 (34 of 101).
    assert m["AP(E)"] == 1.0 and m["AP(M)"] == 0.5 and m["AP(H)"] == 0.0
    assert m["AP"] == pytest.approx((5 * 67 + 5 * 34) / 1010, abs=1e-12)
    assert m["AP50"] == pytest.approx(67 / 101, abs=1e-12)
    assert m["AP75"] == pytest.approx(34 / 101, abs=1e-12)
    assert m["AR"] == pytest.approx((5 * 2 / 3 + 5 * 1 / 3) / 10, abs=1e-12)
    assert m["AR50"] == pytest.approx(2 / 3, abs=1e-12) and m["AR75"] == pytest.approx(1 / 3, abs=1e-12)


def test_detections_without_positive_keypoint_scores_are_dropped():
    # xtcocotools skips them before matching; kept, this top-scored stray one would be a false positive
    gt, dets, _ = _hand_case()
    stray = {**dets[0], "image_id": 2, "score": 0.99, "keypoints": [300.0, 400.0, 0.0] * 14}
    assert evaluate_crowdpose(gt, dets + [stray]) == evaluate_crowdpose(gt, dets)
    assert evaluate_crowdpose(gt, dets + [{**stray, "keypoints": [300.0, 400.0, 0.1] * 14}])["AP"] < 0.5


def test_crowdpose_uses_14_keypoint_sigmas():
    gt, dets, sigma = _hand_case()
    assert sigma == 0.079  # CrowdPose keypoint 0 (left shoulder), not COCO's 0.026 (nose)
    # with sigmas 1.3x wider the medium OKS is 0.72 ** (1 / 1.69) = 0.823 -> thresholds 0.50..0.80
    wider = evaluate_crowdpose(gt, dets, sigmas=[s * 1.3 for s in CROWDPOSE_KEYPOINTS.sigmas])
    assert wider["AP(M)"] == 0.7
    with pytest.raises(EvaluationError, match="17 keypoint sigmas given for a 14-keypoint"):
        evaluate_crowdpose(gt, dets, sigmas=COCO_KEYPOINTS.sigmas)


def test_crowd_ignore_rule_follows_num_keypoints():
    # CrowdPose's num_keypoints counts only visible joints: a person with labelled (v=1) joints but
    # num_keypoints 0 is ignored by the crowd protocol, while the COCO protocol counts labels itself.
    gt, dets, _ = _hand_case()
    for a in gt["annotations"]:
        a["area"] = 0.53 * a["bbox"][2] * a["bbox"][3]
    gt["annotations"][2]["num_keypoints"] = 0  # the missed 'hard' person
    crowd = evaluate_crowdpose(gt, dets)
    assert crowd["AP(H)"] == -1.0  # no scored GT left in the hard subset
    assert crowd["AR50"] == 1.0  # 2 of 2 scored persons found at OKS 0.5
    assert evaluate_coco(gt, dets)["AR50"] == pytest.approx(2 / 3, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# PoseResult conversion, model evaluation, reporting
# ---------------------------------------------------------------------------------------------


def _results_from_gt(gt: dict, kinfo) -> dict[int, PoseResult]:
    by_img: dict[int, PoseResult] = {}
    for im in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == im["id"] and a["num_keypoints"] > 0]
        kp = np.array([a["keypoints"] for a in anns], dtype=np.float32).reshape(len(anns), -1, 3)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
        by_img[im["id"]] = PoseResult(
            boxes=boxes.reshape(-1, 4), scores=np.linspace(0.9, 0.5, len(anns), dtype=np.float32),
            class_ids=np.zeros(len(anns), np.int64), keypoints=kp[..., :2],
            keypoint_scores=np.full(kp.shape[:2], 0.8, np.float32), image_shape=(im["height"], im["width"]),
            keypoint_info=kinfo)
    return by_img


def test_pose_result_records():
    r = PoseResult(boxes=np.array([[10, 20, 40, 80]], np.float32), scores=np.array([0.7], np.float32),
                   class_ids=np.zeros(1, np.int64),
                   keypoints=np.arange(34, dtype=np.float32).reshape(1, 17, 2),
                   keypoint_scores=np.full((1, 17), 0.25, np.float32), image_shape=(100, 100),
                   keypoint_info=COCO_KEYPOINTS)
    (rec,) = pose_result_to_coco(r, image_id=42)
    assert rec["image_id"] == 42 and rec["category_id"] == 1
    assert rec["bbox"] == [10.0, 20.0, 30.0, 60.0]  # xyxy -> xywh
    assert rec["score"] == pytest.approx(0.7)  # score_mode='bbox': the instance score is the box score
    assert rec["keypoints"][:6] == [0.0, 1.0, 0.25, 2.0, 3.0, 0.25] and len(rec["keypoints"]) == 51
    empty = r.select(np.zeros(1, bool))
    assert pose_result_to_coco(empty, 1) == []
    with pytest.raises(EvaluationError, match="2 results but 1 image ids"):
        results_to_coco([r, r], [1])


class _OracleModel:
    """Stands in for RTMO: returns the GT people of each image, found by file name."""

    def __init__(self, gt: dict, kinfo):
        self.keypoint_info = kinfo
        results = _results_from_gt(gt, kinfo)
        self.by_name = {im["file_name"]: results[im["id"]] for im in gt["images"]}
        self.calls: list[int] = []
        self.training = True
        self.modes: list[bool] = []

    def eval(self):
        self.training = False

    def train(self, mode: bool = True):
        self.training = mode

    def infer(self, paths):
        self.calls.append(len(paths))
        self.modes.append(self.training)
        return [self.by_name[Path(p).name] for p in paths]


def test_evaluate_model_and_run_val(tmp_path, capsys):
    gt = _load(COCO_ANN)
    model = _OracleModel(gt, COCO_KEYPOINTS)
    res_file = tmp_path / "res.json"
    m = evaluate_model(model, COCO_ANN.parent, COCO_ANN, "coco", batch_size=3, results_file=res_file)
    assert model.calls == [3, 1]  # 4 images in batches of 3
    assert model.modes == [False, False] and model.training  # predicted in eval mode, mode restored
    assert m == {k: 1.0 for k in COCO_METRICS}
    out = tmp_path / "sub" / "metrics.json"
    again = run_val(COCO_ANN, results=res_file, output=out)
    assert again == m and json.loads(out.read_text()) == m
    printed = capsys.readouterr().out
    assert "AP50" in printed and "1.000" in printed
    with pytest.raises(EvaluationError, match="exactly one of"):
        run_val(COCO_ANN)
    with pytest.raises(EvaluationError, match="not found"):
        evaluate_model(model, tmp_path, COCO_ANN)


def test_format_and_write_metrics(tmp_path, monkeypatch):
    m = {"AP": 0.5, "AP(E)": -1.0}
    text = format_metrics(m, title="t")
    assert text.splitlines()[0] == "t" and "0.500" in text and "-1.000" in text
    p = tmp_path / "m.json"
    write_metrics(p, m)
    assert json.loads(p.read_text()) == m

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(EvaluationError, match=r"m\.json: cannot write \(disk full\)"):  # one line, the path
        write_metrics(p, {"AP": 0.9})
    assert json.loads(p.read_text()) == m  # the old file is untouched
    assert [q.name for q in tmp_path.iterdir()] == ["m.json"]  # and no temp file is left behind


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_annotation_files(tmp_path):
    with pytest.raises(EvaluationError, match="no such file"):
        evaluate_coco(tmp_path / "missing.json", [])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EvaluationError, match="not valid JSON"):
        evaluate_coco(bad, [])
    bad.write_text(json.dumps({"images": [{"id": 1}]}))
    with pytest.raises(EvaluationError, match="'annotations'"):
        evaluate_coco(bad, [])
    gt, dets, _ = _hand_case()
    with pytest.raises(EvaluationError, match="has no 'area'"):
        evaluate_coco(gt, dets)  # CrowdPose-style file under the COCO protocol
    no_ci = copy.deepcopy(gt)
    del no_ci["images"][0]["crowdIndex"]
    with pytest.raises(EvaluationError, match="crowdIndex"):
        evaluate_crowdpose(no_ci, dets)
    with pytest.raises(EvaluationError, match="protocol must be one of"):
        evaluate(gt, dets, protocol="mpii")


def test_bad_results(tmp_path):
    gt, dets, _ = _hand_case()
    with pytest.raises(EvaluationError, match="image id 999"):
        evaluate_crowdpose(gt, [{**dets[0], "image_id": 999}])
    with pytest.raises(EvaluationError, match="42 finite numbers"):
        evaluate_crowdpose(gt, [{**dets[0], "keypoints": dets[0]["keypoints"][:-3]}])
    with pytest.raises(EvaluationError, match="no 'score'"):
        evaluate_crowdpose(gt, [{k: v for k, v in dets[0].items() if k != "score"}])
    with pytest.raises(EvaluationError, match="every record has a 'bbox' or none"):
        evaluate_crowdpose(gt, [dets[0], {k: v for k, v in dets[1].items() if k != "bbox"}])
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(EvaluationError, match="expected a JSON list"):
        evaluate_crowdpose(gt, res)
    with pytest.raises(EvaluationError, match="results file .*no such file"):
        evaluate_crowdpose(gt, tmp_path / "nope.json")
    # empty results: zeros where there is ground truth
    assert evaluate_crowdpose(gt, [])["AP"] == 0.0


class _ShiftedOracle(_OracleModel):
    """GT people, with the keypoints of every other image shifted by 6 px: AP strictly between 0 and 1, and
    different when any image is left out."""

    def __init__(self, gt: dict, kinfo):
        super().__init__(gt, kinfo)
        for i, name in enumerate(sorted(self.by_name)):
            if i % 2:
                r = self.by_name[name]
                self.by_name[name] = PoseResult(
                    boxes=r.boxes, scores=r.scores, class_ids=r.class_ids, keypoints=r.keypoints + 6.0,
                    keypoint_scores=r.keypoint_scores, image_shape=r.image_shape,
                    keypoint_info=r.keypoint_info)
        self.seen: list[str] = []

    def infer(self, paths):
        self.seen += [Path(p).name for p in paths]
        return super().infer(paths)


def _dist_eval_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = _ShiftedOracle(_load(COCO_ANN), COCO_KEYPOINTS)
    res = Path(out_dir) / "results.json"
    m = evaluate_model(model, COCO_ANN.parent, COCO_ANN, "coco", batch_size=1, results_file=res)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"metrics": m, "seen": model.seen}))
    dist.destroy_process_group()


def test_distributed_evaluation_shards_and_gathers(tmp_path):
    """2 Gloo processes: each predicts its half of the images, rank 0 scores all of them, both ranks
    return the single-process metrics, and rank 0 alone writes the complete results file."""
    import socket

    import torch.multiprocessing as mp

    gt = _load(COCO_ANN)
    single = evaluate_model(_ShiftedOracle(gt, COCO_KEYPOINTS), COCO_ANN.parent, COCO_ANN, "coco")
    assert 0.0 < single["AP"] < 1.0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_dist_eval_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["metrics"] == single and r1["metrics"] == single
    assert len(r0["seen"]) == len(r1["seen"]) == 2 and not set(r0["seen"]) & set(r1["seen"])
    records = json.loads((tmp_path / "results.json").read_text())
    assert {r["image_id"] for r in records} == {im["id"] for im in gt["images"]}


def test_rtmo_val_command(tmp_path, capsys):
    """`rtmo val --ann FILE --results FILE --output FILE` as the issue spells it; GT as results -> 1.0;
    the annotation file given twice or not at all is a one-line usage error."""
    from rtmo.cli import main

    gt = _load(COCO_ANN)
    res = tmp_path / "res.json"
    res.write_text(json.dumps(gt_as_predictions(gt)))
    out = tmp_path / "val"  # -o is a run folder (issue 10): metrics.json inside
    assert main(["val", "--ann", str(COCO_ANN), "--results", str(res), "--output", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text()) == {k: 1.0 for k in COCO_METRICS}
    assert "AP50" in capsys.readouterr().out
    assert main(["val", str(COCO_ANN), "--ann", str(COCO_ANN), "--results", str(res)]) == 2
    assert main(["val", "--results", str(res)]) == 2
    assert "annotation file" in capsys.readouterr().err


@pytest.mark.parametrize("change, match", [
    (lambda g: g["annotations"][0].update(area=-5.0), r"\[0\]: 'area' must be a finite number >= 0"),
    (lambda g: g["annotations"][1]["bbox"].__setitem__(2, -3.0), r"annotations\[1\]: 'bbox' has a negative"),
    (lambda g: g["annotations"][1].update(id=g["annotations"][0]["id"]), r"\[1\] repeats annotation"),
    (lambda g: g["annotations"][0].update(iscrowd="no"), r"annotations\[0\]: 'iscrowd' must be 0 or 1"),
    (lambda g: g["images"].append(dict(g["images"][0])), r"repeats image id"),
    (lambda g: g["annotations"][0].update(category_id=7), r"category_id 7 is not in 'categories'"),
])
def test_bad_ground_truth_named_by_file_and_annotation(tmp_path, change, match):
    """Each of these used to give every metric -1 or a wrong AP (duplicate ids: 0.007 for perfect
    results) with exit 0; now one line naming the file and the annotation, exit 2."""
    from rtmo.cli import main

    gt = _load(COCO_ANN)
    preds = gt_as_predictions(gt)
    change(gt)
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))
    with pytest.raises(EvaluationError, match=match):
        evaluate_coco(ann, preds)
    res = tmp_path / "res.json"
    res.write_text(json.dumps(preds))
    assert main(["val", str(ann), "--results", str(res)]) == 2


def test_deeply_nested_json_and_bad_output(tmp_path, capsys):
    from rtmo.cli import main

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(EvaluationError, match="deep.json: JSON nested too deeply"):
        evaluate_coco(deep, [])
    gt = _load(COCO_ANN)
    res = tmp_path / "res.json"
    res.write_text(json.dumps(gt_as_predictions(gt)))
    # -o is a run folder (metrics.json inside): a .json path, or a path below a file, is refused
    assert main(["val", str(COCO_ANN), "--results", str(res), "-o", str(res)]) == 2
    assert "give a folder" in capsys.readouterr().err
    assert main(["val", str(COCO_ANN), "--results", str(res), "-o", str(res / "run")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_nan_predictions_are_one_error_on_every_rank():
    """Diverged weights predict NaN: evaluate_model raises one EvaluationError (rank 0 hands it to every
    rank, so none waits forever), which the trainer records as 'AP not computable'."""
    gt = _load(COCO_ANN)
    model = _OracleModel(gt, COCO_KEYPOINTS)
    name = sorted(model.by_name)[0]
    r = model.by_name[name]
    model.by_name[name] = PoseResult(boxes=r.boxes, scores=r.scores * np.nan, class_ids=r.class_ids,
                                     keypoints=r.keypoints, keypoint_scores=r.keypoint_scores,
                                     image_shape=r.image_shape, keypoint_info=r.keypoint_info)
    with pytest.raises(EvaluationError, match=r"\d+ of \d+ predictions hold NaN or infinite values"):
        evaluate_model(model, COCO_ANN.parent, COCO_ANN)
