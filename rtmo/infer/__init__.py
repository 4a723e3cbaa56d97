"""Inference: image loading, pre/post-processing, results, sources, drawing, tracking."""

from .smooth import OneEuroConfig, PoseSmoother
from .track import Tracker, TrackerConfig

__all__ = ["Tracker", "TrackerConfig", "PoseSmoother", "OneEuroConfig"]
