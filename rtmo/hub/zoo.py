"""Official checkpoints: registry, download with checksum into a cache, loading and architecture detection."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import PRECISIONS, KeypointInfo, ResNetConfig, RTMOConfig, keypoint_info_for
from ..ops.checks import check_input_size
from ..utils.checkpoint import CheckpointError, load_checkpoint
from ..utils.downloads import (  # noqa: F401 - re-exported: rtmo.hub.zoo is where users look for them
    BACKBONES,
    CACHE_ENV,
    BackboneEntry,
    DownloadError,
    backbone_checkpoint,
    cache_dir,
    cached_or_download,
    sha256_of,
)
from ..utils.memory import keep_freed_memory

if TYPE_CHECKING:
    import torch

    from ..infer.backend import PoseBackend
    from ..model import RTMO

log = logging.getLogger(__name__)

BASE_URL = "https://download.openmmlab.com/mmpose/v1/projects/rtmo/"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    filename: str  # as published; carries the first 8 hex digits of the file's sha256
    variant: str  # t / s / m / l
    num_keypoints: int
    input_size: tuple[int, int]
    train_data: str
    eval_data: str  # what `ap` was measured on
    ap: float  # published AP (COCO val2017 or CrowdPose test)
    mirrors: tuple[str, ...] = ()  # other addresses for the same file

    @property
    def sha256_prefix(self) -> str:
        m = re.search(r"-([0-9a-f]{8})_\d{8}\.pth$", self.filename)
        assert m, self.filename
        return m.group(1)

    @property
    def url(self) -> str:
        return BASE_URL + self.filename

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.mirrors)

    @property
    def keypoint_info(self):
        return keypoint_info_for(self.num_keypoints)

    def config(self) -> RTMOConfig:
        cfg = RTMOConfig.preset(self.variant, self.num_keypoints)
        cfg.input_size = self.input_size
        return cfg


def _entry(name: str, filename: str, ap: float, mirrors: tuple[str, ...] = ()) -> ZooEntry:
    variant = name.split("-")[1]
    crowd = name.endswith("crowdpose")
    side = 416 if variant == "t" else 640
    train = name.split("-", 2)[2]
    return ZooEntry(name, filename, variant, 14 if crowd else 17, (side, side), train,
                    "CrowdPose test" if crowd else "COCO val2017", ap, mirrors)


# Published numbers: mmpose's projects/rtmo model zoo (single scale, no flip).
REGISTRY: dict[str, ZooEntry] = {e.name: e for e in (
    _entry("rtmo-s-coco", "rtmo-s_8xb32-600e_coco-640x640-8db55a59_20231211.pth", 0.677),
    _entry("rtmo-m-coco", "rtmo-m_16xb16-600e_coco-640x640-6f4e0306_20231211.pth", 0.709),
    _entry("rtmo-l-coco", "rtmo-l_16xb16-600e_coco-640x640-516a421f_20231211.pth", 0.724),
    _entry("rtmo-t-body7", "rtmo-t_8xb32-600e_body7-416x416-f48f75cb_20231219.pth", 0.574),
    _entry("rtmo-s-body7", "rtmo-s_8xb32-600e_body7-640x640-dac2bf74_20231211.pth", 0.686),
    _entry("rtmo-m-body7", "rtmo-m_16xb16-600e_body7-640x640-39e78cc4_20231211.pth", 0.726),
    _entry("rtmo-l-body7", "rtmo-l_16xb16-600e_body7-640x640-b37118ce_20231211.pth", 0.748),
    _entry("rtmo-s-crowdpose", "rtmo-s_8xb32-700e_crowdpose-640x640-79f81c0d_20231211.pth", 0.673),
    # mmpose's README links this file with a doubled "r"; try that address too.
    _entry("rtmo-m-crowdpose", "rtmo-m_16xb16-700e_crowdpose-640x640-0eaf670d_20231211.pth", 0.711,
           (BASE_URL + "rrtmo-m_16xb16-700e_crowdpose-640x640-0eaf670d_20231211.pth",)),
    _entry("rtmo-l-crowdpose", "rtmo-l_16xb16-700e_crowdpose-640x640-1008211f_20231211.pth", 0.732),
    _entry("rtmo-l-body7-crowdpose", "rtmo-l_16xb16-700e_body7-crowdpose-640x640-5bafdc11_20231219.pth",
           0.838),
)}


# ------------------------------------------------------------------------------------------ cache

def cached_path(name: str) -> Path | None:
    """The cached file of a registry entry if it is there (not re-verified), else None."""
    entry = REGISTRY[name]
    p = cache_dir() / entry.filename
    return p if p.is_file() else None


def fetch(name: str, download_missing: bool = True, progress: bool = True) -> Path:
    """Path of a registry checkpoint, downloading it if needed; verified against its sha256 prefix."""
    return cached_or_download(REGISTRY[name], download_missing, progress)


# ------------------------------------------------------------------------------------------ loading

def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) from an mmpose checkpoint (published or mmengine format), our own training
    checkpoint, or a bare state dict. Read by `rtmo.utils.checkpoint.load_checkpoint`, which never runs
    code."""
    import torch

    p = Path(path)
    obj = load_checkpoint(p)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a dict, found {type(obj).__name__}")
    meta = obj.get("meta", {}) if isinstance(obj.get("meta", {}), dict) else {}
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict) or not any(torch.is_tensor(v) for v in sd.values()):
        raise CheckpointError(f"{p}: no state dict with tensors inside (keys: {list(obj)[:8]})")
    sd = {k: v for k, v in sd.items() if torch.is_tensor(v)}
    for prefix in ("module.", "model."):  # DDP / wrapper prefixes
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    # Old mmpose checkpoints may carry the (non-persistent) preprocessor buffers.
    sd = {k: v for k, v in sd.items() if not k.startswith("data_preprocessor.")}
    return sd, meta


