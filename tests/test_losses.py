"""SimOTA assignment and RTMO losses against mmpose's own numbers (fixtures made with mmpose 1.3.2).

Tolerances are those of `shared/fixtures/README.md` ("What matching means"): 2-5x what float32 itself costs
according to the float64 re-run of mmpose's code stored in `summary.json`.
Run `python -m tests.test_losses` to print the measured deviations of every run.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from rtmo.config import RTMOConfig, keypoint_info_for
from rtmo.model import RTMO
from rtmo.nn.head import HeadMaps, flatten_maps
from rtmo.ops.oks import keypoint_oks, pairwise_pose_oks, pose_oks
from rtmo.train.assigner import simota_assign
from rtmo.train.losses import Criterion, Targets, compute_losses, head_losses

from .conftest import FIXTURES as FIX
from .train_util import criterion

CKPT = {"s": "rtmo-s_8xb32-600e_coco-640x640_seed0", "t": "rtmo-t_8xb32-600e_body7-416x416_seed0"}
TERMS = ("loss_cls", "loss_bbox", "loss_vis", "loss_oks", "loss_mle", "loss_bbox_aux")
SIGMAS = torch.tensor(keypoint_info_for(17).sigmas)

needs_fixtures = pytest.mark.skipif(not (FIX / "train_rtmo-s_seed0").is_dir(),
                                    reason=f"no shared fixtures at {FIX}")


@functools.cache
def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@functools.cache
def _state(v: str) -> dict[str, torch.Tensor]:
    return torch.load(FIX / CKPT[v] / f"{CKPT[v]}.pth", weights_only=True)["state_dict"]


def _model(v: str, bn: str) -> RTMO:
    torch.set_num_threads(2)
    m = RTMO(RTMOConfig.preset(v))
    m.load_state_dict(_state(v))  # fresh each time: train-mode BatchNorms update running stats
    m.train()
    if bn == "bn-eval":
        for mod in m.modules():
            if isinstance(mod, _BatchNorm):
                mod.eval()
    return m


def _targets(v: str, stage: str) -> list[Targets]:
    b = _npz(FIX / f"train_rtmo-{v}_seed0" / "batch.npz")
    return [Targets(*(torch.from_numpy(b[f"b{i}_{k}"]) for k in ("bboxes", "keypoints", "keypoints_visible",
                                                                   "areas", "labels")),
                    heatmap_mask=torch.from_numpy(b["heatmap_mask"][i]) if stage == "stage3" else None)
            for i in range(4)]


def _cfg(stage: str) -> Criterion:
    """What the RTMO-s COCO recipe trains with in `stage` (the fixtures' settings)."""
    return criterion("s", "coco", int(stage[-1]))


def _rel(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _check_assignment(out: dict, fwd: dict, dev: dict) -> None:
    for i, a in enumerate(out["details"]["assignments"]):
        assert np.array_equal(a.gt_inds.numpy(), fwd[f"a{i}_gt_inds"]), f"image {i}: assignment differs"
        assert np.array_equal(a.dynamic_k.numpy(), fwd[f"a{i}_dynamic_k"]), f"image {i}: dynamic k differs"
        assert np.array_equal(a.cand_idx.numpy(), fwd[f"a{i}_cand_idx"])
        assert np.array_equal(a.in_box_and_center.numpy(), fwd[f"a{i}_in_box_and_center"])
        for key in ("iou", "oks"):
            err = float(np.abs(getattr(a, key).numpy() - fwd[f"a{i}_{key}"]).max())
            dev[key] = max(dev.get(key, 0.0), err)
        cost, ref = a.cost.numpy(), fwd[f"a{i}_cost"]
        small = ref < 1e5
        err = np.abs(cost - ref)
        dev["cost_rel"] = max(dev.get("cost_rel", 0.0), float((err / np.abs(ref))[small].max()))
        dev["cost_abs_inf"] = max(dev.get("cost_abs_inf", 0.0), float(err[~small].max(initial=0)))
    d = out["details"]
    for ours, key in ((d["pos_batch_idx"], "pos_batch_idx"), (d["pos_prior_idx"], "pos_prior_idx"),
                      (d["pos_gt_idx"], "pos_gt_idx")):
        assert np.array_equal(ours.numpy(), fwd[key]), key


def _check_losses(out: dict, run: dict, dev: dict, tol: float) -> None:
    ref = run["losses"]
    assert set(ref) == {k for k in out if k.startswith("loss")}, (sorted(ref), sorted(out))
    for k in ref:
        dev[k] = abs(float(out[k].detach()) - ref[k]) / abs(ref[k])
        assert dev[k] <= tol, f"{k}: {float(out[k])} vs mmpose {ref[k]} (rel {dev[k]:.2e})"
    assert float(out["num_pos"]) == run["num_total_samples"]


def loss_code_only(v: str, bn: str, stage: str) -> dict[str, float]:
    """Stored head maps + stored DCC inputs -> our assignment and losses; returns the deviations."""
    d = FIX / f"train_rtmo-{v}_seed0"
    fwd, st = _npz(d / f"{bn}_forward.npz"), _npz(d / f"{bn}_{stage}.npz")
    run = json.loads((d / "summary.json").read_text())["runs"][f"{bn}/{stage}"]
    model = _model(v, bn)
    leaves = {name: [torch.from_numpy(fwd[f"{name}_l{lv}"]).requires_grad_() for lv in (0, 1)]
              for name in ("cls", "bbox", "kpt_reg", "vis")}
    pose = torch.from_numpy(fwd["pos_pose_vecs"]).requires_grad_()
    maps = HeadMaps(leaves["cls"], leaves["bbox"], leaves["kpt_reg"], leaves["vis"], pose=[])
    out = head_losses(model, maps, _targets(v, stage), _cfg(stage), pos_pose_vecs=pose, return_details=True)
    dev: dict[str, float] = {}
    _check_assignment(out, fwd, dev)
    det = out["details"]
    dev["cls_target"] = float(np.abs(det["cls_target"].numpy() - st["cls_target"]).max())
    dev["cls_weight"] = float(np.abs(det["cls_weight"].numpy() - st["cls_weight"]).max())
    dev["overlaps"] = float(np.abs(out["overlaps"].numpy() - st["overlaps"]).max())
    dev["dcc_kpts_px"] = float(np.abs(det["dcc_kpts"].detach().numpy() - fwd["dcc_kpts"]).max())
    dev["dcc_sigmas"] = float(np.abs(det["dcc_sigmas"].detach().numpy() - fwd["dcc_sigmas"]).max())
    dev["dcc_hm"] = max(float(np.abs(h.detach().numpy() - fwd[f"dcc_hm_{a}"]).max())
                        for h, a in zip(det["dcc_hms"], "xy"))
    dev["dcc_target_hm_rel"] = max(_rel(h, fwd[f"dcc_target_hm_{a}"])
                                   for h, a in zip(det["dcc_target_hms"], "xy"))
    assert dev["cls_target"] <= 3e-5 and dev["overlaps"] <= 3e-5 and dev["cls_weight"] <= 1e-6, dev
    assert dev["dcc_kpts_px"] <= 0.1 and dev["dcc_hm"] <= 5e-3 and dev["dcc_sigmas"] <= 1e-6, dev
    assert dev["dcc_target_hm_rel"] <= 3e-4, dev
    assert dev["iou"] <= 1e-6 and dev["oks"] <= 1e-6, dev
    assert dev["cost_rel"] <= 1e-5 and dev["cost_abs_inf"] <= 0.02, dev
    _check_losses(out, run, dev, 1e-5)

    # Gradients with respect to the head maps, one term at a time.
    pos_b, pos_p = det["pos_batch_idx"], det["pos_prior_idx"]
    tol = {"cls": 1e-5, "vis": 1e-5, "kpt_reg": 1e-5 if stage == "stage1" else 2e-4, "pose": 5e-4,
           "bbox": 1e-2}
    inputs = [t for name in ("cls", "bbox", "kpt_reg", "vis") for t in leaves[name]] + [pose]
    for term in sorted({k.split("__")[1] for k in st if k.startswith("grad_maps__")}):
        grads = torch.autograd.grad(out["loss" if term == "total" else term], inputs, retain_graph=True,
                                    allow_unused=True)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        ours = {"cls": flatten_maps(grads[0:2]).reshape(-1), "pose": grads[8]}
        for j, name in enumerate(("bbox", "kpt_reg", "vis")):
            ours[name] = flatten_maps(grads[2 + 2 * j:4 + 2 * j])[pos_b, pos_p]
        for name, g in ours.items():
            key = f"grad_maps__{term}__{name}" + ("" if name == "cls" else "_pos")
            if key in st:
                dev[key] = _rel(g, st[key])
                assert dev[key] <= tol[name], f"{key}: {dev[key]:.2e} of max"
                if name == "cls":  # exactly 0 where mmpose has no gradient either
                    assert np.array_equal(g.numpy() == 0, st[key] == 0) or term != "loss_cls", key
    return dev


RUNS = [(v, bn, stage) for v in ("s", "t") for bn in ("bn-eval", "bn-train")
        for stage in ("stage1", "stage2", "stage3")]


@needs_fixtures
@pytest.mark.parametrize("v,bn,stage", RUNS)
def test_loss_code_only(v: str, bn: str, stage: str) -> None:
    loss_code_only(v, bn, stage)


@needs_fixtures
@pytest.mark.parametrize("v", ["s", "t"])
def test_simota_stress(v: str) -> None:
    """Predictions close to the GT: dynamic k 4-9, contested priors, both levels positive."""
    d = FIX / f"train_rtmo-{v}_seed0"
    s, targets = _npz(d / "simota_stress.npz"), _targets(v, "stage1")
    pr = torch.from_numpy(s["priors"])
    contested = 0
    for i, t in enumerate(targets):
        a = simota_assign(pr[:, :2], pr[:, 2], torch.from_numpy(s[f"s{i}_pred_bboxes"]),
                          torch.from_numpy(s[f"s{i}_pred_scores"])[:, 0],
                          torch.from_numpy(s[f"s{i}_pred_keypoints"]),
                          t.bboxes, t.keypoints, t.keypoints_visible, t.areas, SIGMAS)
        assert np.array_equal(a.gt_inds.numpy(), s[f"s{i}_gt_inds"]), f"image {i}"
        assert np.array_equal(a.dynamic_k.numpy(), s[f"s{i}_dynamic_k"]), f"image {i}"
        assert np.abs(a.max_overlaps.numpy() - s[f"s{i}_max_overlaps"]).max() <= 1e-6
        assert np.abs(a.cost.numpy() - s[f"s{i}_cost"]).max() <= 0.02
        contested += int(((a.cost < 1e5).sum(1) > 1).sum())
    assert contested > 0  # the conflict rule was exercised


def end_to_end(v: str, bn: str = "bn-train", stage: str = "stage1") -> dict[str, float]:
    """Checkpoint + uint8 batch -> head maps, assignment, losses and the total gradient norm."""
    d = FIX / f"train_rtmo-{v}_seed0"
    fwd = _npz(d / f"{bn}_forward.npz")
    run = json.loads((d / "summary.json").read_text())["runs"][f"{bn}/{stage}"]
    model = _model(v, bn)
    model.criterion = _cfg(stage)
    images = torch.from_numpy(_npz(d / "batch.npz")["inputs_uint8"]).float()
    captured = {}
    forward_maps = model.forward_maps

    def spy(*args, **kwargs):  # keep the maps to compare them with mmpose's
        captured["maps"] = maps = forward_maps(*args, **kwargs)
        return maps

    model.forward_maps = spy
    loss = model(images, _targets(v, stage)).loss  # rtmo.outputs.RTMOLoss
    out = {**loss.as_dict(), "num_pos": loss.num_pos}
    dev: dict[str, float] = {}
    maps = captured["maps"]
    for name in ("cls", "bbox", "kpt_reg", "vis"):
        for lv in (0, 1):
            dev[f"{name}_l{lv}"] = _rel(getattr(maps, name)[lv], fwd[f"{name}_l{lv}"])
            assert dev[f"{name}_l{lv}"] <= 1e-4, dev
    _check_losses(out, run, dev, 1e-4)
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
    dev["grad_total_norm"] = abs(float(norm) - run["grad_total_norm"]) / run["grad_total_norm"]
    assert dev["grad_total_norm"] <= 1e-2, dev
    # Per-parameter gradient norms, skipping those whose exact gradient is ~0 (float32 noise in mmpose too).
    summary = json.loads((d / "summary.json").read_text())
    calib = summary["float64_calibration"]
    calib = calib.get(f"{bn}/{stage}", calib["bn-train/stage1"])
    skip = set(calib["end_to_end"]["grad_params_negligible_in_float64"])
    assert set(grads) == {n for n, v in run["grad_norms"].items() if v is not None}
    rel = np.array([abs(float(grads[n].norm()) - v) / v for n, v in run["grad_norms"].items()
                    if n not in skip and v])
    dev["grad_norm_median"], dev["grad_norm_worst"] = float(np.median(rel)), float(rel.max())
    assert dev["grad_norm_median"] <= 2e-3 and dev["grad_norm_worst"] <= 0.1, dev
    stage_npz = _npz(d / f"{bn}_{stage}.npz")
    for key in (k for k in stage_npz if k.startswith("grad__") and k[6:] not in skip):
        dev[key] = _rel(grads[key[6:]], stage_npz[key])
        assert dev[key] <= 0.1, (key, dev[key])
    # Train-mode BatchNorm running statistics after this forward (DCC's BatchNorm1d saw all P rows).
    params = dict(model.named_buffers())
    for key in (k for k in fwd if k.startswith("bn_after__")):
        dev[key] = _rel(params[key[10:]], fwd[key])
        assert dev[key] <= 1e-4, (key, dev[key])
    return dev


@needs_fixtures
@pytest.mark.parametrize("v,bn,stage", [("t", "bn-train", "stage1"), ("s", "bn-train", "stage1"),
                                        ("t", "bn-eval", "stage3")])
def test_end_to_end(v: str, bn: str, stage: str) -> None:
    end_to_end(v, bn, stage)


# ----------------------------------------------------------------------------------------- hand-made cases
def test_oks_flavours_by_hand() -> None:
    """PoseOKS divides by the visible count, OKSLoss by K: keypoint 0 is off by sqrt(area)*2*sigma (d = 1)."""
    k = 17
    gt = torch.zeros(1, k, 2)
    pred = gt.clone()
    pred[0, 0, 0] = 10.0 * 2 * float(SIGMAS[0])  # area 100 -> sqrt 10 -> d = 1 for keypoint 0
    vis = torch.zeros(1, k)
    vis[0, :2] = 1
    area = torch.tensor([100.0])
    sims = keypoint_oks(pred, gt, area, SIGMAS)
    assert torch.allclose(sims[0, 0], torch.tensor(np.exp(-0.5), dtype=torch.float32))
    expected = torch.tensor([(np.exp(-0.5) + 1) / 2], dtype=torch.float32)
    assert torch.allclose(pose_oks(pred, gt, vis, area, SIGMAS), expected)
    assert pose_oks(pred, gt, torch.zeros(1, k), area, SIGMAS).item() == 0.0  # no visible keypoint
    assert pairwise_pose_oks(pred.expand(3, k, 2), gt.expand(2, k, 2), vis.expand(2, k), area.expand(2),
                             SIGMAS).shape == (3, 2)


def test_assigner_no_gt_and_bad_targets() -> None:
    n = 5
    a = simota_assign(torch.zeros(n, 2), torch.full((n,), 16.0), torch.zeros(n, 4), torch.ones(n),
                      torch.zeros(n, 17, 2), torch.zeros(0, 4), torch.zeros(0, 17, 2), torch.zeros(0, 17),
                      torch.zeros(0), SIGMAS)
    assert (a.gt_inds == 0).all() and a.pos_idx.numel() == 0
    with pytest.raises(ValueError, match="keypoints_visible"):
        Targets(torch.zeros(2, 4), torch.zeros(2, 17, 2), torch.zeros(2, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="bboxes"):
        Targets(torch.zeros(2, 5), torch.zeros(2, 17, 2), torch.zeros(2, 17), torch.zeros(2))


def test_stage_presets() -> None:
    s1, s2, s3 = (criterion("s", "coco", i) for i in (1, 2, 3))
    assert (s1.oks_weight, s1.mle_weight, s1.proxy_target_cc, s1.use_aux_loss) == (30.0, 1.0, False, False)
    assert (s2.oks_weight, s2.mle_weight, s2.proxy_target_cc, s2.cls_weight) == (10.0, 5.0, True, 1.0)
    assert s3.use_aux_loss and not s2.use_aux_loss
    m2 = criterion("m", "coco", 2)
    assert (m2.cls_weight, m2.overlaps_power, m2.use_keypoints_for_center) == (2.0, 1.0, False)
    assert criterion("l", "crowdpose", 1).mle_weight == 1e-3
    assert criterion("s", "crowdpose", 1).use_keypoints_for_center is False


def test_no_gt_image_keeps_graph() -> None:
    """An image batch without any person: only the classification term is non-zero, all terms backprop."""
    torch.manual_seed(0)
    model = RTMO(RTMOConfig.preset("t"))
    model.train()
    images = torch.rand(1, 3, 64, 64) * 255
    empty = Targets(torch.zeros(0, 4), torch.zeros(0, 17, 2), torch.zeros(0, 17), torch.zeros(0))
    out = compute_losses(model, images, [empty])
    assert float(out["num_pos"]) == 1.0 and out["loss_bbox"].item() == 0.0 and out["loss_cls"].item() > 0
    out["loss"].backward()
    assert model.head.head_module.out_cls[0].bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one Targets per image"):
        compute_losses(model, images, [empty, empty])


def test_single_positive_train_mode_bf16() -> None:
    """One person, one positive: the DCC's train-mode BatchNorm1d falls back to running statistics (mmpose
    would raise); the assignment runs in float32 under autocast; every term is finite and backpropagates."""
    torch.manual_seed(0)
    model = RTMO(RTMOConfig.preset("t"))
    model.train()
    model.criterion = criterion("t", "body7", 3)
    person = Targets(torch.tensor([[10.0, 10, 100, 120]]), torch.rand(1, 17, 2) * 80 + 20, torch.ones(1, 17),
                     torch.tensor([5000.0]), heatmap_mask=torch.zeros(128, 128))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.rand(1, 3, 128, 128) * 255, [person]).loss
    out = {**loss.as_dict(), "num_pos": loss.num_pos}
    assert float(out["num_pos"]) == 1.0 and set(TERMS) <= set(out)
    assert all(torch.isfinite(out[k]).all() for k in TERMS)
    out["loss"].backward()
    assert model.head.dcc.pose_to_kpts[1].training  # mode restored
    assert model.head.dcc.sigma_fc[0].weight.grad.abs().sum() > 0  # MLE reaches the learned sigmas


if __name__ == "__main__":  # print the worst deviation of each quantity over all runs
    worst: dict[str, float] = {}
    for run in RUNS:
        for k, x in loss_code_only(*run).items():
            worst[k] = max(worst.get(k, 0.0), x)
    print("loss code only, 12 runs:", {k: f"{x:.1e}" for k, x in worst.items()})
    for v in ("t", "s"):
        dev = end_to_end(v)
        grads = max((x for k, x in dev.items() if k.startswith("grad__")), default=0.0)
        print(f"end to end {v}:", {k: f"{x:.1e}" for k, x in dev.items() if not k.startswith("grad__")},
              f"grad__* worst {grads:.1e}")
