"""Registry, download with checksum into the cache (a fake opener: never the network), loading."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
import torch

from rtmo import ModelManager
from rtmo.hub.zoo import REGISTRY, CheckpointError, DownloadError, ZooEntry, fetch, read_checkpoint
from rtmo.utils import downloads
from rtmo.utils.downloads import download

from .conftest import fixture_checkpoint


def test_registry_has_the_eleven_official_checkpoints():
    assert sorted(REGISTRY) == sorted([
        "rtmo-s-coco", "rtmo-m-coco", "rtmo-l-coco", "rtmo-t-body7", "rtmo-s-body7", "rtmo-m-body7",
        "rtmo-l-body7", "rtmo-s-crowdpose", "rtmo-m-crowdpose", "rtmo-l-crowdpose", "rtmo-l-body7-crowdpose"])
    e = REGISTRY["rtmo-s-coco"]
    assert e.sha256_prefix == "8db55a59" and e.input_size == (640, 640) and e.ap == 0.677
    assert e.url.endswith("/rtmo/rtmo-s_8xb32-600e_coco-640x640-8db55a59_20231211.pth")
    assert REGISTRY["rtmo-t-body7"].input_size == (416, 416)
    crowd = REGISTRY["rtmo-l-body7-crowdpose"]
    assert crowd.num_keypoints == 14 and crowd.keypoint_info.names[-2:] == ("top_head", "neck")
    assert crowd.keypoint_info.flip_indices == (1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13)
    coco = REGISTRY["rtmo-m-coco"].keypoint_info
    assert coco.sigmas[0] == 0.026 and coco.flip_indices[1] == 2 and len(coco.skeleton) == 19
    for entry in REGISTRY.values():
        assert len(entry.sha256_prefix) == 8
        assert entry.config().num_keypoints == entry.num_keypoints


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def make_entry(data: bytes, name="rtmo-t-body7") -> ZooEntry:
    prefix = hashlib.sha256(data).hexdigest()[:8]
    return ZooEntry(name, f"rtmo-t_test-{prefix}_20231219.pth", "t", 17, (416, 416), "body7", "COCO", 0.5)


def test_download_verifies_and_publishes_atomically(tmp_path):
    data = fixture_checkpoint("t").read_bytes()
    entry = make_entry(data)
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return FakeResponse(data)

    path = download(entry, tmp_path, progress=False, opener=opener)
    assert path.read_bytes() == data and calls == [entry.url]
    assert [p.name for p in tmp_path.iterdir()] == [entry.filename]  # no temporary leftovers
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # a plain write's mode, not mkstemp's private 0600


def test_download_checksum_mismatch_leaves_nothing(tmp_path):
    entry = make_entry(b"the real file")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(entry, tmp_path, progress=False, opener=lambda url, timeout: FakeResponse(b"tampered"))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_nothing(tmp_path):
    class Broken(FakeResponse):
        def read(self, n=-1):
            raise OSError("connection reset")

    entry = make_entry(b"x")
    with pytest.raises(DownloadError, match="connection reset"):
        download(entry, tmp_path, progress=False, opener=lambda url, timeout: Broken(b""))
    assert list(tmp_path.iterdir()) == []


def test_offline_error_says_what_to_download_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("RTMO_CACHE_DIR", str(tmp_path))
    import urllib.error
    import urllib.request

    def offline(url, timeout):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError) as e:
        ModelManager.get("rtmo-s-coco", progress=False)
    msg = str(e.value)
    assert REGISTRY["rtmo-s-coco"].url in msg and str(tmp_path) in msg and "RTMO_CACHE_DIR" in msg


def test_cached_official_name_loads_without_network(tmp_path, monkeypatch):
    """A file placed in the cache under its official name is verified by checksum and used offline."""
    data = fixture_checkpoint("t").read_bytes()
    entry = make_entry(data)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    monkeypatch.setenv("RTMO_CACHE_DIR", str(tmp_path))
    (tmp_path / entry.filename).write_bytes(data)
    model = ModelManager.get(entry.name, download=False)
    assert model.input_size == (416, 416) and not model.training
    (tmp_path / entry.filename).write_bytes(data[:-10] + b"corruption")

    downloads._SHA_CACHE.clear()
    with pytest.raises(CheckpointError, match="corrupt"):
        fetch(entry.name)


def test_bare_state_dict_and_prefixed_state_dict(tmp_path):
    sd, _ = read_checkpoint(fixture_checkpoint("t"))
    torch.save(sd, tmp_path / "bare.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "ddp.pth")
    for name in ("bare.pth", "ddp.pth"):
        model = ModelManager.get(tmp_path / name)
        assert model.config.variant == "t"
        assert torch.equal(model.head.dcc.pos_enc, sd["head.dcc.pos_enc"])


def test_bad_checkpoint_files(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("hello")
    (tmp_path / "trunc.pth").write_bytes(fixture_checkpoint("t").read_bytes()[:50_000])
    torch.save({"weights": [1, 2]}, tmp_path / "notensors.pth")
    for name, pattern in [("missing.pth", "neither a registry name nor an existing file"),
                          ("empty.pth", "not a PyTorch checkpoint"), ("text.pth", "not a PyTorch checkpoint"),
                          ("trunc.pth", "corrupt or truncated"), ("notensors.pth", "no state dict")]:
        with pytest.raises(CheckpointError, match=pattern):
            ModelManager.get(str(tmp_path / name))
    with pytest.raises(CheckpointError, match="directory"):
        read_checkpoint(tmp_path)


def test_backbone_registry_covers_the_recipes():
    from rtmo.hub.zoo import BACKBONES
    from rtmo.train.recipes import TrainRecipe, list_recipes

    urls = {e.url for e in BACKBONES.values()}
    for name in list_recipes():
        assert TrainRecipe.load(name).backbone_init in urls, name
    assert BACKBONES["yolox-s"].sha256_prefix == "4592a793"  # the 8 hex digits in mmdet's file name


def test_yolox_backbone_init_from_cache_url_and_file(tmp_path, monkeypatch):
    """The recipe's YOLOX URL resolves to the verified cached file (offline); the backbone weights,
    BN statistics included, are copied; a corrupt cache file and a missing path get clear errors."""
    from rtmo import RTMO, RTMOConfig
    from rtmo.hub.zoo import BACKBONES, BackboneEntry, backbone_checkpoint
    from rtmo.nn.init import init_weights
    from rtmo.train.run import load_backbone

    torch.manual_seed(1)
    donor = RTMO(RTMOConfig.preset("t"))
    for m in donor.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    buf = io.BytesIO()
    torch.save({"state_dict": {"backbone." + k: v for k, v in donor.backbone.state_dict().items()}}, buf)
    data = buf.getvalue()
    url = "https://example.invalid/yolox/yolox_t_test-" + hashlib.sha256(data).hexdigest()[:8] + ".pth"
    entry = BackboneEntry("yolox-test", url, hashlib.sha256(data).hexdigest()[:8])
    monkeypatch.setitem(BACKBONES, entry.name, entry)
    monkeypatch.setenv("RTMO_CACHE_DIR", str(tmp_path))
    (tmp_path / entry.filename).write_bytes(data)

    model = init_weights(RTMO(RTMOConfig.preset("t")))
    load_backbone(model, url)
    for k, v in donor.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert backbone_checkpoint("yolox-test") == tmp_path / entry.filename

    (tmp_path / entry.filename).write_bytes(data[:-5] + b"xxxxx")
    downloads._SHA_CACHE.clear()
    with pytest.raises(CheckpointError, match="corrupt"):
        load_backbone(model, "yolox-test")
    with pytest.raises(FileNotFoundError, match="yolox-s"):
        load_backbone(model, tmp_path / "missing.pth")
    wrong = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, wrong)
    with pytest.raises(ValueError, match="does not fit"):
        load_backbone(model, wrong)
