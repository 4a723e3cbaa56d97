"""RTMO: backbone -> neck -> head -> `rtmo.decode` (select, NMS, DCC), plus the user-facing `infer` /
`predict` (`rtmo.infer.backend.PoseAPI`) and `export`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import (
    CSP_PRETRAINED,
    PRECISIONS,
    CSPConfig,
    KeypointInfo,
    ResNetConfig,
    RTMOConfig,
    keypoint_info_for,
)
from .decode import decode
from .infer.backend import PoseAPI
from .nn.backbone import CSPDarknet
from .nn.head import HeadMaps, RTMOHead, flatten_maps
from .nn.neck import HybridEncoder
from .ops.boxes import grid_priors
from .ops.checks import check_fraction
from .outputs import KeypointOutput, RTMOLoss, RTMOModelOutput


class RTMO(PoseAPI, nn.Module):
    """The RTMO network. `model(images)` takes a float (B,3,H,W) BGR 0..255 batch (H, W multiples of 32)
    and returns `RTMOModelOutput(outputs=KeypointOutput)` in network-input pixels. Implements
    `rtmo.infer.backend.PoseBackend` (`predict_batch`, `infer`, `predict`)."""

    def __init__(self, config: RTMOConfig | None = None, keypoint_info: KeypointInfo | None = None):
        super().__init__()
        self.config = config = config or RTMOConfig()
        self.keypoint_info = keypoint_info or keypoint_info_for(config.num_keypoints)
        if self.keypoint_info.num_keypoints != config.num_keypoints:
            raise ValueError(f"keypoint_info has {self.keypoint_info.num_keypoints} keypoints, "
                             f"config has {config.num_keypoints}")
        if isinstance(config.backbone_config, ResNetConfig):
            from .nn.resnet import ResNet

            self.backbone: nn.Module = ResNet(config.backbone_config)
        else:
            self.backbone = CSPDarknet(config.backbone_config)
        bb = config.backbone_config
        if bb.use_pretrained or (isinstance(bb, ResNetConfig) and bb.pretrained):
            load_pretrained_backbone(self.backbone, bb)
        self.neck = HybridEncoder(self.backbone.out_channels, config)
        self.head = RTMOHead(config, self.keypoint_info.sigmas)
        self.class_names: tuple[str, ...] = ("person",)
        self.checkpoint_info: dict[str, Any] = {}
        self.precision = "fp32"  # see set_precision
        self.fast = False  # fused, channels-last float32 (set_precision(fast=True))
        self._priors_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # The training losses of the current stage, `criterion(model, images, targets) -> RTMOLoss`; set by
        # the trainer (a plain attribute, not a submodule: it holds settings, no weights).
        self.criterion: Callable[[RTMO, torch.Tensor, Any], RTMOLoss] | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.config.input_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ network
    def forward_maps(self, images: torch.Tensor, with_kpt_reg: bool = False) -> HeadMaps:
        return self.head(self.neck(self.backbone(images)), with_kpt_reg)

    def priors(self, maps: HeadMaps) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = [tuple(m.shape[2:]) for m in maps.cls]
        key = (tuple(sizes), maps.cls[0].device)
        if key not in self._priors_cache:
            self._priors_cache[key] = grid_priors(sizes, self.config.featmap_strides_pointgenerator,
                                                  maps.cls[0].device,
                                                  self.config.centralize_points_pointgenerator)
        return self._priors_cache[key]

    def forward(self, images: torch.Tensor, targets: Any = None, threshold: float | None = None,
                nms_threshold: float | None = None) -> RTMOModelOutput:
        """`model(images)` -> `RTMOModelOutput(outputs=KeypointOutput)`: the batch's detections padded to the
        largest count (see `rtmo.outputs`); `model(images, targets)` -> `RTMOModelOutput(loss=RTMOLoss)`:
        the training losses (`targets`: one `rtmo.train.losses.Targets` per image)."""
        if targets is not None:
            if self.criterion is None:
                raise ValueError("model(images, targets) needs model.criterion, which is not set: "
                                 "model.criterion = rtmo.train.losses.Criterion.from_recipe(recipe, epoch)")
            return RTMOModelOutput(loss=self.criterion(self, images, targets))
        return RTMOModelOutput(outputs=self.predict_batch(images, threshold, nms_threshold))

    @torch.no_grad()
    def predict_batch(self, batch: torch.Tensor | np.ndarray, threshold: float | None = None,
                      nms_threshold: float | None = None) -> KeypointOutput:
        """Detections of a batch in network-input pixels, boxes clamped to the input canvas, padded to the
        largest count (`rtmo.decode.decode`).

        `batch`: float (B,3,H,W) BGR 0..255, a tensor or a numpy array (moved to the model's device).
        `threshold` / `nms_threshold` in [0, 1]; None means the config's (score 0.1, IoU 0.65).
        """
        threshold = check_fraction(threshold, "threshold")
        nms_threshold = check_fraction(nms_threshold, "nms_threshold")
        score_thr = self.config.score_thr if threshold is None else threshold
        nms_thr = self.config.nms_thr if nms_threshold is None else nms_threshold
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        images = batch.to(self.device)
        maps = self._forward_maps_at_precision(images)
        priors, strides = self.priors(maps)
        return decode(self.head.dcc, flatten_maps(maps.cls), flatten_maps(maps.bbox), flatten_maps(maps.vis),
                      flatten_maps(maps.pose), priors, strides, (images.shape[2], images.shape[3]), score_thr,
                      nms_thr, self.config.bbox_padding)

    def _forward_maps_at_precision(self, images: torch.Tensor) -> HeadMaps:
        if self.precision == "fp32" and not self.fast:
            return self.forward_maps(images)  # the bit-exact path: contiguous NCHW, unfused
        # Channels-last activations to match the channels-last weights (oneDNN's native layout: no
        # reorder per convolution). Reduced precision runs the network under autocast; selection, NMS
        # and DCC stay in float32 (the maps are cast back), so it only touches convolutions and attention.
        images = images.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            return self.forward_maps(images)
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(images.device.type, dtype=dtype):
            maps = self.forward_maps(images)
        return HeadMaps(*[None if m is None else [x.float() for x in m]
                          for m in (maps.cls, maps.bbox, maps.kpt_reg, maps.vis, maps.pose)])

    def set_precision(self, precision: str = "fp32", fast: bool = False) -> RTMO:
        """Inference precision: 'fp32' (default, bit-exact with mmpose), 'bf16' (CPUs with AVX512-BF16 or
        AMX, CUDA GPUs with bf16) or 'fp16' (CUDA). Reduced precision also fuses BatchNorm/RepVGG (`fuse`,
        irreversible) and stores weights channels-last.

        `fast=True` with 'fp32' does the same in float32 (fused BatchNorm/RepVGG, channels-last, one fused
        SiLU for mmpose's two-op Swish): outputs within float rounding of the bit-exact mode, not identical
        (folding BatchNorm and the DCC's reassociated bin products reorder the arithmetic;
        bench/bench_all.py measures the deviation). Reduced precisions are always fast. Call after moving
        the model to its device. Raises ValueError when the device lacks the precision."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        fast = bool(fast) or precision != "fp32"
        was_fast = self.fast or self.precision != "fp32"
        if precision == self.precision and fast == was_fast:
            return self
        if was_fast and not fast:  # fusing is irreversible
            raise ValueError(f"precision is already {self.precision!r}"
                             f"{' (fast)' if self.precision == 'fp32' else ''}; load the model again for "
                             "the bit-exact fp32 mode")
        if precision != "fp32":
            _check_precision_supported(precision, self.device)
        if fast and not was_fast:
            from .nn.layers import ConvModule, Swish

            self.eval().fuse()
            for module in self.modules():  # one fused pass instead of sigmoid then multiply (last-bit change)
                if isinstance(module, ConvModule) and isinstance(module.activate, Swish):
                    module.activate = nn.SiLU(inplace=True)  # its input is the fresh conv output
            self.to(memory_format=torch.channels_last)
            self.head.dcc.fast = True
            self.fast = True
        self.precision = precision
        return self

    # ------------------------------------------------------------------ user API (infer, predict: PoseAPI)
    def export(self, format: str = "onnx", path: str | None = None, **kwargs: Any) -> Any:
        """Write a deployable file and return its path: `rtmo.export.export(self, path, format, ...)`
        ('onnx', 'openvino', 'tensorrt'; kwargs as `rtmo.export.export_onnx`)."""
        from .export import export

        return export(self, path, format=format, **kwargs)

    @torch.no_grad()
    def fuse(self) -> RTMO:
        """Fold every BatchNorm2d into the convolution before it and each RepVGG block into one 3x3 conv,
        for faster inference. Outputs change at float-rounding level only (~1e-6 relative); the unfused
        model is the one that is bit-identical to mmpose. Irreversible: call on an eval-mode model."""
        from .nn.layers import ConvModule
        from .nn.neck import RepVGGBlock

        for module in self.modules():
            if isinstance(module, ConvModule) and isinstance(module.bn, nn.BatchNorm2d):
                module.conv = _fold_bn(module.conv, module.bn)
                module.bn = nn.Identity()
        for module in self.modules():
            if isinstance(module, RepVGGBlock):
                module.fuse()
        return self


def load_pretrained_backbone(backbone: nn.Module, cfg: CSPConfig | ResNetConfig,
                             source: str | None = None) -> None:
    """Initialise `backbone` from pretrained weights: `source` or `cfg.pretrained` (a file, a registry name
    of `rtmo.utils.downloads.BACKBONES` or a URL), by default the registry entry for the backbone
    (`CSP_PRETRAINED[size]`, a YOLOX detector whose `backbone.*` weights are copied, as the official
    configs' `init_cfg` does; or torchvision's ImageNet ResNet of that depth). Downloads are verified;
    offline, `DownloadError` names the file and where to put it."""
    from .utils.checkpoint import CheckpointError, load_checkpoint
    from .utils.downloads import backbone_checkpoint

    if isinstance(cfg, ResNetConfig):  # a torchvision state dict; its `fc.*` classifier is dropped
        source = source or cfg.pretrained or f"resnet{cfg.depth}"
        sd = load_checkpoint(backbone_checkpoint(source))
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else None
        if not isinstance(sd, dict):
            raise CheckpointError(f"{source}: not a torchvision ResNet state dict")
        try:
            backbone.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")}, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{source}: does not fit this ResNet-{cfg.depth} backbone "
                                  f"({' '.join(str(e).split())[:200]})") from None
        return
    source = source or cfg.pretrained or CSP_PRETRAINED[cfg.size]
    obj = load_checkpoint(backbone_checkpoint(source))
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    sub = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if not sub:
        raise CheckpointError(f"{source}: no 'backbone.*' weights (expected a YOLOX detector checkpoint)")
    missing, unexpected = backbone.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit this CSPDarknet-{cfg.size}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def cpu_has_bf16() -> bool:
    """AVX512-BF16 or AMX units: where oneDNN runs bf16 convolutions natively (elsewhere it emulates them,
    slower than fp32)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    if flags:
        return " avx512_bf16" in flags or " amx_bf16" in flags
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # no /proc: ask oneDNN
    return bool(check()) if check is not None else False


def _check_precision_supported(precision: str, device: torch.device) -> None:
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision 'bf16': {torch.cuda.get_device_name(device)} has no bf16 support; "
                             "use 'fp16'")
        return
    if device.type != "cpu":
        raise ValueError(f"precision {precision!r} is not offered on {device.type} devices")
    if precision == "fp16":
        raise ValueError("precision 'fp16' needs a CUDA device; on CPUs use 'bf16' (AVX512-BF16/AMX), or "
                         "an OpenVINO export")
    if not cpu_has_bf16():
        raise ValueError("precision 'bf16': this CPU has no AVX512-BF16/AMX units (bf16 would be emulated, "
                         "slower than fp32); use 'fp32'")


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      groups=conv.groups, bias=True).to(conv.weight.device)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def num_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