_STEM_WIDTH_TO_VARIANT = {24: "t", 32: "s", 48: "m", 64: "l"}


# pose-branch width 8 * int(36 * widen_factor) -> variant (sizes neck and head of a ResNet-backbone model)
_POSE_WIDTH_TO_VARIANT = {104: "t", 144: "s", 216: "m", 288: "l"}


def _resnet_config(state_dict: dict[str, torch.Tensor], variant: str) -> ResNetConfig:
    if "backbone.layer1.0.conv3.weight" in state_dict:
        depth = 50
    else:
        depth = 34 if "backbone.layer3.2.conv1.weight" in state_dict else 18
    p = RTMOConfig.preset(variant)
    return ResNetConfig(depth=depth, widen_factor=p.widen_factor, deepen_factor=p.deepen_factor)


def detect_config(state_dict: dict[str, torch.Tensor], meta: dict | None = None) -> RTMOConfig:
    """Architecture (variant, backbone, keypoint count, input size) from tensor shapes (and meta)."""
    stem = state_dict.get("backbone.stem.conv.conv.weight")
    vis = state_dict.get("head.head_module.out_kpt_vis.0.weight")
    resnet = "backbone.conv1.weight" in state_dict and "backbone.layer1.0.conv1.weight" in state_dict
    if (stem is None and not resnet) or vis is None:
        raise CheckpointError("not an RTMO checkpoint: missing backbone.stem.conv.conv.weight (or a ResNet "
                              "backbone) or head.head_module.out_kpt_vis.0.weight")
    if resnet:
        variant = _POSE_WIDTH_TO_VARIANT.get(int(vis.shape[1]))
        if variant is None:
            raise CheckpointError(f"unknown pose-branch width {vis.shape[1]} (expected one of "
                                  f"{sorted(_POSE_WIDTH_TO_VARIANT)})")
    else:
        variant = _STEM_WIDTH_TO_VARIANT.get(int(stem.shape[0]))
        if variant is None:
            raise CheckpointError(f"unknown backbone width {stem.shape[0]} (expected one of "
                                  f"{sorted(_STEM_WIDTH_TO_VARIANT)} for RTMO-t/s/m/l)")
    cfg = RTMOConfig.preset(variant, int(vis.shape[0]))
    if resnet:
        cfg.backbone_config = _resnet_config(state_dict, variant)
    size = _input_size_from_meta(meta or {})
    if size is not None:
        try:
            cfg.input_size = check_input_size(size)
        except ValueError as e:  # a 0 or 100000 here would divide by zero or ask for a huge canvas
            raise CheckpointError(f"checkpoint meta: {e}") from None
    return cfg


def _input_size_from_meta(meta: dict) -> tuple[int, int] | None:
    if isinstance(meta.get("input_size"), (list, tuple)) and len(meta["input_size"]) == 2:
        return tuple(int(v) for v in meta["input_size"])
    cfg_text = meta.get("cfg") or meta.get("config")
    if isinstance(cfg_text, str):
        m = re.search(r"input_size\s*=\s*\((\d+)\s*,\s*(\d+)\)", cfg_text)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def _keypoint_info_from_meta(meta: dict, num_keypoints: int) -> KeypointInfo | None:
    """The keypoint set our trainer records in `meta` (custom names, skeleton and sigmas); None otherwise."""
    d = meta.get("keypoint_info")
    if not isinstance(d, dict):
        return None
    try:
        info = KeypointInfo.from_dict(d)
    except ValueError as e:
        raise CheckpointError(f"checkpoint meta: {e}") from None
    if info.num_keypoints != num_keypoints:
        raise CheckpointError(f"checkpoint meta describes {info.num_keypoints} keypoints, the weights "
                              f"{num_keypoints}")
    return info


