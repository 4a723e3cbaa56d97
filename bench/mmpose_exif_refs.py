"""mmpose's own outputs on phone-style photos with an EXIF orientation tag -> tests/data/mmpose_exif_refs.npz.

Run in the mmpose-ref venv (`bash ../shared/tools/mmpose-ref/setup.sh` once):
    ~/.cache/mmpose-ref/venv/bin/python bench/mmpose_exif_refs.py
It tags two COCO photos with orientations 1, 3, 6 and 8 (tests/exif_util.py, no re-encoding), runs
mmpose 1.3.2's `inference_bottomup` with the RTMO-t fixture checkpoint on each file, and records the
file's sha256 with the results, so the test knows it reads the very bytes mmpose read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from exif_util import with_orientation  # noqa: E402

STEMS = ("000000197388",)
ORIENTATIONS = (1, 3, 6, 8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--out", default=str(REPO / "tests" / "data" / "mmpose_exif_refs.npz"))
    args = ap.parse_args()
    shared = Path(args.shared)
    sys.path.insert(0, str(shared / "tools" / "mmpose-ref"))
    import mmpose_ref_common as C
    import torch
    from mmpose.apis import inference_bottomup, init_model

    torch.set_num_threads(2)
    name = "rtmo-t_8xb32-600e_body7-416x416_seed0"
    model = init_model(C.resolve_config("t", "body7"), str(shared / "fixtures" / name / f"{name}.pth"),
                       device="cpu")
    import numpy as np

    out = {"meta": np.array(json.dumps({"checkpoint": f"{name}.pth", "versions": C.versions()}))}
    with tempfile.TemporaryDirectory() as tmp:
        for stem in STEMS:
            data = (shared / "data" / "coco" / f"{stem}.jpg").read_bytes()
            for o in ORIENTATIONS:
                tagged = with_orientation(data, o)
                path = Path(tmp) / f"{stem}_o{o}.jpg"
                path.write_bytes(tagged)
                res = inference_bottomup(model, str(path))[0]
                pi = res.pred_instances
                key = path.stem
                out[f"{key}.sha256"] = np.array(hashlib.sha256(tagged).hexdigest())
                out[f"{key}.ori_shape"] = np.array(res.metainfo["ori_shape"])
                for field in ("bboxes", "bbox_scores", "keypoints", "keypoint_scores"):
                    out[f"{key}.{field}"] = np.asarray(pi.get(field), np.float32)
                print(path.name, res.metainfo["ori_shape"], len(pi.bbox_scores))
    np.savez_compressed(args.out, **out)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
