"""rtmo: real-time multi-person pose estimation with RTMO in plain PyTorch."""

from .config import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, CSPConfig, KeypointInfo, ResNetConfig, RTMOConfig
from .infer.results import Detection, PoseResult
from .model import RTMO

__all__ = ["RTMO", "RTMOConfig", "CSPConfig", "KeypointInfo", "COCO_KEYPOINTS", "CROWDPOSE_KEYPOINTS",
           "Detection", "PoseResult", "ModelManager", "Tracker", "PoseSmoother"]
__all__ += ["ResNetConfig", "draw_skeleton"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "ModelManager":  # imported lazily: the zoo pulls in download machinery
        from .zoo import ModelManager

        return ModelManager
    if name in ("Tracker", "PoseSmoother"):  # video helpers, numpy only
        from . import infer

        return getattr(infer, name)
    if name == "draw_skeleton":  # drawing pulls in OpenCV
        from .infer.draw import draw_skeleton

        return draw_skeleton
    raise AttributeError(name)
