"""Inference: the backend protocol, image loading, pre/post-processing, results, sources, drawing,
tracking."""

from .backend import PoseAPI, PoseBackend
from .smooth import OneEuroConfig, PoseSmoother
from .track import Tracker, TrackerConfig

__all__ = ["PoseBackend", "PoseAPI", "Tracker", "TrackerConfig", "PoseSmoother", "OneEuroConfig"]
