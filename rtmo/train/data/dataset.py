"""The training set of a recipe: several annotation files combined with resampling (body7), a stage-1 or
stage-2 augmentation pipeline on top (`TrainDataset`), and `build_train_data(recipe)`, the `TrainData`
the trainer reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, KeypointInfo
from ..recipes import DatasetSpec, TrainRecipe
from .batch import collate, resize_batch
from .coco import CocoPoseDataset
from .keypoints import KeypointConverter
from .sample import PoseSample, Rng
from .transforms import Stage1Pipeline, Stage2Pipeline


class CombinedDataset:
    """Several datasets with per-dataset resampling factors (mmpose `CombinedDataset` with
    `sample_ratio_factor`, as the body7 configs use it): dataset i contributes round(len_i * r_i) indices
    per epoch; its j-th index maps to a random member of the j-th of that many equal strata (a fresh
    subset every draw)."""

    def __init__(self, datasets: Sequence[CocoPoseDataset], ratios: Sequence[float] | None = None) -> None:
        if not datasets:
            raise ValueError("CombinedDataset needs at least one dataset")
        ratios = [1.0] * len(datasets) if ratios is None else list(ratios)
        if len(ratios) != len(datasets) or min(ratios) < 0:
            raise ValueError(f"need one non-negative ratio per dataset, got {ratios} for {len(datasets)}")
        k = {d.keypoint_info.num_keypoints for d in datasets}
        if len(k) != 1:
            raise ValueError(f"datasets have different keypoint counts {sorted(k)}: add KeypointConverters")
        self.datasets = list(datasets)
        self.ratios = ratios
        self.resample = any(r != 1.0 for r in ratios)
        self.lens_ori = [len(d) for d in datasets]
        self.lens = [round(n * r) for n, r in zip(self.lens_ori, ratios)] if self.resample else self.lens_ori
        self.keypoint_info = datasets[0].keypoint_info

    def __len__(self) -> int:
        return sum(self.lens)

    def locate(self, index: int, rng: Rng | None = None) -> tuple[int, int]:
        """(dataset, local index) of global `index`; random within its stratum when resampling."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of length {len(self)}")
        index %= len(self)
        i = 0
        while index >= self.lens[i]:
            index -= self.lens[i]
            i += 1
        if self.resample:
            gap = (self.lens_ori[i] - 1e-4) / self.lens[i]
            u = (rng if rng is not None else np.random.default_rng()).random()
            index = round(gap * index + u * gap - 0.5)
        return i, index

    def load(self, index: int, rng: Rng | None = None) -> PoseSample:
        i, j = self.locate(index, rng)
        s = self.datasets[i].load(j)
        # mmpose gives every sample the combined set's flip indices
        return s.replace(flip_indices=self.keypoint_info.flip_indices)


# ----------------------------------------------------------------------------------------- training set
class TrainDataset:
    """A torch-style dataset applying a stage-1/stage-2 pipeline to `source`.

    Sample `i` is drawn with `numpy.random.default_rng([seed, i])`, where `seed` is the explicit `seed`
    or, when None, `torch.initial_seed()` of the current process/worker (which the trainer reseeds per
    epoch): reproducible, different every epoch, independent of global numpy state."""

    def __init__(self, source: CocoPoseDataset | CombinedDataset, pipeline: Stage1Pipeline | Stage2Pipeline,
                 seed: int | None = None) -> None:
        self.source = source
        self.pipeline = pipeline
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    @property
    def keypoint_info(self) -> KeypointInfo:
        return self.source.keypoint_info

    def rng_for(self, index: int) -> Rng:
        seed = self.seed
        if seed is None:
            seed = torch.initial_seed()
        return np.random.default_rng([int(seed) % 2**63, int(index)])

    def __getitem__(self, index: int) -> PoseSample:
        return self.get(index, self.rng_for(index))

    def get(self, index: int, rng: Rng) -> PoseSample:
        sample = self.source.load(index, rng)
        return self.pipeline(sample, rng, self.source)


# ----------------------------------------------------------------------------------------- recipe wiring
def _source_from_specs(root: Path, specs: Sequence[DatasetSpec],
                       num_keypoints: int) -> CocoPoseDataset | CombinedDataset:
    target = {17: COCO_KEYPOINTS, 14: CROWDPOSE_KEYPOINTS}.get(num_keypoints)
    sets = []
    for spec in specs:
        mapping = tuple(tuple(p) for p in spec.mapping)
        identity = mapping == tuple((i, i) for i in range(num_keypoints))
        conv = KeypointConverter(num_keypoints, mapping) if mapping and not identity else None
        sets.append(CocoPoseDataset(root / spec.ann_file, root / spec.img_prefix, sigmas=spec.sigmas,
                                    flip_indices=spec.flip_indices, converter=conv,
                                    target=target if conv is not None else None,
                                    one_based=spec.name.lower() == "jhmdb", check_images=True))
    if len(sets) == 1 and specs[0].ratio == 1.0:
        return sets[0]
    return CombinedDataset(sets, [s.ratio for s in specs])


@dataclass
class TrainData:
    """What the trainer needs from the data pipeline.

    `build_dataset(stage)` returns the training set of data stage 1 (Mosaic/MixUp) or 2 (the plain pipeline
    of the last epochs, possibly on another dataset); `collate_fn` turns samples into `(images, targets)`
    with images a (B,3,S,S) BGR tensor; `batch_resize(images, targets, (w, h))` rescales a batch and its
    targets to the size drawn for it (default: `rtmo.train.data.batch.resize_batch`).
    """

    build_dataset: Callable[[int], Any]
    collate_fn: Callable[[list], Any] | None = None
    batch_resize: Callable[[Any, Any, tuple[int, int]], tuple[Any, Any]] = resize_batch


def build_train_data(recipe: TrainRecipe) -> TrainData:
    """The `TrainData` of a recipe: stage-1/stage-2 `TrainDataset`s over its annotation files (body7:
    combined with resampling and keypoint conversion), each with the pipeline its `[augment]` table
    sets, `collate` and the batch resize. Datasets are built lazily, when the trainer first asks for a
    stage."""
    if recipe.input_size[0] != recipe.input_size[1]:
        raise ValueError(f"RTMO training needs a square input size, got {recipe.input_size}")
    size = int(recipe.input_size[0])
    root = Path(recipe.data.root)
    k = recipe.num_keypoints
    cache: dict[int, TrainDataset] = {}

    def build_dataset(stage: int) -> TrainDataset:
        if stage not in cache:
            if stage == 1:
                pipeline = Stage1Pipeline(recipe.augment, size)
                cache[1] = TrainDataset(_source_from_specs(root, recipe.data.train, k), pipeline)
            else:
                specs = recipe.data.stage2_train or recipe.data.train
                pipeline = Stage2Pipeline(recipe.augment, size)
                cache[2] = TrainDataset(_source_from_specs(root, specs, k), pipeline)
        return cache[stage]

    return TrainData(build_dataset=build_dataset, collate_fn=collate, batch_resize=resize_batch)