def load_state_dict_checked(model: RTMO, state_dict: dict[str, torch.Tensor]) -> None:
    """Strict load with an error that lists what is missing, unexpected or of the wrong shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        def show(title: str, items: list[str]) -> str:
            more = f" … and {len(items) - 10} more" if len(items) > 10 else ""
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:10]) + more if items else ""

        raise CheckpointError("checkpoint does not fit this RTMO architecture"
                              + show("missing", missing) + show("unexpected", unexpected)
                              + show("shape mismatch", mismatched))
    model.load_state_dict(state_dict, strict=True)


EXPORTED_SUFFIXES = (".onnx", ".xml", ".engine", ".plan", ".trt")


class ModelManager:
    """`ModelManager.get("rtmo-s-coco")`, `ModelManager.get("path/to/checkpoint.pth")` or an exported
    model: `ModelManager.get("rtmo-s.onnx")` (ours or mmdeploy's end2end.onnx), `"model.xml"` (OpenVINO IR),
    `"model.engine"` (TensorRT). All offer the same `infer` / `predict`."""

    @staticmethod
    def list() -> list[str]:
        return list(REGISTRY)

    @staticmethod
    def get(name_or_path: str | os.PathLike, device: Any = None, config: RTMOConfig | None = None,
            input_size: tuple[int, int] | None = None, download: bool = True, progress: bool = True,
            backend: str | None = None, num_threads: int | None = None, precision: str = "fp32",
            fast: bool = False) -> PoseBackend:
        """A ready model in eval mode (a `rtmo.infer.backend.PoseBackend`).

        Checkpoints (registry names, .pth): an `RTMO` on `device` (None: CUDA when available, else CPU),
        at `precision` 'fp32' | 'bf16' | 'fp16' (see `RTMO.set_precision`; `fast=True`: fused, channels-last
        fp32, within float rounding of the bit-exact default); `num_threads` sets torch's
        intra-op threads. Exported files (.onnx, .xml, .engine) open with their runtime, never importing
        torch for ONNX Runtime / OpenVINO: `backend` 'onnxruntime' | 'openvino' | 'tensorrt' (default by
        suffix), `num_threads` (default: the physical cores), `device`, `precision` (see
        `rtmo.export.runtime.load_exported`); they already run as `fast=True` would make them (their
        runtime folds BatchNorm, `rtmo.export.optimize` rewrites the DCC), so `fast` changes nothing there."""
        keep_freed_memory()  # an inference process: reuse what each call frees (rtmo.utils.memory)
        if input_size is not None:
            input_size = check_input_size(input_size)
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 1):
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
        key = str(name_or_path)
        if Path(key).suffix.lower() in EXPORTED_SUFFIXES:
            from ..export.runtime import load_exported

            model = load_exported(key, backend=backend, num_threads=num_threads, device=device,
                                  precision=precision)
            if input_size is not None and tuple(input_size) != tuple(model.input_size):
                raise ValueError(f"input_size {input_size}: {Path(key).name} was exported for "
                                 f"{model.input_size[0]}x{model.input_size[1]}; export it again at that size")
            return model
        if backend not in (None, "torch"):
            raise ValueError(f"backend {backend!r} runs exported files; export {key} first (rtmo export "
                             f"--model {key}) or use backend='torch'")
        try:
            import torch
        except ImportError:
            raise ImportError(f"{key}: checkpoints need PyTorch: pip install \"rtmo[torch]\" (exported "
                              ".onnx / .xml models run without it)") from None
        from ..model import RTMO
        from ..utils.device import resolve_device

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        dev = resolve_device(device)  # before loading: a bad device spec fails in a second
        entry = REGISTRY.get(key)
        if entry is not None:
            path = fetch(entry.name, download_missing=download, progress=progress)
            state_dict, meta = read_checkpoint(path)
            config = config or entry.config()
            source = {"name": entry.name, "path": str(path)}
        else:
            if not Path(key).exists():
                close = [n for n in REGISTRY if key.lower() in n] or list(REGISTRY)
                raise CheckpointError(f"{key!r} is neither a registry name nor an existing file. "
                                      f"Registry names: {', '.join(close)}")
            state_dict, meta = read_checkpoint(key)
            config = config or detect_config(state_dict, meta)
            source = {"name": Path(key).stem, "path": str(Path(key).resolve())}
        if input_size is not None:
            config.input_size = tuple(input_size)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        model = RTMO(config, keypoint_info=_keypoint_info_from_meta(meta, config.num_keypoints))
        load_state_dict_checked(model, state_dict)
        model.checkpoint_info = {**source, "sha256": sha256_of(source["path"])}
        model.eval().to(dev)
        return model.set_precision(precision, fast=fast)
