"""Official checkpoints: registry, download with checksum into a cache, loading and architecture detection."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import KeypointInfo, ResNetConfig, RTMOConfig, keypoint_info_for
from .ops.checks import check_input_size

if TYPE_CHECKING:
    from .model import RTMO


class _LazyTorch:
    """`torch`, imported on first attribute use: opening an exported model (.onnx/.xml) through this
    module must work where torch is not installed; only checkpoint paths touch it."""

    def __getattr__(self, name: str) -> Any:
        import torch as _torch

        return getattr(_torch, name)


torch = _LazyTorch()

log = logging.getLogger(__name__)

BASE_URL = "https://download.openmmlab.com/mmpose/v1/projects/rtmo/"
CACHE_ENV = "RTMO_CACHE_DIR"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, or not an RTMO state dict."""


class DownloadError(RuntimeError):
    """A checkpoint that could not be fetched; the message says what to download and where to put it."""


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


@dataclass(frozen=True)
class BackboneEntry:
    """A YOLOX detector checkpoint whose `backbone.*` weights initialise RTMO training (§10.12)."""

    name: str
    url: str
    sha256_prefix: str  # from the published file name; "" where the publisher gives none

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url,)


_MMDET_YOLOX = "https://download.openmmlab.com/mmdetection/v2.0/yolox/"
# The addresses the official RTMO configs name in `backbone.init_cfg`. mmdet's files carry the first 8 hex
# digits of their sha256; mmpose's yolox_m copy does not, so that one cannot be verified.
BACKBONES: dict[str, BackboneEntry] = {e.name: e for e in (
    BackboneEntry("yolox-tiny", _MMDET_YOLOX + "yolox_tiny_8x8_300e_coco/"
                  "yolox_tiny_8x8_300e_coco_20211124_171234-b4047906.pth", "b4047906"),
    BackboneEntry("yolox-s", _MMDET_YOLOX + "yolox_s_8x8_300e_coco/"
                  "yolox_s_8x8_300e_coco_20211121_095711-4592a793.pth", "4592a793"),
    BackboneEntry("yolox-m", "https://download.openmmlab.com/mmpose/v1/pretrained_models/"
                  "yolox_m_8x8_300e_coco_20230829.pth", ""),
    BackboneEntry("yolox-l", _MMDET_YOLOX + "yolox_l_8x8_300e_coco/"
                  "yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth", "d3bd2b23"),
)}


def backbone_checkpoint(source: str | os.PathLike, download_missing: bool = True,
                        progress: bool = True) -> Path:
    """Local path of a backbone checkpoint given as a file, a `BACKBONES` name or its URL: taken from the
    cache when there (checksum verified), else downloaded with the same checks as model checkpoints."""
    text = str(source)
    entry = BACKBONES.get(text) or next((e for e in BACKBONES.values() if e.url == text), None)
    if entry is None:
        if text.startswith(("http://", "https://")):
            m = re.search(r"-([0-9a-f]{8})\.pth$", text)
            entry = BackboneEntry(text.rsplit("/", 1)[-1], text, m.group(1) if m else "")
        else:
            path = Path(text).expanduser()
            if not path.is_file():
                known = ", ".join(BACKBONES)
                raise FileNotFoundError(f"backbone checkpoint not found: {path} (give a file, a URL or one "
                                        f"of {known})")
            return path
    if not entry.sha256_prefix and download_missing and not (cache_dir() / entry.filename).is_file():
        log.warning("%s has no published checksum: a download cannot be verified", entry.url)
    return _cached_or_download(entry, download_missing, progress)


# ------------------------------------------------------------------------------------------ cache

def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rtmo").expanduser()


def cached_path(name: str) -> Path | None:
    """The cached file of a registry entry if it is there (not re-verified), else None."""
    entry = REGISTRY[name]
    p = cache_dir() / entry.filename
    return p if p.is_file() else None


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key in _SHA_CACHE:
        return _SHA_CACHE[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _manual_hint(entry: ZooEntry | BackboneEntry, dest: Path) -> str:
    return (f"Download it yourself from {entry.url}\n  and save it as {dest}\n"
            f"  (or set {CACHE_ENV} to the folder that holds it, or pass the .pth path instead of the name).")


def download(entry: ZooEntry | BackboneEntry, dest_dir: Path | None = None, progress: bool = True,
             opener: Any = None) -> Path:
    """Fetch a registry checkpoint into the cache, verify its sha256 prefix, publish it atomically.

    A partial or corrupt download never appears under the final name: data goes to a temporary file in
    the same folder, which is renamed only after the checksum matched.
    """
    dest_dir = Path(dest_dir or cache_dir())
    dest = dest_dir / entry.filename
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the cache folder {dest_dir}: {e}") from None
    open_url = opener or urllib.request.urlopen
    errors = []
    for url in entry.urls:
        fd, tmp = tempfile.mkstemp(prefix=f".{entry.filename}.", suffix=".part", dir=dest_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                with open_url(url, timeout=30) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) if hasattr(resp, "headers") else 0
                    bar = None
                    if progress:
                        from tqdm import tqdm

                        bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=entry.filename)
                    h = hashlib.sha256()
                    while block := resp.read(1 << 20):
                        out.write(block)
                        h.update(block)
                        if bar is not None:
                            bar.update(len(block))
                    if bar is not None:
                        bar.close()
            digest = h.hexdigest()
            if not digest.startswith(entry.sha256_prefix):
                errors.append(f"{url}: checksum mismatch (sha256 {digest[:8]}…, expected "
                              f"{entry.sha256_prefix}…); the file was discarded")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DownloadError(f"could not download {entry.name}:\n  " + "\n  ".join(errors) + "\n  "
                        + _manual_hint(entry, dest))


