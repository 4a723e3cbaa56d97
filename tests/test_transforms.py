"""Training augmentation: keypoints stay on the image content they label through every transform.

The geometric checks paint a distinct saturated colour dot at every keypoint of a synthetic image, run a
transform and read the colour back at the transformed keypoints: the independent truth is the image
content itself (warped by OpenCV), not our own coordinate formulas.
"""

from __future__ import annotations

import itertools
import math
import pickle
import random

import cv2
import numpy as np
import pytest

from rtmo.config import COCO_KEYPOINTS
from rtmo.train.data.batch import draw_batch_size, resize_batch
from rtmo.train.data.sample import PoseSample, perspective_matrix, transform_points
from rtmo.train.data.transforms import (
    FilterAnnotations,
    HSVAug,
    MixUp,
    Mosaic,
    RandomAffine,
    RandomFlip,
    Stage1Pipeline,
    Stage2Pipeline,
    trunc_normal,
)
from rtmo.train.recipes import AugmentRecipe

from .train_util import official_recipe

K = 17
FLIP = COCO_KEYPOINTS.flip_indices
# Saturated colours from {0, 128, 255}^3 without the greys: any two differ by >= 127 in some channel, and
# each differs from the background (60) and the padding (114) by >= 60, so a 40-level tolerance is unique.
PALETTE = np.array([c for c in itertools.product((0, 128, 255), repeat=3) if len(set(c)) > 1][:K],
                   dtype=np.int32)
BG = 60
TOL = 40
DOT = 7  # dot radius (px) in the source images


