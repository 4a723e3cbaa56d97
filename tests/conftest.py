"""Shared test helpers: where the ground-truth fixtures live, and models built from them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

SHARED = Path(os.environ.get("RTMO_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
FIXTURES = SHARED / "fixtures"
DATA = SHARED / "data"

FIXTURE_MODELS = {
    "s": "rtmo-s_8xb32-600e_coco-640x640_seed0",
    "t": "rtmo-t_8xb32-600e_body7-416x416_seed0",
}


def fixture_dir(variant: str) -> Path:
    d = FIXTURES / FIXTURE_MODELS[variant]
    if not d.is_dir():
        pytest.skip(f"fixtures not found at {d}")
    return d


def fixture_checkpoint(variant: str) -> Path:
    return fixture_dir(variant) / f"{FIXTURE_MODELS[variant]}.pth"


_MODELS: dict[str, torch.nn.Module] = {}


def fixture_model(variant: str):
    """RTMO with the mmpose fixture weights (random, deterministic), loaded once per session."""
    if variant not in _MODELS:
        from rtmo import ModelManager

        _MODELS[variant] = ModelManager.get(fixture_checkpoint(variant))
    return _MODELS[variant]


def data_images() -> list[Path]:
    if not DATA.is_dir():
        pytest.skip(f"data not found at {DATA}")
    return sorted(DATA.glob("coco/*.jpg")) + sorted(DATA.glob("crowdpose/*.jpg"))