def _cached_or_download(entry: ZooEntry | BackboneEntry, download_missing: bool, progress: bool) -> Path:
    """The entry's file in the cache, verified against its sha256 prefix, or downloaded there."""
    path = cache_dir() / entry.filename
    if path.is_file():
        digest = sha256_of(path)
        if digest.startswith(entry.sha256_prefix):
            return path
        raise CheckpointError(f"{path} is corrupt: sha256 starts with {digest[:8]}, the published file's "
                              f"with {entry.sha256_prefix}. Delete it and run again to re-download.")
    if not download_missing:
        raise DownloadError(f"{entry.name} is not in the cache.\n  " + _manual_hint(entry, path))
    return download(entry, progress=progress)


def fetch(name: str, download_missing: bool = True, progress: bool = True) -> Path:
    """Path of a registry checkpoint, downloading it if needed; verified against its sha256 prefix."""
    return _cached_or_download(REGISTRY[name], download_missing, progress)


# ------------------------------------------------------------------------------------------ loading

# Known-harmless non-tensor types that mmengine may leave in a checkpoint's `meta`.
def _numpy_safe_globals() -> list:
    import numpy as np

    out: list = [np.ndarray, np.dtype]
    try:
        from numpy.core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy >= 2 moved them
        from numpy._core.multiarray import _reconstruct, scalar  # type: ignore
    out += [_reconstruct, scalar]
    out += [type(np.dtype(t)) for t in ("float32", "float64", "int32", "int64", "uint8", "bool")]
    return out


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, meta) from an mmpose checkpoint, our own training checkpoint, or a bare state dict.

    Always `weights_only=True`: a downloaded file can never run code on load.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint file")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory; pass the .pth file inside it")
    with open(p, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # zip (torch >= 1.6) or raw pickle
        raise CheckpointError(f"{p}: not a PyTorch checkpoint (unrecognised file format)")
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # numpy objects in meta are refused by the default allowlist
            if "weights_only" not in str(e) and "Unsupported global" not in str(e):
                raise
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise CheckpointError(
                f"{p}: holds Python objects that are not plain data ({', '.join(sorted(set(found)))}); "
                "rtmo never unpickles code from a checkpoint. Re-save just its tensors: "
                "torch.save({'state_dict': ckpt['state_dict']}, 'clean.pth') in an environment you trust."
            ) from None
        msg = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise CheckpointError(f"{p}: corrupt or truncated checkpoint ({msg})") from None
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
        cfg.input_size = size
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
            backend: str | None = None, num_threads: int | None = None, precision: str = "fp32") -> Any:
        """A ready model in eval mode.

        Checkpoints (registry names, .pth): an `RTMO` on `device` (None: CUDA when available, else CPU),
        at `precision` 'fp32' | 'bf16' | 'fp16' (see `RTMO.set_precision`); `num_threads` sets torch's
        intra-op threads. Exported files (.onnx, .xml, .engine) open with their runtime, never importing
        torch for ONNX Runtime / OpenVINO: `backend` 'onnxruntime' | 'openvino' | 'tensorrt' (default by
        suffix), `num_threads` (default: the physical cores), `device`, `precision` (see
        `rtmo.export.runtime.load_exported`)."""
        if input_size is not None:
            input_size = check_input_size(input_size)
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 1):
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
        key = str(name_or_path)
        if Path(key).suffix.lower() in EXPORTED_SUFFIXES:
            from .export.runtime import load_exported

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
            import torch as _torch  # noqa: F401
        except ImportError:
            raise ImportError(f"{key}: checkpoints need PyTorch: pip install \"rtmo[torch]\" (exported "
                              ".onnx / .xml models run without it)") from None
        from .device import resolve_device
        from .model import PRECISIONS, RTMO

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
        return model.set_precision(precision)