def dotted_sample(h: int, w: int, n: int, seed: int, ann_base: int = 0) -> PoseSample:
    """A (h, w) image with n persons whose K keypoints are coloured dots at random spots inside their box."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), BG, dtype=np.uint8)
    boxes, kpts = [], []
    for _ in range(n):
        x1, y1 = rng.uniform(0, w * 0.5), rng.uniform(0, h * 0.5)
        x2, y2 = rng.uniform(x1 + 0.3 * w, w - 1), rng.uniform(y1 + 0.3 * h, h - 1)
        boxes.append([x1, y1, x2, y2])
        kpts.append(np.stack([rng.uniform(x1 + DOT, x2 - DOT, K), rng.uniform(y1 + DOT, y2 - DOT, K)], -1))
    kpts = np.array(kpts, dtype=np.float32).reshape(n, K, 2)
    # Paint later persons over earlier ones; only the last painted dot per spot is checked (see below).
    for i in range(n):
        for j in range(K):
            cv2.circle(img, (int(round(kpts[i, j, 0])), int(round(kpts[i, j, 1]))), DOT,
                       tuple(int(c) for c in PALETTE[j]), -1)
    return PoseSample(image=img, bboxes=np.array(boxes, dtype=np.float32).reshape(n, 4), keypoints=kpts,
                      keypoints_visible=np.ones((n, K), dtype=np.float32),
                      areas=np.full(n, 1000.0, dtype=np.float32),
                      ann_ids=np.arange(ann_base, ann_base + n, dtype=np.int64), flip_indices=FLIP,
                      orig_hw=(h, w))


def unique_dots(sample: PoseSample) -> np.ndarray:
    """(n, K) mask of dots that no other dot overlaps (their colour is unambiguous)."""
    p = sample.keypoints.reshape(-1, 2)
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return (d.min(axis=1) > 2 * DOT + 2).reshape(sample.keypoints.shape[:2])


class ListSource:
    def __init__(self, samples: list[PoseSample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int, rng: np.random.Generator) -> PoseSample:
        return self.samples[index].copy()


def check_colours(out: PoseSample, expect: np.ndarray, check: np.ndarray, margin: float = 2.0,
                  blend: float = 1.0) -> int:
    """Colour at every checked, visible, in-image keypoint == expect (n, K, 3) * blend (+- TOL). Returns
    how many keypoints were checked (so a test can insist that it checked something)."""
    h, w = out.image.shape[:2]
    n_checked = 0
    for i, j in zip(*np.nonzero(check & (out.keypoints_visible > 0))):
        x, y = out.keypoints[i, j]
        if not (margin <= x < w - margin and margin <= y < h - margin):
            continue
        got = out.image[int(round(y)), int(round(x))].astype(np.int32)
        want = expect[i, j] * blend
        assert np.abs(got - want).max() <= TOL, (i, j, (x, y), got, want)
        n_checked += 1
    return n_checked


def same_colours(sample: PoseSample) -> np.ndarray:
    return np.broadcast_to(PALETTE[None], (sample.num_instances, K, 3))


def assert_finite_consistent(s: PoseSample) -> None:
    h, w = s.image.shape[:2]
    n = s.num_instances
    assert s.bboxes.shape == (n, 4) and s.keypoints.shape == (n, K, 2) and s.keypoints_visible.shape == (n, K)
    assert s.areas.shape == (n,) and s.ann_ids.shape == (n,)
    for a in (s.bboxes, s.keypoints, s.keypoints_visible, s.areas):
        assert np.isfinite(a).all()
    assert s.image.dtype == np.uint8
    # boxes are clipped to [0, w]; a later flip (x' = w - 1 - x, as mmpose) can move an edge to -1
    lo = -1.0 if s.flipped else 0.0
    assert (s.bboxes[:, 0::2] >= lo).all() and (s.bboxes[:, 0::2] <= w).all()
    assert (s.bboxes[:, 1::2] >= 0).all() and (s.bboxes[:, 1::2] <= h).all()
    assert (s.bboxes[:, 2:] >= s.bboxes[:, :2]).all()
    assert set(np.unique(s.keypoints_visible)) <= {0.0, 1.0}
    # every visible keypoint lies inside its (clipped) box: boxes stay consistent with keypoints
    vis = s.keypoints_visible > 0
    kx, ky = s.keypoints[..., 0], s.keypoints[..., 1]
    eps = 1e-3
    inside = ((kx >= s.bboxes[:, None, 0] - eps) & (kx <= s.bboxes[:, None, 2] + eps)
              & (ky >= s.bboxes[:, None, 1] - eps) & (ky <= s.bboxes[:, None, 3] + eps))
    assert inside[vis].all()


# ----------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("seed", range(4))
def test_mosaic_keypoints_on_content(seed):
    S = 320
    base = dotted_sample(240, 320, 2, seed)
    others = [dotted_sample(h, w, 2, 100 + seed * 10 + i, ann_base=10 * (i + 1))
              for i, (h, w) in enumerate([(400, 200), (150, 330), (300, 300)])]
    out = Mosaic((S, S))(base.copy(), np.random.default_rng(seed), ListSource(others))
    assert out.image.shape == (2 * S, 2 * S, 3)
    assert out.num_instances >= 2 and out.ann_ids[:2].tolist() == [0, 1]  # the sample itself comes first
    assert_finite_consistent(out)
    # drawn images' dots: uniqueness within each source image
    uniq = np.concatenate([unique_dots(base)] + [unique_dots(o) for o in others])
    src_ids = out.ann_ids // 10
    check = uniq[np.searchsorted(np.concatenate([base.ann_ids] + [o.ann_ids for o in others]), out.ann_ids)]
    assert check.shape == out.keypoints_visible.shape and len(set(src_ids.tolist())) >= 1
    assert check_colours(out, same_colours(out), check) > 10
    # areas scale with the resize ratio squared (ratio of the sample: min(S/h, S/w))
    r = min(S / 240, S / 320)
    assert out.areas[0] == pytest.approx(1000.0 * r * r, rel=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_perspective_affine_keypoints_on_content(seed):
    S = 320
    src = dotted_sample(2 * S, 2 * S, 3, seed)
    aff = RandomAffine((S, S), "perspective", 0.1, 1.0, (0.75, 1.0), 1.0, 10.0, 1.0, 2.0, 1.0, "uniform")
    out = aff(src.copy(), np.random.default_rng(seed))
    assert out.image.shape == (S, S, 3) and out.warp_mat is None
    assert_finite_consistent(out)
    check_colours(out, same_colours(out), unique_dots(src))


def test_perspective_matrix_hand_computed():
    # M = T(c + t) Sh R S T(-c): around c = 0, shear x 45 deg (tan = 1) after a 90-degree rotation maps
    # (1, 0) -R-> (0, 1) -Sh-> (1, 1); scale 2 then doubles it, translation (5, 7) shifts it.
    m = perspective_matrix(np.zeros(2, np.float32), np.array([5.0, 7.0]), 2.0, 90.0, np.array([45.0, 0.0]))
    np.testing.assert_allclose(m @ [1, 0, 1], [7, 9, 1], atol=1e-5)
    # around a centre c, c itself only moves by the translation
    c = np.array([160.0, 160.0], np.float32)
    m = perspective_matrix(c, np.array([3.0, -4.0]), 0.8, 10.0, np.array([2.0, -1.0]))
    np.testing.assert_allclose(transform_points(c.reshape(1, 1, 2), m)[0, 0], [163, 156], atol=1e-3)


def test_perspective_window_is_top_left_as_implemented():
    # With every probability 0 the perspective warp is the identity: the output is the mosaic's
    # [0, S]^2 corner (mmpose centres the window on (S/2, S/2), not on the mosaic centre).
    S = 160
    src = dotted_sample(2 * S, 2 * S, 1, 0)
    aff = RandomAffine((S, S), "perspective", 0.1, 0.0, (0.75, 1.0), 0.0, 10.0, 0.0, 2.0, 0.0, "uniform")
    out = aff(src.copy(), np.random.default_rng(0))
    np.testing.assert_array_equal(out.image, src.image[:S, :S])
    np.testing.assert_allclose(out.keypoints, src.keypoints, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_random_affine_mode_keypoints_on_content(seed):
    # stage-2 m/l: class-default random affine (trunc-normal, rotation up to 30 degrees, zoom 0.75-1.5)
    src = dotted_sample(300, 420, 2, seed)
    aff = RandomAffine((256, 256), "affine", 0.2, 1.0, (0.75, 1.5), 1.0, 30.0, 1.0, 0.0, 0.0, "trunc_norm")
    out = aff(src.copy(), np.random.default_rng(seed))
    assert out.image.shape == (256, 256, 3) and out.warp_mat.shape == (2, 3)
    assert_finite_consistent(out)
    check_colours(out, same_colours(out), unique_dots(src))
    # area scales with the determinant of the warp (a similarity: det = zoom^2)
    det = np.linalg.det(out.warp_mat[:, :2])
    np.testing.assert_allclose(out.areas, src.areas * det, rtol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_mixup_extra_keypoints_on_content(seed):
    S = 256
    base = dotted_sample(S, S, 1, seed)
    base.image[:] = 0  # a black image: the blended result is 0.5 * the extra image
    extra = dotted_sample(300, 450, 2, 50 + seed, ann_base=10)
    out = MixUp((S, S), (0.8, 1.6), 0.5)(base.copy(), np.random.default_rng(seed), ListSource([extra]))
    assert out.num_instances == 3 and out.ann_ids.tolist() == [0, 10, 11]
    assert_finite_consistent(out)
    np.testing.assert_array_equal(out.keypoints[0], base.keypoints[0])  # the sample's own instances stay
    # The extra image may have been flipped: its keypoint i then sits on the dot painted for FLIP[i].
    ext = out.select(np.array([False, True, True]))
    flip = list(FLIP)
    uniq = unique_dots(extra)
    hypotheses = [(same_colours(ext), uniq), (same_colours(ext)[:, flip], uniq[:, flip])]
    checked = [_checked_or_none(ext, exp, chk) for exp, chk in hypotheses]
    assert any(c is not None and c >= 4 for c in checked), "extra keypoints are not on their dots"


def _checked_or_none(s, exp, check):
    try:
        return check_colours(s, exp, check, blend=0.5)
    except AssertionError:
        return None


def test_mixup_flip_swaps_left_right():
    # find a seed where MixUp flips (U > 0.5) and check the left eye lands on the right eye's dot mirror
    S = 256
    extra = dotted_sample(S, S, 1, 3, ann_base=10)
    for seed in range(40):
        rng = np.random.default_rng(seed)
        base = dotted_sample(S, S, 1, 0)
        base.image[:] = 0
        mix = MixUp((S, S), (1.0, 1.0), 0.5)  # no rescale: a flip is then x' = S - 1 - x exactly
        out = mix(base, rng, ListSource([extra]))
        k = out.keypoints[1]
        if not np.allclose(k, extra.keypoints[0], atol=1e-4):
            np.testing.assert_allclose(k[:, 0], S - 1 - extra.keypoints[0][list(FLIP), 0], atol=1e-4)
            np.testing.assert_allclose(k[:, 1], extra.keypoints[0][list(FLIP), 1], atol=1e-4)
            return
    pytest.fail("no flip in 40 draws")


def test_flip_swaps_left_right_and_content():
    src = dotted_sample(200, 300, 2, 7)
    out = RandomFlip(1.0)(src.copy(), np.random.default_rng(0))
    assert out.flipped
    flip = list(FLIP)
    np.testing.assert_allclose(out.keypoints[:, :, 0], 300 - 1 - src.keypoints[:, flip, 0])
    np.testing.assert_allclose(out.keypoints[:, :, 1], src.keypoints[:, flip, 1])
    # left_eye (1) of the output is the mirror of the source's right_eye (2), and shows its dot colour
    np.testing.assert_allclose(out.keypoints[:, 1], [[299, 0]] - src.keypoints[:, 2] * [[1, -1]])
    check = unique_dots(src)[:, flip]
    assert check_colours(out, same_colours(out)[:, flip], check) > 5
    np.testing.assert_allclose(out.bboxes[:, [0, 2]], 299 - src.bboxes[:, [2, 0]])
    assert_finite_consistent(out)
    assert RandomFlip(0.0)(src, np.random.default_rng(0)) is src


def test_hsv_known_colours():
    # Hand-computed HSV arithmetic on pure colours (OpenCV 8-bit hue = degrees / 2):
    # blue BGR(255,0,0) = H120 S255 V255; gains (+10, 0, -55) -> H130 (260 deg) V200 ->
    #   260 deg lies between blue (240) and magenta (300): R = 200 * 20/60, G = 0, B = 200.
    # red BGR(0,0,255) = H0; gain -5 wraps to H175 (350 deg) -> B = 255 * 10/60, G = 0, R = 255.
    img = np.zeros((2, 2, 3), np.uint8)
    img[0] = (255, 0, 0)
    img[1] = (0, 0, 255)
    s = PoseSample(img, np.zeros((0, 4), np.float32), np.zeros((0, K, 2), np.float32),
                   np.zeros((0, K), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), FLIP)

    aug = HSVAug(5, 30, 30)
    out = aug.apply(s.image, np.array([10, 0, -55], np.int16))
    np.testing.assert_allclose(out[0, 0], (200, 0, 200 * 20 / 60), atol=2)
    out = aug.apply(s.image, np.array([-5, 0, 0], np.int16))
    np.testing.assert_allclose(out[1, 0], (255 * 10 / 60, 0, 255), atol=2)
    # drawn gains: |g| <= deltas, integer, each channel sometimes exactly 0 (the coin)
    gains = np.array([aug.draw_gains(np.random.default_rng(i)) for i in range(400)])
    assert gains.dtype == np.int16 and (np.abs(gains) <= [5, 30, 30]).all()
    assert ((gains == 0).mean(axis=0) > 0.4).all()
    assert (gains.max(axis=0) >= [4, 25, 25]).all() and (gains.min(axis=0) <= [-4, -25, -25]).all()


def test_filter_annotations():
    s = dotted_sample(100, 100, 4, 0)
    s.bboxes[:] = [10, 10, 50, 50]
    s.bboxes[1] = [10, 10, 11, 50]  # width exactly 1: dropped (needs > 1)
    s.bboxes[2] = [10, 10, 50, 11.5]  # height 1.5: kept
    s.keypoints_visible[3] = 0  # no visible keypoint: dropped
    out = FilterAnnotations()(s)
    assert out.ann_ids.tolist() == [0, 2]
    # keep_empty=False (as implemented): an image without any valid instance is kept, just empty
    s.keypoints_visible[:] = 0
    out = FilterAnnotations()(s)
    assert out.num_instances == 0 and out.image is s.image


def test_trunc_normal_statistics():
    x = trunc_normal(np.random.default_rng(0), (20000,))
    assert x.dtype == np.float32 and np.abs(x).max() <= 1
    # std of N(0,1) truncated to [-1,1]: sqrt(1 - 2 phi(1) / (Phi(1) - Phi(-1))) = 0.5396
    phi1 = math.exp(-0.5) / math.sqrt(2 * math.pi)
    std = math.sqrt(1 - 2 * phi1 / math.erf(1 / math.sqrt(2)))
    assert abs(x.std() - std) < 0.01 and abs(x.mean()) < 0.01


# ----------------------------------------------------------------------------------------- pipelines
def test_stage1_pipeline_keypoints_on_content_and_reproducible():
    S = 256
    srcs = [dotted_sample(h, w, 2, i, ann_base=10 * i) for i, (h, w) in
            enumerate([(200, 260), (300, 200), (256, 256), (180, 320), (240, 240)])]
    pipe = Stage1Pipeline(dataclasses_replace(AugmentRecipe(), hsv_gains=(0, 0, 0), mixup_prob=0.0), S)
    checked = 0
    for seed in range(6):
        out = pipe(srcs[seed % 5].copy(), np.random.default_rng(seed), ListSource(srcs))
        assert out.image.shape == (S, S, 3)
        assert_finite_consistent(out)
        uniq = {int(a): u for s in srcs for a, u in zip(s.ann_ids, unique_dots(s))}
        check = np.array([uniq[int(a)] for a in out.ann_ids]).reshape(-1, K)
        exp = same_colours(out)[:, list(FLIP)] if out.flipped else same_colours(out)
        chk = check[:, list(FLIP)] if out.flipped else check
        checked += check_colours(out, exp, chk, margin=3)
    assert checked > 50
    # reproducible from the generator, and picklable for DataLoader workers
    pipe2 = pickle.loads(pickle.dumps(pipe))
    a = pipe(srcs[0].copy(), np.random.default_rng(123), ListSource(srcs))
    b = pipe2(srcs[0].copy(), np.random.default_rng(123), ListSource(srcs))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


@pytest.mark.parametrize("variant,dataset",
                         [("s", "coco"), ("t", "body7"), ("m", "crowdpose"), ("l", "coco")])
def test_full_pipelines_finite(variant, dataset):
    S = 192  # small canvas keeps this fast; the geometry does not depend on S
    srcs = [dotted_sample(h, w, n, i, ann_base=10 * i) for i, (h, w, n) in
            enumerate([(200, 260, 2), (300, 200, 0), (256, 256, 3), (180, 320, 1)])]
    augment = official_recipe(variant, dataset).augment  # what the recipe trains, on a smaller canvas
    s1, s2 = Stage1Pipeline(augment, S), Stage2Pipeline(augment, S)
    for seed in range(3):
        for i in range(len(srcs)):
            rng = np.random.default_rng([seed, i])
            out = s1(srcs[i].copy(), rng, ListSource(srcs))
            assert_finite_consistent(out)
            out = s2(srcs[i].copy(), rng)
            assert_finite_consistent(out)
            assert out.heatmap_mask.shape == (S, S) and out.heatmap_mask.dtype == bool


def _stage1(variant: str, dataset: str) -> Stage1Pipeline:
    """The stage-1 pipeline the official recipe trains with (as `build_train_data` builds it)."""
    r = official_recipe(variant, dataset)
    return Stage1Pipeline(r.augment, r.input_size[0])


def _stage2_random_affine(variant: str, dataset: str) -> bool:
    r = official_recipe(variant, dataset)
    return Stage2Pipeline(r.augment, r.input_size[0]).affine.shift_prob > 0


def test_recipes_match_reference_table():
    # the official configs: stage-1 affine / MixUp per family, RTMO-t without MixUp at 416, stage-2 random
    # affine for m/l on COCO/body7
    s = _stage1("s", "coco")
    assert (s.input_size, s.affine.shift_factor, s.affine.rotate_factor, s.affine.scale_factor, s.mixup.prob,
            s.mixup.ratio_range) == (640, 0.1, 10.0, (0.75, 1.0), 1.0, (0.8, 1.6))
    t = _stage1("t", "body7")
    assert (t.input_size, t.mixup.prob) == (416, 0.0)
    c = _stage1("m", "crowdpose")
    assert (c.affine.shift_factor, c.affine.rotate_factor, c.affine.scale_factor, c.mixup.ratio_range) == \
        (0.2, 30.0, (0.5, 1.5), (0.6, 1.6))
    bc = _stage1("l", "body7-crowdpose")
    assert (bc.affine.shift_factor, bc.mixup.ratio_range) == (0.1, (0.8, 1.6))
    assert [_stage2_random_affine(v, d) for v, d in
            [("t", "body7"), ("s", "coco"), ("m", "coco"), ("l", "body7"), ("m", "crowdpose"),
             ("l", "body7-crowdpose")]] == [False, False, True, True, False, False]
    assert official_recipe("t", "body7").augment.multiscale_range == (320, 640)
    assert official_recipe("l", "coco").augment.multiscale_range == (480, 800)


def test_batch_size_draws():
    rng = random.Random(0)  # the trainer draws from Python's `random`
    for (variant, dataset), (lo, hi) in [(("s", "coco"), (15, 25)), (("t", "body7"), (10, 20))]:
        cfg = official_recipe(variant, dataset).augment
        ks = {draw_batch_size(rng, cfg)[0] // 32 for _ in range(600)}
        assert ks == set(range(lo, hi + 1))  # both ends reachable, nothing outside
        w, h = draw_batch_size(rng, cfg)
        assert w == h and w % 32 == 0


def test_resize_batch_scales_targets():
    torch = pytest.importorskip("torch")
    from rtmo.train.losses import Targets

    images = torch.arange(2 * 3 * 64 * 64, dtype=torch.float32).reshape(2, 3, 64, 64)
    mask = torch.zeros(64, 64)
    mask[16:48, 16:48] = 1
    t = Targets(torch.tensor([[8.0, 16.0, 32.0, 48.0]]), torch.full((1, K, 2), 10.0), torch.ones(1, K),
                torch.tensor([100.0]), torch.zeros(1, dtype=torch.long), mask)
    out_img, (o, o2) = resize_batch(images, [t, t], (96, 96))
    assert out_img.shape == (2, 3, 96, 96)
    np.testing.assert_allclose(o.bboxes.numpy(), [[12, 24, 48, 72]])
    np.testing.assert_allclose(o.keypoints.numpy(), 15.0)
    np.testing.assert_allclose(o.areas.numpy(), [225.0])
    assert o.heatmap_mask.shape == (96, 96) and o.heatmap_mask.dtype == torch.float32
    assert o.heatmap_mask[48, 48] == 1 and o.heatmap_mask[5, 5] == 0
    same, same_t = resize_batch(images, [t], (64, 64))
    assert same is images and same_t[0] is t


def test_transforms_need_a_generator():
    s = dotted_sample(50, 50, 1, 0)
    with pytest.raises(TypeError, match="Generator"):
        RandomFlip(0.5)(s, 0)
