"""rtmo: real-time multi-person pose estimation with RTMO in plain PyTorch.

`import rtmo` is light and never imports torch: `RTMO`, `ModelManager`, `Tracker`, ... are resolved on first
attribute access (PEP 562), so a deployment install without torch runs exported models
(`rtmo.ModelManager.get("model.onnx")`) through the same API.
"""

from .config import COCO_KEYPOINTS, CROWDPOSE_KEYPOINTS, CSPConfig, KeypointInfo, ResNetConfig, RTMOConfig

__all__ = ["RTMO", "RTMOConfig", "CSPConfig", "KeypointInfo", "COCO_KEYPOINTS", "CROWDPOSE_KEYPOINTS",
           "Detection", "PoseResult", "ModelManager", "Tracker", "PoseSmoother"]
__all__ += ["ResNetConfig", "draw_skeleton"]
__version__ = "0.1.0"

# name -> submodule that defines it, imported on first use
_LAZY = {"RTMO": "model", "ModelManager": "hub.zoo", "Detection": "infer.results",
         "PoseResult": "infer.results", "Tracker": "infer", "PoseSmoother": "infer",
         "draw_skeleton": "infer.draw"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'rtmo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
