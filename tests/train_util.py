"""Shared by the training tests: the official recipe of a model family, and the first epoch of each of
its loss stages, so that tests check what a recipe trains rather than a copy of its values."""

from __future__ import annotations

import re

from rtmo.train.losses import Criterion
from rtmo.train.recipes import TrainRecipe, list_recipes


def official_recipe(variant: str, dataset: str) -> TrainRecipe:
    """The recipe of `rtmo-{variant}` trained on `dataset` (coco, body7, crowdpose, body7-crowdpose)."""
    pattern = re.compile(rf"rtmo-{variant}_\d+xb\d+-\d+e_{dataset}-\d+x\d+")
    names = [n for n in list_recipes() if pattern.fullmatch(n)]
    if len(names) != 1:
        raise ValueError(f"no official recipe for rtmo-{variant} on {dataset}: {names}")
    return TrainRecipe.load(names[0])


def stage_epoch(recipe: TrainRecipe, stage: int) -> int:
    """The first epoch of loss stage 1 (from the start), 2 (head switch) or 3 (data switch: + aux loss)."""
    return (0, recipe.schedule.head_switch_epoch, recipe.schedule.data_switch_epoch)[stage - 1]


def criterion(variant: str, dataset: str, stage: int) -> Criterion:
    """The criterion the trainer sets in stage `stage` of the official recipe."""
    recipe = official_recipe(variant, dataset)
    return Criterion.from_recipe(recipe, stage_epoch(recipe, stage))
