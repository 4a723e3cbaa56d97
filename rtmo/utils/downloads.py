"""Weights from the internet, safely: a cache folder, checksum-verified downloads published atomically, a
clear offline error, and the registry of backbone initialisations (YOLOX detectors, ImageNet ResNets).

Registry entries (these and `rtmo.hub.zoo.ZooEntry`) need `name`, `filename`, `url`, `urls` and
`sha256_prefix` ("" where the publisher gives no checksum).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError
from .fileio import atomic_path

log = logging.getLogger(__name__)

CACHE_ENV = "RTMO_CACHE_DIR"


class DownloadError(RuntimeError):
    """A checkpoint that could not be fetched; the message says what to download and where to put it."""


@dataclass(frozen=True)
class BackboneEntry:
    """A checkpoint that initialises a backbone: a YOLOX detector (its `backbone.*` weights, as the official
    RTMO configs' `init_cfg`) or a torchvision ImageNet ResNet."""

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
    # torchvision's ImageNet weights (IMAGENET1K_V1); their names carry the sha256 prefix too.
    BackboneEntry("resnet18", "https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd"),
    BackboneEntry("resnet34", "https://download.pytorch.org/models/resnet34-b627a593.pth", "b627a593"),
    BackboneEntry("resnet50", "https://download.pytorch.org/models/resnet50-0676ba61.pth", "0676ba61"),
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
    return cached_or_download(entry, download_missing, progress)


# ------------------------------------------------------------------------------------------ cache

def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rtmo").expanduser()


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


def manual_hint(entry: Any, dest: Path) -> str:
    return (f"Download it yourself from {entry.url}\n  and save it as {dest}\n"
            f"  (or set {CACHE_ENV} to the folder that holds it, or pass the .pth path instead of the name).")


class _ChecksumMismatch(Exception):
    pass


def _fetch(open_url: Any, url: str, path: Path, progress_label: str | None) -> str:
    """Stream `url` into `path`; the sha256 of what was written."""
    h = hashlib.sha256()
    with open(path, "wb") as out, open_url(url, timeout=30) as resp:
        total = int(resp.headers.get("Content-Length") or 0) if hasattr(resp, "headers") else 0
        bar = None
        if progress_label is not None:
            from tqdm import tqdm

            bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=progress_label)
        while block := resp.read(1 << 20):
            out.write(block)
            h.update(block)
            if bar is not None:
                bar.update(len(block))
        if bar is not None:
            bar.close()
    return h.hexdigest()


def download(entry: Any, dest_dir: Path | None = None, progress: bool = True,
             opener: Any = None) -> Path:
    """Fetch a registry checkpoint into the cache, verify its sha256 prefix, publish it atomically.

    A partial or corrupt download never appears under the final name (`atomic_path`: the rename happens
    only after the checksum matched).
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
        try:
            with atomic_path(dest, suffix=".part") as tmp:
                digest = _fetch(open_url, url, tmp, entry.filename if progress else None)
                if not digest.startswith(entry.sha256_prefix):
                    raise _ChecksumMismatch(f"{url}: checksum mismatch (sha256 {digest[:8]}…, expected "
                                            f"{entry.sha256_prefix}…); the file was discarded")
            return dest
        except _ChecksumMismatch as e:
            errors.append(str(e))
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', None) or e}")
    raise DownloadError(f"could not download {entry.name}:\n  " + "\n  ".join(errors) + "\n  "
                        + manual_hint(entry, dest))


def cached_or_download(entry: Any, download_missing: bool, progress: bool) -> Path:
    """The entry's file in the cache, verified against its sha256 prefix, or downloaded there."""
    path = cache_dir() / entry.filename
    if path.is_file():
        digest = sha256_of(path)
        if digest.startswith(entry.sha256_prefix):
            return path
        raise CheckpointError(f"{path} is corrupt: sha256 starts with {digest[:8]}, the published file's "
                              f"with {entry.sha256_prefix}. Delete it and run again to re-download.")
    if not download_missing:
        raise DownloadError(f"{entry.name} is not in the cache.\n  " + manual_hint(entry, path))
    return download(entry, progress=progress)
