"""Typed configuration: architecture presets for RTMO-t/s/m/l and keypoint metadata."""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Keypoint metadata
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeypointInfo:
    """Names, skeleton, flip partners and OKS sigmas of a keypoint set."""

    name: str
    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    flip_indices: tuple[int, ...]
    sigmas: tuple[float, ...]

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"name": self.name, "names": list(self.names), "skeleton": [list(e) for e in self.skeleton],
                "flip_indices": list(self.flip_indices), "sigmas": list(self.sigmas)}

    @classmethod
    def from_dict(cls, d: dict) -> KeypointInfo:
        """The inverse of `to_dict` (e.g. from a checkpoint's meta), checked for consistency."""
        try:
            info = cls(str(d["name"]), tuple(str(n) for n in d["names"]),
                       tuple((int(a), int(b)) for a, b in d.get("skeleton", ())),
                       tuple(int(i) for i in d["flip_indices"]), tuple(float(s) for s in d["sigmas"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed keypoint info {d!r}: {e}") from None
        k = info.num_keypoints
        if len(info.sigmas) != k or sorted(info.flip_indices) != list(range(k)):
            raise ValueError(f"keypoint info {info.name!r}: sigmas/flip_indices do not match {k} names")
        return info

    def side(self, index: int) -> str:
        """'left', 'right' or 'center' — used to colour limbs."""
        n = self.names[index]
        if n.startswith("left"):
            return "left"
        if n.startswith("right"):
            return "right"
        return "center"


COCO_KEYPOINTS = KeypointInfo(
    name="coco",
    names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
        "left_wrist", "right_wrist", "left_hip", "right_hip",
        "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    # 0-based version of the COCO `skeleton` field of person_keypoints_*.json
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
        (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
    flip_indices=(0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15),
    sigmas=(
        0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
        0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
    ),
)

CROWDPOSE_KEYPOINTS = KeypointInfo(
    name="crowdpose",
    names=(
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
        "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
        "top_head", "neck",
    ),
    skeleton=(
        (12, 13), (13, 0), (13, 1), (0, 2), (2, 4), (1, 3), (3, 5), (13, 6), (13, 7),
        (6, 7), (6, 8), (8, 10), (7, 9), (9, 11),
    ),
    flip_indices=(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13),
    sigmas=(0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
            0.079, 0.079),
)


def keypoint_info_for(num_keypoints: int) -> KeypointInfo:
    """Built-in metadata for a keypoint count (17 → COCO, 14 → CrowdPose)."""
    if num_keypoints == 17:
        return COCO_KEYPOINTS
    if num_keypoints == 14:
        return CROWDPOSE_KEYPOINTS
    names = tuple(f"kpt_{i}" for i in range(num_keypoints))
    return KeypointInfo(f"custom{num_keypoints}", names, (), tuple(range(num_keypoints)),
                        (0.05,) * num_keypoints)


# ---------------------------------------------------------------------------------------------
# Architecture
# ---------------------------------------------------------------------------------------------

_CSP_SIZES = {  # size -> (deepen_factor, widen_factor)
    "tiny": (0.33, 0.375),
    "small": (0.33, 0.5),
    "medium": (0.67, 0.75),
    "large": (1.0, 1.0),
}


# Inference precisions a model can run at ("fp32" is the bit-exact default); the torch model and the
# exported runtimes accept the same names.
PRECISIONS = ("fp32", "bf16", "fp16")

# The YOLOX detector whose backbone the official RTMO configs start from, per CSPDarknet size.
CSP_PRETRAINED = {"tiny": "yolox-tiny", "small": "yolox-s", "medium": "yolox-m", "large": "yolox-l"}


@dataclass
class CSPConfig:
    """CSPDarknet (YOLOX, arch P5) backbone. `size` picks deepen/widen factors unless given.

    `use_pretrained=True` initialises it from the YOLOX detector the official configs name for its size
    (`CSP_PRETRAINED`, see `rtmo.utils.downloads.BACKBONES`; downloaded once into the cache,
    checksum-verified; offline, an error names the file and where to put it), or from `pretrained` (a
    file, a registry name or a URL) when given. False: random initialisation.
    """

    size: str = "small"
    deepen_factor: float | None = None
    widen_factor: float | None = None
    out_indices: tuple[int, ...] = (2, 3, 4)
    spp_kernel_sizes: tuple[int, ...] = (5, 9, 13)
    use_pretrained: bool = False
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if self.size not in _CSP_SIZES:
            raise ValueError(f"CSPConfig.size must be one of {sorted(_CSP_SIZES)}, got {self.size!r}")
        d, w = _CSP_SIZES[self.size]
        if self.deepen_factor is None:
            self.deepen_factor = d
        if self.widen_factor is None:
            self.widen_factor = w

    @property
    def out_channels(self) -> tuple[int, ...]:
        widths = (int(64 * self.widen_factor),) + tuple(int(c * self.widen_factor)
                                                         for c in (128, 256, 512, 1024))
        return tuple(widths[i] for i in self.out_indices)


@dataclass
class ResNetConfig:
    """ResNet-18/34/50 backbone with torchvision parameter names (ImageNet weights load from a local file).

    The neck and head have no backbone of their own to take widths from, so `widen_factor` and
    `deepen_factor` size them (defaults: those of RTMO-s). `pretrained`: a torchvision state dict file
    loaded at construction; `use_pretrained=True` without it takes torchvision's ImageNet weights for the
    depth from the registry (`resnet18`/`resnet34`/`resnet50`, cached and checksum-verified).
    """

    depth: int = 18
    out_indices: tuple[int, ...] = (2, 3, 4)  # layer2..layer4: strides 8, 16, 32
    widen_factor: float = 0.5
    deepen_factor: float = 0.33
    pretrained: str | None = None  # path to a torchvision state dict (e.g. resnet18-f37072fd.pth)
    use_pretrained: bool = False

    def __post_init__(self) -> None:
        if self.depth not in (18, 34, 50):
            raise ValueError(f"ResNetConfig.depth must be 18, 34 or 50, got {self.depth}")

    @property
    def out_channels(self) -> tuple[int, ...]:
        expansion = 4 if self.depth == 50 else 1
        widths = (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)
        return tuple(widths[i] for i in self.out_indices)


@dataclass
class RTMOConfig:
    """Every architecture parameter of RTMO. Use `RTMOConfig.preset("s")` for the official ones."""

    num_classes: int = 1
    num_keypoints: int = 17
    backbone_config: CSPConfig | ResNetConfig = field(default_factory=CSPConfig)
    input_size: tuple[int, int] = (640, 640)  # (w, h)
    # neck (HybridEncoder)
    hidden_dim: int = 256
    transformer_embed_dims: int = 256
    transformer_num_heads: int = 8
    transformer_feedforward_channels: int = 1024
    transformer_dropout: float = 0.0
    transformer_encoder_layers: int = 1
    pe_temperature: float = 10000.0
    neck_out_channels: int = 256  # projector width, = pose_vec_channels in the official configs
    # head
    in_channels: int = 256  # per-branch input before widening
    cls_feat_channels: int = 256
    channels_per_group: int = 36
    num_groups: int = 8
    pose_vec_channels: int = 256
    stacked_convs: int = 2
    featmap_strides: tuple[int, ...] = (16, 32)
    bbox_padding: float = 1.25
    # grid-prior generator (mmpose's MlvlPointGenerator): one stride per head level, and whether points
    # sit at cell centres (x = col * stride + (stride - 1) / 2, what the official checkpoints need) or at
    # cell corners (x = col * stride)
    featmap_strides_pointgenerator: tuple[int, ...] = (16, 32)
    centralize_points_pointgenerator: bool = True
    # DCC
    feat_channels_dcc: int = 128
    num_bins: tuple[int, int] = (192, 256)
    spe_channels: int = 128
    spe_temperature: float = 300.0
    gau_s: int = 128
    gau_expansion_factor: int = 2
    gau_dropout_rate: float = 0.0
    # test settings
    score_thr: float = 0.1
    nms_thr: float = 0.65

    def __post_init__(self) -> None:
        strides = tuple(self.featmap_strides_pointgenerator)
        if len(strides) != len(self.featmap_strides) or not all(isinstance(s, int) and s > 0
                                                                for s in strides):
            raise ValueError(f"featmap_strides_pointgenerator must give one positive integer stride per head "
                             f"level ({len(self.featmap_strides)}), got {strides!r}")
        self.featmap_strides_pointgenerator = strides

    @property
    def widen_factor(self) -> float:
        return float(self.backbone_config.widen_factor)

    @property
    def deepen_factor(self) -> float:
        return float(self.backbone_config.deepen_factor)

    @classmethod
    def preset(cls, variant: str, num_keypoints: int = 17) -> RTMOConfig:
        """Official architecture of RTMO-{t,s,m,l} for `num_keypoints` keypoints."""
        sizes = {"t": "tiny", "s": "small", "m": "medium", "l": "large"}
        if variant not in sizes:
            raise ValueError(f"unknown RTMO variant {variant!r}; expected one of t, s, m, l")
        backbone = CSPConfig(size=sizes[variant])
        width = {"t": 192, "s": 256, "m": 384, "l": 512}[variant]
        side = 416 if variant == "t" else 640
        return cls(
            num_keypoints=num_keypoints,
            backbone_config=backbone,
            input_size=(side, side),
            neck_out_channels=width,
            pose_vec_channels=width,
        )

    @property
    def variant(self) -> str | None:
        """'t'/'s'/'m'/'l' if this config is an official architecture, else None."""
        for v in "tsml":
            p = RTMOConfig.preset(v, self.num_keypoints)
            p.input_size = self.input_size
            p.score_thr, p.nms_thr = self.score_thr, self.nms_thr
            if isinstance(self.backbone_config, CSPConfig):  # how it was initialised is not architecture
                p.backbone_config.use_pretrained = self.backbone_config.use_pretrained
                p.backbone_config.pretrained = self.backbone_config.pretrained
            if p == self:
                return v
        return None
